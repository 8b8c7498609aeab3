//! What happens to a running server over its life: the first token requests at start, reloads
//! while it runs, and the shutdown in its one order (see the module above).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::relay::gmail::accounts::Account;
use crate::relay::gmail::reload::CredentialWatcher;
use crate::smtp;
use crate::smtp::tls::Tls;
use crate::tasks::Tasks;

/// How long the tasks may take beyond the shutdown grace (an HTTP request finishing); the
/// queue's storage gets as long again to close.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Stopped {
    /// Tasks still running when the bound ran out: 0 when every task the server started ended.
    pub unfinished: usize,
}

impl Stopped {
    /// True when every task the server started has ended.
    pub fn is_clean(&self) -> bool {
        self.unfinished == 0
    }
}

/// Everything the shutdown stops after the SMTP listeners, and what it then releases.
pub(super) struct Stopping {
    /// The server's background tasks; their closing signal is the shutdown itself.
    pub tasks: Tasks,
    /// The webhook senders: closed after the scheduler, which emits the events.
    pub notify: Tasks,
    /// The queue's storage: closed after every task that stores through it.
    pub storage: Tasks,
    /// The spool's lock, released last.
    pub spool_lock: Option<std::fs::File>,
    /// `shutdown_grace`.
    pub grace: Duration,
}

impl Stopping {
    /// Serves SMTP until the shutdown begins, then stops everything in order (the module
    /// documentation of `server` lists it).
    pub async fn after(self, smtp: smtp::Server) -> Stopped {
        smtp.run(self.tasks.closing().clone()).await;
        let mut unfinished = 0;
        self.tasks.close();
        let deadline = Instant::now() + self.grace + SHUTDOWN_MARGIN;
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "background tasks still running after the grace period; stopping anyway"
            );
            unfinished += self.tasks.len();
        }
        unfinished += close(&self.notify, "the webhook senders").await;
        unfinished += close(&self.storage, "the queue's database sessions").await;
        drop(self.spool_lock);
        tracing::info!("stopped");
        Stopped { unfinished }
    }
}

/// Closes `set` and waits for it within [`SHUTDOWN_MARGIN`]; returns how many of its tasks were
/// still running then (`what` names them in the warning).
async fn close(set: &Tasks, what: &str) -> usize {
    set.close();
    if tokio::time::timeout(SHUTDOWN_MARGIN, set.wait())
        .await
        .is_ok()
    {
        return 0;
    }
    tracing::warn!(
        tasks = set.len(),
        "{what} did not stop in time; stopping anyway"
    );
    set.len()
}

/// What a reload reloads.
pub(super) struct Reload {
    /// Gmail mode: every account's Google credentials.
    pub credentials: Option<Arc<CredentialWatcher>>,
    /// The TLS certificate and key (after a renewal).
    pub tls: Option<Arc<Tls>>,
}

impl Reload {
    /// Reloads the credentials and the TLS certificate; with nothing to reload it says so. Each
    /// log line starts with `cause`. Returns how many accounts switched to new credentials.
    pub async fn run(&self, cause: &str) -> usize {
        let switched = match &self.credentials {
            Some(watcher) => {
                tracing::info!("{cause}: reloading credentials");
                watcher.reload_all().await
            }
            None => {
                tracing::info!("{cause}: no Google credentials to reload in this mode");
                0
            }
        };
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("{cause}: TLS certificate reloaded"),
                Err(err) => tracing::error!("{cause}: keeping the previous TLS certificate: {err}"),
            }
        }
        switched
    }
}

/// Asks Google for each account's first access token in the background, so that credentials that
/// died while the server was down show in the log and in `/readyz` at start, not with the first
/// message. The server does not wait: the queue accepts mail while Google is unreachable. A
/// service account that impersonates each sender has no user to ask for until a message names one.
pub(super) fn verify_credentials(accounts: &[Arc<Account>], tasks: &Tasks) {
    for account in accounts {
        let Some(subject) = account.probe_subject().map(|s| s.map(str::to_string)) else {
            continue;
        };
        let account = account.clone();
        tasks.spawn(async move {
            match account.tokens.access_token(subject.as_deref()).await {
                Ok(_) => {
                    tracing::info!(account = %account.name, "credentials verified: Google issued an access token")
                }
                // A refusal is logged by the token source, with its fix, and shown in /readyz.
                Err(err) if !err.is_temporary() => {}
                Err(err) => {
                    tracing::warn!(account = %account.name, %err, "cannot verify the credentials now; will try again with the first message")
                }
            }
        });
    }
}
