//! Exchange Online's daily recipient limit, kept on our side: every recipient of every message
//! counts against the sending mailbox for a rolling 24 hours, and past the limit Exchange accepts
//! the request (202) and then returns NDRs. Counting before each send lets the queue defer the
//! mailbox instead, until enough of the window has passed.
//!
//! The count is this process's: it starts empty at a restart and is not shared between replicas
//! (docs/microsoft-365.md says so; set the limit lower when several replicas send as one mailbox).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::locks::lock;
use crate::relay::gmail::accounts::Account;
use crate::relay::{Cause, DeliveryError};
use crate::status::Status;

/// The window Exchange counts recipients over.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Recipients per mailbox over the last [`WINDOW`].
#[derive(Debug)]
pub struct RecipientBudget {
    per_day: u64,
    sent: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl RecipientBudget {
    /// At most `per_day` recipients per mailbox in any 24 hours.
    pub fn new(per_day: u32) -> RecipientBudget {
        RecipientBudget {
            per_day: u64::from(per_day),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `recipients` for `mailbox` now, or says how long until they fit. A message with
    /// more recipients than the whole budget goes when the window is empty (it could never fit).
    pub fn take(&self, mailbox: &str, recipients: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut sent = lock(&self.sent);
        let window = sent.entry(mailbox.to_string()).or_default();
        while window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            window.pop_front();
        }
        let used: u64 = window.iter().map(|(_, n)| n).sum();
        if used == 0 || used + recipients <= self.per_day {
            window.push_back((now, recipients));
            return Ok(());
        }
        // The oldest sends leave the window first: wait until enough of them have.
        let mut freed = 0;
        for (at, n) in window.iter() {
            freed += n;
            if used - freed + recipients <= self.per_day {
                return Err(WINDOW.saturating_sub(now.duration_since(*at)));
            }
        }
        Err(WINDOW)
    }

    /// Gives back what [`take`](Self::take) counted for a send that did not happen.
    pub fn give_back(&self, mailbox: &str, recipients: u64) {
        let mut sent = lock(&self.sent);
        if let Some(window) = sent.get_mut(mailbox)
            && let Some(position) = window.iter().rposition(|(_, n)| *n == recipients)
        {
            window.remove(position);
        }
    }
}

/// Takes the message's recipients from its mailbox's daily budget (Microsoft accounts), or says
/// when the mailbox may send again: a rate limit as far away as the window, which the queue
/// treats as a daily limit and defers the whole mailbox for.
pub fn take<'a>(
    account: &'a Account,
    subject: Option<&str>,
    recipients: usize,
) -> Result<Option<(&'a RecipientBudget, String, u64)>, DeliveryError> {
    let Some(budget) = &account.budget else {
        return Ok(None);
    };
    let mailbox = crate::message::mailbox::mailbox_key(subject.unwrap_or(&account.user_id));
    let count = recipients as u64;
    match budget.take(&mailbox, count) {
        Ok(()) => Ok(Some((budget, mailbox, count))),
        Err(wait) => Err(DeliveryError::Temporary {
            status: Status::CONGESTION,
            reason: format!(
                "mailbox {mailbox} reached its daily recipient budget \
                 (max_recipients_per_day of account {}); sending resumes in {}",
                account.name,
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            ),
            retry_after: Some(wait),
            cause: Cause::RateLimit,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_defers_until_the_oldest_sends_leave_the_window() {
        let budget = RecipientBudget::new(10);
        assert_eq!(budget.take("a@x.org", 6), Ok(()));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(budget.take("a@x.org", 4), Ok(()));
        assert_eq!(budget.take("b@x.org", 10), Ok(()), "per mailbox");
        let wait = budget.take("a@x.org", 1).unwrap_err();
        assert_eq!(wait, WINDOW - Duration::from_secs(3600));
        budget.give_back("a@x.org", 4);
        assert_eq!(budget.take("a@x.org", 4), Ok(()));
        tokio::time::advance(wait).await;
        assert_eq!(budget.take("a@x.org", 6), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_larger_than_the_budget_goes_alone() {
        let budget = RecipientBudget::new(10);
        assert_eq!(budget.take("a@x.org", 20), Ok(()));
        assert!(budget.take("a@x.org", 1).is_err());
    }
}
