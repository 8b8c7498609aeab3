//! What the scheduler needs from a delivery target, and the clock it reads.
//!
//! The scheduler decides *when*; a [`Courier`] carries one message and says how it went, with a
//! [`DeliveryError`] that tells a temporary failure from a permanent one (chasquid's courier). The
//! seam keeps the retry schedule testable without Gmail: the tests drive the scheduler with a
//! scripted courier under paused tokio time ([`Clock::Tokio`]).

use std::time::SystemTime;

use crate::message::Message;
use crate::relay::{DeliveryError, Gmail, Receipt};

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use super::record::{Entry, Place};
use super::store::Store;
use crate::status::Status;

/// The per-account facts the scheduler obeys.
pub struct Limits {
    /// How many deliveries of this account may run at once.
    pub max_sends: usize,
    /// Changes when the credentials are replaced (a new token file) or an operator asks to look
    /// again (SIGHUP): an account or mailbox held for a setup problem resumes at once.
    pub generation: u64,
}

/// How a DSN about a message goes out through the message's own account (the stored decision:
/// a DSN is never routed by its sender, which is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnSender {
    /// The account's address, for the DSN's From (Gmail keeps only the account's own addresses);
    /// `None` when it is not known.
    pub address: Option<String>,
    /// The user a service-account token is minted for: the original's.
    pub subject: Option<String>,
}

/// Delivers one queued message.
#[async_trait::async_trait]
pub trait Courier: Send + Sync + 'static {
    /// One attempt for `entry`, whose exact received bytes are `message`.
    async fn deliver(&self, entry: &Entry, message: &Message) -> Result<Receipt, DeliveryError>;

    /// The limits of the account called `name`; `None` once it is no longer configured (its
    /// messages then wait for it, see [`Gmail::outgoing`]).
    fn limits(&self, name: &str) -> Option<Limits>;

    /// Every configured account's name, for the queue metrics.
    fn accounts(&self) -> Vec<String>;

    /// The scheduler holds the mailbox of `user` under `account` for a setup problem that no one
    /// answer reported as one (a streak of failed preconditions): noted where readiness reads the
    /// account's problems, so that `/readyz` says what the scheduler holds. A courier without
    /// readiness (the tests' scripted ones) has nothing to note.
    fn note_hold(&self, account: &str, user: Option<&str>, reason: &str, fix: &str) {
        let _ = (account, user, reason, fix);
    }

    /// How a DSN about `original` goes out: through its account as the same user, from the
    /// account's address. A courier that knows no addresses (the tests' scripted ones) keeps the
    /// stored user and names no address.
    fn dsn_sender(&self, original: &Entry) -> DsnSender {
        DsnSender {
            address: None,
            subject: original.route.as_ref().and_then(|r| r.subject.clone()),
        }
    }
}

/// Gmail delivers queued messages with the same code as synchronous delivery, following the
/// decision stored at accept; the upload streams a stored file instead of reading it into memory.
#[async_trait::async_trait]
impl Courier for Gmail {
    async fn deliver(&self, entry: &Entry, message: &Message) -> Result<Receipt, DeliveryError> {
        let mut outgoing = match &entry.route {
            Some(route) => {
                let (subject, upload) = (route.subject.as_deref(), route.upload.clone());
                self.outgoing(&entry.account, subject, upload, message)
                    .await?
            }
            // A record written before decisions were stored: decided now, once per attempt.
            None => self.prepare(&entry.envelope(), message).await?,
        };
        outgoing.rcpt_to = entry.rcpt_to.clone();
        self.attempt(&outgoing).await
    }

    fn limits(&self, name: &str) -> Option<Limits> {
        self.router().account(name).map(|account| Limits {
            max_sends: account.max_sends,
            generation: account.tokens.generation(),
        })
    }

    fn accounts(&self) -> Vec<String> {
        self.router().accounts().map(|a| a.name.clone()).collect()
    }

    /// As a send's own setup problem would be noted (`Account::note_outcome`): cleared by the
    /// next send to that mailbox that goes through.
    fn note_hold(&self, account: &str, user: Option<&str>, reason: &str, fix: &str) {
        let Some(configured) = self.router().account(account) else {
            return;
        };
        let held = DeliveryError::Credentials {
            account: account.to_string(),
            reason: reason.to_string(),
            fix: fix.to_string(),
            scope: crate::relay::Scope::Mailbox,
        };
        configured.note_outcome(user, &Err(held));
    }

    /// The stored user (for a record older than stored decisions, the one the account would
    /// choose for its sender), and the account's address as that user.
    fn dsn_sender(&self, original: &Entry) -> DsnSender {
        let account = self.router().account(&original.account);
        let subject = match (&original.route, account) {
            (Some(route), _) => route.subject.clone(),
            (None, Some(account)) => account
                .subject(original.mail_from.as_deref())
                .map(str::to_string),
            (None, None) => None,
        };
        // An account no longer configured: the DSN waits for it like the message did.
        let Some(account) = account else {
            return DsnSender {
                address: None,
                subject,
            };
        };
        DsnSender {
            address: account.address(subject.as_deref()),
            subject,
        }
    }
}

/// A delivery's report: the entry and how its attempt went.
pub type Finished = (Entry, Result<Receipt, DeliveryError>);

/// Starts one attempt of `entry` on `tasks` (the scheduler's deliveries); the outcome goes to
/// `results`, always, even after a panic. A sent message is removed by this task, not by the
/// scheduler's loop: the removals of concurrent sends then proceed together (on PostgreSQL they
/// share WAL flushes) instead of one after the other between claims, which capped the rate.
pub fn spawn_attempt(
    tasks: &tokio_util::task::TaskTracker,
    store: std::sync::Arc<dyn Store>,
    courier: std::sync::Arc<dyn Courier>,
    entry: Entry,
    results: tokio::sync::mpsc::UnboundedSender<Finished>,
) {
    tasks.spawn(async move {
        let outcome = attempt(&*store, &*courier, &entry).await;
        if let Ok(receipt) = &outcome {
            match store.remove_delivered(&entry.id).await {
                Ok(()) => {
                    tracing::info!(id = %entry.id, gmail_id = %receipt.id, attempts = entry.attempts + 1, "delivered")
                }
                Err(err) => {
                    tracing::error!(id = %entry.id, %err, "delivered, but the record could not be removed: it may be sent again")
                }
            }
        }
        let _ = results.send((entry, outcome));
    });
}

/// One delivery attempt of a queued `entry`: its bytes from the store, then the courier. A
/// panic is a permanent failure of this message (a bug), never a lost report: the scheduler
/// waits for every attempt's outcome to free its mailbox's slot.
pub async fn attempt(
    store: &dyn Store,
    courier: &dyn Courier,
    entry: &Entry,
) -> Result<Receipt, DeliveryError> {
    let attempt = async {
        match store.message(Place::Queue, entry).await {
            Ok(Some(message)) => courier.deliver(entry, &message).await,
            // Deleted meanwhile: the scheduler finds it gone and forgets it.
            Ok(None) => Err(DeliveryError::local("the message was deleted")),
            Err(err) => Err(DeliveryError::local(format!(
                "cannot read the message from the queue: {err}"
            ))),
        }
    };
    AssertUnwindSafe(attempt)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(id = %entry.id, "the delivery attempt panicked (a bug in smtp2gmail)");
            Err(DeliveryError::Permanent {
                status: Status::SYSTEM_PERMANENT,
                reason: "internal error while delivering (a bug in smtp2gmail); \
                         retry it after an upgrade"
                    .into(),
            })
        })
}

/// The scheduler's idea of the time.
///
/// Records store wall-clock times so that a schedule survives restarts; the server reads the
/// system clock. Tests read tokio's clock instead, mapped onto wall-clock time, so that hours of
/// backoff pass in milliseconds under `tokio::time::pause`.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// `SystemTime::now()`.
    System,
    /// Wall-clock time as of `origin`, advanced by tokio's (pausable) clock since then.
    Tokio {
        /// The tokio instant the clock started at.
        origin: tokio::time::Instant,
        /// The wall-clock time it stood for.
        wall: SystemTime,
    },
}

impl Clock {
    /// A clock that follows tokio's time from now on.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            origin: tokio::time::Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Tokio { origin, wall } => *wall + origin.elapsed(),
        }
    }
}
