//! Delivery from a queue that several replicas share (PostgreSQL): each message is claimed under
//! a lease before it is sent, and the limits of mailboxes and accounts live in the store, so that
//! N replicas never send N × a limit.
//!
//! The spool's scheduler ([`super::schedule::Scheduler`]) owns its whole queue and keeps the
//! limits in memory; here the store is the meeting point. A replica claims what may start now —
//! due, not leased by a live replica, its mailbox neither deferred nor held and with a send slot
//! and a concurrency slot free, its account not paused — delivers it with the same courier, and
//! writes the outcome under the same policy ([`super::schedule::verdict`]). A replica that dies
//! loses its leases after `queue.lease_time`; another replica then sends those messages (at least
//! once: a message is removed only after Gmail's 200).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::courier::{Courier, Finished, attempt};
use super::entry::{Entry, Place};
use super::schedule::verdict::{self, Effect, PRECONDITION_HOLD};
use super::schedule::{MailboxKey, report_depths, report_store};
use super::store::{Store, StoreError};
use crate::config::QueueConfig;
use crate::relay::{DeliveryError, Receipt};

/// The longest sleep when nothing is claimable: new mail wakes a replica at once (notification),
/// this bounds how late a replica notices a lapsed lease or a mailbox's deferral ending.
const IDLE: Duration = Duration::from_secs(5);
/// The shortest sleep after a claim found nothing although something was due (a mailbox at its
/// concurrency limit): its deliveries' outcomes wake the replica that holds them.
const BLOCKED: Duration = Duration::from_millis(200);
/// How often a replica reports the shared queue in its metrics (a count on the database: not
/// per wake-up, so idle replicas cost the database almost nothing).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The most messages one replica sends at once, over all mailboxes.
const MAX_IN_FLIGHT: usize = 64;

/// The limits every replica applies the same way, from the configuration.
#[derive(Debug, Clone)]
pub struct SharedLimits {
    /// `queue.max_send_rate`: the most sends per second per mailbox (the adaptive rate starts
    /// here and never goes above).
    pub max_send_rate: f64,
    /// The most deliveries at once per mailbox, by account (`max_concurrent_sends`).
    pub max_sends: HashMap<String, usize>,
}

/// The shared consequence of an attempt for a mailbox or its account.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// Gmail took a message: the mailbox's rate recovers a step.
    Sent,
    /// Rate limited: the mailbox's rate halves.
    Throttled,
    /// The daily sending limit: the mailbox sends nothing before this time.
    Deferred(SystemTime),
    /// The mailbox cannot send until it is fixed; probed again at this time.
    Held(SystemTime),
    /// The account's credentials are refused; probed again at this time.
    Paused(SystemTime),
    /// The account's credentials changed (or an operator asked): its pause and its mailboxes'
    /// holds end now.
    Resumed,
}

/// What a store shared by replicas adds to [`Store`].
#[async_trait::async_trait]
pub trait SharedStore: Store {
    /// Claims up to `limit` messages that may be sent now (see the module docs), each under a
    /// lease of this replica for `queue.lease_time` and taking one send slot of its mailbox.
    async fn claim(&self, limits: &SharedLimits, limit: usize) -> Result<Vec<Entry>, StoreError>;

    /// Extends the leases this replica holds (run a few times per lease time).
    async fn renew(&self) -> Result<(), StoreError>;

    /// After Gmail's 200: removes the message, whoever holds its lease now (it was delivered;
    /// keeping it would only send it again).
    async fn complete(&self, id: &str) -> Result<(), StoreError>;

    /// After a failed attempt: writes the record (due at its `next_attempt`) and ends the lease;
    /// false when this replica no longer held the lease (another one took the message over, its
    /// outcome counts).
    async fn release(&self, entry: &Entry) -> Result<bool, StoreError>;

    /// Applies an outcome's shared consequence to a mailbox (or, for `Paused` and `Resumed`,
    /// its account).
    async fn note(&self, mailbox: &MailboxKey, note: Note) -> Result<(), StoreError>;

    /// Returns when new mail may be claimable (another replica or a `queue` command said so),
    /// or after `timeout`.
    async fn wait_for_mail(&self, timeout: Duration);

    /// When the earliest queued message becomes due or its lease lapses; `None` when nothing is
    /// queued.
    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError>;

    /// How many messages wait per account, and when the oldest of them was received (accounts
    /// with nothing queued are absent), for `/metrics`.
    async fn depths(&self) -> Result<HashMap<String, (usize, SystemTime)>, StoreError>;
}

/// One replica's deliveries from a shared queue.
pub struct SharedScheduler {
    store: Arc<dyn SharedStore>,
    courier: Arc<dyn Courier>,
    config: QueueConfig,
    limits: SharedLimits,
    /// Ids being delivered by this replica.
    in_flight: HashSet<String>,
    /// "Precondition check failed." in a row, per mailbox, as this replica saw them.
    preconditions: HashMap<MailboxKey, u32>,
    /// The credentials' generation last seen per account: a change resumes the account.
    generations: HashMap<String, u64>,
    results: (
        mpsc::UnboundedSender<Finished>,
        mpsc::UnboundedReceiver<Finished>,
    ),
    deliveries: TaskTracker,
}

impl SharedScheduler {
    /// A scheduler for this replica over `store`.
    pub fn new(
        store: Arc<dyn SharedStore>,
        courier: Arc<dyn Courier>,
        config: QueueConfig,
        limits: SharedLimits,
    ) -> Self {
        SharedScheduler {
            store,
            courier,
            config,
            limits,
            in_flight: HashSet::new(),
            preconditions: HashMap::new(),
            generations: HashMap::new(),
            results: mpsc::unbounded_channel(),
            deliveries: TaskTracker::new(),
        }
    }

    /// Runs until `shutdown`, then waits up to `grace` for deliveries in flight; the leases of
    /// any still running lapse and another replica (or this one, restarted) sends them.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let lease = self.config.lease_time;
        let mut renew = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
        let mut report = tokio::time::interval(REPORT_EVERY);
        loop {
            self.check_credentials().await;
            let wait = self.dispatch().await;
            let store = self.store.clone();
            tokio::select! {
                _ = store.wait_for_mail(wait) => {}
                Some((entry, outcome)) = self.results.1.recv() => {
                    self.finish(entry, outcome).await;
                    // Every outcome that is in before the next claim: at a high rate, a claim
                    // per finished delivery would cost more round trips than the sends.
                    while let Ok((entry, outcome)) = self.results.1.try_recv() {
                        self.finish(entry, outcome).await;
                    }
                }
                _ = renew.tick() => {
                    if !self.in_flight.is_empty()
                        && let Err(err) = self.store.renew().await
                    {
                        tracing::warn!(%err, "cannot renew the leases of messages being sent");
                    }
                }
                _ = report.tick() => self.report().await,
                _ = shutdown.cancelled() => break,
            }
        }
        self.deliveries.close();
        let drained = tokio::time::timeout(grace, async {
            while !self.deliveries.is_empty() || !self.results.1.is_empty() {
                tokio::select! {
                    Some((entry, outcome)) = self.results.1.recv() => self.finish(entry, outcome).await,
                    _ = self.deliveries.wait() => {}
                }
            }
        });
        if drained.await.is_err() {
            tracing::warn!(
                in_flight = self.deliveries.len(),
                "deliveries still running at shutdown: their leases lapse and they are sent again"
            );
        }
    }

    /// The queue per account (every replica reports the whole shared queue), the dead letters
    /// and whether the database answers, for `/metrics`.
    async fn report(&self) {
        // Unknown (the database down): left as last reported rather than shown as zero.
        if let Ok(depths) = self.store.depths().await {
            let depth_of = |account: &str| depths.get(account).copied();
            report_depths(&*self.courier, depth_of, SystemTime::now());
        }
        report_store(&*self.store).await;
    }

    /// Claims and starts what may be sent now; returns how long to sleep at most.
    async fn dispatch(&mut self) -> Duration {
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            return IDLE;
        }
        let claimed = match self.store.claim(&self.limits, room).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(%err, "cannot claim queued messages; trying again");
                return IDLE;
            }
        };
        let started = !claimed.is_empty();
        for entry in claimed {
            self.start(entry);
        }
        if started {
            return Duration::ZERO;
        }
        let now = SystemTime::now();
        match self.store.next_due().await {
            Ok(Some(at)) if at > now => at.duration_since(now).unwrap_or_default().min(IDLE),
            // Due but not claimable: a mailbox at its limit, deferred or held, or a paused account.
            Ok(Some(_)) => BLOCKED,
            Ok(None) | Err(_) => IDLE,
        }
    }

    /// Sends `entry` in a task of its own. A sent message is removed by that task, not by the
    /// scheduler's loop: the removals of concurrent sends then commit together (sharing WAL
    /// flushes) instead of one after the other between claims, which capped a replica's rate.
    fn start(&mut self, entry: Entry) {
        if !self.in_flight.insert(entry.id.clone()) {
            return;
        }
        let (store, courier) = (self.store.clone(), self.courier.clone());
        let results = self.results.0.clone();
        self.deliveries.spawn(async move {
            let outcome = attempt(&*store, &*courier, &entry).await;
            if let Ok(receipt) = &outcome {
                // Two independent statements: sent together, not one after the other.
                let key = MailboxKey::of(&entry);
                let (_, completed) = tokio::join!(
                    note(&*store, &key, Note::Sent),
                    store.complete(&entry.id)
                );
                match completed {
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

    /// New credentials (a new token file, SIGHUP) resume the account for every replica.
    async fn check_credentials(&mut self) {
        for account in self.courier.accounts() {
            let Some(limits) = self.courier.limits(&account) else {
                continue;
            };
            let seen = self.generations.insert(account.clone(), limits.generation);
            if seen.is_some_and(|seen| seen != limits.generation) {
                tracing::info!(%account, "credentials changed: held mail goes out now");
                let key = MailboxKey {
                    account,
                    user: None,
                };
                if let Err(err) = self.store.note(&key, Note::Resumed).await {
                    tracing::warn!(%err, "cannot resume the account in the shared queue");
                }
            }
        }
    }

    /// Writes down one delivery's outcome and its shared consequence.
    async fn finish(&mut self, mut entry: Entry, outcome: Result<Receipt, DeliveryError>) {
        self.in_flight.remove(&entry.id);
        let now = SystemTime::now();
        let key = MailboxKey::of(&entry);
        let error = match outcome {
            // Removed (and its mailbox's rate noted) by the delivery's task.
            Ok(_) => {
                self.preconditions.remove(&key);
                return;
            }
            Err(error) => error,
        };
        entry.record(now, error.summary());
        if let Some(reason) = verdict::dead_reason(&self.config, &entry, &error, now) {
            if !verdict::too_old(&self.config, &entry, now) {
                self.went_through(&key).await;
            }
            tracing::warn!(id = %entry.id, %reason, "dead letter");
            entry.dead_reason = Some(reason);
            if let Err(err) = self.store.move_to(Place::Queue, Place::Dead, &entry).await {
                tracing::error!(id = %entry.id, %err, "cannot move the message to dead letters; it stays queued");
            }
            return;
        }
        let wait = self.consequence(&key, &mut entry, &error, now).await;
        entry.next_attempt = now + wait;
        match &entry.held {
            // No due time: it goes out when the hold lifts, and the hold's own line said why.
            Some(why) => {
                tracing::info!(id = %entry.id, attempts = entry.attempts, error = %error.summary(), "held: {why}")
            }
            None => {
                tracing::info!(id = %entry.id, attempts = entry.attempts, retry_in = ?wait, error = %error.summary(), "deferred")
            }
        }
        match self.store.release(&entry).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(id = %entry.id, "another replica took the message over meanwhile")
            }
            Err(err) => {
                tracing::error!(id = %entry.id, %err, "cannot update the queue record; its lease lapses and it is tried again")
            }
        }
    }

    async fn went_through(&mut self, key: &MailboxKey) {
        self.preconditions.remove(key);
        self.note(key, Note::Sent).await;
    }

    /// The shared consequence of a temporary failure, and how long the message waits (a message
    /// held with its mailbox or account waits for the hold, not for a backoff).
    async fn consequence(
        &mut self,
        key: &MailboxKey,
        entry: &mut Entry,
        error: &DeliveryError,
        now: SystemTime,
    ) -> Duration {
        let probe_at = now + self.config.retry_max;
        let configured = self.courier.limits(&key.account).is_some();
        match verdict::effect(error, configured) {
            Effect::PauseAccount => {
                tracing::warn!(account = %key.account, error = %error.summary(), "account paused until its credentials change");
                self.note(key, Note::Paused(probe_at)).await;
                entry.held = Some(verdict::HELD_FOR_ACCOUNT.to_string());
                return Duration::ZERO;
            }
            Effect::HoldMailbox => {
                tracing::warn!(mailbox = %key, error = %error.summary(), "mailbox held until it is fixed");
                self.note(key, Note::Held(probe_at)).await;
                entry.held = Some(verdict::HELD_FOR_MAILBOX.to_string());
                return Duration::ZERO;
            }
            Effect::Precondition => {
                let times = self.preconditions.entry(key.clone()).or_default();
                *times += 1;
                if *times >= PRECONDITION_HOLD && configured {
                    tracing::warn!(mailbox = %key, %error, "mailbox held: Gmail keeps answering \"Precondition check failed.\"");
                    self.preconditions.remove(key);
                    self.note(key, Note::Held(probe_at)).await;
                    entry.held = Some(verdict::HELD_FOR_PRECONDITION.to_string());
                    return Duration::ZERO;
                }
            }
            Effect::RateLimited => self.note(key, Note::Throttled).await,
            Effect::None => {}
        }
        if let Some(after) = verdict::mailbox_deferral(error) {
            tracing::warn!(mailbox = %key, ?after, "sending limit reached: mailbox deferred");
            self.note(key, Note::Deferred(now + after)).await;
        }
        entry.failures += 1;
        verdict::retry_wait(&self.config, error, entry.failures)
    }

    async fn note(&self, key: &MailboxKey, what: Note) {
        note(&*self.store, key, what).await
    }
}

/// Records an outcome's consequence for a mailbox; a failure is logged, not fatal (the limits
/// are a matter of pace, and the next outcome writes them again).
async fn note(store: &dyn SharedStore, key: &MailboxKey, what: Note) {
    if let Err(err) = store.note(key, what).await {
        tracing::warn!(mailbox = %key, %err, "cannot record a mailbox's state in the shared queue");
    }
}
