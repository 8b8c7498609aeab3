//! The core's state for replicas sharing a database (PostgreSQL): each message is claimed under a
//! lease before it is sent, and the limits of mailboxes and accounts live in the database, so
//! that N replicas never send N × a limit.
//!
//! [`SharedStore`] is what such a database offers (implemented by `postgres::PgStore`);
//! [`SharedState`] is the scheduler core's [`State`] on top of it, one call per operation: the
//! policy stays in the core (`schedule`), the same as over the spool. A replica that dies loses
//! its leases after `queue.lease_time`; another replica then sends those messages (at least
//! once: a message is removed only after Gmail's 200).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::control::{self, ControlError};
use super::record::{Entry, Place};
use super::schedule::{Limits, MailboxKey, Note, Settled, State};
use super::store::{Store, StoreError};
use crate::message::Message;

/// What a store shared by replicas adds to [`Store`].
#[async_trait::async_trait]
pub trait SharedStore: Store {
    /// Claims up to `limit` messages that may be sent now, each under a lease of this replica for
    /// `queue.lease_time` and taking one send slot of its mailbox.
    async fn claim(&self, limits: &Limits, limit: usize) -> Result<Vec<Entry>, StoreError>;

    /// Extends the leases this replica holds (run a few times per lease time).
    async fn renew(&self) -> Result<(), StoreError>;

    /// After a failed attempt: writes the record (due at its `next_attempt`) and ends the lease;
    /// false when this replica no longer held the lease (another one took the message over, its
    /// outcome counts).
    async fn release(&self, entry: &Entry) -> Result<bool, StoreError>;

    /// Applies an outcome's shared consequence to a mailbox (or, for `Paused` and `Resumed`,
    /// its account); true when it is news (see [`State::note`]).
    async fn note(&self, mailbox: &MailboxKey, note: Note) -> Result<bool, StoreError>;

    /// Counts one more failed precondition of the mailbox; returns the streak.
    async fn count_precondition(&self, mailbox: &MailboxKey) -> Result<u32, StoreError>;

    /// Whether a replica holds a live lease on the queued message `id`: its delivery is running.
    async fn being_delivered(&self, id: &str) -> Result<bool, StoreError>;

    /// Ends the mailbox's deferral and hold, and its account's pause; true when any was set.
    async fn lift(&self, mailbox: &MailboxKey) -> Result<bool, StoreError>;

    /// Wakes every replica: something may be claimable now.
    async fn announce(&self) -> Result<(), StoreError>;

    /// Returns when new mail may be claimable (another replica or a `queue` command said so),
    /// or after `timeout`.
    async fn wait_for_mail(&self, timeout: Duration);

    /// When the earliest queued message becomes due or its lease lapses; `None` when nothing is
    /// queued.
    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError>;

    /// How many messages wait per account, and when the oldest of them was received (accounts
    /// with nothing queued are absent), for `/metrics`.
    async fn depths(&self) -> Result<HashMap<String, (usize, SystemTime)>, StoreError>;

    /// `queue.lease_time`.
    fn lease_time(&self) -> Duration;
}

/// How often a replica reports the shared queue in its metrics (a count on the database: not
/// per tick, so idle replicas cost the database almost nothing).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One replica's view of the state in the database.
pub struct SharedState {
    store: Arc<dyn SharedStore>,
    /// When the leases were last renewed.
    renewed: Instant,
    /// When the depths were last counted.
    reported: Option<Instant>,
}

impl SharedState {
    /// The state in `store`'s database.
    pub fn new(store: Arc<dyn SharedStore>) -> SharedState {
        SharedState {
            store,
            renewed: Instant::now(),
            reported: None,
        }
    }
}

#[async_trait::async_trait]
impl State for SharedState {
    const MAX_IN_FLIGHT: usize = 64;
    /// New mail wakes a replica at once (notification); this bounds how late a replica notices a
    /// lapsed lease or a mailbox's deferral ending.
    const IDLE: Duration = Duration::from_secs(5);
    /// A mailbox at its concurrency limit: its deliveries' outcomes wake the replica that holds
    /// them, and the others look again after this.
    const BLOCKED: Duration = Duration::from_millis(200);

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// A few times per lease, so a slow upload does not lose its message to another replica.
    fn tick(&self) -> Duration {
        (self.store.lease_time() / 3).clamp(Duration::from_millis(100), control::POLL)
    }

    async fn wait_for_mail(&mut self, timeout: Duration) {
        if !timeout.is_zero() {
            self.store.wait_for_mail(timeout).await
        }
    }

    async fn claim(
        &mut self,
        limits: &Limits,
        room: usize,
        _now: SystemTime,
    ) -> Result<Vec<Entry>, StoreError> {
        self.store.claim(limits, room).await
    }

    async fn next_due(&mut self, _now: SystemTime) -> Result<Option<SystemTime>, StoreError> {
        self.store.next_due().await
    }

    async fn settle(&mut self, _limits: &Limits, settled: Settled) -> Result<bool, StoreError> {
        match settled {
            // The delivery removed the row, and its lease with it.
            Settled::Sent(_) => Ok(true),
            Settled::Retry(entry) => self.store.release(&entry).await,
            // Only while this replica holds the lease: it gives the message back due a lease's
            // time from now (so no replica claims it meanwhile), then moves it, which is not
            // conditional. A replica whose lease lapsed finds it taken over and moves nothing:
            // one replica makes it a dead letter, and only that one tells of it. A stop between
            // the two leaves a queued message that is tried again.
            Settled::Dead(entry) => {
                let parked = Entry {
                    next_attempt: SystemTime::now() + self.store.lease_time(),
                    dead_reason: None,
                    ..entry.clone()
                };
                if !self.store.release(&parked).await? {
                    return Ok(false);
                }
                self.store
                    .move_to(Place::Queue, Place::Dead, &entry)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Committed with its `NOTIFY`, which wakes every replica.
    async fn enqueue(&mut self, entry: Entry, message: &Message) -> Result<(), StoreError> {
        self.store.put(Place::Queue, &entry, message).await
    }

    async fn note(&mut self, key: &MailboxKey, note: Note) -> Result<bool, StoreError> {
        self.store.note(key, note).await
    }

    async fn precondition(&mut self, key: &MailboxKey) -> Result<u32, StoreError> {
        self.store.count_precondition(key).await
    }

    /// Directly in the tables, from any host; the replicas are woken to pick it up at once.
    async fn due_now(
        &mut self,
        id: &str,
        now: SystemTime,
    ) -> Result<(Entry, String), ControlError> {
        // A delivery running on any replica decides, as the spool's server refuses a retry of
        // its own delivery in flight: the attempt's outcome would overwrite "due now". (A claim
        // between this look and the update below is the one case it cannot catch.)
        let leased = self.store.being_delivered(id).await;
        let leased = leased.map_err(|source| ControlError::Store {
            id: id.to_string(),
            source,
        })?;
        if leased {
            return Err(ControlError::InFlight(id.to_string()));
        }
        let done = control::retry(&*self.store, id, now).await?;
        if let Err(err) = self.store.announce().await {
            // The replicas still find it within their idle sleep.
            tracing::warn!(%err, "cannot wake the replicas for the retried mail");
        }
        Ok(done)
    }

    async fn lift(&mut self, key: &MailboxKey) -> Result<bool, StoreError> {
        self.store.lift(key).await
    }

    /// A message being delivered right now keeps its lease; its delivery finds it gone.
    async fn delete(&mut self, id: &str) -> Result<String, ControlError> {
        control::delete(&*self.store, id).await
    }

    async fn depths(&mut self) -> Option<Result<HashMap<String, (usize, SystemTime)>, StoreError>> {
        if self.reported.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            return None;
        }
        self.reported = Some(Instant::now());
        Some(self.store.depths().await)
    }

    async fn upkeep(&mut self, in_flight: usize, _now: SystemTime) {
        let every = (self.store.lease_time() / 3).max(Duration::from_millis(100));
        if in_flight == 0 || self.renewed.elapsed() < every {
            return;
        }
        self.renewed = Instant::now();
        if let Err(err) = self.store.renew().await {
            tracing::warn!(%err, "cannot renew the leases of messages being sent");
        }
    }
}
