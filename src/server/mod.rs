//! The whole server of `smtp2gmail serve`, assembled in one place.
//!
//! [`Server::start`] builds the delivery target (a relay, the queue, or the inbox), binds the SMTP
//! listeners and the HTTP endpoints, starts every background task and returns a
//! [`ServerHandle`]. The handle's [`shutdown`](ServerHandle::shutdown) stops all of it in one
//! order and returns once every task it started has ended. The command line, the tests and the
//! benchmarks all start the server this way, so what they exercise is what runs in production
//! (mini-redis's `server::run` is the model). The process's own business stays at the edge, in
//! `cli::serve`: signals, exit codes, the open-file limit.
//!
//! The shutdown order (docs/design.md, "Lifecycle: every task tracked, one shutdown order"):
//!
//! 1. shutdown begins: the listeners stop accepting and `/readyz` says "shutting down";
//! 2. the open SMTP sessions finish their transactions (within `shutdown_grace`), then are closed;
//!    meanwhile the scheduler lets the deliveries in flight finish (within the grace) and leaves
//!    the rest queued, and the HTTP endpoints (the inbox's live-update listeners closed), the
//!    credential watcher and the split-message task end;
//! 3. the webhook senders stop: the scheduler, the last to emit events, has ended (what they
//!    have not sent is dropped and counted, a stopping server does not wait on receivers);
//! 4. the queue's storage closes: the database's listener and connections end (nothing can use
//!    them any more);
//! 5. the spool's lock is released: only when nothing can still write to the spool may another
//!    server take it.

mod announce;
mod delivery;
mod lifecycle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::Readiness;
use crate::queue::store::Store;
use crate::relay::Deliver;
use crate::relay::gmail::RetryPolicy;
use crate::relay::gmail::accounts::Account;
use crate::tasks::Tasks;
use crate::{http, smtp};

pub use announce::mode_description;
pub use lifecycle::Stopped;

/// The server as the configuration describes it, ready to [`start`](Server::start).
///
/// Besides the configuration it takes what a configuration file cannot say: where the
/// configuration came from (for the startup line), and the seams tests and benchmarks use — a
/// delivery target of their own, Gmail's in-session retries and request timeout.
pub struct Server {
    config: Config,
    config_file: Option<PathBuf>,
    seams: Seams,
}

/// What tests and benchmarks may change that the configuration does not hold.
#[derive(Default)]
struct Seams {
    deliver_to: Option<Arc<dyn Deliver>>,
    gmail_retry: Option<RetryPolicy>,
    gmail_request_timeout: Option<Duration>,
}

impl Server {
    /// The server `config` describes.
    pub fn new(config: Config) -> Server {
        Server {
            config,
            config_file: None,
            seams: Seams::default(),
        }
    }

    /// Names the file the configuration came from in the startup line (`None`: built-in
    /// defaults).
    pub fn config_file(mut self, path: Option<PathBuf>) -> Server {
        self.config_file = path;
        self
    }

    /// Hands every accepted message to `target` instead of what `[relay]` configures: for the
    /// tests of the SMTP front end, which record what arrives. Nothing else is built (no Gmail
    /// accounts, no queue, no inbox); the HTTP endpoints still follow `[http]`.
    pub fn deliver_to(mut self, target: Arc<dyn Deliver>) -> Server {
        self.seams.deliver_to = Some(target);
        self
    }

    /// Gmail mode: retries within one delivery other than the default (tests make one attempt).
    pub fn gmail_retry(mut self, retry: RetryPolicy) -> Server {
        self.seams.gmail_retry = Some(retry);
        self
    }

    /// Gmail mode: a base request timeout other than the default (tests of hung requests).
    pub fn gmail_request_timeout(mut self, timeout: Duration) -> Server {
        self.seams.gmail_request_timeout = Some(timeout);
        self
    }

    /// Builds the delivery target, binds every listener, logs the startup lines and starts every
    /// background task. Returns once the server accepts connections (and is ready, unless an
    /// account's credentials or the queue's storage say otherwise).
    pub async fn start(self) -> Result<ServerHandle, StartError> {
        let tasks = Tasks::new();
        let storage = Tasks::new();
        let notify = Tasks::new();
        let started = self.assemble(&tasks, &storage, &notify).await;
        if started.is_err() {
            // A database opened before a later step failed: its sessions go with the error, and
            // the webhook senders with them.
            notify.close();
            storage.close();
        }
        started
    }

    async fn assemble(
        self,
        tasks: &Tasks,
        storage: &Tasks,
        notify: &Tasks,
    ) -> Result<ServerHandle, StartError> {
        let config = &self.config;
        let shutdown = tasks.closing();
        let mut smtp_config = config.smtp.clone();
        let sets = delivery::TaskSets {
            shutdown,
            storage,
            notify,
        };
        let target = delivery::build(config, &self.seams, &mut smtp_config, sets).await?;
        let faults = target
            .inbox
            .clone()
            .map(|inbox| inbox as Arc<dyn smtp::faults::Faults>);
        let smtp = smtp::Server::bind(smtp_config, target.deliver.clone())
            .await?
            .with_faults(faults);
        let http = match config.http.address() {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Http { addr, source })?,
            ),
            None => None,
        };
        let smtp_addrs = smtp.local_addrs();
        let http_addr = http
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        announce::startup(
            config,
            self.config_file.as_deref(),
            &smtp,
            http_addr,
            target.inbox.as_deref(),
        );
        let readiness = Arc::new(Readiness {
            accounts: target.accounts.clone(),
            queue: target.queue.as_ref().map(|queue| queue.store.clone()),
            shutdown: shutdown.clone(),
        });
        // After the startup lines, so that what the tasks log comes after them.
        if let Some(listener) = http {
            announce::http_endpoints(http_addr, target.inbox.is_some());
            let routes = target.inbox.as_ref().map(|inbox| inbox.router());
            tasks.spawn(http::serve(
                listener,
                readiness.clone(),
                routes,
                shutdown.clone(),
            ));
        }
        // Ends once the SMTP sessions are gone and what they accepted is printed and captured.
        if let Some(worker) = target.backlog {
            tasks.spawn(worker.run());
        }
        if let Some(inbox) = &target.inbox {
            tasks.spawn(inbox.loading());
            tasks.spawn(inbox.sweeping());
            tasks.spawn(inbox.closing());
        }
        lifecycle::verify_credentials(&target.accounts, tasks);
        if let Some(watcher) = &target.watcher {
            tasks.spawn(watcher.clone().run(shutdown.clone()));
        }
        // A renewed certificate is served without a signal (Windows has no SIGHUP).
        if let Some(tls) = smtp.tls() {
            tasks.spawn(tls.watch(crate::relay::gmail::reload::POLL_INTERVAL, shutdown.clone()));
        }
        let grace = config.smtp.shutdown_grace;
        let queue_store = target.queue.as_ref().map(|queue| queue.store.clone());
        let spool_lock = target.queue.map(|started| started.run(tasks, grace));
        let reload = lifecycle::Reload {
            credentials: target.watcher,
            tls: smtp.tls(),
        };
        let stopping = lifecycle::Stopping {
            tasks: tasks.clone(),
            notify: notify.clone(),
            storage: storage.clone(),
            spool_lock: spool_lock.flatten(),
            grace,
        };
        let max_message_size = smtp.max_message_size();
        let stopped = tokio::spawn(stopping.after(smtp));
        Ok(ServerHandle {
            smtp_addrs,
            http_addr,
            max_message_size,
            accounts: target.accounts,
            queue: queue_store,
            readiness,
            reload,
            shutdown: shutdown.clone(),
            stopped: Some(stopped),
        })
    }
}

/// A running server: its addresses, its state, and the way to stop it.
///
/// Dropping the handle begins the shutdown without waiting for it; [`ServerHandle::shutdown`]
/// waits, and is how the command line, the tests and the benchmarks stop a server.
pub struct ServerHandle {
    smtp_addrs: Vec<SocketAddr>,
    http_addr: Option<SocketAddr>,
    max_message_size: u64,
    accounts: Vec<Arc<Account>>,
    queue: Option<Arc<dyn Store>>,
    readiness: Arc<Readiness>,
    reload: lifecycle::Reload,
    shutdown: CancellationToken,
    /// The task that runs the SMTP listeners and then the shutdown order; `None` once waited for.
    stopped: Option<JoinHandle<Stopped>>,
}

impl ServerHandle {
    /// The SMTP addresses actually bound (port 0 replaced): `[smtp] listen`, then `listen_tls`.
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    /// The address of the HTTP endpoints (and the inbox), when they are on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The SIZE the SMTP listeners advertise: `max_message_size`, or less when the delivery
    /// target cannot take that much.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// The Gmail accounts (none outside gmail mode, or with a target of the caller's own).
    pub fn accounts(&self) -> &[Arc<Account>] {
        &self.accounts
    }

    /// The queue's storage, in gmail queue mode: what the queue holds can be read through it.
    pub fn queue(&self) -> Option<&Arc<dyn Store>> {
        self.queue.as_ref()
    }

    /// What `/readyz` would answer now (`"ready"`, the problems, the warnings).
    pub fn readiness(&self) -> serde_json::Value {
        self.readiness.report()
    }

    /// True when `/readyz` would answer 200.
    pub fn is_ready(&self) -> bool {
        self.readiness()["ready"] == true
    }

    /// Reloads every account's credentials and the TLS certificate, as SIGHUP asks: held mail
    /// is tried again even when the credentials did not change. `cause` (what asked, "SIGHUP")
    /// starts each log line. Returns how many accounts switched to new credentials.
    pub async fn reload(&self, cause: &str) -> usize {
        self.reload.run(cause).await
    }

    /// Begins the shutdown without waiting for it (see [`ServerHandle::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// True once the shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Stops the server in the module's order and returns once every task it started has ended,
    /// or once the bound (`shutdown_grace` + 5 s for the tasks, as much again for the queue's
    /// storage) has passed: an HTTP client holding a connection open must not keep the process
    /// alive. [`Stopped`] says whether anything was left running.
    pub async fn shutdown(mut self) -> Stopped {
        self.begin_shutdown();
        let stopped = self.stopped.take().expect("waited for only here, once");
        match stopped.await {
            Ok(stopped) => stopped,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

impl Drop for ServerHandle {
    /// A handle dropped without [`ServerHandle::shutdown`] (a failed test) still stops the
    /// server, in the same order, without anyone waiting for it.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Why the server could not start. [`StartError::is_config`] tells a setting to fix from a
/// failure of the environment.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The relay cannot be built: an account's configuration or credentials are unusable, or the
    /// HTTP client for Google cannot be set up.
    #[error(transparent)]
    Relay(#[from] crate::relay::BuildError),
    /// The inbox's password check cannot be built from `[[smtp.users]]`.
    #[error(transparent)]
    InboxGuard(#[from] crate::inbox::guard::GuardError),
    /// The inbox cannot be opened (file mode: its directory).
    #[error("cannot open the inbox{place}: {source}")]
    Inbox {
        /// " in DIR" in file mode, else empty.
        place: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The queue cannot start (the spool, or the database).
    #[error(transparent)]
    Queue(#[from] crate::queue::StartError),
    /// `[inbox] release_matching` or `release_blocked` cannot be compiled.
    #[error(transparent)]
    ReleaseRules(#[from] crate::inbox::rules::RuleError),
    /// The webhooks cannot be set up (a secret that changed since the configuration was read).
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifierError),
    /// The SMTP listeners cannot start (an address, the TLS identity, the users).
    #[error(transparent)]
    Smtp(#[from] smtp::StartError),
    /// The HTTP endpoints' address cannot be bound.
    #[error("cannot serve the HTTP endpoints on {addr}: {source}")]
    Http {
        /// `[http] listen`.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
}

impl StartError {
    /// True when the operator's configuration is at fault; false when the environment is (an
    /// address taken, the queue's database down), which may pass by itself.
    pub fn is_config(&self) -> bool {
        match self {
            StartError::Queue(err) => !err.is_outage(),
            StartError::Smtp(err) => err.is_config(),
            StartError::Http { .. } => false,
            StartError::Relay(_)
            | StartError::InboxGuard(_)
            | StartError::Inbox { .. }
            | StartError::ReleaseRules(_)
            | StartError::Notify(_) => true,
        }
    }
}
