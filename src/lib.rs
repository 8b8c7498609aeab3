//! smtp2gmail: an SMTP server that lets any SMTP client send mail through the Gmail API, and a
//! local development catch-all that prints or files mail instead.
//!
//! One message walks straight through a pipeline of small stages. The default path in gmail mode
//! (`delivery = "queue"`):
//!
//! ```text
//! TcpListener ─▶ smtp::Session ─(Envelope, Message)─▶ queue::Queue (the acceptor)
//!                                                       │ relay::Gmail::decide: account, mailbox,
//!                                                       │ Bcc/From edits (refused now: 5xx)
//!                                                       │ queue::store::Store::put (the decision
//!                                                       │ as a queue::record; durable) ─▶ 250 queued as <id>
//!                                                       ▼
//!                queue::schedule::Scheduler — the one core: outcomes, holds, pacing, deferrals,
//!                      │  dead letters, retries, credentials resumption, shutdown drain
//!                      │  over queue::schedule::State (claim, settle, note, precondition, lift…)
//!           ┌──────────┴───────────┐
//!   MemoryState (one server        SharedState (replicas: limits, leases and
//!   on a spool: state in memory)   streaks in PostgreSQL, via queue::shared::SharedStore)
//!           └──────────┬───────────┘
//!                      ▼
//!                relay::Gmail::outgoing (the stored decision, no second routing)
//!                  ─ access token (google::TokenSource) ─▶ upload ─▶ 200
//! ```
//!
//! In sync mode and in the console, file and discard modes the session hands the message to a
//! [`relay::Deliver`] target directly and answers with its outcome. Every failure is one
//! [`relay::DeliveryError`]: `Temporary` (451, retry later), `Permanent` (5xx, dead letter) or
//! `Credentials` (451 4.7.0 with the fix; the queue holds the account or the one mailbox).
//!
//! # Assembly and lifecycle
//! [`server::Server::start`] puts all of this together once, from a [`config::Config`]: the
//! delivery target (relay, queue or inbox), the SMTP listeners, the HTTP endpoints and every
//! background task, each on a [`tasks::Tasks`] tracker. It returns a [`server::ServerHandle`]
//! (bound addresses, readiness, reload, shutdown). The CLI (`serve`), the tests and the benchmarks
//! all start the server this way. Shutdown runs in one order: listeners stop and sessions finish
//! → deliveries in flight finish, the rest stays queued, the other tasks end → the queue's storage
//! closes (the database's listener and connections) → the spool lock is released; the handle's
//! `shutdown` returns once every task has ended.
//!
//! ```text
//!   cli::serve (signals, exit codes) ─┐
//!   tests, benches ───────────────────┼─▶ server::Server::start ─▶ ServerHandle
//!                                     │      server::delivery: relay / inbox / queue::start
//!                                     │      smtp::Server, http::serve, scheduler, splitter,
//!                                     │      credential watcher, webhook senders
//!                                     │      ─ tracked (tasks::Tasks)
//! ```
//!
//! # Layout
//! - [`server`]: the one assembly of the whole server and its shutdown order.
//! - [`tasks`]: tracked background tasks and the signal that closes them.
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
//! - [`queue`]: the durable queue of gmail mode, started by one call (`queue::start`): the record
//!   (`queue::record`, the leaf every part uses), the storage interfaces by concern
//!   (`queue::store`: records, the merge journal, the command channel) with the file spool and
//!   PostgreSQL as implementations, one scheduler core (`queue::schedule`: retries, backoff,
//!   per-mailbox limits and holds, dead letters, the `queue` commands) over two state backends,
//!   which tells each outcome where it applies it (`queue::notice`: webhook events, and DSNs
//!   queued through the message's own account), and transactions of one message an MTA split
//!   (held, in the database when replicas share the queue; merged from their decisions; sent
//!   once).
//! - [`notify`]: telling people when queued mail cannot be delivered: RFC 3464 delivery status
//!   notifications composed from plain data (and which failures get one), and signed Standard
//!   Webhooks events sent to the operator's endpoints without holding up mail.
//! - [`locks`]: std locks that a panic cannot poison for good (the scheduler survives panics).
//! - [`status`]: the RFC 3463 enhanced status codes, named, shared by SMTP replies and delivery
//!   outcomes.
//! - [`backoff`]: the one retry backoff with jitter, for the queue and the relay's own retries.
//! - [`safeio`]: atomic, durable file writes shared by every stage that stores files.
//! - [`group_commit`]: one run of an expensive step (a directory fsync, a `NOTIFY`) for every
//!   caller that asked before it started.
//! - [`fingerprint`]: noticing that a file changed (credentials, the TLS certificate), by polling.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics` for operators.
//! - [`inbox`]: the development inbox of console and file modes: captured mail in a web page and
//!   through a Mailpit-compatible API, and release through the Gmail relay.
//! - [`telemetry`]: the metrics, recorded through small functions and rendered for `/metrics`.
//! - [`config`]: the TOML configuration, with defaults and file:line:key errors.
//! - [`cli`]: the command line at the edge: arguments, signals, exit codes.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod fingerprint;
pub mod google;
pub mod group_commit;
pub mod http;
pub mod inbox;
pub mod locks;
pub mod message;
pub mod microsoft;
pub mod notify;
pub mod queue;
pub mod relay;
pub mod safeio;
pub mod server;
pub mod smtp;
pub mod status;
pub mod tasks;
pub mod telemetry;
