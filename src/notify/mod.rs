//! Telling people when accepted mail cannot be delivered: delivery status notifications to the
//! sender ([`dsn`]) and signed events to the operator's webhooks.
//!
//! Once the queue has answered `250` it is responsible for the message (RFC 5321 §6.1); a
//! message it gives up must not vanish without a word. This module only composes and sends; the
//! queue decides when (it calls [`dsn::deserves_dsn`] and [`dsn::compose`] and queues the result
//! with the null sender, and hands events to the notifier).

pub mod dsn;
pub mod event;
pub mod signature;
mod webhook;

pub use event::{CredentialsEvent, CredentialsState, Detail, Event, EventKind, MessageEvent};
pub use webhook::{Delivery, Endpoint, EndpointError, Notifier, WebhookStats};
