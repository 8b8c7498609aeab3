//! smtp2gmail: an SMTP server that lets any SMTP client send mail through the Gmail API, and a
//! local development catch-all that prints or files mail instead.
//!
//! One message walks straight through a pipeline of small stages:
//!
//! ```text
//! TcpListener ─▶ smtp::Session ─(Envelope, Message)─▶ relay::Deliver ─▶ 250 / 451 / 554
//!                                                        │ gmail: route to an account,
//!                                                        │ Bcc and From rules, access token,
//!                                                        ▼ upload the raw bytes
//! ```
//!
//! # Layout
//! - [`smtp`]: listeners, the connection cap, sessions (one method per SMTP verb), the DATA decoder,
//!   replies, graceful shutdown.
//! - [`message`]: what one accepted message is: its [`message::Envelope`] and raw bytes
//!   ([`message::Message`]), spilled to disk when large; reading its headers and the Gmail rules
//!   (Bcc synthesis, header-only recipients, From policy) as edits of the raw bytes.
//! - [`relay`]: the one delivery trait ([`relay::Deliver`]) whose error says temporary, permanent
//!   or credentials, and its targets: console, file, discard, and gmail (accounts, the router, the
//!   Gmail API call and the classification of its answers).
//! - [`google`]: Google credentials (token.json, authorized_user, service account keys, inline,
//!   environment) and per-account access-token sources with single-flight refresh.
//! - [`queue`]: the durable queue of gmail mode: the spool (fsync before 250), the scheduler
//!   (retries, backoff, per-account limits and pauses, dead letters), requests from `queue` commands.
//! - [`status`]: the RFC 3463 enhanced status codes, named, shared by SMTP replies and delivery
//!   outcomes.
//! - [`backoff`]: the one retry backoff with jitter, for the queue and the relay's own retries.
//! - [`safeio`]: atomic, durable file writes shared by every stage that stores files.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics` for operators.
//! - [`telemetry`]: the metrics, recorded through small functions and rendered for `/metrics`.
//! - [`config`]: the TOML configuration, with defaults and file:line:key errors.
//! - [`cli`]: the command line at the edge.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod google;
pub mod http;
pub mod message;
pub mod queue;
pub mod relay;
pub mod safeio;
pub mod smtp;
pub mod status;
pub mod telemetry;
