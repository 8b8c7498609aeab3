//! The scheduler core: when queued messages are delivered, and what each outcome means — one
//! implementation for both backends, over a small state interface ([`State`]): in memory for the
//! one server on a spool ([`MemoryState`]), in the database for replicas
//! (`queue::shared::SharedState`).
//!
//! The core claims what may be sent now, runs each delivery in a task of its own, and writes each
//! outcome down:
//!
//! - delivered: removed (by the delivery, durably, before anything else);
//! - temporary failure: retried after `retry_min` doubling to `retry_max`, with ±20 % jitter so
//!   messages that failed together do not retry together — or at Google's `Retry after` time; a
//!   rate limit that far away (the mailbox's daily sending limit) defers the whole mailbox, and
//!   any rate-limit answer halves the mailbox's send rate, regained gradually;
//! - credentials or setup problem: the account (a bad key, a revoked token, the API disabled) or
//!   the one mailbox (no Gmail for that user) is held, with one log line, and the message's own
//!   backoff does not grow: when the credentials change (a new token file, SIGHUP, `queue
//!   retry`) everything held goes out at once. Every `retry_max` the hold is probed;
//! - "Precondition check failed.": retried with backoff; after [`PRECONDITION_HOLD`] in a row
//!   (counted by the state, so replicas count together) the mailbox is held as a setup problem;
//! - permanent failure, or older than `max_age`: a dead letter, kept with the reason.
//!
//! Each outcome is told where it is applied ([`tell`]): a webhook event (`delivered`,
//! `deferred`, `dead_letter`, `delayed`, `credentials`) and, for a dead letter or a message still
//! queued after `notify.delay_warning`, a DSN queued through the message's own account. Dead
//! letters the splitter makes reach the core to be told the same way.
//!
//! The `queue` commands (retry, retry --all, delete) are carried out by the same core
//! ([`requests`]), and so is the shutdown: deliveries in flight may finish within the grace, and
//! their outcomes are written down.

mod mailboxes;
mod memory;
mod requests;
mod state;
mod tell;
pub mod verdict;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::courier::{Clock, Courier, Finished, spawn_attempt};
use super::notice::{Cause, Notices};
use super::record::{Entry, Place};
use super::store::{CommandChannel, Store};
use crate::config::QueueConfig;
use crate::relay::{DeliveryError, Receipt};
pub use mailboxes::{MIN_RATE, MailboxKey, Pace, RECOVERY, SLOWDOWN};
pub use memory::MemoryState;
pub use requests::{Pickup, carry_out};
pub use state::{Limits, Note, Settled, State};
use verdict::Effect;
pub use verdict::{PRECONDITION_HOLD, backoff};

#[cfg(test)]
mod tests;

/// The shortest sleep of the loop: below it, waking costs more than it gains. Sends a send rate
/// allows within it start in the same wake-up.
const WAKE_FLOOR: Duration = Duration::from_millis(20);

/// Delivers the queue while the server runs, over the state `S`.
pub struct Scheduler<S: State = MemoryState> {
    state: S,
    courier: Arc<dyn Courier>,
    config: QueueConfig,
    clock: Clock,
    limits: Limits,
    /// Where the `queue` commands' requests arrive, when the state lives in this process.
    commands: Option<Arc<dyn CommandChannel>>,
    /// The credentials' generation last seen per account: a change resumes the account.
    generations: HashMap<String, u64>,
    /// Ids whose delivery is running in this process.
    in_flight: HashSet<String>,
    /// Accounts this process saw paused and not resumed since: a send of theirs that goes
    /// through resumes them (the probe that worked), and is told.
    paused: HashSet<String>,
    results: (
        mpsc::UnboundedSender<Finished>,
        mpsc::UnboundedReceiver<Finished>,
    ),
    deliveries: TaskTracker,
    store: Arc<dyn Store>,
    /// What to tell, and to whom.
    notices: Notices,
    /// Dead letters made outside the core (the splitter's), to be told.
    given_up: Option<mpsc::UnboundedReceiver<Entry>>,
}

/// The limits of the configured accounts, as `courier` knows them.
pub fn limits_of(courier: &dyn Courier, config: &QueueConfig) -> Limits {
    let accounts = courier.accounts().into_iter();
    Limits {
        max_send_rate: config.max_send_rate,
        max_sends: accounts
            .filter_map(|name| Some((name.clone(), courier.limits(&name)?.max_sends)))
            .collect(),
    }
}

impl Scheduler<MemoryState> {
    /// The spool's scheduler: the entries already in `store` and those `incoming` brings, kept
    /// in memory; the `queue` commands arrive through `commands`. Reads the system clock.
    pub async fn new(
        store: Arc<dyn Store>,
        courier: Arc<dyn Courier>,
        config: QueueConfig,
        incoming: mpsc::UnboundedReceiver<Entry>,
    ) -> Self {
        let limits = limits_of(&*courier, &config);
        let mut state = MemoryState::new(store.clone(), &config, incoming);
        // Now, before the acceptor exists: a message stored during a later scan of the
        // store would be both loaded and announced, and delivered twice.
        state.load(&limits).await;
        Scheduler::over(state, store, courier, config)
    }

    /// The same scheduler reading `clock` instead (tests: paused tokio time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.state.set_clock(clock);
        self
    }
}

impl<S: State> Scheduler<S> {
    /// A scheduler over `state`, whose records are in `store`.
    pub fn over(
        state: S,
        store: Arc<dyn Store>,
        courier: Arc<dyn Courier>,
        config: QueueConfig,
    ) -> Self {
        Scheduler {
            state,
            limits: limits_of(&*courier, &config),
            courier,
            config,
            clock: Clock::System,
            commands: None,
            generations: HashMap::new(),
            in_flight: HashSet::new(),
            paused: HashSet::new(),
            results: mpsc::unbounded_channel(),
            deliveries: TaskTracker::new(),
            store,
            notices: Notices::off(),
            given_up: None,
        }
    }

    /// The same scheduler telling what `notices` says, also of the dead letters `given_up`
    /// brings (made by the splitter).
    pub fn with_notices(
        mut self,
        notices: Notices,
        given_up: mpsc::UnboundedReceiver<Entry>,
    ) -> Self {
        self.notices = notices;
        self.given_up = Some(given_up);
        self
    }

    /// The same scheduler taking the `queue` commands' requests from `channel`.
    pub fn with_commands(mut self, channel: Arc<dyn CommandChannel>) -> Self {
        self.commands = Some(channel);
        self
    }

    /// Runs until `shutdown`, then waits up to `grace` for deliveries in flight; anything left
    /// stays queued (a replica's leases lapse and another replica sends those messages).
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) {
        let mut tick = tokio::time::interval(self.state.tick());
        loop {
            self.check_credentials().await;
            let wait = self.dispatch().await;
            tokio::select! {
                _ = self.state.wait_for_mail(wait) => {}
                Some((entry, outcome)) = self.results.1.recv() => {
                    self.finish(entry, outcome).await;
                    // Every outcome that is in before the next claim: at a high rate, a claim
                    // per finished delivery would cost more than the sends.
                    while let Ok((entry, outcome)) = self.results.1.try_recv() {
                        self.finish(entry, outcome).await;
                    }
                }
                Some(entry) = next_given_up(&mut self.given_up) => {
                    self.tell_dead(&entry, Cause::GivenUp).await;
                }
                // Not per message: reporting walks the whole queue.
                _ = tick.tick() => self.housekeeping().await,
                _ = shutdown.cancelled() => break,
            }
        }
        self.deliveries.close();
        if tokio::time::timeout(grace, self.drain()).await.is_err() {
            tracing::warn!(
                in_flight = self.deliveries.len(),
                "deliveries still running at shutdown stay queued (a replica's leases lapse and \
                 another replica sends them)"
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

    /// The commands, the metrics and the state's upkeep.
    async fn housekeeping(&mut self) {
        // Announced messages first, so a request can name a message just accepted.
        self.state.wait_for_mail(Duration::ZERO).await;
        self.serve_requests().await;
        let now = self.clock.now();
        if let Some(depths) = self.state.depths().await {
            // Unknown (the database down): left as last reported rather than shown as zero.
            if let Ok(depths) = depths {
                report_depths(&*self.courier, |account| depths.get(account).copied(), now);
            }
            report_store(&*self.store).await;
        }
        self.state.upkeep(self.in_flight.len(), now).await;
    }

    /// New credentials (a new token file, SIGHUP) resume the account: everything held goes out
    /// at once. The generation is noted before the account's first delivery starts, so new
    /// credentials arriving while it fails are told apart from those it failed with.
    async fn check_credentials(&mut self) {
        for account in self.courier.accounts() {
            let Some(limits) = self.courier.limits(&account) else {
                continue;
            };
            let seen = self.generations.insert(account.clone(), limits.generation);
            if seen.is_some_and(|seen| seen != limits.generation) {
                let key = MailboxKey {
                    account,
                    user: None,
                };
                self.paused.remove(&key.account);
                match self.state.note(&key, Note::Resumed).await {
                    Ok(true) => {
                        self.tell_resumed(&key, "credentials changed: held mail goes out now")
                    }
                    Ok(false) => {}
                    Err(err) => tracing::warn!(%err, "cannot resume the account in the queue"),
                }
            }
        }
    }

    /// Claims and starts what may be sent now; returns how long to sleep at most.
    async fn dispatch(&mut self) -> Duration {
        let room = S::MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            return S::IDLE;
        }
        let now = self.clock.now();
        let claimed = match self.state.claim(&self.limits, room, now).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(%err, "cannot claim queued messages; trying again");
                return S::IDLE;
            }
        };
        if !claimed.is_empty() {
            for entry in claimed {
                self.start(entry);
            }
            return Duration::ZERO;
        }
        match self.state.next_due(now).await {
            Ok(Some(at)) if at > now => at
                .duration_since(now)
                .unwrap_or_default()
                .clamp(WAKE_FLOOR, S::IDLE),
            // Due but not claimable: a mailbox at its limit, deferred or held, or a paused account.
            Ok(Some(_)) => S::BLOCKED,
            Ok(None) | Err(_) => S::IDLE,
        }
    }

    fn start(&mut self, entry: Entry) {
        if !self.in_flight.insert(entry.id.clone()) {
            return;
        }
        spawn_attempt(
            &self.deliveries,
            self.store.clone(),
            self.courier.clone(),
            entry,
            self.results.0.clone(),
        );
    }

    /// Writes down one delivery's outcome and its consequence for the mailbox and the account,
    /// and tells of it once the state took it.
    async fn finish(&mut self, mut entry: Entry, outcome: Result<Receipt, DeliveryError>) {
        self.in_flight.remove(&entry.id);
        let now = self.clock.now();
        let key = MailboxKey::of(&entry);
        let error = match outcome {
            // Removed (and logged) by the delivery's task.
            Ok(receipt) => {
                let met_the_pause = entry.held.as_deref() == Some(verdict::HELD_FOR_ACCOUNT);
                if self.paused.remove(&key.account) || met_the_pause {
                    self.resume_after(&key).await;
                }
                self.note(&key, Note::Sent).await;
                self.tell_delivered(&entry, &receipt);
                self.settle(Settled::Sent(entry)).await;
                return;
            }
            Err(error) => error,
        };
        entry.record(now, error.summary());
        if let Some(reason) = verdict::dead_reason(&self.config, &entry, &error, now) {
            entry.dead_reason = Some(reason);
            self.give_up(&key, entry, &error, now).await;
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
        let warn = self.due_for_warning(&mut entry, now);
        if self.settle(Settled::Retry(entry.clone())).await {
            self.tell_deferred(&entry, &error);
            if warn {
                self.tell_delayed(&entry, &error).await;
            }
        }
    }

    /// Makes `entry` (its `dead_reason` set after `error`) a dead letter, and tells of it once
    /// the state took it; if the state cannot, it stays queued and is tried again.
    async fn give_up(
        &mut self,
        key: &MailboxKey,
        mut entry: Entry,
        error: &DeliveryError,
        now: SystemTime,
    ) {
        let too_old = verdict::too_old(&self.config, &entry, now);
        if !too_old {
            // A message's own fault says nothing against the mailbox or the credentials.
            self.note(key, Note::Sent).await;
        }
        let reason = entry.dead_reason.as_deref().unwrap_or_default();
        tracing::warn!(id = %entry.id, %reason, "dead letter");
        let settled = Settled::Dead(entry.clone());
        match self.state.settle(&self.limits, settled).await {
            Ok(true) => {
                let cause = match too_old {
                    true => Cause::Expired {
                        last: error,
                        account_gone: self.courier.limits(&entry.account).is_none(),
                    },
                    false => Cause::Refused(error),
                };
                self.tell_dead(&entry, cause).await;
            }
            Ok(false) => forgotten(&entry.id),
            Err(err) => {
                tracing::error!(id = %entry.id, %err, "cannot move the message to dead letters; it stays queued");
                entry.dead_reason = None;
                entry.next_attempt = now + backoff(&self.config, entry.attempts);
                self.settle(Settled::Retry(entry)).await;
            }
        }
    }

    /// Settles an attempt; true when the state took it. A failure is logged (the record on
    /// disk, or the lease lapsing, keeps the message).
    async fn settle(&mut self, settled: Settled) -> bool {
        let id = match &settled {
            Settled::Sent(entry) | Settled::Retry(entry) | Settled::Dead(entry) => entry.id.clone(),
        };
        match self.state.settle(&self.limits, settled).await {
            Ok(true) => true,
            // Its record must not be written back.
            Ok(false) => {
                forgotten(&id);
                false
            }
            Err(err) => {
                tracing::error!(id, %err, "cannot update the queue record; it is tried again");
                false
            }
        }
    }

    /// What a temporary failure or a held account means for the mailbox and the account, and
    /// how long the message waits (a held message waits for its hold, not for a backoff).
    async fn consequence(
        &mut self,
        key: &MailboxKey,
        entry: &mut Entry,
        error: &DeliveryError,
        now: SystemTime,
    ) -> Duration {
        let probe_at = now + self.config.retry_max;
        let configured = self.courier.limits(&key.account).is_some();
        let held = match verdict::effect(error, configured) {
            Effect::PauseAccount => {
                self.paused.insert(key.account.clone());
                if self.note(key, Note::Paused(probe_at)).await {
                    tracing::warn!(account = %key.account, error = %error.summary(), "account paused until its credentials change");
                    self.tell_held(key, false, error);
                }
                Some(verdict::HELD_FOR_ACCOUNT)
            }
            Effect::HoldMailbox => {
                if self.note(key, Note::Held(probe_at)).await {
                    tracing::warn!(mailbox = %key, error = %error.summary(), "mailbox held until it is fixed");
                    self.tell_held(key, true, error);
                }
                Some(verdict::HELD_FOR_MAILBOX)
            }
            Effect::Precondition => {
                let times = self.state.precondition(key).await.unwrap_or_else(|err| {
                    tracing::warn!(mailbox = %key, %err, "cannot count a failed precondition");
                    0
                });
                if times >= PRECONDITION_HOLD && configured {
                    tracing::warn!(
                        mailbox = %key, %error, times,
                        "mailbox held: Gmail keeps answering \"Precondition check failed.\"; \
                         for a service account check its domain-wide delegation, for a new user \
                         wait until the mailbox exists; `queue retry` or SIGHUP to try again now"
                    );
                    if self.note(key, Note::Held(probe_at)).await {
                        self.tell_held(key, true, error);
                    }
                    let user = key.user.as_deref();
                    let reason = error.summary();
                    let fix = verdict::PRECONDITION_FIX;
                    self.courier.note_hold(&key.account, user, &reason, fix);
                    Some(verdict::HELD_FOR_PRECONDITION)
                } else {
                    None
                }
            }
            Effect::RateLimited => {
                self.note(key, Note::Throttled).await;
                tracing::info!(mailbox = %key, "rate limited: sending slower");
                None
            }
            Effect::None => None,
        };
        if let Some(why) = held {
            entry.held = Some(why.to_string());
            return Duration::ZERO;
        }
        if let Some(after) = verdict::mailbox_deferral(error) {
            tracing::warn!(mailbox = %key, ?after, "sending limit reached: mailbox deferred");
            self.note(key, Note::Deferred(now + after)).await;
        }
        entry.failures += 1;
        verdict::retry_wait(&self.config, error, entry.failures)
    }

    /// Keeps a consequence; a failure is logged, not fatal (the limits are a matter of pace, and
    /// the next outcome writes them again). True when it is news.
    async fn note(&mut self, key: &MailboxKey, note: Note) -> bool {
        match self.state.note(key, note).await {
            Ok(news) => news,
            Err(err) => {
                tracing::warn!(mailbox = %key, %err, "cannot record a mailbox's state in the queue");
                true
            }
        }
    }
}

/// A message deleted meanwhile, or taken over by another replica: its outcome is not this
/// process's to write (nor to tell).
fn forgotten(id: &str) {
    tracing::info!(
        id,
        "deleted meanwhile, or taken over by another replica; forgotten"
    );
}

/// The next dead letter made outside the core; never, without a source.
async fn next_given_up(given_up: &mut Option<mpsc::UnboundedReceiver<Entry>>) -> Option<Entry> {
    match given_up {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// The queue per configured account for `/metrics`: the depth and the oldest message's age
/// (`depth_of` says them; zero for an account with nothing queued, so a drained queue shows as
/// drained).
fn report_depths(
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
async fn report_store(store: &dyn Store) {
    if let Ok(dead) = store.count(Place::Dead).await {
        crate::telemetry::dead_letters(dead);
    }
    crate::telemetry::queue_store_up(store.problem().is_none());
}
