//! When queued messages are delivered: the retry schedule, per-account limits and pauses.
//!
//! One scheduler task owns the in-memory index of the queue and is the only writer of queue
//! records while the server runs (the `queue` commands send it requests, see `control`). Each
//! delivery runs in its own task and reports back; the scheduler then records the outcome:
//!
//! - delivered: the record is removed (durably, before anything else);
//! - temporary failure: retried after `retry_min` doubling to `retry_max`, with ±20 % jitter so
//!   messages that failed together do not retry together — or at Google's `Retry after` time; a
//!   rate limit that far away (the mailbox's daily sending limit) defers the whole account;
//! - credentials problem: the account pauses until its credentials change (a new token file), with
//!   one log line, and is probed again every `retry_max` in case the fix was made at Google's end;
//! - permanent failure, or older than `max_age`: a dead letter, kept with the reason.
//!
//! The index is kept per account, so that choosing what to send next costs the number of
//! accounts, not the number of queued messages: a backlog of a hundred thousand messages held
//! back by a rate limit or an outage must not make every new message walk all of them.

use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::{self, Request};
use super::courier::{Clock, Courier};
use super::spool::{Entry, Place, Spool};
use crate::config::QueueConfig;
use crate::relay::{DeliveryError, Receipt, Status};

#[cfg(test)]
mod tests;

/// The shortest sleep of the loop: below it, waking costs more than it gains. Sends a send rate
/// allows within it start in the same wake-up.
const WAKE_FLOOR: Duration = Duration::from_millis(20);

/// A rate limit further away than this is the daily sending limit: defer the whole account.
const ACCOUNT_DEFERRAL: Duration = Duration::from_secs(10 * 60);

/// The wait before attempt `n + 1` after `n` failed attempts.
pub fn backoff(config: &QueueConfig, failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(20);
    let base = config
        .retry_min
        .saturating_mul(1 << doublings)
        .min(config.retry_max);
    base.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// A delivery task's report: the entry and how its attempt went.
type Finished = (Entry, Result<Receipt, DeliveryError>);

/// One account's share of the queue.
#[derive(Default)]
struct AccountQueue {
    /// (next attempt, id) of its waiting entries, not in flight.
    due: BTreeSet<(SystemTime, String)>,
    in_flight: usize,
    /// No sends before this time (rate limit spacing, or a deferral).
    not_before: Option<SystemTime>,
    /// Paused for a credentials problem: the credentials in use when it happened.
    paused_with: Option<Arc<dyn Any + Send + Sync>>,
}

impl AccountQueue {
    fn held_back(&self, now: SystemTime) -> bool {
        self.not_before.is_some_and(|t| t > now)
    }
}

/// Owns the queue while the server runs.
pub struct Scheduler {
    spool: Spool,
    courier: Arc<dyn Courier>,
    config: QueueConfig,
    clock: Clock,
    /// Every waiting entry not in flight, by id.
    entries: HashMap<String, Entry>,
    accounts: HashMap<String, AccountQueue>,
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
    /// A scheduler for the entries already in `spool` and those `incoming` brings, reading the
    /// system clock.
    pub fn new(
        spool: Spool,
        courier: Arc<dyn Courier>,
        config: QueueConfig,
        incoming: mpsc::UnboundedReceiver<Entry>,
    ) -> Self {
        let mut scheduler = Scheduler {
            spool,
            courier,
            config,
            clock: Clock::System,
            entries: HashMap::new(),
            accounts: HashMap::new(),
            in_flight: HashSet::new(),
            incoming,
            results: mpsc::unbounded_channel(),
            deliveries: TaskTracker::new(),
        };
        // Now, before the acceptor exists: a message stored during a later scan of the
        // directory would be both loaded and announced, and delivered twice.
        scheduler.load();
        scheduler
    }

    /// The same scheduler reading `clock` instead (tests: paused tokio time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until `shutdown`, then waits up to `grace` for deliveries in flight; anything left
    /// stays in the spool for the next start.
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
                    self.report();
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
    fn report(&self) {
        let now = self.clock.now();
        let mut per_account: HashMap<&str, (usize, SystemTime)> = HashMap::new();
        for entry in self.entries.values() {
            let (depth, oldest) = per_account
                .entry(&entry.account)
                .or_insert((0, entry.received_at));
            *depth += 1;
            *oldest = (*oldest).min(entry.received_at);
        }
        for account in self.courier.accounts() {
            let (depth, oldest) = per_account
                .get(account.as_str())
                .copied()
                .unwrap_or((0, now));
            crate::telemetry::queue_state(
                &account,
                depth,
                now.duration_since(oldest).unwrap_or_default(),
            );
        }
        crate::telemetry::dead_letters(self.spool.count(Place::Dead));
    }

    fn load(&mut self) {
        match self.spool.list(Place::Queue) {
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
        let account = self.accounts.entry(entry.account.clone()).or_default();
        account.due.insert((entry.next_attempt, entry.id.clone()));
        self.entries.insert(entry.id.clone(), entry);
    }

    fn unschedule(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(account) = self.accounts.get_mut(&entry.account) {
            account.due.remove(&(entry.next_attempt, entry.id.clone()));
        }
        Some(entry)
    }

    /// How long until something may become due (bounded, so pauses are re-checked).
    fn next_wake(&self) -> Duration {
        let now = self.clock.now();
        let earliest = self
            .accounts
            .iter()
            .filter_map(|(name, account)| {
                let (first, _) = account.due.first()?;
                let limits = self.courier.limits(name);
                if limits.is_some_and(|l| account.in_flight >= l.max_sends) {
                    return None; // a finishing delivery wakes the loop
                }
                Some(account.not_before.map_or(*first, |t| t.max(*first)))
            })
            .min();
        let until = earliest
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or_default();
        until.clamp(WAKE_FLOOR, control::POLL)
    }

    /// Starts every due delivery its account has room for.
    fn dispatch(&mut self) {
        let now = self.clock.now();
        let interval = self.config.send_interval();
        let mut starting = Vec::new();
        for (name, account) in &mut self.accounts {
            if account.due.first().is_none_or(|(at, _)| *at > now) {
                continue;
            }
            let limits = self.courier.limits(name);
            if let (Some(paused_with), Some(limits)) = (&account.paused_with, &limits) {
                if Arc::ptr_eq(paused_with, &limits.credentials) && account.held_back(now) {
                    continue;
                }
                tracing::info!(account = %name, "account resumed: credentials changed or probing again");
                account.paused_with = None;
                account.not_before = None;
            }
            while account.due.first().is_some_and(|(at, _)| *at <= now) {
                // An account no longer configured has no limits: its messages are routed again.
                if let Some(limits) = &limits {
                    // Rate spacing counts from the previous slot, not from this wake-up, so a
                    // rate above one per WAKE_FLOOR is kept; unused slots older than that lapse.
                    let recent = now.checked_sub(WAKE_FLOOR).unwrap_or(now);
                    let slot = account.not_before.map_or(now, |t| t.max(recent));
                    if account.in_flight >= limits.max_sends || slot > now {
                        break;
                    }
                    account.not_before = Some(slot + interval);
                }
                let Some((_, id)) = account.due.pop_first() else {
                    break;
                };
                if self.entries.contains_key(&id) {
                    account.in_flight += 1;
                    starting.push(id);
                }
            }
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
        let (spool, courier, results) = (
            self.spool.clone(),
            self.courier.clone(),
            self.results.0.clone(),
        );
        self.deliveries.spawn(async move {
            let path = spool.message_path(Place::Queue, &entry.id);
            // A panic must still report back, or the account's slot would be lost for good.
            let outcome = AssertUnwindSafe(courier.deliver(&entry, &path))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(id = %entry.id, "the delivery attempt panicked (a bug in smtp2gmail)");
                    Err(DeliveryError::Permanent {
                        status: Status(5, 3, 0),
                        reason: "internal error while delivering (a bug in smtp2gmail); \
                                 retry it after an upgrade"
                            .into(),
                    })
                });
            let _ = results.send((entry, outcome));
        });
    }

    /// Records one delivery's outcome.
    async fn finish(&mut self, mut entry: Entry, outcome: Result<Receipt, DeliveryError>) {
        let now = self.clock.now();
        let account = self.accounts.entry(entry.account.clone()).or_default();
        account.in_flight = account.in_flight.saturating_sub(1);
        self.in_flight.remove(&entry.id);
        if !self.spool.message_path(Place::Queue, &entry.id).exists() {
            // Deleted by an operator while it was being delivered, or before the scheduler heard
            // of it: the outcome must not write its record back.
            tracing::info!(id = %entry.id, outcome = ?outcome.as_ref().map(|r| &r.id), "the message was deleted meanwhile; forgotten");
            let _ = self.spool.remove(Place::Queue, &entry.id).await;
            return;
        }
        let error = match outcome {
            Ok(receipt) => {
                if let Err(err) = self.spool.remove(Place::Queue, &entry.id).await {
                    tracing::error!(id = %entry.id, %err, "delivered, but the record could not be removed: it may be sent again");
                }
                tracing::info!(id = %entry.id, gmail_id = %receipt.id, attempts = entry.attempts + 1, "delivered");
                return;
            }
            Err(error) => error,
        };
        entry.record(now, error.to_string());
        let too_old =
            now.duration_since(entry.received_at).unwrap_or_default() > self.config.max_age;
        if error.is_permanent() || too_old {
            let reason = if too_old {
                format!("too old after {} attempts: {error}", entry.attempts)
            } else {
                error.to_string()
            };
            tracing::warn!(id = %entry.id, %reason, "dead letter");
            entry.dead_reason = Some(reason);
            if let Err(err) = self.spool.move_to(Place::Queue, Place::Dead, &entry).await {
                tracing::error!(id = %entry.id, %err, "cannot move the message to dead letters; it stays queued");
                entry.dead_reason = None;
                entry.next_attempt = now + backoff(&self.config, entry.attempts);
                self.schedule(entry);
            }
            return;
        }
        let mut wait = backoff(&self.config, entry.attempts);
        match &error {
            DeliveryError::Temporary {
                retry_after: Some(after),
                ..
            } => {
                wait = *after;
                if *after >= ACCOUNT_DEFERRAL {
                    tracing::warn!(account = %entry.account, ?after, "sending limit reached: account deferred");
                    account.not_before = Some(now + *after);
                }
            }
            DeliveryError::Credentials { .. } => {
                if let Some(limits) = self.courier.limits(&entry.account) {
                    if account.paused_with.is_none() {
                        tracing::warn!(account = %entry.account, %error, "account paused until its credentials change");
                    }
                    account.paused_with = Some(limits.credentials);
                    account.not_before = Some(now + self.config.retry_max);
                }
            }
            _ => {}
        }
        entry.next_attempt = now + wait;
        tracing::info!(id = %entry.id, attempts = entry.attempts, retry_in = ?wait, %error, "deferred");
        if let Err(err) = self.spool.update(Place::Queue, &entry).await {
            tracing::error!(id = %entry.id, %err, "cannot update the queue record");
        }
        self.schedule(entry);
    }

    /// Carries out the `queue` commands' requests.
    async fn serve_requests(&mut self) {
        for (name, request) in control::pending(&self.spool) {
            let answer = match &request {
                Request::Retry { id: Some(id) } => self.retry(id).await,
                Request::Retry { id: None } => {
                    let ids: Vec<String> = self.entries.keys().cloned().collect();
                    let dead = self
                        .spool
                        .list(Place::Dead)
                        .map(|(e, _)| e)
                        .unwrap_or_default();
                    let mut count = 0;
                    for id in ids.iter().chain(dead.iter().map(|e| &e.id)) {
                        count += usize::from(self.retry(id).await.is_ok());
                    }
                    Ok(format!("{count} messages will be retried now"))
                }
                Request::Delete { id } => self.delete(id).await,
            };
            control::answer(&self.spool, &name, answer);
        }
    }

    /// An operator's "deliver now": the message is due at once, and its account's deferral or
    /// pause is lifted — the operator knows something the schedule does not (the daily limit
    /// was raised, the credentials were fixed at Google's end).
    async fn retry(&mut self, id: &str) -> Result<String, String> {
        if self.in_flight.contains(id) {
            return Err(format!("{id}: being delivered right now"));
        }
        let now = self.clock.now();
        let (entry, done) = match self.unschedule(id) {
            // Only the schedule changes: not worth an fsync per message of a `retry --all`. After
            // a restart the record's own time applies, which only delays the attempt.
            Some(mut entry) => {
                entry.next_attempt = now;
                (entry, format!("{id}: will be retried now"))
            }
            None => control::retry(&self.spool, id, now).await?,
        };
        if let Some(account) = self.accounts.get_mut(&entry.account)
            && (account.not_before.is_some() || account.paused_with.is_some())
        {
            tracing::info!(account = %entry.account, "operator retry: account deferral lifted");
            account.not_before = None;
            account.paused_with = None;
        }
        self.schedule(entry);
        Ok(done)
    }

    async fn delete(&mut self, id: &str) -> Result<String, String> {
        let scheduled = self.unschedule(id);
        let done = match control::delete(&self.spool, id).await {
            Ok(done) => done,
            Err(err) => {
                // Still on disk: keep delivering it.
                scheduled.into_iter().for_each(|entry| self.schedule(entry));
                return Err(err);
            }
        };
        // A delivery in flight finds its file gone when it ends (see `finish`).
        Ok(done)
    }
}
