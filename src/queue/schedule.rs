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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::{self, Request};
use super::spool::{Entry, Place, Spool};
use crate::config::QueueConfig;
use crate::google::Credentials;
use crate::relay::{DeliveryError, Gmail, Receipt};

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

/// What the scheduler knows about one account.
#[derive(Default)]
struct AccountState {
    in_flight: usize,
    /// No sends before this time (rate limit spacing, or a deferral).
    not_before: Option<SystemTime>,
    /// Paused for a credentials problem: the credentials in use when it happened.
    paused_with: Option<Arc<Credentials>>,
}

/// Owns the queue while the server runs.
pub struct Scheduler {
    spool: Spool,
    gmail: Arc<Gmail>,
    config: QueueConfig,
    /// (next attempt, id) of every waiting entry not in flight.
    due: BTreeSet<(SystemTime, String)>,
    entries: HashMap<String, Entry>,
    accounts: HashMap<String, AccountState>,
    incoming: mpsc::UnboundedReceiver<Entry>,
    results: (
        mpsc::UnboundedSender<Finished>,
        mpsc::UnboundedReceiver<Finished>,
    ),
    deliveries: TaskTracker,
}

impl Scheduler {
    /// A scheduler for the entries already in `spool` and those `incoming` brings.
    pub fn new(
        spool: Spool,
        gmail: Arc<Gmail>,
        config: QueueConfig,
        incoming: mpsc::UnboundedReceiver<Entry>,
    ) -> Self {
        Scheduler {
            spool,
            gmail,
            config,
            due: BTreeSet::new(),
            entries: HashMap::new(),
            accounts: HashMap::new(),
            incoming,
            results: mpsc::unbounded_channel(),
            deliveries: TaskTracker::new(),
        }
    }

    /// Runs until `shutdown`, then waits up to `grace` for deliveries in flight; anything left
    /// stays in the spool for the next start.
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        self.load();
        let mut control_tick = tokio::time::interval(control::POLL);
        loop {
            self.dispatch();
            let wait = self.next_wake();
            tokio::select! {
                Some(entry) = self.incoming.recv() => self.schedule(entry),
                Some((entry, outcome)) = self.results.1.recv() => self.finish(entry, outcome).await,
                // Once a second, not per message: reporting walks the whole index.
                _ = control_tick.tick() => {
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
        let now = SystemTime::now();
        let mut per_account: HashMap<&str, (usize, SystemTime)> = HashMap::new();
        for entry in self.entries.values() {
            let (depth, oldest) = per_account
                .entry(&entry.account)
                .or_insert((0, entry.received_at));
            *depth += 1;
            *oldest = (*oldest).min(entry.received_at);
        }
        for account in self.gmail.router().accounts() {
            let (depth, oldest) = per_account
                .get(account.name.as_str())
                .copied()
                .unwrap_or((0, now));
            crate::telemetry::queue_state(
                &account.name,
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

    fn schedule(&mut self, entry: Entry) {
        self.due.insert((entry.next_attempt, entry.id.clone()));
        self.entries.insert(entry.id.clone(), entry);
    }

    fn unschedule(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.due.remove(&(entry.next_attempt, entry.id.clone()));
        Some(entry)
    }

    /// How long until something may become due (bounded, so pauses are re-checked).
    fn next_wake(&self) -> Duration {
        let earliest = self.due.first().map(|(at, _)| *at);
        let until = earliest
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        until.clamp(Duration::from_millis(20), control::POLL)
    }

    /// Starts every due delivery its account has room for.
    fn dispatch(&mut self) {
        let now = SystemTime::now();
        let ready: Vec<(SystemTime, String)> = self
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        for key in ready {
            let Some(entry) = self.entries.get(&key.1) else {
                continue;
            };
            let Some(account) = self.gmail.router().account(&entry.account).cloned() else {
                // The account was removed from the configuration: route again at delivery.
                self.start(key);
                continue;
            };
            let state = self.accounts.entry(account.name.clone()).or_default();
            if let Some(paused_with) = &state.paused_with {
                if Arc::ptr_eq(paused_with, &account.tokens.credentials())
                    && state.not_before.is_some_and(|t| t > now)
                {
                    continue;
                }
                tracing::info!(account = %account.name, "account resumed: credentials changed or probing again");
                state.paused_with = None;
                state.not_before = None;
            }
            if state.in_flight >= account.max_sends || state.not_before.is_some_and(|t| t > now) {
                continue;
            }
            state.in_flight += 1;
            state.not_before = Some(now + self.config.send_interval());
            self.start(key);
        }
    }

    fn start(&mut self, key: (SystemTime, String)) {
        self.due.remove(&key);
        let Some(entry) = self.entries.remove(&key.1) else {
            return;
        };
        let (spool, gmail, results) = (
            self.spool.clone(),
            self.gmail.clone(),
            self.results.0.clone(),
        );
        self.deliveries.spawn(async move {
            let outcome = deliver(&spool, &gmail, &entry).await;
            let _ = results.send((entry, outcome));
        });
    }

    /// Records one delivery's outcome.
    async fn finish(&mut self, mut entry: Entry, outcome: Result<Receipt, DeliveryError>) {
        let state = self.accounts.entry(entry.account.clone()).or_default();
        state.in_flight = state.in_flight.saturating_sub(1);
        let now = SystemTime::now();
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
        entry.record(error.to_string());
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
                    state.not_before = Some(now + *after);
                }
            }
            DeliveryError::Credentials { .. } => {
                if let Some(account) = self.gmail.router().account(&entry.account) {
                    if state.paused_with.is_none() {
                        tracing::warn!(account = %entry.account, %error, "account paused until its credentials change");
                    }
                    state.paused_with = Some(account.tokens.credentials());
                    state.not_before = Some(now + self.config.retry_max);
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

    async fn retry(&mut self, id: &str) -> Result<String, String> {
        // In flight: it is being delivered right now.
        self.unschedule(id);
        let (entry, done) = control::retry(&self.spool, id).await?;
        self.schedule(entry);
        Ok(done)
    }

    async fn delete(&mut self, id: &str) -> Result<String, String> {
        self.unschedule(id);
        control::delete(&self.spool, id).await
    }
}

/// One attempt for one queued message, with the same code as synchronous delivery; the upload
/// streams the spool file instead of reading it into memory.
async fn deliver(spool: &Spool, gmail: &Gmail, entry: &Entry) -> Result<Receipt, DeliveryError> {
    let path = spool.message_path(Place::Queue, &entry.id);
    let outgoing = gmail.prepare_file(&entry.envelope(), &path).await?;
    gmail.attempt(&outgoing).await
}
