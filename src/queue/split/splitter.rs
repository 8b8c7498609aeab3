//! The spool's splitter: the task that owns the held transactions of the one server, groups
//! them in its memory, releases each group once it is complete (or its window has passed), and
//! remembers what it released. What a release makes is decided in [`super::release`], shared
//! with the replicas' splitter ([`super::shared`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::group::Group;
use super::release::{Rules, drop_repeat, repeats};
use super::{HeldPart, header_of, journal};
use crate::config::QueueConfig;
use crate::queue::record::{Entry, Merge, Place};
use crate::queue::store::{MergeJournal, Store};

/// The longest sleep: held transactions are few, but the clock may jump.
const IDLE: Duration = Duration::from_secs(60);
/// After a failed release (disk trouble), the next try.
pub(super) const RETRY: Duration = Duration::from_secs(60);
/// How often merge records past their time are forgotten.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Owns the held transactions while the server runs.
pub struct Splitter {
    store: Arc<dyn Store>,
    journal: Arc<dyn MergeJournal>,
    rules: Rules,
    /// How long merges are remembered (`queue.max_age`).
    retention: Duration,
    scheduled: mpsc::UnboundedSender<Entry>,
    /// The scheduler core, told of each split message given up (it tells the sender and the
    /// operator, as of its own dead letters).
    given_up: mpsc::UnboundedSender<Entry>,
    incoming: mpsc::UnboundedReceiver<HeldPart>,
    /// Open groups by key.
    groups: HashMap<String, Group>,
    /// Merges done, by group key.
    released: HashMap<String, Vec<Merge>>,
    pruned: SystemTime,
}

impl Splitter {
    pub(super) fn new(
        store: Arc<dyn Store>,
        journal: Arc<dyn MergeJournal>,
        config: &QueueConfig,
        rules: Rules,
        (scheduled, given_up): (mpsc::UnboundedSender<Entry>, mpsc::UnboundedSender<Entry>),
        incoming: mpsc::UnboundedReceiver<HeldPart>,
    ) -> Splitter {
        Splitter {
            store,
            journal,
            rules,
            retention: config.max_age,
            scheduled,
            given_up,
            incoming,
            groups: HashMap::new(),
            released: HashMap::new(),
            pruned: SystemTime::UNIX_EPOCH,
        }
    }

    /// Runs until `shutdown`. Held transactions stay stored and are picked up at the next start.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.resume().await;
        loop {
            let now = SystemTime::now();
            let wait = self
                .groups
                .values()
                .map(Group::due)
                .min()
                .map_or(IDLE, |due| due.duration_since(now).unwrap_or_default())
                .min(IDLE);
            tokio::select! {
                Some(part) = self.incoming.recv() => self.add(part, SystemTime::now()).await,
                _ = tokio::time::sleep(wait) => self.release_due().await,
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// Finishes the merges a crash interrupted, then groups the transactions held on disk.
    async fn resume(&mut self) {
        let (merges, broken) = match self.journal.merges().await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::error!(%err, "cannot read the merge records; held transactions wait for the next start");
                return;
            }
        };
        for (record, err) in broken {
            tracing::error!(record, %err, "unreadable merge record left in place");
        }
        for merge in merges {
            match journal::complete(&*self.store, &merge).await {
                Ok(true) => {
                    tracing::info!(id = %merge.entry.id, "completed a merge of held transactions that a stop interrupted");
                    self.hand_on(&merge);
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(id = %merge.entry.id, %err, "cannot complete an interrupted merge; retried at the next start")
                }
            }
            self.remember(merge);
        }
        self.prune(SystemTime::now()).await;
        let held = match self.store.list(Place::Held).await {
            Ok((held, broken)) => {
                for (id, err) in broken {
                    tracing::error!(id, %err, "unreadable held transaction left in place; inspect or delete it");
                }
                held
            }
            Err(err) => {
                tracing::error!(%err, "cannot read the held transactions");
                return;
            }
        };
        if !held.is_empty() {
            tracing::info!(
                held = held.len(),
                "resuming held transactions of split messages"
            );
        }
        for entry in held {
            let Some(header) = header_of(&*self.store, &entry).await else {
                tracing::error!(id = %entry.id, "held transaction whose headers cannot be read left in place; inspect or delete it");
                continue;
            };
            self.add(HeldPart { entry, header }, SystemTime::now())
                .await;
        }
        // While the server was down the client could not send the rest: the window counts from
        // this start at the earliest, or a stop longer than the window would end every group
        // held across it incomplete.
        let window_from_start = SystemTime::now() + self.rules.window;
        for group in self.groups.values_mut() {
            group.deadline = group.deadline.max(window_from_start);
        }
    }

    fn remember(&mut self, merge: Merge) {
        let key = merge.group().to_string();
        self.released.entry(key).or_default().push(merge);
    }

    /// Takes one held transaction into its group, unless it repeats a merge already done.
    async fn add(&mut self, part: HeldPart, now: SystemTime) {
        let Some(key) = part.entry.split.as_ref().map(|s| s.group.clone()) else {
            tracing::error!(id = %part.entry.id, "held transaction without a split record left in place");
            return;
        };
        let released = self.released.get(&key).into_iter().flatten();
        if let Some(merge) = repeats(released, &part.entry) {
            return drop_repeat(&*self.store, &part.entry, merge).await;
        }
        let window = self.rules.window;
        match self.groups.get_mut(&key) {
            Some(group) => group.add(part.entry, now, window),
            None => {
                let group = Group::new(part.entry, part.header, now, window);
                self.groups.insert(key, group);
            }
        }
    }

    async fn release_due(&mut self) {
        let now = SystemTime::now();
        let due: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, group)| group.due() <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            if let Some(group) = self.groups.remove(&key) {
                self.release(key, group, now).await;
            }
        }
        if now.duration_since(self.pruned).unwrap_or_default() >= PRUNE_EVERY {
            self.prune(now).await;
        }
    }

    /// Queues a group as one message, or makes it a dead letter.
    async fn release(&mut self, key: String, mut group: Group, now: SystemTime) {
        // An operator may have deleted some meanwhile.
        let mut kept = Vec::new();
        for part in group.parts.drain(..) {
            if self
                .store
                .contains(Place::Held, &part.id)
                .await
                .unwrap_or(true)
            {
                kept.push(part);
            }
        }
        group.parts = kept;
        if group.parts.is_empty() {
            return;
        }
        let earlier = self.released.get(&key).and_then(|merges| merges.last());
        let release = self.rules.release(&group, earlier, now);
        let merge = &release.merge;
        if let Err(err) = journal::carry_out(&*self.store, &*self.journal, merge).await {
            tracing::error!(id = %merge.entry.id, %err, "cannot release held transactions; trying again in a minute");
            group.settled_at = None;
            group.deadline = now + RETRY;
            self.groups.insert(key, group);
            return;
        }
        release.log(&group);
        self.hand_on(merge);
        self.remember(release.merge);
    }

    /// The merged message to the scheduler core: to deliver, or (a dead letter) to tell of.
    /// The core stops only at shutdown, with the splitter.
    fn hand_on(&self, merge: &Merge) {
        let to = if merge.dead {
            &self.given_up
        } else {
            &self.scheduled
        };
        let _ = to.send(merge.entry.clone());
    }

    /// Forgets merges older than `retention` whose transactions are all gone.
    async fn prune(&mut self, now: SystemTime) {
        self.pruned = now;
        let cutoff = now
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut forgotten = HashSet::new();
        for merge in self.released.values().flatten() {
            if merge.at < cutoff {
                match self.journal.forget_merge(&merge.entry.id).await {
                    Ok(()) => {
                        forgotten.insert(merge.entry.id.clone());
                    }
                    Err(err) => {
                        tracing::warn!(id = %merge.entry.id, %err, "cannot remove an old merge record")
                    }
                }
            }
        }
        for merges in self.released.values_mut() {
            merges.retain(|m| !forgotten.contains(&m.entry.id));
        }
        self.released.retain(|_, merges| !merges.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::super::group::Outcome;
    use super::*;
    use crate::message::Message;
    use crate::queue::spool::Spool;

    const RAW: &[u8] = b"Message-ID: <m@x>\r\nTo: a@x, b@x\r\n\r\nbody\r\n";

    fn splitter(spool: &Spool, window: Duration) -> (Splitter, mpsc::UnboundedReceiver<Entry>) {
        let journal: Arc<dyn MergeJournal> = Arc::new(spool.clone());
        let spool: Arc<dyn Store> = Arc::new(spool.clone());
        let config = QueueConfig {
            split_window: window,
            ..QueueConfig::default()
        };
        let (scheduled, queued) = mpsc::unbounded_channel();
        let incoming = mpsc::unbounded_channel().1;
        let rules = Rules {
            window,
            routing: Arc::new(super::super::Rejecting),
        };
        let given_up = mpsc::unbounded_channel().0;
        let splitter = Splitter::new(
            spool,
            journal,
            &config,
            rules,
            (scheduled, given_up),
            incoming,
        );
        (splitter, queued)
    }

    /// Holds a transaction of `RAW` to `rcpt`, received `at`.
    async fn hold(spool: &Spool, id: &str, at: SystemTime, rcpt: &str) {
        let entry = Entry {
            size: RAW.len() as u64,
            ..crate::queue::split::test_part(id, at, &[rcpt])
        };
        let message = Message::from_bytes(RAW.to_vec());
        spool.put(Place::Held, &entry, &message).await.unwrap();
    }

    #[tokio::test]
    async fn a_window_that_passed_while_the_server_was_down_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        hold(&spool, "01", hour_ago, "a@x").await;
        let (mut splitter, _) = splitter(&spool, Duration::from_secs(60));
        splitter.resume().await;
        let group = &splitter.groups["g"];
        assert!(group.deadline > SystemTime::now() + Duration::from_secs(50));
        splitter.release_due().await;
        assert_eq!(
            spool.list(Place::Held).await.unwrap().0.len(),
            1,
            "still held"
        );
    }

    #[tokio::test]
    async fn complete_groups_are_queued_once_and_repeats_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let now = SystemTime::now();
        hold(&spool, "01", now, "a@x").await;
        hold(&spool, "02", now, "b@x").await;
        let (mut splitter, mut queued) = splitter(&spool, Duration::from_secs(60));
        splitter.resume().await;
        assert!(splitter.groups["g"].is_complete());
        let group = splitter.groups.remove("g").unwrap();
        splitter.release("g".into(), group, now).await;
        let merged = queued.try_recv().unwrap();
        assert_eq!((merged.id.as_str(), merged.rcpt_to.len()), ("01", 2));
        assert_eq!(
            spool.read(Place::Queue, "01").await.unwrap().unwrap(),
            merged
        );
        assert!(spool.list(Place::Held).await.unwrap().0.is_empty());

        // The client sends the second transaction again: dropped, nothing queued.
        hold(&spool, "03", now, "b@x").await;
        let again = spool.read(Place::Held, "03").await.unwrap().unwrap();
        splitter.groups.clear();
        let header = ["a@x", "b@x"].map(String::from).into();
        splitter
            .add(
                HeldPart {
                    entry: again,
                    header,
                },
                now,
            )
            .await;
        assert!(splitter.groups.is_empty() && queued.try_recv().is_err());
        assert!(spool.list(Place::Held).await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn a_merge_a_stop_interrupted_is_completed_and_queued_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let now = SystemTime::now();
        hold(&spool, "01", now, "a@x").await;
        hold(&spool, "02", now, "b@x").await;
        let (mut before, _) = splitter(&spool, Duration::from_secs(60));
        before.resume().await;
        let group = before.groups.remove("g").unwrap();
        let merge = Merge {
            entry: group.merged(&Outcome::Queue, now),
            dead: false,
            served: group.served(&Outcome::Queue).into_iter().collect(),
            at: now,
        };
        // The record is durable; the server dies before moving anything.
        spool.save_merge(&merge).await.unwrap();

        let (mut after, mut queued) = splitter(&spool, Duration::from_secs(60));
        after.resume().await;
        assert_eq!(queued.try_recv().unwrap(), merge.entry, "queued once");
        assert!(queued.try_recv().is_err());
        assert!(
            after.groups.is_empty(),
            "the held transactions are not grouped again"
        );
        assert!(spool.list(Place::Held).await.unwrap().0.is_empty());
        assert_eq!(
            spool.read(Place::Queue, "01").await.unwrap().unwrap(),
            merge.entry
        );
    }
}
