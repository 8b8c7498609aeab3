//! When queued messages are delivered: the retry schedule, Gmail's per-mailbox limits, and the
//! pauses that hold mail while a person fixes something.
//!
//! One scheduler task owns the in-memory index of the queue and is the only writer of queue
//! records while the server runs (the `queue` commands send it requests, see `control`). Each
//! delivery runs in its own task and reports back; the scheduler then records the outcome:
//!
//! - delivered: the record is removed (durably, before anything else);
//! - temporary failure: retried after `retry_min` doubling to `retry_max`, with ±20 % jitter so
//!   messages that failed together do not retry together — or at Google's `Retry after` time; a
//!   rate limit that far away (the mailbox's daily sending limit) defers the whole mailbox, and
//!   any rate-limit answer halves the mailbox's send rate, regained gradually ([`Pace`]);
//! - credentials or setup problem: the account (a bad key, a revoked token, the API disabled) or
//!   the one mailbox (no Gmail for that user) is held, with one log line, and the message's own
//!   backoff does not grow: when the credentials change (a new token file, SIGHUP, `queue
//!   retry`) everything held goes out at once. Every `retry_max` one mailbox probes whether the
//!   fix was made at Google's end;
//! - "Precondition check failed.": retried with backoff; after [`PRECONDITION_HOLD`] in a row
//!   the mailbox is held as a setup problem;
//! - permanent failure, or older than `max_age`: a dead letter, kept with the reason.
//!
//! Limits and holds are per mailbox (`mailboxes`): one user at the daily limit does not defer
//! the others, and 500 impersonated users do not share one user's rate.

mod mailboxes;
mod requests;
pub mod verdict;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control;
use super::courier::{Clock, Courier, Finished, spawn_attempt};
use super::entry::{Entry, Place};
use super::store::Store;
use crate::config::QueueConfig;
use crate::relay::{DeliveryError, Receipt};
use mailboxes::Index;
pub use mailboxes::{MIN_RATE, MailboxKey, Pace, RECOVERY, SLOWDOWN};
use verdict::Effect;
pub use verdict::{PRECONDITION_HOLD, backoff};

#[cfg(test)]
mod tests;

/// The shortest sleep of the loop: below it, waking costs more than it gains. Sends a send rate
/// allows within it start in the same wake-up.
const WAKE_FLOOR: Duration = Duration::from_millis(20);

/// What the scheduler remembers of one account (as opposed to its mailboxes).
#[derive(Default)]
struct AccountState {
    /// The credentials' generation last seen: a change resumes everything held.
    generation: Option<u64>,
    /// Paused for an account-wide credentials problem, until this time's probe.
    paused_until: Option<SystemTime>,
    /// The one mailbox allowed to send while paused, to find out whether the fix was made.
    probe: Option<MailboxKey>,
    /// Mailboxes with mail due, waiting for the pause to end.
    parked: HashSet<MailboxKey>,
    /// Mailboxes held for a problem of their own.
    held: HashSet<MailboxKey>,
}

/// Owns the queue while the server runs.
pub struct Scheduler {
    store: Arc<dyn Store>,
    courier: Arc<dyn Courier>,
    config: QueueConfig,
    clock: Clock,
    /// Every waiting entry not in flight, by id.
    entries: HashMap<String, Entry>,
    /// The waiting entries by mailbox, and the mailboxes by when they may send.
    index: Index,
    accounts: HashMap<String, AccountState>,
    /// Ids whose delivery is running.
    in_flight: HashSet<String>,
    incoming: mpsc::UnboundedReceiver<Entry>,
    results: (
        mpsc::UnboundedSender<Finished>,
        mpsc::UnboundedReceiver<Finished>,
    ),
    deliveries: TaskTracker,
}

impl Scheduler {
    /// A scheduler for the entries already in `store` and those `incoming` brings, reading the
    /// system clock.
    pub async fn new(
        store: Arc<dyn Store>,
        courier: Arc<dyn Courier>,
        config: QueueConfig,
        incoming: mpsc::UnboundedReceiver<Entry>,
    ) -> Self {
        let mut scheduler = Scheduler {
            store,
            courier,
            config: config.clone(),
            clock: Clock::System,
            entries: HashMap::new(),
            index: Index::new(config.max_send_rate),
            accounts: HashMap::new(),
            in_flight: HashSet::new(),
            incoming,
            results: mpsc::unbounded_channel(),
            deliveries: TaskTracker::new(),
        };
        // Now, before the acceptor exists: a message stored during a later scan of the
        // store would be both loaded and announced, and delivered twice.
        scheduler.load().await;
        scheduler
    }

    /// The same scheduler reading `clock` instead (tests: paused tokio time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until `shutdown`, then waits up to `grace` for deliveries in flight; anything left
    /// stays queued for the next start.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let mut control_tick = tokio::time::interval(control::POLL);
        loop {
            self.dispatch();
            let wait = self.next_wake();
            tokio::select! {
                Some(entry) = self.incoming.recv() => self.schedule(entry),
                Some((entry, outcome)) = self.results.1.recv() => self.finish(entry, outcome).await,
                // Once a second, not per message: reporting walks the whole index.
                _ = control_tick.tick() => {
                    // Announced messages first, so a request can name a message just accepted.
                    while let Ok(entry) = self.incoming.try_recv() {
                        self.schedule(entry);
                    }
                    self.serve_requests().await;
                    self.report().await;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.deliveries.close();
        if tokio::time::timeout(grace, self.drain()).await.is_err() {
            tracing::warn!(
                in_flight = self.deliveries.len(),
                "deliveries still running at shutdown stay queued"
            );
        }
    }

    /// Records the outcomes of deliveries that finish during shutdown.
    async fn drain(&mut self) {
        while !self.deliveries.is_empty() || !self.results.1.is_empty() {
            tokio::select! {
                Some((entry, outcome)) = self.results.1.recv() => self.finish(entry, outcome).await,
                _ = self.deliveries.wait() => {}
            }
        }
    }

    /// Queue depth and oldest age per account, and the dead letters, for `/metrics`.
    async fn report(&mut self) {
        let now = self.clock.now();
        let mut per_account: HashMap<&str, (usize, SystemTime)> = HashMap::new();
        for entry in self.entries.values() {
            let (depth, oldest) = per_account
                .entry(&entry.account)
                .or_insert((0, entry.received_at));
            *depth += 1;
            *oldest = (*oldest).min(entry.received_at);
        }
        report_depths(
            &*self.courier,
            |account| per_account.get(account).copied(),
            now,
        );
        report_store(&*self.store).await;
        self.index.sweep(now);
    }

    async fn load(&mut self) {
        match self.store.list(Place::Queue).await {
            Ok((entries, broken)) => {
                for (id, err) in broken {
                    tracing::error!(id, %err, "unreadable queue record left in place; inspect or delete it");
                }
                if !entries.is_empty() {
                    tracing::info!(queued = entries.len(), "resuming queued messages");
                }
                entries.into_iter().for_each(|entry| self.schedule(entry));
            }
            Err(err) => tracing::error!(%err, "cannot read the queue"),
        }
    }

    /// Adds an entry to the index, unless it is there already or in flight (announced after an
    /// operator's retry reached it first).
    fn schedule(&mut self, entry: Entry) {
        if self.entries.contains_key(&entry.id) || self.in_flight.contains(&entry.id) {
            return;
        }
        let key = MailboxKey::of(&entry);
        self.index
            .mailbox(&key)
            .due
            .insert((entry.next_attempt, entry.id.clone()));
        self.entries.insert(entry.id.clone(), entry);
        self.requeue(&key);
    }

    fn unschedule(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        let key = MailboxKey::of(&entry);
        if let Some(mailbox) = self.index.get_mut(&key) {
            mailbox.due.remove(&(entry.next_attempt, entry.id.clone()));
        }
        self.requeue(&key);
        Some(entry)
    }

    /// Most deliveries at once for a mailbox of `account`; unlimited once it is no longer
    /// configured (its messages are then routed again at delivery).
    fn max_sends(&self, account: &str) -> usize {
        self.courier
            .limits(account)
            .map_or(usize::MAX, |limits| limits.max_sends)
    }

    fn requeue(&mut self, key: &MailboxKey) {
        let max_sends = self.max_sends(&key.account);
        self.index.requeue(key, max_sends, self.clock.now());
    }

    /// How long until something may become due (bounded, so pauses are re-checked).
    fn next_wake(&self) -> Duration {
        let now = self.clock.now();
        // Nothing ready: only the control tick, a pause's probe or new mail can change that.
        let until = self.index.next_ready().map_or(control::POLL, |at| {
            at.duration_since(now).unwrap_or_default()
        });
        until.clamp(WAKE_FLOOR, control::POLL)
    }

    /// Resumes what new credentials may fix, and lets one mailbox of a paused account probe.
    fn check_accounts(&mut self) {
        let now = self.clock.now();
        let mut resume = Vec::new();
        for (name, account) in &mut self.accounts {
            let limits = self.courier.limits(name);
            let generation = limits.as_ref().map(|limits| limits.generation);
            let changed = account.generation.is_some() && account.generation != generation;
            account.generation = generation;
            if changed || generation.is_none() {
                if account.paused_until.is_some() || !account.held.is_empty() {
                    tracing::info!(account = %name, "credentials changed: held mail goes out now");
                }
                resume.push(name.clone());
            } else if account.paused_until.is_some_and(|t| t <= now) && account.probe.is_none() {
                account.paused_until = Some(now + self.config.retry_max);
                if let Some(key) = account.parked.iter().next().cloned() {
                    tracing::info!(account = %name, mailbox = %key, "paused account: probing with one message");
                    account.parked.remove(&key);
                    let max_sends = limits.as_ref().map_or(usize::MAX, |l| l.max_sends);
                    self.index.requeue(&key, max_sends, now);
                    account.probe = Some(key);
                }
            }
        }
        for name in resume {
            self.resume(&name);
        }
    }

    /// Lifts an account's pause and its mailboxes' holds: everything held is due at once.
    fn resume(&mut self, name: &str) {
        let Some(account) = self.accounts.get_mut(name) else {
            return;
        };
        account.paused_until = None;
        account.probe = None;
        let keys: Vec<MailboxKey> = account.parked.drain().chain(account.held.drain()).collect();
        for key in keys {
            if let Some(mailbox) = self.index.get_mut(&key) {
                mailbox.held_until = None;
                mailbox.preconditions = 0;
            }
            self.requeue(&key);
        }
    }

    /// Starts every due delivery its mailbox has room for.
    fn dispatch(&mut self) {
        self.check_accounts();
        let now = self.clock.now();
        let mut starting = Vec::new();
        while let Some(key) = self.index.pop_ready(now) {
            let limits = self.courier.limits(&key.account);
            // The generation is noted before the account's first delivery starts, so new
            // credentials arriving while it fails are told apart from those it failed with.
            let account =
                self.accounts
                    .entry(key.account.clone())
                    .or_insert_with(|| AccountState {
                        generation: limits.as_ref().map(|l| l.generation),
                        ..AccountState::default()
                    });
            if account.paused_until.is_some() && account.probe.as_ref() != Some(&key) {
                account.parked.insert(key);
                continue;
            }
            let max_sends = limits.as_ref().map_or(usize::MAX, |l| l.max_sends);
            // A probe is one message: a still-broken account costs one failure an hour.
            let max_sends = if account.probe.is_some() {
                1
            } else {
                max_sends
            };
            let mailbox = self.index.mailbox(&key);
            if mailbox.held_until.take().is_some() {
                account.held.remove(&key);
                tracing::info!(mailbox = %key, "held mailbox: probing again");
            }
            mailbox.deferred_until = mailbox.deferred_until.filter(|t| *t > now);
            while mailbox.in_flight < max_sends
                && mailbox.due.first().is_some_and(|(at, _)| *at <= now)
            {
                // An account no longer configured has no limits: its messages are routed again.
                if limits.is_some() && !mailbox.pace.take(now) {
                    break;
                }
                let Some((_, id)) = mailbox.due.pop_first() else {
                    break;
                };
                if self.entries.contains_key(&id) {
                    mailbox.in_flight += 1;
                    starting.push(id);
                }
            }
            self.index.requeue(&key, max_sends, now);
        }
        for id in starting {
            self.start(id);
        }
    }

    fn start(&mut self, id: String) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        self.in_flight.insert(id);
        spawn_attempt(
            &self.deliveries,
            self.store.clone(),
            self.courier.clone(),
            entry,
            self.results.0.clone(),
        );
    }

    /// Records one delivery's outcome.
    async fn finish(&mut self, entry: Entry, outcome: Result<Receipt, DeliveryError>) {
        let now = self.clock.now();
        let key = MailboxKey::of(&entry);
        let mailbox = self.index.mailbox(&key);
        mailbox.in_flight = mailbox.in_flight.saturating_sub(1);
        self.in_flight.remove(&entry.id);
        self.record(key.clone(), entry, outcome, now).await;
        self.requeue(&key);
    }

    /// Writes down the outcome of an attempt that ended `now`: removed, dead, or deferred.
    async fn record(
        &mut self,
        key: MailboxKey,
        mut entry: Entry,
        outcome: Result<Receipt, DeliveryError>,
        now: SystemTime,
    ) {
        // An error reading the store counts as "still there": writing a record back is safe.
        if !self
            .store
            .contains(Place::Queue, &entry.id)
            .await
            .unwrap_or(true)
        {
            // Deleted by an operator while it was being delivered, or before the scheduler heard
            // of it: the outcome must not write its record back.
            tracing::info!(id = %entry.id, outcome = ?outcome.as_ref().map(|r| &r.id), "the message was deleted meanwhile; forgotten");
            return;
        }
        let error = match outcome {
            Ok(receipt) => {
                self.went_through(&key);
                if let Err(err) = self.store.remove(Place::Queue, &entry.id).await {
                    tracing::error!(id = %entry.id, %err, "delivered, but the record could not be removed: it may be sent again");
                }
                tracing::info!(id = %entry.id, gmail_id = %receipt.id, attempts = entry.attempts + 1, "delivered");
                return;
            }
            Err(error) => error,
        };
        entry.record(now, error.summary());
        if let Some(reason) = verdict::dead_reason(&self.config, &entry, &error, now) {
            if !verdict::too_old(&self.config, &entry, now) {
                // A message's own fault says nothing against the mailbox or the credentials.
                self.went_through(&key);
            }
            tracing::warn!(id = %entry.id, %reason, "dead letter");
            entry.dead_reason = Some(reason);
            if let Err(err) = self.store.move_to(Place::Queue, Place::Dead, &entry).await {
                tracing::error!(id = %entry.id, %err, "cannot move the message to dead letters; it stays queued");
                entry.dead_reason = None;
                entry.next_attempt = now + backoff(&self.config, entry.attempts);
                self.schedule(entry);
            }
            return;
        }
        let wait = self.defer(&key, &mut entry, &error, now);
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
        if let Err(err) = self.store.update(Place::Queue, &entry).await {
            tracing::error!(id = %entry.id, %err, "cannot update the queue record");
        }
        self.schedule(entry);
    }

    /// A delivery reached Gmail and was not turned away for the mailbox's or the account's
    /// sake: the pace recovers a step, and a probing account is resumed.
    fn went_through(&mut self, key: &MailboxKey) {
        if let Some(mailbox) = self.index.get_mut(key) {
            mailbox.pace.sent();
            mailbox.preconditions = 0;
        }
        if let Some(account) = self.accounts.get(&key.account)
            && account.probe.as_ref() == Some(key)
        {
            tracing::info!(account = %key.account, "probe went through: account resumed");
            self.resume(&key.account);
        }
    }

    /// What a temporary failure or a held account means for the mailbox and the account, and
    /// how long the message waits (a held message waits for its hold, not for a backoff).
    fn defer(
        &mut self,
        key: &MailboxKey,
        entry: &mut Entry,
        error: &DeliveryError,
        now: SystemTime,
    ) -> Duration {
        let retry_max = self.config.retry_max;
        let configured = self.courier.limits(&key.account).is_some();
        let account = self.accounts.entry(key.account.clone()).or_default();
        let mailbox = self.index.mailbox(key);
        match verdict::effect(error, configured) {
            Effect::PauseAccount => {
                if account.paused_until.is_none() || account.probe.is_some() {
                    tracing::warn!(account = %key.account, error = %error.summary(), "account paused until its credentials change");
                }
                account.paused_until = Some(now + retry_max);
                account.probe = None;
                entry.held = Some(verdict::HELD_FOR_ACCOUNT.to_string());
                return Duration::ZERO;
            }
            Effect::HoldMailbox => {
                if mailbox.held_until.is_none() {
                    tracing::warn!(mailbox = %key, error = %error.summary(), "mailbox held until it is fixed");
                }
                mailbox.held_until = Some(now + retry_max);
                account.held.insert(key.clone());
                entry.held = Some(verdict::HELD_FOR_MAILBOX.to_string());
                return Duration::ZERO;
            }
            Effect::Precondition => {
                mailbox.preconditions += 1;
                if mailbox.preconditions >= PRECONDITION_HOLD && configured {
                    tracing::warn!(
                        mailbox = %key, %error, times = mailbox.preconditions,
                        "mailbox held: Gmail keeps answering \"Precondition check failed.\"; \
                         for a service account check its domain-wide delegation, for a new user \
                         wait until the mailbox exists; `queue retry` or SIGHUP to try again now"
                    );
                    mailbox.held_until = Some(now + retry_max);
                    account.held.insert(key.clone());
                    entry.held = Some(verdict::HELD_FOR_PRECONDITION.to_string());
                    return Duration::ZERO;
                }
            }
            Effect::RateLimited => {
                mailbox.pace.throttled(now);
                tracing::info!(mailbox = %key, rate = mailbox.pace.rate(), "rate limited: sending slower");
            }
            Effect::None => {}
        }
        if let Some(after) = verdict::mailbox_deferral(error) {
            tracing::warn!(mailbox = %key, ?after, "sending limit reached: mailbox deferred");
            mailbox.deferred_until = Some(now + after);
        }
        entry.failures += 1;
        verdict::retry_wait(&self.config, error, entry.failures)
    }
}

/// The queue per configured account for `/metrics`, as both schedulers report it: the depth and
/// the oldest message's age (`depth_of` says them; zero for an account with nothing queued, so a
/// drained queue shows as drained).
pub(super) fn report_depths(
    courier: &dyn Courier,
    depth_of: impl Fn(&str) -> Option<(usize, SystemTime)>,
    now: SystemTime,
) {
    for account in courier.accounts() {
        let (depth, oldest) = depth_of(&account).unwrap_or((0, now));
        let age = now.duration_since(oldest).unwrap_or_default();
        crate::telemetry::queue_state(&account, depth, age);
    }
}

/// The dead letters and whether the store takes mail, for `/metrics`.
pub(super) async fn report_store(store: &dyn Store) {
    if let Ok(dead) = store.count(Place::Dead).await {
        crate::telemetry::dead_letters(dead);
    }
    crate::telemetry::queue_store_up(store.problem().is_none());
}
