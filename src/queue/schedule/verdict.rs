//! What an attempt's outcome means for the message, its mailbox and its account: the one policy,
//! kept apart from where the state lives, so that the scheduler over a spool (state in memory)
//! and the scheduler of replicas sharing a database (state in the database) cannot drift apart.

use std::time::{Duration, SystemTime};

use crate::config::QueueConfig;
use crate::queue::record::Entry;
use crate::relay::{Cause, DeliveryError, Scope};

/// A rate limit further away than this is the daily sending limit: defer the whole mailbox.
pub const MAILBOX_DEFERRAL: Duration = Duration::from_secs(10 * 60);

/// "Precondition check failed." this many times in a row holds the mailbox as a setup problem.
pub const PRECONDITION_HOLD: u32 = 5;

/// The wait before attempt `n + 1` after `n` failed attempts.
pub fn backoff(config: &QueueConfig, failed_attempts: u32) -> Duration {
    crate::backoff::with_jitter(config.retry_min, config.retry_max, failed_attempts)
}

/// Why a message waits in an account paused for its credentials ([`Entry::held`]).
pub const HELD_FOR_ACCOUNT: &str =
    "its account's credentials need attention (`smtp2gmail check` and /readyz say what to do)";
/// Why a message waits in a mailbox held until someone fixes it ([`Entry::held`]).
pub const HELD_FOR_MAILBOX: &str = "its mailbox needs attention (/readyz says what to do)";
/// Why a message waits in a mailbox Gmail keeps answering "Precondition check failed." for.
pub const HELD_FOR_PRECONDITION: &str = "Gmail keeps answering \"Precondition check failed.\" for its \
     mailbox (a service account's delegation, or a mailbox not yet provisioned)";

/// What to do about a mailbox held for failed preconditions (the log line's and `/readyz`'s fix).
pub const PRECONDITION_FIX: &str = "for a service account check its domain-wide delegation; for \
     a new user wait until the mailbox exists; `smtp2gmail queue retry` or SIGHUP to try again now";

/// What a failure means beyond the message itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: the message's own backoff.
    None,
    /// The account's credentials or setup are refused: the account pauses until they change,
    /// and the message waits for that without its backoff growing.
    PauseAccount,
    /// The mailbox cannot send (no Gmail for that user): held until fixed, as above.
    HoldMailbox,
    /// "Precondition check failed.": counted; [`PRECONDITION_HOLD`] in a row hold the mailbox.
    Precondition,
    /// Rate limited: the mailbox sends slower.
    RateLimited,
}

/// The effect of `error` on an account that is still configured (`configured`; an account that
/// is gone has nothing left to pause or hold).
pub fn effect(error: &DeliveryError, configured: bool) -> Effect {
    match error {
        DeliveryError::Credentials {
            scope: Scope::Account,
            ..
        } if configured => Effect::PauseAccount,
        DeliveryError::Credentials { .. } if configured => Effect::HoldMailbox,
        DeliveryError::Temporary {
            cause: Cause::Precondition,
            ..
        } => Effect::Precondition,
        DeliveryError::Temporary {
            cause: Cause::RateLimit,
            ..
        } => Effect::RateLimited,
        _ => Effect::None,
    }
}

/// How long the whole mailbox waits: Google named a time as far away as the daily limit.
pub fn mailbox_deferral(error: &DeliveryError) -> Option<Duration> {
    match error {
        DeliveryError::Temporary {
            retry_after: Some(after),
            ..
        } if *after >= MAILBOX_DEFERRAL => Some(*after),
        _ => None,
    }
}

/// How long a message waits after a failure that counts ([`Entry::failures`] already includes
/// it): Google's `Retry after`, else the backoff.
pub fn retry_wait(config: &QueueConfig, error: &DeliveryError, failures: u32) -> Duration {
    match error {
        DeliveryError::Temporary {
            retry_after: Some(after),
            ..
        } => *after,
        _ => backoff(config, failures),
    }
}

/// Why the message becomes a dead letter after this failure (`entry` has it recorded), if it
/// does: a permanent failure, or older than `queue.max_age`.
pub fn dead_reason(
    config: &QueueConfig,
    entry: &Entry,
    error: &DeliveryError,
    now: SystemTime,
) -> Option<String> {
    if too_old(config, entry, now) {
        Some(format!(
            "too old after {} attempts: {error}",
            entry.attempts
        ))
    } else if error.is_permanent() {
        Some(error.to_string())
    } else {
        None
    }
}

/// Older than `queue.max_age`.
pub fn too_old(config: &QueueConfig, entry: &Entry, now: SystemTime) -> bool {
    now.duration_since(entry.received_at).unwrap_or_default() > config.max_age
}
