//! Credentials reloaded while the server runs: when `smtp2gmail authorize` (or a secret manager,
//! or an operator) rewrites an account's credentials file, the next token request uses the new
//! file, without a restart and without losing mail; SIGHUP reloads every account on demand.
//!
//! Files are polled (metadata every [`POLL_INTERVAL`], see [`crate::fingerprint`] for why). A
//! file that is caught half-written fails to parse, is reported once, and is read again when it
//! changes next, while the account keeps the credentials it had.

use crate::fingerprint::{FileFingerprint, Polls};
use crate::locks::lock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::accounts::Account;

/// How often credential files are checked for changes. Short enough that a token written by
/// `authorize` is used for the next message, long enough to cost nothing.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads accounts' credentials when their files change, and on request (SIGHUP).
pub struct CredentialWatcher {
    accounts: Vec<Watched>,
    interval: Duration,
}

/// One account and the last fingerprints of its files. Per account, not per path: two accounts
/// sharing a file must both see it change.
struct Watched {
    account: Arc<Account>,
    seen: Mutex<HashMap<PathBuf, Option<FileFingerprint>>>,
}

impl CredentialWatcher {
    /// Watches the credential files of `accounts`, checking every `interval` ([`POLL_INTERVAL`]
    /// in the server; tests use milliseconds). The files are fingerprinted now, so only changes
    /// made from here on cause a reload.
    pub fn new(accounts: impl IntoIterator<Item = Arc<Account>>, interval: Duration) -> Self {
        let accounts = accounts
            .into_iter()
            .map(|account| {
                let seen = account
                    .credential_files()
                    .into_iter()
                    .map(|path| {
                        let fingerprint = FileFingerprint::of(&path);
                        (path, fingerprint)
                    })
                    .collect();
                Watched {
                    account,
                    seen: Mutex::new(seen),
                }
            })
            .collect();
        CredentialWatcher { accounts, interval }
    }

    /// Polls until `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut polls = Polls::new(self.interval, shutdown);
        while polls.next().await {
            let watcher = self.clone();
            // stat and a small JSON read: blocking calls, kept off the SMTP sessions' threads.
            if let Err(err) = tokio::task::spawn_blocking(move || watcher.poll()).await {
                tracing::warn!(%err, "credential file check failed");
            }
        }
    }

    /// Reloads every account whose files changed since the last look; returns how many it
    /// reloaded.
    pub fn poll(&self) -> usize {
        let mut reloaded = 0;
        for watched in &self.accounts {
            if watched.files_changed() && reload(&watched.account, Trigger::FileChanged) {
                reloaded += 1;
            }
        }
        reloaded
    }

    /// Reloads every account now, changed or not: what SIGHUP does. Returns how many accounts
    /// switched to different credentials.
    pub async fn reload_all(self: &Arc<Self>) -> usize {
        let watcher = self.clone();
        let reload_all = move || {
            let mut reloaded = 0;
            for watched in &watcher.accounts {
                // Take the fingerprints too, so the next poll does not reload the same files.
                watched.files_changed();
                if reload(&watched.account, Trigger::Signal) {
                    reloaded += 1;
                }
            }
            reloaded
        };
        // Reading files: a blocking call, kept off the SMTP sessions' threads.
        tokio::task::spawn_blocking(reload_all)
            .await
            .unwrap_or_default()
    }
}

impl Watched {
    /// Updates the fingerprints of the account's files; true when any of them changed.
    fn files_changed(&self) -> bool {
        let account = &self.account;
        let mut seen = lock(&self.seen);
        let mut changed = false;
        for (path, before) in seen.iter_mut() {
            let now = FileFingerprint::of(path);
            if now.is_none() && before.is_some() {
                tracing::warn!(
                    account = %account.name,
                    file = %path.display(),
                    "credentials file disappeared; keeping the credentials loaded earlier"
                );
            }
            changed |= now.is_some() && now != *before;
            *before = now;
        }
        changed
    }
}

/// Why a reload happens, for the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    FileChanged,
    Signal,
}

/// Loads `account`'s credentials again and switches to them if they differ and fit; true when
/// it switched. A file that cannot be used leaves the account on its current credentials.
fn reload(account: &Account, trigger: Trigger) -> bool {
    let name = &account.name;
    let from = account
        .credential_files()
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let from = if from.is_empty() {
        "the configuration and environment".to_string()
    } else {
        from
    };
    let fresh = match account.load_credentials() {
        Ok(fresh) => fresh,
        Err(err) => {
            tracing::warn!(
                "credentials for account {name} not reloaded, keeping the previous ones: {err}"
            );
            return false;
        }
    };
    let current = account.tokens.credentials();
    if fresh.is_service_account() != current.is_service_account() {
        // Who the token is minted for (`impersonate`) was decided at start for the old kind.
        tracing::warn!(
            "credentials for account {name} not reloaded: {from} switched between a refresh token \
             and a service-account key; restart smtp2gmail to use it"
        );
        return false;
    }
    if current.is_same_grant(&fresh) {
        match trigger {
            // Our own write-back of a rotated refresh token lands here: nothing to do.
            Trigger::FileChanged => {
                tracing::debug!(account = %name, "credentials file rewritten with the same credentials")
            }
            Trigger::Signal => {
                // The operator may have fixed something at Google's end: held mail tries again.
                account.tokens.recheck();
                tracing::info!(
                    "credentials for account {name} unchanged ({from}); held mail is retried now"
                )
            }
        }
        return false;
    }
    account.tokens.replace(fresh);
    tracing::info!("credentials for account {name} reloaded from {from}");
    true
}
