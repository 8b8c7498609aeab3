//! The core's state for the one server on a spool: kept in memory, rebuilt from the records at
//! each start (holds, paces and streaks start afresh: they are about the moment, and a restart is
//! an operator's way of saying "try again").
//!
//! The waiting messages are indexed by mailbox, and the mailboxes by when they may send next
//! ([`Index`]), so choosing what to send costs the mailboxes whose time has come, not the backlog.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::mailboxes::{Index, MailboxKey};
use super::state::{Limits, Note, Settled, State};
use crate::config::QueueConfig;
use crate::message::Message;
use crate::queue::control::{self, ControlError};
use crate::queue::courier::Clock;
use crate::queue::record::{Entry, Place};
use crate::queue::store::{Store, StoreError};

/// What the spool's state remembers of one account (as opposed to its mailboxes).
#[derive(Default)]
struct AccountState {
    /// Paused for an account-wide credentials problem, until this time's probe.
    paused_until: Option<SystemTime>,
    /// The one mailbox allowed to send while paused, to find out whether the fix was made.
    probe: Option<MailboxKey>,
    /// Mailboxes with mail due, waiting for the pause to end.
    parked: HashSet<MailboxKey>,
    /// Mailboxes held for a problem of their own.
    held: HashSet<MailboxKey>,
}

/// The spool server's state, in memory.
pub struct MemoryState {
    store: Arc<dyn Store>,
    clock: Clock,
    /// How long a paused account waits for its probe.
    probe_every: Duration,
    /// Every waiting entry not in flight, by id.
    entries: HashMap<String, Entry>,
    /// Ids whose delivery is running: an announcement that comes late must not add them again.
    in_flight: HashSet<String>,
    /// The waiting entries by mailbox, and the mailboxes by when they may send.
    index: Index,
    accounts: HashMap<String, AccountState>,
    /// The limits last claimed under (for mailboxes requeued between claims).
    limits: Limits,
    /// Messages the acceptor and the splitter queued.
    incoming: mpsc::UnboundedReceiver<Entry>,
}

impl MemoryState {
    /// An empty state over `store`, taking newly queued messages from `incoming`.
    pub fn new(
        store: Arc<dyn Store>,
        config: &QueueConfig,
        incoming: mpsc::UnboundedReceiver<Entry>,
    ) -> MemoryState {
        MemoryState {
            store,
            clock: Clock::System,
            probe_every: config.retry_max,
            entries: HashMap::new(),
            in_flight: HashSet::new(),
            index: Index::new(config.max_send_rate),
            accounts: HashMap::new(),
            limits: Limits {
                max_send_rate: config.max_send_rate,
                max_sends: HashMap::new(),
            },
            incoming,
        }
    }

    /// Reads `clock` instead of the system clock.
    pub(super) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Indexes every queued message of the store (at start).
    pub async fn load(&mut self, limits: &Limits) {
        self.limits = limits.clone();
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

    /// The most deliveries at once for `key` now: one while its account probes.
    fn max_sends(&self, key: &MailboxKey) -> usize {
        let probing = self
            .accounts
            .get(&key.account)
            .is_some_and(|account| account.probe.is_some());
        if probing {
            1
        } else {
            self.limits.max_sends(&key.account)
        }
    }

    fn requeue(&mut self, key: &MailboxKey) {
        let max_sends = self.max_sends(key);
        self.index.requeue(key, max_sends, self.clock.now());
    }

    /// Lets one mailbox of each paused account whose probe time has come send one message.
    fn probe_paused_accounts(&mut self, now: SystemTime) {
        let mut probes = Vec::new();
        for (name, account) in &mut self.accounts {
            let due = account.paused_until.is_some_and(|t| t <= now);
            if due && account.probe.is_none() {
                account.paused_until = Some(now + self.probe_every);
                if let Some(key) = account.parked.iter().next().cloned() {
                    tracing::info!(account = %name, mailbox = %key, "paused account: probing with one message");
                    account.parked.remove(&key);
                    account.probe = Some(key.clone());
                    probes.push(key);
                }
            }
        }
        for key in probes {
            self.requeue(&key);
        }
    }

    /// Lifts an account's pause and its mailboxes' holds: everything held is due at once. True
    /// when anything was paused or held.
    fn resume(&mut self, name: &str) -> bool {
        let Some(account) = self.accounts.get_mut(name) else {
            return false;
        };
        let was = account.paused_until.is_some() || !account.held.is_empty();
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
        was
    }

    /// Frees the concurrency slot an attempt of `entry` held.
    fn free_slot(&mut self, entry: &Entry) {
        self.in_flight.remove(&entry.id);
        let key = MailboxKey::of(entry);
        let mailbox = self.index.mailbox(&key);
        mailbox.in_flight = mailbox.in_flight.saturating_sub(1);
        self.requeue(&key);
    }

    /// Whether the queue still holds `entry`: an operator may have deleted it while it was being
    /// delivered (an error reading the store counts as "still there": writing is then safe).
    async fn still_queued(&self, entry: &Entry) -> bool {
        let queued = self.store.contains(Place::Queue, &entry.id).await;
        queued.unwrap_or(true)
    }
}

#[async_trait::async_trait]
impl State for MemoryState {
    const MAX_IN_FLIGHT: usize = usize::MAX;
    // Nothing ready: only the control tick, a pause's probe or new mail can change that.
    const IDLE: Duration = crate::queue::control::POLL;
    const BLOCKED: Duration = super::WAKE_FLOOR;

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    fn tick(&self) -> Duration {
        crate::queue::control::POLL
    }

    async fn wait_for_mail(&mut self, timeout: Duration) {
        let mut announced = false;
        while let Ok(entry) = self.incoming.try_recv() {
            self.schedule(entry);
            announced = true;
        }
        if announced || timeout.is_zero() {
            return;
        }
        tokio::select! {
            Some(entry) = self.incoming.recv() => self.schedule(entry),
            _ = tokio::time::sleep(timeout) => {}
        }
    }

    async fn claim(
        &mut self,
        limits: &Limits,
        room: usize,
        now: SystemTime,
    ) -> Result<Vec<Entry>, StoreError> {
        self.limits = limits.clone();
        self.probe_paused_accounts(now);
        let mut starting = Vec::new();
        while starting.len() < room {
            let Some(key) = self.index.pop_ready(now) else {
                break;
            };
            let max_sends = self.max_sends(&key);
            let account = self.accounts.entry(key.account.clone()).or_default();
            if account.paused_until.is_some() && account.probe.as_ref() != Some(&key) {
                account.parked.insert(key);
                continue;
            }
            let mailbox = self.index.mailbox(&key);
            if mailbox.held_until.take().is_some() {
                account.held.remove(&key);
                tracing::info!(mailbox = %key, "held mailbox: probing again");
            }
            mailbox.deferred_until = mailbox.deferred_until.filter(|t| *t > now);
            while starting.len() < room
                && mailbox.in_flight < max_sends
                && mailbox.due.first().is_some_and(|(at, _)| *at <= now)
                && mailbox.pace.take(now)
            {
                let Some((_, id)) = mailbox.due.pop_first() else {
                    break;
                };
                if let Some(entry) = self.entries.remove(&id) {
                    self.in_flight.insert(id);
                    mailbox.in_flight += 1;
                    starting.push(entry);
                }
            }
            self.index.requeue(&key, max_sends, now);
        }
        Ok(starting)
    }

    async fn next_due(&mut self, _now: SystemTime) -> Result<Option<SystemTime>, StoreError> {
        Ok(self.index.next_ready())
    }

    async fn settle(&mut self, _limits: &Limits, settled: Settled) -> Result<bool, StoreError> {
        match settled {
            Settled::Sent(entry) => {
                self.free_slot(&entry);
                Ok(true)
            }
            Settled::Retry(entry) => {
                self.free_slot(&entry);
                if !self.still_queued(&entry).await {
                    return Ok(false);
                }
                let written = self.store.update(Place::Queue, &entry).await;
                // Scheduled whatever the disk said: the record on disk, if older, only delays
                // the attempt after a restart.
                self.schedule(entry);
                written.map(|()| true)
            }
            Settled::Dead(entry) => {
                self.free_slot(&entry);
                if !self.still_queued(&entry).await {
                    return Ok(false);
                }
                self.store
                    .move_to(Place::Queue, Place::Dead, &entry)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn enqueue(&mut self, entry: Entry, message: &Message) -> Result<(), StoreError> {
        self.store.put(Place::Queue, &entry, message).await?;
        self.schedule(entry);
        Ok(())
    }

    async fn note(&mut self, key: &MailboxKey, note: Note) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let account = self.accounts.entry(key.account.clone()).or_default();
        let mailbox = self.index.mailbox(key);
        let mut probe_went_through = false;
        let news = match &note {
            Note::Sent => {
                mailbox.pace.sent();
                mailbox.preconditions = 0;
                probe_went_through = account.probe.as_ref() == Some(key);
                true
            }
            Note::Throttled => {
                mailbox.pace.throttled(now);
                true
            }
            Note::Deferred(until) => {
                mailbox.deferred_until = Some(*until);
                true
            }
            Note::Held(until) => {
                let news = mailbox.held_until.is_none();
                mailbox.held_until = Some(*until);
                account.held.insert(key.clone());
                news
            }
            Note::Paused(until) => {
                let news = account.paused_until.is_none() || account.probe.is_some();
                account.paused_until = Some(*until);
                account.probe = None;
                news
            }
            Note::Resumed => false,
        };
        let news = match note {
            Note::Resumed => self.resume(&key.account),
            _ => news,
        };
        if probe_went_through {
            tracing::info!(account = %key.account, "probe went through: account resumed");
            self.resume(&key.account);
        }
        self.requeue(key);
        Ok(news)
    }

    async fn precondition(&mut self, key: &MailboxKey) -> Result<u32, StoreError> {
        let mailbox = self.index.mailbox(key);
        mailbox.preconditions += 1;
        let times = mailbox.preconditions;
        self.requeue(key);
        Ok(times)
    }

    async fn due_now(
        &mut self,
        id: &str,
        now: SystemTime,
    ) -> Result<(Entry, String), ControlError> {
        let (mut entry, done) = match self.unschedule(id) {
            // Only the schedule changes: not worth an fsync per message of a `retry --all`. After
            // a restart the record's own time applies, which only delays the attempt.
            Some(entry) => (entry, format!("{id}: will be retried now")),
            None => control::retry(&*self.store, id, now).await?,
        };
        entry.next_attempt = now;
        self.schedule(entry.clone());
        Ok((entry, done))
    }

    async fn lift(&mut self, key: &MailboxKey) -> Result<bool, StoreError> {
        let held = self.index.get_mut(key).is_some_and(|mailbox| {
            let held = mailbox.held_until.is_some() || mailbox.deferred_until.is_some();
            mailbox.held_until = None;
            mailbox.deferred_until = None;
            held
        });
        let paused = self
            .accounts
            .get(&key.account)
            .is_some_and(|account| account.paused_until.is_some());
        if paused {
            self.resume(&key.account);
        }
        self.requeue(key);
        Ok(held || paused)
    }

    async fn delete(&mut self, id: &str) -> Result<String, ControlError> {
        let scheduled = self.unschedule(id);
        match control::delete(&*self.store, id).await {
            // A delivery in flight finds the message gone when it ends (see `settle`).
            Ok(done) => Ok(done),
            Err(err) => {
                // Still on disk: keep delivering it.
                scheduled.into_iter().for_each(|entry| self.schedule(entry));
                Err(err)
            }
        }
    }

    async fn depths(&mut self) -> Option<Result<HashMap<String, (usize, SystemTime)>, StoreError>> {
        let mut per_account: HashMap<String, (usize, SystemTime)> = HashMap::new();
        for entry in self.entries.values() {
            let (depth, oldest) = per_account
                .entry(entry.account.clone())
                .or_insert((0, entry.received_at));
            *depth += 1;
            *oldest = (*oldest).min(entry.received_at);
        }
        Some(Ok(per_account))
    }

    async fn upkeep(&mut self, _in_flight: usize, now: SystemTime) {
        self.index.sweep(now);
    }
}
