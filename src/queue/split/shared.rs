//! The replicas' splitter: the held transactions of a split message may reach different replicas,
//! so their groups are kept where every replica sees them — in the database ([`SharedGroups`],
//! implemented by `postgres::PgStore`) — and released by whichever replica finds one due.
//!
//! Each group is a row with the time it is next due to be looked at. Holding a transaction
//! stores it and makes its group due at once, in one transaction; the replica that held it looks
//! at the group right away (it is woken), the others within [`POLL`] — so a group whose replica
//! died is looked at all the same. Looking at a group reads it as it is (its transactions, header
//! recipients, window and the merges already made of the same message) and decides with the
//! spool's code ([`Group`], [`Rules`]): a transaction repeating a merge is dropped; a group not
//! due yet (settling, or incomplete within its window) gets its due time; a due one is released
//! as one [`Merge`](crate::queue::record::Merge). Writing either is conditional on the group not
//! having changed since it was read (its version): a transaction that arrived meanwhile makes
//! the group be looked at again instead. A release is one database transaction — the merge
//! record, the oldest transaction moved under the merged record, the others and the group
//! removed — so a replica killed midway leaves the group as it was, due, for another replica.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::group::Group;
use super::header_of;
use super::release::{Rules, drop_repeat, repeats};
use super::splitter::{PRUNE_EVERY, RETRY};
use crate::message::Message;
use crate::queue::record::{Entry, Merge};
use crate::queue::store::{Store, StoreError};

/// How often a replica looks for due groups besides those it holds transactions of: it bounds
/// how late a group is released when the replica that held its last transaction died.
pub const POLL: Duration = Duration::from_secs(5);

/// Groups looked at per query.
const BATCH: usize = 32;

/// A window that ended longer ago than this without its group being released ended while no
/// replica was running (a running one looks within [`POLL`]).
const UNRELEASED: Duration = Duration::from_secs(60);

/// One group of held transactions as the database holds it.
#[derive(Debug)]
pub struct HeldGroup {
    /// The group key (`split.group` of its transactions).
    pub key: String,
    /// Its header recipients, normalized; `None` for a group the schema migration made from
    /// transactions held before it (they are read from the oldest transaction's head).
    pub header: Option<BTreeSet<String>>,
    /// When its window ends.
    pub deadline: SystemTime,
    /// Changes with every transaction held into it; what is written about the group is written
    /// only while it is unchanged.
    pub version: i64,
    /// Its readable held transactions, in any order.
    pub parts: Vec<Entry>,
    /// The merges already made of the same message (its group key), oldest first.
    pub merges: Vec<Merge>,
}

/// What a store shared by replicas offers for held transactions. Times are the replicas'
/// clocks (as the spool's are its server's), so that a replica never finds a group due by the
/// database's clock and not yet by its own.
#[async_trait::async_trait]
pub trait SharedGroups: Store {
    /// Stores a held transaction (`entry.split` names its group, `entry.next_attempt` the end of
    /// its window) and its group, created with `header` at its first transaction, and makes the
    /// group due `now`: one transaction, committed before the 250.
    async fn hold(
        &self,
        entry: &Entry,
        header: &BTreeSet<String>,
        message: &Message,
        now: SystemTime,
    ) -> Result<(), StoreError>;

    /// When the earliest group is due; `None` when there is none.
    async fn next_group_due(&self) -> Result<Option<SystemTime>, StoreError>;

    /// At most `limit` groups due at `now`, earliest first, each read as of one moment.
    async fn due_groups(&self, now: SystemTime, limit: usize)
    -> Result<Vec<HeldGroup>, StoreError>;

    /// Makes group `key` due at `due`, if it is still at `version`; false otherwise.
    async fn reschedule(
        &self,
        key: &str,
        version: i64,
        due: SystemTime,
    ) -> Result<bool, StoreError>;

    /// Forgets group `key`, which has no readable transaction left, if it is still at `version`.
    async fn forget_group(&self, key: &str, version: i64) -> Result<bool, StoreError>;

    /// Releases group `key` as `merge`, in one transaction, if it is still at `version` and its
    /// transactions are still held: records the merge, moves the oldest transaction to where the
    /// merge goes under the merged record (waking the replicas for a queued one), removes the
    /// others and the group. False, with nothing done, when the group changed meanwhile.
    async fn settle(&self, key: &str, version: i64, merge: &Merge) -> Result<bool, StoreError>;

    /// Gives the groups whose window ended before `ended_before`, which no replica was running to
    /// release, a window ending at `deadline`, due `now`; returns how many.
    async fn restart_windows(
        &self,
        ended_before: SystemTime,
        deadline: SystemTime,
        now: SystemTime,
    ) -> Result<u64, StoreError>;

    /// Forgets the merges made before `cutoff`.
    async fn forget_merges_before(&self, cutoff: SystemTime) -> Result<u64, StoreError>;
}

/// One replica's splitter: releases the groups that are due, whichever replica held them.
pub struct SharedSplitter {
    groups: Arc<dyn SharedGroups>,
    rules: Rules,
    /// How long merges are remembered (`queue.max_age`).
    retention: Duration,
    /// Woken by this replica's intake when it holds a transaction.
    wake: Arc<Notify>,
    /// The scheduler core, told of each split message this replica gave up (it tells the
    /// sender and the operator); the replica whose release committed is the one that tells.
    given_up: mpsc::UnboundedSender<Entry>,
}

impl SharedSplitter {
    pub(super) fn new(
        groups: Arc<dyn SharedGroups>,
        rules: Rules,
        retention: Duration,
        wake: Arc<Notify>,
        given_up: mpsc::UnboundedSender<Entry>,
    ) -> SharedSplitter {
        SharedSplitter {
            groups,
            rules,
            retention,
            wake,
            given_up,
        }
    }

    /// Runs until `shutdown`. Held transactions stay in the database for any replica.
    pub async fn run(self, shutdown: CancellationToken) {
        self.restart_windows().await;
        let mut pruned = None;
        let mut failed = false;
        loop {
            let wait = match failed {
                true => POLL,
                false => self.until_next_due().await,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
            let now = SystemTime::now();
            // Cancelled at shutdown even while it waits for a lock: a release not committed is
            // rolled back whole, and the group stays due for any replica.
            tokio::select! {
                released = self.release_due(now) => failed = !released,
                _ = shutdown.cancelled() => break,
            }
            if pruned.is_none_or(|at: SystemTime| {
                now.duration_since(at).unwrap_or_default() >= PRUNE_EVERY
            }) {
                pruned = Some(now);
                self.prune(now).await;
            }
        }
    }

    /// While no replica ran, the client could not send the rest: a window that ended then counts
    /// from this start, as the spool's does from its server's. (A replica cannot tell whether
    /// others ran while it was down, except from a window that ended without its group being
    /// released.)
    async fn restart_windows(&self) {
        let now = SystemTime::now();
        let ended_before = now
            .checked_sub(UNRELEASED)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let restarted = self
            .groups
            .restart_windows(ended_before, now + self.rules.window, now)
            .await;
        match restarted {
            Ok(0) => {}
            Ok(groups) => tracing::info!(
                groups,
                "split messages whose window ended while no replica ran: their window counts from this start"
            ),
            Err(err) => {
                tracing::warn!(%err, "cannot look at the held transactions of split messages")
            }
        }
    }

    /// How long until the earliest group is due, at most [`POLL`].
    async fn until_next_due(&self) -> Duration {
        match self.groups.next_group_due().await {
            Ok(Some(due)) => due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(POLL),
            Ok(None) => POLL,
            Err(err) => {
                tracing::debug!(%err, "cannot look for held transactions due");
                POLL
            }
        }
    }

    /// Looks at the groups due at `now`; false when something failed (the next look waits).
    async fn release_due(&self, now: SystemTime) -> bool {
        let due = match self.groups.due_groups(now, BATCH).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(%err, "cannot read the held transactions of split messages");
                return false;
            }
        };
        let mut ok = true;
        for held in due {
            let (key, version) = (held.key.clone(), held.version);
            if let Err(err) = self.look_at(held, now).await {
                tracing::error!(group = %key, %err, "cannot release held transactions; trying again in a minute");
                let _ = self.groups.reschedule(&key, version, now + RETRY).await;
                ok = false;
            }
        }
        ok
    }

    /// Drops repetitions, then releases the group or sets when it is due.
    async fn look_at(&self, held: HeldGroup, now: SystemTime) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        for part in held.parts {
            match repeats(&held.merges, &part) {
                Some(merge) => drop_repeat(&*self.groups, &part, merge).await,
                None => parts.push(part),
            }
        }
        if parts.is_empty() {
            self.groups.forget_group(&held.key, held.version).await?;
            return Ok(());
        }
        let header = match held.header {
            Some(header) => header,
            None => header_of(&*self.groups, &parts[0]).await.ok_or_else(|| {
                StoreError::Unreadable(format!(
                    "{}: the headers of the held transaction cannot be read",
                    parts[0].id
                ))
            })?,
        };
        let group = Group::of(parts, header, held.deadline);
        if group.due() > now {
            self.groups
                .reschedule(&held.key, held.version, group.due())
                .await?;
            return Ok(());
        }
        let release = self.rules.release(&group, held.merges.last(), now);
        if self
            .groups
            .settle(&held.key, held.version, &release.merge)
            .await?
        {
            release.log(&group);
            if release.merge.dead {
                // The core stops only at shutdown, with the splitter.
                let _ = self.given_up.send(release.merge.entry.clone());
            }
        }
        Ok(())
    }

    /// Forgets merges older than the retention.
    async fn prune(&self, now: SystemTime) {
        let cutoff = now
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if let Err(err) = self.groups.forget_merges_before(cutoff).await {
            tracing::warn!(%err, "cannot remove old merge records");
        }
    }
}
