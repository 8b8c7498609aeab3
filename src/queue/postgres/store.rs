//! [`PgStore`]: the queue's storage in PostgreSQL, shared by every replica of a deployment. It
//! keeps the spool's promises ([`Store`]) with transactions instead of fsyncs:
//! - [`Store::put`] writes the message's row and its bytes in chunks ([`super::chunks`]) in one
//!   transaction, and returns only after `COMMIT`; on any failure the transaction is rolled back,
//!   so nothing is left behind (the client gets 451). The `NOTIFY` that wakes the replicas follows
//!   the commit, shared by the puts committed meanwhile ([`PgStore::announce`]);
//! - a message is removed only when asked (after Gmail's 200, or an operator's delete);
//! - a record and its bytes move between places together: the place is a column.
//!
//! Each message's `mailbox` column is the Gmail user it is sent as ([`Entry::mailbox`]), or `''`
//! when its account is one mailbox: a mailbox is the pair (account, mailbox), exactly as the
//! scheduler's [`crate::queue::schedule::MailboxKey`], so two accounts never share limits by
//! accident of naming.
//!
//! A database that cannot be reached (an outage: [`DatabaseError::is_outage`]) is
//! [`StoreError::Unavailable`], which the acceptor answers with 451; anything else (a missing
//! privilege, a bad statement) is [`StoreError::Io`] with the operator's message.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;

use super::error::{DatabaseError, Step};
use super::listener::Listener;
use super::{Database, NEW_MAIL_CHANNEL, chunks};
use crate::group_commit::GroupCommit;
use crate::message::Message;
use crate::queue::record::{Entry, Merge, Place};
use crate::queue::store::{Listing, MergeJournal, Store, StoreError};

impl From<DatabaseError> for StoreError {
    fn from(err: DatabaseError) -> StoreError {
        if err.is_outage() {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::Io(io::Error::other(err.to_string()))
        }
    }
}

/// The value of the `place` column.
pub fn place_name(place: Place) -> &'static str {
    place.name()
}

/// The value of the `mailbox` column for a message sent from `mailbox` ([`Entry::mailbox`]).
pub fn mailbox_column(mailbox: Option<&str>) -> &str {
    mailbox.unwrap_or("")
}

/// The queue in PostgreSQL, as one replica (or one `queue` command) uses it.
pub struct PgStore {
    pub(super) database: Arc<Database>,
    /// This replica's name on the leases it takes: host, process and a random part, so that a
    /// restarted process never mistakes a dead one's leases for its own.
    pub(super) owner: String,
    /// `queue.lease_time`.
    pub(super) lease_time: Duration,
    pub(super) listener: Listener,
    /// One `NOTIFY` for every announcement asked for while the previous one was sent.
    pub(super) announcements: GroupCommit,
}

impl PgStore {
    /// The store on an opened (connected and migrated) `database`, claiming under leases of
    /// `lease_time`. Opens no session of its own until [`PgStore::listen`] or the first
    /// [`crate::queue::shared::SharedStore::wait_for_mail`].
    pub fn new(database: Database, lease_time: Duration) -> PgStore {
        let owner = owner_name();
        tracing::info!(replica = %owner, database = %database.url().redacted(), "using the queue in PostgreSQL");
        PgStore {
            database: Arc::new(database),
            owner,
            lease_time,
            listener: Listener::new(),
            announcements: GroupCommit::new(),
        }
    }

    /// The name this replica takes leases under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Starts listening for new mail (a replica does it at start, before it looks for work, so
    /// nothing queued afterwards waits for a poll).
    pub async fn listen(&self) -> Result<(), DatabaseError> {
        self.listener.start(&self.database).await
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.database.client().await?)
    }

    /// Classifies a failure of a statement run while `doing` something.
    pub(super) fn fail(
        &self,
        doing: &'static str,
    ) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        move |err| {
            let err = self.database.target().classify(&err, Step::Use, doing);
            self.database.note(&err);
            err.into()
        }
    }

    /// Wakes every replica (this one too): something may be claimable now.
    ///
    /// Never inside the transaction that made the news: a transaction that notifies holds
    /// PostgreSQL's notification lock from its commit until its WAL is flushed, so commits that
    /// notify cannot share a flush (group commit) — that serialised every accepted message. Here
    /// the announcement is a transaction of its own, after the news committed, and holds nothing
    /// durable, so its commit does not wait for the disk. Callers that ask while one is being sent
    /// share the next one ([`GroupCommit`]): one per replica at a time, however many sessions
    /// commit. The payload is empty; a replica only needs to know that it should look.
    pub(super) async fn announce(&self) -> Result<(), StoreError> {
        let fail = self.fail("announcing new mail");
        self.announcements
            .run(|| async {
                let mut client = self.client().await?;
                let tx = super::claims::undoable(&mut client).await.map_err(&fail)?;
                tx.execute("SELECT pg_notify($1, '')", &[&NEW_MAIL_CHANNEL])
                    .await
                    .map_err(&fail)?;
                tx.commit().await.map_err(&fail)
            })
            .await
    }

    /// Stores a message in one transaction — its row, its chunks, and for a held transaction its
    /// `group` — and returns only after the commit, and after the announcement of a queued one.
    /// Any failure rolls it back (a connection lost midway rolls back on the server), so nothing
    /// is left behind.
    pub(super) async fn store(
        &self,
        place: Place,
        entry: &Entry,
        message: &Message,
        group: Option<super::groups::Joining<'_>>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(self.fail("starting to store a message"))?;
        let stored = match group {
            // The group first: its row lock orders the transactions of one message.
            Some(group) => match self.join(&tx, entry, group).await {
                Ok(()) => self.insert(&tx, place, entry, message).await,
                Err(err) => Err(err),
            },
            None => self.insert(&tx, place, entry, message).await,
        };
        if let Err(err) = stored {
            let _ = tx.rollback().await;
            return Err(err);
        }
        tx.commit()
            .await
            .map_err(self.fail("committing a stored message"))?;
        // Back to the pool before the announcement takes one: eight puts holding theirs while
        // waiting for a ninth would wait forever.
        drop(client);
        if place == Place::Queue
            && let Err(err) = self.announce().await
        {
            // Stored all the same (a 451 now would make the client send it twice); the replicas
            // find it within their idle sleep.
            tracing::warn!(id = %entry.id, %err, "cannot wake the replicas for a queued message");
        }
        Ok(())
    }

    /// The message's row and its chunks, in the caller's transaction.
    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        place: Place,
        entry: &Entry,
        message: &Message,
    ) -> Result<(), StoreError> {
        let mailbox = mailbox_column(entry.mailbox.as_deref());
        // A held transaction's group, for finding the transactions of one message.
        let group = entry.split.as_ref().filter(|_| place == Place::Held);
        let inserted = tx
            .execute(
                "INSERT INTO smtp2gmail.messages
                        (id, place, entry, account, mailbox, size, next_attempt, split_group)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &entry.id,
                    &place_name(place),
                    &Json(entry),
                    &entry.account,
                    &mailbox,
                    &(message.len() as i64),
                    &entry.next_attempt,
                    &group.map(|split| split.group.as_str()),
                ],
            )
            .await
            .map_err(self.fail("storing a message"))?;
        if inserted == 0 {
            return Err(StoreError::Exists(entry.id.clone()));
        }
        chunks::write(tx, self.database.target(), &entry.id, message).await
    }
}

/// `host-pid-random`: the host name (the pod's name in Kubernetes) says which replica holds a
/// lease, the process id which run of it, the random part keeps a reused pid apart.
fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// An entry from its stored JSON.
pub(super) fn parse(id: &str, value: serde_json::Value) -> Result<Entry, StoreError> {
    Entry::from_json_value(value).map_err(|err| StoreError::Unreadable(format!("{id}: {err}")))
}

/// Moves a message from one place to another under its new record (and its account and
/// mailbox), ending any lease (a dead letter or a message back from the dead is nobody's, a
/// merged message nobody's yet) and any group (a merged transaction is no longer held); returns
/// how many rows moved (0 or 1). For the caller's client or transaction.
pub(super) async fn move_in(
    client: &impl GenericClient,
    from: Place,
    to: Place,
    entry: &Entry,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE smtp2gmail.messages
                SET place = $3, entry = $4, next_attempt = $5, account = $6, mailbox = $7,
                    lease_owner = NULL, lease_until = NULL, split_group = NULL
              WHERE id = $1 AND place = $2",
            &[
                &entry.id,
                &place_name(from),
                &place_name(to),
                &Json(entry),
                &entry.next_attempt,
                &entry.account,
                &mailbox_column(entry.mailbox.as_deref()),
            ],
        )
        .await
}

/// Records a merge (replacing an earlier record of the same merge, as the spool's atomic rename
/// does), under its group key, so that a transaction of the same message sent again is found.
pub(super) async fn record_merge(
    client: &impl GenericClient,
    merge: &Merge,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO smtp2gmail.merges (id, record, at, group_key) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE
                SET record = EXCLUDED.record, at = EXCLUDED.at, group_key = EXCLUDED.group_key",
            &[&merge.entry.id, &Json(merge), &merge.at, &merge.group()],
        )
        .await
}

fn not_found(id: &str, place: Place) -> StoreError {
    StoreError::Io(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{id}: not in the {}", place_name(place)),
    ))
}

#[async_trait::async_trait]
impl Store for PgStore {
    /// One transaction: the row, the chunks; `Ok` only after the commit (and the `NOTIFY` that
    /// follows it). Any failure rolls it back (a connection lost midway rolls back on the server).
    ///
    /// A held transaction joins its group (`split_groups`), which replicas then look at: its
    /// header recipients are read from its head then. (The replicas' intake holds through
    /// `SharedGroups::hold`, which stores them with the group.)
    async fn put(&self, place: Place, entry: &Entry, message: &Message) -> Result<(), StoreError> {
        let group =
            (place == Place::Held && entry.split.is_some()).then(|| super::groups::Joining {
                header: None,
                now: std::time::SystemTime::now(),
            });
        self.store(place, entry, message, group).await
    }

    /// The record and its next attempt; a lease on the message is left as it is (its holder's
    /// outcome is written when it ends).
    async fn update(&self, place: Place, entry: &Entry) -> Result<(), StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE smtp2gmail.messages
                    SET entry = $3, next_attempt = $4, account = $5, mailbox = $6
                  WHERE id = $1 AND place = $2",
                &[
                    &entry.id,
                    &place_name(place),
                    &Json(entry),
                    &entry.next_attempt,
                    &entry.account,
                    &mailbox_column(entry.mailbox.as_deref()),
                ],
            )
            .await
            .map_err(self.fail("updating a message's record"))?;
        match changed {
            0 => Err(not_found(&entry.id, place)),
            _ => Ok(()),
        }
    }

    async fn read(&self, place: Place, id: &str) -> Result<Option<Entry>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT entry FROM smtp2gmail.messages WHERE id = $1 AND place = $2",
                &[&id, &place_name(place)],
            )
            .await
            .map_err(self.fail("reading a message's record"))?;
        row.map(|row| parse(id, row.get(0))).transpose()
    }

    async fn contains(&self, place: Place, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT FROM smtp2gmail.messages WHERE id = $1 AND place = $2)",
                &[&id, &place_name(place)],
            )
            .await
            .map_err(self.fail("looking for a message"))?;
        Ok(row.get(0))
    }

    /// At most one chunk (1 MiB) in memory; larger messages in a temporary file
    /// ([`super::chunks`]).
    async fn message(&self, place: Place, entry: &Entry) -> Result<Option<Message>, StoreError> {
        let mut client = self.client().await?;
        chunks::read(
            &mut client,
            self.database.target(),
            &entry.id,
            place_name(place),
        )
        .await
    }

    /// Whoever holds the lease, and wherever it is: Gmail took the message, keeping it would
    /// only send it again (a replica whose lease had lapsed may have made it a dead letter
    /// meanwhile). Its commit does not wait for the disk (see `claims`).
    async fn remove_delivered(&self, id: &str) -> Result<(), StoreError> {
        self.complete(id).await
    }

    /// The row, and its chunks with it (`ON DELETE CASCADE`).
    async fn remove(&self, place: Place, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let removed = client
            .execute(
                "DELETE FROM smtp2gmail.messages WHERE id = $1 AND place = $2",
                &[&id, &place_name(place)],
            )
            .await
            .map_err(self.fail("removing a message"))?;
        Ok(removed == 1)
    }

    /// One statement: the place, the record, and the end of any lease (a dead letter or a
    /// message back from the dead is nobody's).
    async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> Result<(), StoreError> {
        let client = self.client().await?;
        let moved = move_in(&client, from, to, entry)
            .await
            .map_err(self.fail("moving a message"))?;
        if moved == 0 {
            return Err(not_found(&entry.id, from));
        }
        if to == Place::Queue
            && let Err(err) = self.announce().await
        {
            // Moved all the same; the replicas find it within their idle sleep.
            tracing::warn!(id = %entry.id, %err, "cannot wake the replicas for a queued message");
        }
        Ok(())
    }

    /// Oldest first (by when the message was received, as the spool lists it).
    async fn list(&self, place: Place) -> Result<Listing, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, entry FROM smtp2gmail.messages WHERE place = $1 ORDER BY queued_at, id",
                &[&place_name(place)],
            )
            .await
            .map_err(self.fail("listing messages"))?;
        let (mut entries, mut broken) = (Vec::new(), Vec::new());
        for row in rows {
            let id: String = row.get(0);
            match parse(&id, row.get(1)) {
                Ok(entry) => entries.push(entry),
                Err(err) => broken.push((id, err)),
            }
        }
        entries.sort_by_key(|e| e.received_at);
        Ok((entries, broken))
    }

    async fn count(&self, place: Place) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM smtp2gmail.messages WHERE place = $1",
                &[&place_name(place)],
            )
            .await
            .map_err(self.fail("counting messages"))?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    /// None: bodies are spilled to the system's temporary directory and copied in chunks.
    fn spill_dir(&self) -> Option<PathBuf> {
        None
    }

    fn problem(&self) -> Option<String> {
        self.database
            .outage()
            .map(|outage| format!("the queue's database: {outage}"))
    }

    fn describe(&self) -> String {
        let target = self.database.target();
        format!(
            "the PostgreSQL queue in database \"{}\" at {}",
            target.database, target.servers
        )
    }
}

/// The `merges` table through the journal's interface. The replicas' splitter records its merges
/// inside the transaction that releases a group (`groups`), with the same statement
/// ([`record_merge`]), and finds them by group key.
#[async_trait::async_trait]
impl MergeJournal for PgStore {
    /// Replaces an earlier record of the same merge, as the spool's atomic rename does.
    async fn save_merge(&self, merge: &Merge) -> Result<(), StoreError> {
        let client = self.client().await?;
        record_merge(&client, merge)
            .await
            .map_err(self.fail("recording a merge"))?;
        Ok(())
    }

    async fn merges(&self) -> Result<(Vec<Merge>, Vec<(String, StoreError)>), StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, record FROM smtp2gmail.merges ORDER BY at, id",
                &[],
            )
            .await
            .map_err(self.fail("reading merge records"))?;
        let (mut merges, mut broken) = (Vec::new(), Vec::new());
        for row in rows {
            let id: String = row.get(0);
            match Merge::from_json_value(row.get(1)) {
                Ok(merge) => merges.push(merge),
                Err(err) => broken.push((id, err.into())),
            }
        }
        Ok((merges, broken))
    }

    async fn forget_merge(&self, id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM smtp2gmail.merges WHERE id = $1", &[&id])
            .await
            .map_err(self.fail("forgetting a merge"))?;
        Ok(())
    }
}
