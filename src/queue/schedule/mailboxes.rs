//! The scheduler's index: waiting messages by Gmail mailbox, and the mailboxes in the order they
//! may send next.
//!
//! Gmail's limits — the per-user quota, the concurrency limit, the daily sending limit — belong
//! to a mailbox, not to the credentials: a service account impersonating its senders reaches as
//! many mailboxes as it has senders. So the unit of scheduling is the mailbox, and choosing what
//! to send next must not cost the number of mailboxes: the mailboxes that have something due are
//! kept in one ordered set by the time they may send next, and a wake-up only looks at those
//! whose time has come. A mailbox with nothing waiting and nothing to remember is dropped, so
//! 10,000 senders that each sent once leave nothing behind.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use super::WAKE_FLOOR;
use crate::queue::record::Entry;

/// One Gmail mailbox: an account, and the user it sends as when that varies per message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxKey {
    /// The configured account.
    pub account: String,
    /// The impersonated user; `None` when the account is one mailbox.
    pub user: Option<String>,
}

impl MailboxKey {
    /// The mailbox `entry` is sent from.
    pub fn of(entry: &Entry) -> MailboxKey {
        MailboxKey {
            account: entry.account.clone(),
            user: entry.mailbox.clone(),
        }
    }
}

impl fmt::Display for MailboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{} ({user})", self.account),
            None => f.write_str(&self.account),
        }
    }
}

/// A mailbox's send rate: at most the configured rate, halved when Google says "too fast",
/// and regained step by step with each send that goes through (additive increase,
/// multiplicative decrease, as TCP does): a rate set above the project's quota settles just
/// under it instead of meeting a 429 at every other send.
#[derive(Debug, Clone)]
pub struct Pace {
    /// The configured rate, sends per second.
    max: f64,
    /// The rate now.
    rate: f64,
    /// The earliest time of the next send.
    next_slot: Option<SystemTime>,
}

/// The rate after a rate-limit answer, as a share of the rate before.
pub const SLOWDOWN: f64 = 0.5;
/// Sends that go through before a halved rate is whole again: each adds this share of the
/// configured rate.
pub const RECOVERY: f64 = 1.0 / 50.0;
/// Never slower than this (sends per second): a rate limit is about pace, not a stop.
pub const MIN_RATE: f64 = 1.0 / 60.0;

impl Pace {
    /// A pace at the configured rate.
    pub fn new(max: f64) -> Pace {
        Pace {
            max,
            rate: max,
            next_slot: None,
        }
    }

    /// The rate now, sends per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes the next send slot if it has come. Spacing counts from the previous slot, not
    /// from this wake-up, so rates above one per `WAKE_FLOOR` are kept; slots older than
    /// that lapse unused.
    pub fn take(&mut self, now: SystemTime) -> bool {
        let recent = now.checked_sub(WAKE_FLOOR).unwrap_or(now);
        let slot = self.next_slot.map_or(now, |t| t.max(recent));
        if slot > now {
            return false;
        }
        self.next_slot = Some(slot + self.interval());
        true
    }

    /// A send went through: a step back towards the configured rate.
    pub fn sent(&mut self) {
        self.rate = (self.rate + self.max * RECOVERY).min(self.max);
    }

    /// Google said the mailbox sends too fast: halve the rate, and wait one new interval.
    pub fn throttled(&mut self, now: SystemTime) {
        self.rate = (self.rate * SLOWDOWN).max(MIN_RATE.min(self.max));
        let next = now + self.interval();
        self.next_slot = Some(self.next_slot.map_or(next, |t| t.max(next)));
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// Nothing to remember: full rate, and no spacing still to keep.
    fn settled(&self, now: SystemTime) -> bool {
        self.rate >= self.max && self.next_slot.is_none_or(|t| t <= now)
    }
}

/// One mailbox's share of the queue.
#[derive(Debug)]
pub struct Mailbox {
    /// (next attempt, id) of its waiting messages, not in flight.
    pub due: BTreeSet<(SystemTime, String)>,
    /// Deliveries running now.
    pub in_flight: usize,
    /// Send spacing.
    pub pace: Pace,
    /// Gmail said to come back then (the mailbox's daily sending limit).
    pub deferred_until: Option<SystemTime>,
    /// Held for a setup problem of this mailbox until then (a probe), unless the account's
    /// credentials change or an operator retries first.
    pub held_until: Option<SystemTime>,
    /// "Precondition check failed." answers in a row.
    pub preconditions: u32,
    /// Its key in [`Index::ready`], if it is there.
    ready_at: Option<SystemTime>,
}

impl Mailbox {
    fn new(max_rate: f64) -> Mailbox {
        Mailbox {
            due: BTreeSet::new(),
            in_flight: 0,
            pace: Pace::new(max_rate),
            deferred_until: None,
            held_until: None,
            preconditions: 0,
            ready_at: None,
        }
    }

    /// When it may next start a delivery: `None` with nothing due or every slot in use.
    fn wake_at(&self, max_sends: usize) -> Option<SystemTime> {
        let (first, _) = self.due.first()?;
        if self.in_flight >= max_sends {
            return None; // a finishing delivery requeues it
        }
        let later = [self.pace.next_slot, self.deferred_until, self.held_until];
        Some(later.into_iter().flatten().fold(*first, SystemTime::max))
    }

    fn idle(&self, now: SystemTime) -> bool {
        self.due.is_empty()
            && self.in_flight == 0
            && self.held_until.is_none()
            && self.preconditions == 0
            && self.deferred_until.is_none_or(|t| t <= now)
            && self.pace.settled(now)
    }
}

/// Every mailbox with something to do or remember, and those that may send, by time.
pub struct Index {
    mailboxes: HashMap<MailboxKey, Mailbox>,
    /// (when it may send, mailbox), for mailboxes with something due and a free slot.
    ready: BTreeSet<(SystemTime, MailboxKey)>,
    max_rate: f64,
}

impl Index {
    /// An empty index whose mailboxes start at `max_rate` sends per second.
    pub fn new(max_rate: f64) -> Index {
        Index {
            mailboxes: HashMap::new(),
            ready: BTreeSet::new(),
            max_rate,
        }
    }

    /// The mailbox, created if it is new.
    pub fn mailbox(&mut self, key: &MailboxKey) -> &mut Mailbox {
        let max_rate = self.max_rate;
        self.mailboxes
            .entry(key.clone())
            .or_insert_with(|| Mailbox::new(max_rate))
    }

    /// The mailbox, if it exists, for changes (call [`requeue`](Self::requeue) after).
    pub fn get_mut(&mut self, key: &MailboxKey) -> Option<&mut Mailbox> {
        self.mailboxes.get_mut(key)
    }

    /// Puts the mailbox back in the ready set where its state says it belongs (or out of it);
    /// forgets it when it is idle.
    pub fn requeue(&mut self, key: &MailboxKey, max_sends: usize, now: SystemTime) {
        let Some(mailbox) = self.mailboxes.get_mut(key) else {
            return;
        };
        let wake = mailbox.wake_at(max_sends);
        if wake != mailbox.ready_at {
            if let Some(at) = mailbox.ready_at.take() {
                self.ready.remove(&(at, key.clone()));
            }
            if let Some(at) = wake {
                mailbox.ready_at = Some(at);
                self.ready.insert((at, key.clone()));
            }
        }
        if wake.is_none() && mailbox.idle(now) {
            self.mailboxes.remove(key);
        }
    }

    /// The first mailbox whose time has come, taken out of the ready set.
    pub fn pop_ready(&mut self, now: SystemTime) -> Option<MailboxKey> {
        let (at, _) = self.ready.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.ready.pop_first()?;
        if let Some(mailbox) = self.mailboxes.get_mut(&key) {
            mailbox.ready_at = None;
        }
        Some(key)
    }

    /// When the first mailbox may send.
    pub fn next_ready(&self) -> Option<SystemTime> {
        self.ready.first().map(|(at, _)| *at)
    }

    /// Forgets every mailbox with nothing left to do or remember (once a second: a mailbox
    /// that just sent keeps its spacing until the next slot has passed).
    pub fn sweep(&mut self, now: SystemTime) {
        self.mailboxes
            .retain(|_, mailbox| mailbox.ready_at.is_some() || !mailbox.idle(now));
    }

    /// How many mailboxes are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.mailboxes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_halves_the_rate_and_sends_regain_it_step_by_step() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut pace = Pace::new(2.0);
        assert!(pace.take(now));
        pace.throttled(now);
        assert_eq!(pace.rate(), 1.0);
        // The next slot is one new interval away.
        assert!(!pace.take(now + Duration::from_millis(900)));
        pace.throttled(now);
        assert_eq!(pace.rate(), 0.5);
        for _ in 0..10 {
            pace.sent();
        }
        assert!((pace.rate() - 0.9).abs() < 1e-9, "{}", pace.rate());
        for _ in 0..100 {
            pace.sent();
        }
        assert_eq!(pace.rate(), 2.0);
        for _ in 0..100 {
            pace.throttled(now);
        }
        assert_eq!(pace.rate(), MIN_RATE);
    }

    #[test]
    fn idle_mailboxes_are_forgotten() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut index = Index::new(1.0);
        let key = MailboxKey {
            account: "default".into(),
            user: Some("a@example.com".into()),
        };
        index.mailbox(&key).due.insert((now, "id".into()));
        index.requeue(&key, 5, now);
        assert_eq!(index.pop_ready(now), Some(key.clone()));
        let mailbox = index.mailbox(&key);
        mailbox.due.clear();
        assert!(mailbox.pace.take(now));
        index.requeue(&key, 5, now);
        // Still spacing its sends.
        assert_eq!(index.len(), 1);
        index.sweep(now + Duration::from_secs(2));
        assert_eq!(index.len(), 0);
    }
}
