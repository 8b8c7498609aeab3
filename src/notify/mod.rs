//! Telling people when accepted mail cannot be delivered: delivery status notifications to the
//! sender ([`dsn`]) and signed events to the operator's webhooks.
//!
//! Once the queue has answered `250` it is responsible for the message (RFC 5321 §6.1); a
//! message it gives up must not vanish without a word. This module only composes and sends; the
//! queue decides when: its scheduler core, where it applies each outcome (`queue::schedule`,
//! module `tell`), with what `queue::notice` builds from the record.
//!
//! # What the queue calls
//! - **A message becomes a dead letter** (or is still queued after
//!   [`NotifyConfig::delay_warning`](crate::config::NotifyConfig::delay_warning)): when
//!   [`Config::bounces_active`](crate::config::Config::bounces_active) and
//!   [`dsn::deserves_dsn`]`(sender, head)` is `Ok`, it builds a [`dsn::Report`] from its record
//!   (recipients from
//!   [`NotifyConfig::bounce_recipients`](crate::config::NotifyConfig::bounce_recipients), `from` =
//!   the account's address, `reporting_host` = `smtp.hostname`, status
//!   [`Status::EXPIRED`](crate::status::Status::EXPIRED) for `max_age`), calls [`dsn::compose`]
//!   and queues [`dsn::Dsn::raw`] through the same account with the **null sender**, so no DSN is
//!   ever made about it; otherwise it logs the [`dsn::NoDsn`] reason.
//! - **Anything an operator may want to hear about**: [`Notifier::event`] with an [`Event`]
//!   (`dead_letter`, `delayed`, `deferred`, `delivered`, `credentials`). It never blocks and never
//!   fails; the [`Notifier`] (cheap to clone) comes from [`Notifier::from_config`] on the server's
//!   `TaskTracker` and shutdown token, or [`Notifier::off`].

pub mod dsn;
pub mod event;
pub mod signature;
mod webhook;

pub use event::{CredentialsEvent, CredentialsState, Detail, Event, EventKind, MessageEvent};
pub use webhook::{Endpoint, Notifier, NotifierError, WebhookDelivery, WebhookStats};
