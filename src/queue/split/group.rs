//! One split message while its transactions arrive: who the headers name, who the envelopes
//! named so far, and when it is due to be released.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use super::SETTLE;
use crate::message::header_edits::merge_bcc;
use crate::message::mailbox::mailbox_key;
use crate::queue::record::{Attempt, Entry, Route, SplitRecord};

/// The held transactions of one message.
#[derive(Debug)]
pub(super) struct Group {
    /// Header recipients, normalized.
    pub header: BTreeSet<String>,
    /// The held transactions, oldest first.
    pub parts: Vec<Entry>,
    /// When `split_window` ends: from the first transaction on.
    pub deadline: SystemTime,
    /// Once complete: when to release, unless another transaction arrives first.
    pub settled_at: Option<SystemTime>,
}

/// What a released group becomes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Queued for delivery.
    Queue,
    /// A dead letter, for this reason.
    Dead(String),
}

impl Group {
    /// A group of one transaction, which arrived (or was loaded) `now`.
    pub fn new(first: Entry, header: BTreeSet<String>, now: SystemTime, window: Duration) -> Group {
        let mut group = Group {
            header,
            parts: Vec::new(),
            deadline: first.received_at + window,
            settled_at: None,
        };
        group.add(first, now, window);
        group
    }

    /// A group as replicas keep it: its transactions as the database holds them (in any order)
    /// and the end of its window as stored with it. Complete, it settles [`SETTLE`] after its
    /// latest transaction was received, as the spool's settles after its latest arrived.
    pub fn of(mut parts: Vec<Entry>, header: BTreeSet<String>, deadline: SystemTime) -> Group {
        parts.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        let mut group = Group {
            header,
            parts: Vec::new(),
            deadline,
            settled_at: None,
        };
        for part in parts {
            let received = part.received_at;
            group.insert(part, received);
        }
        group
    }

    /// Adds a transaction that arrived (or was loaded) `now`. A transaction already held (the
    /// same id) is not added twice.
    pub fn add(&mut self, part: Entry, now: SystemTime, window: Duration) {
        self.deadline = self.deadline.min(part.received_at + window);
        self.insert(part, now);
    }

    /// Adds a transaction in its place (oldest first), unless it is held already; complete, the
    /// group settles [`SETTLE`] after `now`.
    fn insert(&mut self, part: Entry, now: SystemTime) {
        if self.parts.iter().any(|p| p.id == part.id) {
            return;
        }
        let at = self
            .parts
            .partition_point(|p| (p.received_at, &p.id) <= (part.received_at, &part.id));
        self.parts.insert(at, part);
        self.settled_at = self.is_complete().then(|| now + SETTLE);
    }

    /// When the group should be released.
    pub fn due(&self) -> SystemTime {
        self.settled_at
            .map_or(self.deadline, |t| t.min(self.deadline))
    }

    /// The normalized envelope recipients of every transaction.
    pub fn named(&self) -> HashSet<String> {
        let all = self.parts.iter().flat_map(|p| &p.rcpt_to);
        all.map(|a| mailbox_key(a)).collect()
    }

    /// True once the envelopes together name every header recipient.
    pub fn is_complete(&self) -> bool {
        let named = self.named();
        self.header.iter().all(|a| named.contains(a))
    }

    /// Header recipients no envelope named, in order.
    pub fn uncovered(&self) -> Vec<String> {
        let named = self.named();
        self.header
            .iter()
            .filter(|a| !named.contains(*a))
            .cloned()
            .collect()
    }

    /// The merged message's record: the oldest transaction's, with every envelope recipient of
    /// the group once (as first spelled) and the list of transactions merged.
    pub fn merged(&self, outcome: &Outcome, now: SystemTime) -> Entry {
        let mut entry = self.parts[0].clone();
        let mut seen = HashSet::new();
        entry.rcpt_to = self
            .parts
            .iter()
            .flat_map(|p| &p.rcpt_to)
            .filter(|a| seen.insert(mailbox_key(a)))
            .cloned()
            .collect();
        entry.next_attempt = now;
        entry.route = self.merged_route();
        let base = entry.split.take();
        entry.split = base.map(|record| SplitRecord {
            parts: self.parts.iter().map(|p| p.id.clone()).collect(),
            uncovered: self.uncovered(),
            ..record
        });
        if let Outcome::Dead(reason) = outcome {
            // Not an attempt: nothing was sent. The history says when and why it was given up.
            entry.history.push(Attempt {
                at: now,
                outcome: reason.clone(),
            });
            entry.last_error = Some(reason.clone());
            entry.dead_reason = Some(reason.clone());
        }
        entry
    }

    /// The decision for the merged message, from its transactions' stored decisions: the oldest
    /// one's, with a Bcc naming every envelope-only recipient of any transaction once. `None`
    /// when a transaction has no usable decision (held by version 1): the merged message is then
    /// routed at its first delivery.
    fn merged_route(&self) -> Option<Route> {
        let routes = self.parts.iter().map(|p| p.route.as_ref());
        let routes: Vec<&Route> = routes.collect::<Option<_>>()?;
        let uploads: Vec<&[_]> = routes.iter().map(|r| r.upload.as_slice()).collect();
        Some(Route {
            subject: routes.first()?.subject.clone(),
            upload: merge_bcc(&uploads),
        })
    }

    /// Who has the message once the group is released: every envelope recipient, and when it is
    /// sent, every header recipient too (Gmail delivers to them). A later transaction naming only
    /// these is a repetition.
    pub fn served(&self, outcome: &Outcome) -> Vec<String> {
        let mut served: BTreeSet<String> = self.named().into_iter().collect();
        if *outcome == Outcome::Queue {
            served.extend(self.header.iter().cloned());
        }
        served.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    fn part(id: &str, at: SystemTime, rcpt: &[&str]) -> Entry {
        crate::queue::split::test_part(id, at, rcpt)
    }

    fn header() -> BTreeSet<String> {
        ["a@x", "b@x", "c@x"].map(String::from).into()
    }

    #[test]
    fn complete_once_every_header_recipient_is_named_then_settles() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut group = Group::new(part("02", t0, &["a@x"]), header(), t0, WINDOW);
        assert!(!group.is_complete());
        assert_eq!(group.due(), t0 + WINDOW);
        assert_eq!(group.uncovered(), ["b@x", "c@x"]);

        let now = t0 + Duration::from_secs(1);
        group.add(part("03", now, &["B@X", "bcc@y"]), now, WINDOW);
        assert!(!group.is_complete());
        group.add(
            part("01", t0 - Duration::from_secs(5), &["c@x"]),
            now,
            WINDOW,
        );
        assert!(group.is_complete());
        assert_eq!(group.due(), now + SETTLE);
        assert_eq!(group.deadline, t0 - Duration::from_secs(5) + WINDOW);

        let merged = group.merged(&Outcome::Queue, now);
        assert_eq!(merged.id, "01", "the oldest transaction's id");
        assert_eq!(merged.rcpt_to, ["c@x", "a@x", "B@X", "bcc@y"]);
        let record = merged.split.unwrap();
        assert_eq!(record.parts, ["01", "02", "03"]);
        assert!(record.uncovered.is_empty());
        assert_eq!(merged.dead_reason, None);
        assert_eq!(
            group.served(&Outcome::Queue),
            ["a@x", "b@x", "bcc@y", "c@x"]
        );
    }

    #[test]
    fn a_group_read_back_from_the_database_settles_after_its_latest_transaction() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = t0 + Duration::from_secs(3);
        let deadline = t0 + WINDOW;
        let parts = vec![part("02", later, &["b@x", "c@x"]), part("01", t0, &["a@x"])];
        let group = Group::of(parts, header(), deadline);
        let ids: Vec<&str> = group.parts.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["01", "02"], "oldest first");
        assert_eq!(group.due(), later + SETTLE);
        assert_eq!(
            group.deadline, deadline,
            "the stored window, not one from the parts"
        );

        let incomplete = Group::of(vec![part("01", t0, &["a@x"])], header(), deadline);
        assert_eq!(incomplete.due(), deadline);
    }

    #[test]
    fn the_same_transaction_twice_counts_once_and_repeats_are_harmless() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut group = Group::new(part("01", t0, &["a@x"]), header(), t0, WINDOW);
        group.add(part("01", t0, &["a@x"]), t0, WINDOW);
        group.add(part("02", t0, &["a@x"]), t0, WINDOW);
        assert_eq!(group.parts.len(), 2);
        assert_eq!(group.merged(&Outcome::Queue, t0).rcpt_to, ["a@x"]);
    }

    #[test]
    fn an_incomplete_group_made_a_dead_letter() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let group = Group::new(part("01", t0, &["a@x", "bcc@y"]), header(), t0, WINDOW);
        assert_eq!(group.merged(&Outcome::Queue, t0).attempts, 0);
        let dead = Outcome::Dead("why".into());
        let merged = group.merged(&dead, t0 + WINDOW);
        assert_eq!(merged.dead_reason.as_deref(), Some("why"));
        assert_eq!(merged.last_error.as_deref(), Some("why"));
        assert_eq!(merged.split.unwrap().uncovered, ["b@x", "c@x"]);
        assert_eq!(group.served(&dead), ["a@x", "bcc@y"], "only the envelopes");
    }
}
