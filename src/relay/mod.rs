//! Where accepted mail goes: one [`Deliver`] trait and its targets.
//!
//! Every target answers with a [`Receipt`] or a [`DeliveryError`] that says whether the failure is
//! temporary or permanent. That one classification decides the SMTP reply after DATA (451 or 554/550)
//! and, with the durable queue, whether to retry later or give up.

pub mod backlog;
mod console;
mod discard;
mod file;
pub mod gmail;
pub mod microsoft;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

pub use console::Console;
pub use discard::Discard;
pub use file::FileDrop;
pub use gmail::Gmail;

use crate::config::{Config, RelayMode};
use crate::message::recipient_rules::PolicyViolation;
use crate::message::{Envelope, Message};
use crate::status::Status;

/// A delivery target. Implementations must be safe to call from many sessions at once.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync {
    /// The largest message this target can take when messages have at most `max_recipients`
    /// recipients, if it has a limit of its own: for Gmail, its upload limit less room for the
    /// header the relay adds. The server advertises and enforces the smaller of this and
    /// `max_message_size`, so a message is refused while the client sends it, not after 250.
    fn size_limit(&self, _max_recipients: usize) -> Option<u64> {
        None
    }

    /// Delivers one message. Returning `Ok` means the target has taken responsibility for it.
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError>;
}

/// Proof of delivery: the id the client is told in `250 2.0.0 OK <id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The target's id for the message (our own id for local targets, Gmail's id for Gmail).
    pub id: String,
    /// True when the message was durably queued rather than delivered (`250 … queued as <id>`).
    pub queued: bool,
}

impl Receipt {
    /// The target has the message: delivered, printed or stored.
    pub fn new(id: impl Into<String>) -> Self {
        Receipt {
            id: id.into(),
            queued: false,
        }
    }
}

/// Why a delivery failed, classified by what the sender should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later: the target is unavailable, overloaded or misconfigured in a way a person can fix.
    #[error("{reason}")]
    Temporary {
        /// The enhanced status code to report (class 4).
        status: Status,
        /// A short, secret-free explanation for the client and the log.
        reason: String,
        /// When the target said it would be worth trying again, if it did.
        retry_after: Option<Duration>,
        /// What kind of trouble, for the queue's pacing and holds.
        cause: Cause,
    },
    /// Never retry: the message itself or the policy rules it out.
    #[error("{reason}")]
    Permanent {
        /// The enhanced status code to report (class 5).
        status: Status,
        /// A short, secret-free explanation for the client and the log.
        reason: String,
    },
    /// An account's Google credentials or project setup need a person: temporary for the client
    /// (the mail is kept and retried), loud for the operator, and a reason for the queue to pause
    /// the account instead of retrying hot.
    #[error("account {account}: {reason}; {fix}")]
    Credentials {
        /// The account whose credentials failed.
        account: String,
        /// What Google said, without secrets.
        reason: String,
        /// What to do about it, e.g. the `smtp2gmail authorize` command line.
        fix: String,
        /// Whether the whole account is affected or only the one mailbox the message was for.
        scope: Scope,
    },
}

/// Why a temporary failure happened: the queue paces, backs off or holds differently for each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cause {
    /// Our disk, the network, or Google being down: back off and try again.
    #[default]
    Outage,
    /// Google's per-user rate or quota limits: back off and send slower.
    RateLimit,
    /// Gmail's "Precondition check failed.": usually transient, but when it keeps coming back it
    /// is a setup problem (a service account without delegation, a mailbox being provisioned).
    Precondition,
}

/// How much of an account a credentials or setup problem affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The key, the refresh token or the Cloud project: nothing of the account can be sent.
    Account,
    /// One impersonated user's mailbox (no Gmail for that user): the account's other senders
    /// are not affected.
    Mailbox,
}

impl DeliveryError {
    /// What went wrong without the fix: for log lines about one message, which would otherwise
    /// repeat a paragraph the account's own "needs attention" line (and `/readyz`) already give.
    pub fn summary(&self) -> String {
        match self {
            DeliveryError::Credentials {
                account, reason, ..
            } => format!("account {account}: {reason}"),
            other => other.to_string(),
        }
    }

    /// A temporary failure of our own system (disk, I/O) with the default status 4.3.0.
    pub fn local(reason: impl Into<String>) -> Self {
        DeliveryError::Temporary {
            status: Status::SYSTEM_TEMPORARY,
            reason: reason.into(),
            retry_after: None,
            cause: Cause::Outage,
        }
    }

    /// True when retrying can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent { .. })
    }

    /// The enhanced status code of this failure.
    pub fn status(&self) -> Status {
        match self {
            DeliveryError::Temporary { status, .. } | DeliveryError::Permanent { status, .. } => {
                *status
            }
            DeliveryError::Credentials { .. } => Status::CREDENTIALS,
        }
    }
}

/// A Gmail rule the message breaks (header-only recipients, From policy, upload size). The rules
/// live in `message`, which knows nothing of delivery; their classification lives here.
impl From<PolicyViolation> for DeliveryError {
    /// A refusal is permanent: sending the same message again gets the same answer.
    fn from(violation: PolicyViolation) -> Self {
        let status = match violation {
            PolicyViolation::TooLarge { .. } => Status::TOO_BIG,
            _ => Status::POLICY,
        };
        DeliveryError::Permanent {
            status,
            reason: violation.to_string(),
        }
    }
}

/// Why the delivery target cannot be built. The message is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client for Google (TLS roots, resolver) cannot be set up.
    #[error("cannot create the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// An account's configuration or credentials are unusable.
    #[error(transparent)]
    Account(#[from] gmail::AccountError),
}

/// Builds the delivery target the configuration asks for. The error is for the operator: a
/// credentials file that cannot be read or understood, an impossible account setup.
pub fn from_config(config: &Config) -> Result<Arc<dyn Deliver>, BuildError> {
    Ok(match config.relay.mode {
        RelayMode::Console => Arc::new(Console::new(config.console.format)),
        RelayMode::File => Arc::new(FileDrop::new(config.file.dir.clone())),
        RelayMode::Discard => Arc::new(Discard),
        RelayMode::Gmail | RelayMode::Microsoft => Arc::new(provider(config, http_client()?)?),
    })
}

/// The relay of a provider mode (gmail, microsoft), with its accounts.
pub fn provider(config: &Config, http: reqwest::Client) -> Result<Gmail, BuildError> {
    Ok(match config.relay.mode {
        RelayMode::Microsoft => Gmail::from_microsoft(&config.microsoft, http)?,
        _ => Gmail::from_config(&config.gmail, http)?,
    })
}

/// The one HTTP client of the process: pooled connections to Google, rustls, bounded connects.
pub fn http_client() -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .user_agent(concat!("smtp2gmail/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build()
        .map_err(BuildError::HttpClient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::recipient_rules::Provider;

    #[test]
    fn policy_violations_are_permanent_and_too_large_is_5_3_4() {
        let header_only = DeliveryError::from(PolicyViolation::HeaderOnlyRecipients {
            provider: Provider::Gmail,
            addresses: vec!["eve@x.org".into()],
        });
        assert!(header_only.is_permanent());
        assert_eq!(header_only.status(), Status::POLICY);
        let too_large = DeliveryError::from(PolicyViolation::TooLarge {
            provider: Provider::Gmail,
            limit: 36_700_160,
            upload: 36_700_161,
            received: 36_000_000,
        });
        assert!(too_large.is_permanent());
        assert_eq!(too_large.status(), Status::TOO_BIG);
        assert!(too_large.to_string().contains("36700160"), "{too_large}");
    }
}
