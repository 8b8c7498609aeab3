//! The held transactions of split messages, grouped for every replica ([`SharedGroups`]): each
//! group is a row of `split_groups` (its header recipients, the end of its window, when it is
//! next due, a version), its transactions are `held` rows naming it (`split_group`), and the
//! merges made of it are found by their `group_key`.
//!
//! Holding a transaction upserts its group first, in the transaction that stores it: the group's
//! row lock orders the transactions of one message across replicas, and a release (which locks
//! the row too) cannot miss a transaction committed before it, nor one committed after it miss
//! the merge it repeats. A release is one transaction that locks the group at the version it was
//! read at and checks that every transaction it merges is still held, so two replicas releasing
//! the same group, or a transaction arriving or an operator deleting one meanwhile, leave the
//! group to be looked at again rather than merged twice or half.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use deadpool_postgres::Transaction;
use tokio_postgres::IsolationLevel;

use super::NEW_MAIL_CHANNEL;
use super::store::{PgStore, mailbox_column, move_in, parse, record_merge};
use crate::message::Message;
use crate::queue::record::{Entry, Merge, Place};
use crate::queue::split::shared::{HeldGroup, SharedGroups};
use crate::queue::store::StoreError;

/// A held transaction's group as it joins it: the header recipients (`None`: read from a
/// transaction's head when the group is looked at) and when it is due.
pub(super) struct Joining<'a> {
    pub header: Option<&'a BTreeSet<String>>,
    pub now: SystemTime,
}

/// Creates the group of a transaction being held, or counts one more transaction in it (the
/// earlier of the windows' ends; due at once).
const JOIN: &str = "
    INSERT INTO smtp2gmail.split_groups AS g (key, header, deadline, due_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (key) DO UPDATE
       SET header = coalesce(g.header, EXCLUDED.header),
           deadline = least(g.deadline, EXCLUDED.deadline),
           due_at = EXCLUDED.due_at,
           version = g.version + 1";

impl PgStore {
    /// Joins `entry` (held) to its group, in the caller's transaction.
    pub(super) async fn join(
        &self,
        tx: &Transaction<'_>,
        entry: &Entry,
        group: Joining<'_>,
    ) -> Result<(), StoreError> {
        let Some(split) = &entry.split else {
            return Err(StoreError::Unreadable(format!(
                "{}: a held transaction without a split record",
                entry.id
            )));
        };
        let header: Option<Vec<&str>> =
            (group.header).map(|header| header.iter().map(String::as_str).collect());
        tx.execute(
            JOIN,
            &[&split.group, &header, &entry.next_attempt, &group.now],
        )
        .await
        .map_err(self.fail("holding a transaction of a split message"))?;
        Ok(())
    }

    /// The groups due at `now` and their transactions and merges, in the caller's transaction.
    async fn read_due(
        &self,
        tx: &Transaction<'_>,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<HeldGroup>, tokio_postgres::Error> {
        let rows = tx
            .query(
                "SELECT key, header, deadline, version FROM smtp2gmail.split_groups
                  WHERE due_at <= $1 ORDER BY due_at LIMIT $2",
                &[&now, &(limit as i64)],
            )
            .await?;
        let mut groups: Vec<HeldGroup> = rows
            .into_iter()
            .map(|row| HeldGroup {
                key: row.get(0),
                header: row
                    .get::<_, Option<Vec<String>>>(1)
                    .map(|header| header.into_iter().collect()),
                deadline: row.get(2),
                version: row.get(3),
                parts: Vec::new(),
                merges: Vec::new(),
            })
            .collect();
        let keys: Vec<&str> = groups.iter().map(|g| g.key.as_str()).collect();
        let parts = tx
            .query(
                "SELECT id, split_group, entry FROM smtp2gmail.messages
                  WHERE place = 'held' AND split_group = ANY($1)",
                &[&keys],
            )
            .await?;
        let merges = tx
            .query(
                "SELECT id, group_key, record FROM smtp2gmail.merges
                  WHERE group_key = ANY($1) ORDER BY at, id",
                &[&keys],
            )
            .await?;
        let at: HashMap<String, usize> = (groups.iter().enumerate())
            .map(|(at, group)| (group.key.clone(), at))
            .collect();
        for row in parts {
            let (id, key): (String, String) = (row.get(0), row.get(1));
            match parse(&id, row.get(2)) {
                Ok(entry) => groups[at[&key]].parts.push(entry),
                Err(err) => tracing::error!(
                    id,
                    %err,
                    "unreadable held transaction left in place; inspect or delete it"
                ),
            }
        }
        for row in merges {
            let (id, key): (String, String) = (row.get(0), row.get(1));
            match Merge::from_json_value(row.get(2)) {
                Ok(merge) => groups[at[&key]].merges.push(merge),
                Err(err) => {
                    tracing::error!(record = id, %err, "unreadable merge record left in place")
                }
            }
        }
        Ok(groups)
    }

    /// Releases a group in the caller's transaction; false when it changed since it was read.
    async fn release(
        &self,
        tx: &Transaction<'_>,
        key: &str,
        version: i64,
        merge: &Merge,
    ) -> Result<bool, tokio_postgres::Error> {
        let unchanged = tx
            .query_opt(
                "SELECT FROM smtp2gmail.split_groups WHERE key = $1 AND version = $2 FOR UPDATE",
                &[&key, &version],
            )
            .await?;
        if unchanged.is_none() {
            return Ok(false);
        }
        record_merge(tx, merge).await?;
        let merged = &merge.entry;
        if move_in(tx, Place::Held, merge.place(), merged).await? != 1 {
            return Ok(false);
        }
        let others: Vec<&str> = merge
            .parts()
            .iter()
            .map(String::as_str)
            .filter(|id| *id != merged.id)
            .collect();
        let removed = tx
            .execute(
                "DELETE FROM smtp2gmail.messages WHERE place = 'held' AND id = ANY($1)",
                &[&others],
            )
            .await?;
        if removed != others.len() as u64 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM smtp2gmail.split_groups WHERE key = $1",
            &[&key],
        )
        .await?;
        if !merge.dead {
            // Delivered with the commit, and only if it commits.
            let mailbox = mailbox_column(merged.mailbox.as_deref());
            tx.execute("SELECT pg_notify($1, $2)", &[&NEW_MAIL_CHANNEL, &mailbox])
                .await?;
        }
        Ok(true)
    }

    /// Runs one statement on the groups; the rows it changed.
    async fn change_groups(
        &self,
        doing: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client.execute(sql, params).await.map_err(self.fail(doing))
    }
}

#[async_trait::async_trait]
impl SharedGroups for PgStore {
    async fn hold(
        &self,
        entry: &Entry,
        header: &BTreeSet<String>,
        message: &Message,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let joining = Joining {
            header: Some(header),
            now,
        };
        self.store(Place::Held, entry, message, Some(joining)).await
    }

    async fn next_group_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT min(due_at) FROM smtp2gmail.split_groups", &[])
            .await
            .map_err(self.fail("looking for held transactions due"))?;
        Ok(row.get(0))
    }

    /// One read-only snapshot, so that a group's version, transactions and merges are of one
    /// moment.
    async fn due_groups(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<HeldGroup>, StoreError> {
        let fail = self.fail("reading held transactions");
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(&fail)?;
        let groups = self.read_due(&tx, now, limit).await.map_err(&fail)?;
        tx.commit().await.map_err(&fail)?;
        Ok(groups)
    }

    async fn reschedule(
        &self,
        key: &str,
        version: i64,
        due: SystemTime,
    ) -> Result<bool, StoreError> {
        let changed = self
            .change_groups(
                "setting when held transactions are due",
                "UPDATE smtp2gmail.split_groups SET due_at = $3 WHERE key = $1 AND version = $2",
                &[&key, &version, &due],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn forget_group(&self, key: &str, version: i64) -> Result<bool, StoreError> {
        let changed = self
            .change_groups(
                "forgetting an empty group of held transactions",
                "DELETE FROM smtp2gmail.split_groups WHERE key = $1 AND version = $2",
                &[&key, &version],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn settle(&self, key: &str, version: i64, merge: &Merge) -> Result<bool, StoreError> {
        let fail = self.fail("merging held transactions");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(&fail)?;
        match self.release(&tx, key, version, merge).await {
            Ok(true) => {
                tx.commit().await.map_err(&fail)?;
                Ok(true)
            }
            Ok(false) => {
                let _ = tx.rollback().await;
                Ok(false)
            }
            Err(err) => {
                let _ = tx.rollback().await;
                Err(fail(err))
            }
        }
    }

    async fn restart_windows(
        &self,
        ended_before: SystemTime,
        deadline: SystemTime,
        now: SystemTime,
    ) -> Result<u64, StoreError> {
        self.change_groups(
            "restarting the windows of held transactions",
            "UPDATE smtp2gmail.split_groups SET deadline = $2, due_at = $3 WHERE deadline < $1",
            &[&ended_before, &deadline, &now],
        )
        .await
    }

    async fn forget_merges_before(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        self.change_groups(
            "forgetting old merges",
            "DELETE FROM smtp2gmail.merges WHERE at < $1",
            &[&cutoff],
        )
        .await
    }
}
