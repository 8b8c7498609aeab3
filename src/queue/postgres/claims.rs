//! What replicas share ([`SharedStore`]): claiming messages under the limits of their mailboxes
//! and accounts, leases, and the outcomes that change those limits.
//!
//! A claim looks for mailboxes that have mail due and may send now (their `mailbox_limits` row
//! neither deferred nor held, its send slot come, fewer live leases than the account's
//! `max_concurrent_sends`, the account not paused), oldest mail first. Each mailbox is then claimed
//! in a transaction of its own that first locks its `mailbox_limits` row (creating it on first
//! sight): replicas claiming the same mailbox take turns on that lock and each sees the leases and
//! the send slot the one before it committed, so N replicas never exceed a mailbox's concurrency
//! or rate. Messages are taken with `FOR UPDATE SKIP LOCKED` ([`super::lease`]), one per send slot
//! that has come (slots are `1 / send_rate` apart, counted from the last one taken, so a claim
//! that comes late takes the slots it missed within [`SLOT_WINDOW`]) and no more than the
//! mailbox's concurrency leaves room for.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use super::lease;
use super::store::{PgStore, mailbox_column};
use crate::queue::record::Entry;
use crate::queue::schedule::{Limits, MIN_RATE, MailboxKey, Note, RECOVERY, SLOWDOWN};
use crate::queue::shared::SharedStore;
use crate::queue::store::StoreError;
use crate::relay::gmail::accounts::DEFAULT_CONCURRENT_SENDS;

/// The mailboxes with queued mail, found by skipping through the `(account, mailbox, due_at)`
/// index from one mailbox to the next (a loose index scan): the cost grows with the number of
/// mailboxes, not with the backlog, where grouping every due row took 15 ms at 7,650 rows.
macro_rules! with_queued_mailboxes {
    () => {
        "WITH RECURSIVE boxes (account, mailbox) AS (
            (SELECT account, mailbox FROM smtp2gmail.messages
              WHERE place = 'queue' ORDER BY account, mailbox LIMIT 1)
            UNION ALL
            SELECT n.account, n.mailbox FROM boxes b
             CROSS JOIN LATERAL (SELECT account, mailbox FROM smtp2gmail.messages
                                  WHERE place = 'queue'
                                    AND (account, mailbox) > (b.account, b.mailbox)
                                  ORDER BY account, mailbox LIMIT 1) n
        ), queued AS (
            SELECT b.account, b.mailbox, d.due
              FROM boxes b
             CROSS JOIN LATERAL (SELECT min(due_at) AS due FROM smtp2gmail.messages
                                  WHERE place = 'queue'
                                    AND account = b.account AND mailbox = b.mailbox) d
        )"
    };
}

/// Mailboxes with mail due that may send now, oldest mail first: `$1` at most; `$2` and `$3`
/// pair accounts with their most concurrent sends per mailbox, `$4` is the default.
const CANDIDATES: &str = concat!(
    with_queued_mailboxes!(),
    "
    SELECT q.account, q.mailbox
      FROM queued q
      LEFT JOIN smtp2gmail.mailbox_limits l ON l.account = q.account AND l.mailbox = q.mailbox
      LEFT JOIN smtp2gmail.account_limits a ON a.account = q.account
     WHERE q.due <= now()
       AND (l.account IS NULL
            OR (l.next_send_at <= now()
                AND (l.deferred_until IS NULL OR l.deferred_until <= now())
                AND (l.held_until IS NULL OR l.held_until <= now())))
       AND (a.paused_until IS NULL OR a.paused_until <= now())
       AND (SELECT count(*) FROM smtp2gmail.messages x
             WHERE x.account = q.account AND x.mailbox = q.mailbox
               AND x.lease_owner IS NOT NULL AND x.lease_until > now())
           < coalesce((SELECT c.most FROM unnest($2::text[], $3::bigint[]) AS c (account, most)
                        WHERE c.account = q.account), $4)
     ORDER BY q.due
     LIMIT $1"
);

/// Locks a mailbox's limits (creating them at the configured rate), brings its maximum rate to
/// the configuration's, and says at what rate it sends, whether it may send now, and how many
/// send slots have come: those since the last one taken, counting back at most `$4` seconds
/// ([`SLOT_WINDOW`]).
const LOCK_MAILBOX: &str = "
    INSERT INTO smtp2gmail.mailbox_limits AS l (account, mailbox, max_rate, send_rate)
    VALUES ($1, $2, $3, $3)
    ON CONFLICT (account, mailbox) DO UPDATE
       SET max_rate = EXCLUDED.max_rate, send_rate = least(l.send_rate, EXCLUDED.max_rate)
    RETURNING l.send_rate,
              l.next_send_at <= now()
              AND (l.deferred_until IS NULL OR l.deferred_until <= now())
              AND (l.held_until IS NULL OR l.held_until <= now())
              AND NOT EXISTS (SELECT FROM smtp2gmail.account_limits a
                               WHERE a.account = $1 AND a.paused_until > now()),
              1 + floor(extract(epoch FROM now() - greatest(l.next_send_at,
                                                              now() - make_interval(secs => $4)))
                        * l.send_rate)::bigint";

/// The live leases of a mailbox (read under its lock).
const LIVE_LEASES: &str = "
    SELECT count(*) FROM smtp2gmail.messages
     WHERE account = $1 AND mailbox = $2 AND lease_owner IS NOT NULL AND lease_until > now()";

/// Takes `$3` send slots of a mailbox, the first of them at most `$4` seconds old.
const TAKE_SLOTS: &str = "
    UPDATE smtp2gmail.mailbox_limits
       SET next_send_at = greatest(next_send_at, now() - make_interval(secs => $4))
                          + make_interval(secs => $3::bigint / send_rate),
           updated_at = now()
     WHERE account = $1 AND mailbox = $2";

/// For the transactions whose loss in a database crash costs at most a duplicate send, never
/// a message: a claim (its lease and send slot) and the removal of a sent message. Their commits
/// then return without waiting for the WAL flush (a few ms on ordinary disks, during which a
/// claim would hold its mailbox's row lock and a sent message its concurrency slot). Accepting
/// mail never does this: a 250 waits for the flush (docs/deployment.md, "What the database
/// must guarantee").
const NOT_WAITING_FOR_THE_DISK: &str = "SET LOCAL synchronous_commit = off";

/// A transaction whose commit does not wait for the disk ([`NOT_WAITING_FOR_THE_DISK`]).
pub(super) async fn undoable(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(NOT_WAITING_FOR_THE_DISK).await?;
    Ok(tx)
}

/// How far back unused send slots still count. The spool's scheduler starts the sends of one
/// wake-up together (its `WAKE_FLOOR`, 20 ms); a claim here is a few round trips to the database,
/// so slots that came during the last one are taken in the next rather than lost, which would
/// keep a busy mailbox below its rate. It is also the burst this allows: over any span T, at
/// most `rate × (T + SLOT_WINDOW) + 1` sends start (a quarter second let three replicas start
/// 2,053 in ten seconds at 200/s, 2.6 % over), and the mailbox's concurrency bounds it further.
const SLOT_WINDOW: f64 = 0.05;

impl PgStore {
    /// Claims at most `limit` messages of one mailbox (at most one per free send slot), under
    /// the lock of its limits row.
    async fn claim_mailbox(
        &self,
        account: &str,
        mailbox: &str,
        limits: &Limits,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let fail = || self.fail("claiming due messages");
        let mut client = self.client().await?;
        let tx = undoable(&mut client).await.map_err(fail())?;
        let lock = tx.prepare_cached(LOCK_MAILBOX).await.map_err(fail())?;
        let row = tx
            .query_one(
                &lock,
                &[&account, &mailbox, &limits.max_send_rate, &SLOT_WINDOW],
            )
            .await
            .map_err(fail())?;
        let (open, slots): (bool, i64) = (row.get(1), row.get(2));
        if !open {
            return Ok(Vec::new());
        }
        let live: i64 = tx
            .query_one(
                &tx.prepare_cached(LIVE_LEASES).await.map_err(fail())?,
                &[&account, &mailbox],
            )
            .await
            .map_err(fail())?
            .get(0);
        let most = limits.max_sends(account) as i64;
        // One message per send slot come, as many as the concurrency leaves room for.
        let room = (most - live).min(slots).min(limit as i64).max(0);
        if room == 0 {
            return Ok(Vec::new());
        }
        let target = self.database.target();
        let claimed = lease::claim(
            &tx,
            target,
            &self.owner,
            self.lease_time,
            room,
            (account, mailbox),
        )
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let taken = claimed.len() as i64;
        let take = tx.prepare_cached(TAKE_SLOTS).await.map_err(fail())?;
        tx.execute(&take, &[&account, &mailbox, &taken, &SLOT_WINDOW])
            .await
            .map_err(fail())?;
        let mut entries = Vec::with_capacity(claimed.len());
        for claimed in claimed {
            match Entry::from_json_value(claimed.entry) {
                Ok(entry) => entries.push(entry),
                // Left leased (so not claimed again at once) for the operator to see in
                // `queue list`; the lease lapses and it is tried again.
                Err(err) => {
                    tracing::error!(id = %claimed.id, %err, "unreadable queue record claimed")
                }
            }
        }
        tx.commit().await.map_err(fail())?;
        Ok(entries)
    }

    /// Whoever holds the lease, and wherever it is: Gmail took the message, keeping it would
    /// only send it again (a replica whose lease had lapsed may have made it a dead letter
    /// meanwhile).
    pub async fn complete(&self, id: &str) -> Result<(), StoreError> {
        let fail = || self.fail("removing a sent message");
        let mut client = self.client().await?;
        let tx = undoable(&mut client).await.map_err(fail())?;
        let delete = tx
            .prepare_cached("DELETE FROM smtp2gmail.messages WHERE id = $1")
            .await
            .map_err(fail())?;
        tx.execute(&delete, &[&id]).await.map_err(fail())?;
        tx.commit().await.map_err(fail())?;
        Ok(())
    }

    /// Runs one limits statement for a mailbox (`$1` account, `$2` mailbox, then `extra`).
    async fn limit_mailbox(
        &self,
        key: &MailboxKey,
        sql: &str,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let fail = || self.fail("recording a mailbox's limits");
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(fail())?;
        let mailbox = mailbox_column(key.user.as_deref());
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&key.account, &mailbox];
        params.extend_from_slice(extra);
        let row = client
            .query_opt(&statement, &params)
            .await
            .map_err(fail())?;
        Ok(row)
    }

    /// Runs one statement about an account (`params`: the account first) that answers whether
    /// it was news.
    async fn limit_account(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        doing: &'static str,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(self.fail(doing))?;
        let row = client
            .query_one(&statement, params)
            .await
            .map_err(self.fail(doing))?;
        Ok(row.get::<_, Option<bool>>(0).unwrap_or(true))
    }
}

/// A send went through: the rate recovers by `$3` of the configured rate and the streak of failed
/// preconditions ends. A mailbox already at its rate without a streak is not written (nor locked,
/// which would make the claims of other replicas wait).
const RECOVER: &str = "UPDATE smtp2gmail.mailbox_limits
    SET send_rate = least(max_rate, send_rate + max_rate * $3), preconditions = 0,
        updated_at = now()
  WHERE account = $1 AND mailbox = $2 AND (send_rate < max_rate OR preconditions > 0)";
/// Rate limited: the rate times `$3`, never below `$4` (or the configured rate if lower).
const SLOW_DOWN: &str = "UPDATE smtp2gmail.mailbox_limits
    SET send_rate = greatest(send_rate * $3, least($4, max_rate)), updated_at = now()
  WHERE account = $1 AND mailbox = $2";
/// The daily sending limit: nothing before `$3`.
const DEFER: &str = "UPDATE smtp2gmail.mailbox_limits SET deferred_until = $3, updated_at = now()
  WHERE account = $1 AND mailbox = $2";
/// Held until `$3`; answers whether it was not held before (every sub-statement sees the rows as
/// they were when the statement began).
const HOLD: &str = "
    WITH old AS (SELECT held_until FROM smtp2gmail.mailbox_limits
                  WHERE account = $1 AND mailbox = $2)
    UPDATE smtp2gmail.mailbox_limits SET held_until = $3, updated_at = now()
     WHERE account = $1 AND mailbox = $2
 RETURNING (SELECT old.held_until IS NULL OR old.held_until <= now() FROM old)";

/// The account paused until `$2`; answers whether it was not paused before.
const PAUSE: &str = "
    WITH old AS (SELECT paused_until FROM smtp2gmail.account_limits WHERE account = $1)
    INSERT INTO smtp2gmail.account_limits (account, paused_until) VALUES ($1, $2)
    ON CONFLICT (account) DO UPDATE SET paused_until = EXCLUDED.paused_until, updated_at = now()
 RETURNING (SELECT old.paused_until IS NULL OR old.paused_until <= now() FROM old)";

/// The account's pause, its mailboxes' holds and their streaks end, in one statement (so
/// together); answers whether anything was paused or held.
const RESUME: &str = "
    WITH held AS (SELECT count(*) AS n FROM smtp2gmail.mailbox_limits
                   WHERE account = $1 AND held_until IS NOT NULL),
         resumed AS (UPDATE smtp2gmail.account_limits
                        SET paused_until = NULL, updated_at = now()
                      WHERE account = $1 AND paused_until IS NOT NULL RETURNING 1),
         released AS (UPDATE smtp2gmail.mailbox_limits
                         SET held_until = NULL, preconditions = 0, updated_at = now()
                       WHERE account = $1 AND (held_until IS NOT NULL OR preconditions > 0)
                   RETURNING 1)
    SELECT EXISTS (SELECT FROM resumed) OR (SELECT n FROM held) > 0";

/// One more failed precondition; the streak.
const PRECONDITION: &str = "UPDATE smtp2gmail.mailbox_limits
    SET preconditions = preconditions + 1, updated_at = now()
  WHERE account = $1 AND mailbox = $2 RETURNING preconditions";

/// An operator's retry: the mailbox's deferral, hold and streak end; answers whether it was
/// deferred or held, and whether its account is paused.
const LIFT: &str = "
    WITH lifted AS (UPDATE smtp2gmail.mailbox_limits
                       SET deferred_until = NULL, held_until = NULL, preconditions = 0,
                           updated_at = now()
                     WHERE account = $1 AND mailbox = $2
                       AND (deferred_until > now() OR held_until > now()) RETURNING 1)
    SELECT EXISTS (SELECT FROM lifted),
           EXISTS (SELECT FROM smtp2gmail.account_limits
                    WHERE account = $1 AND paused_until IS NOT NULL)";

#[async_trait::async_trait]
impl SharedStore for PgStore {
    async fn claim(&self, limits: &Limits, limit: usize) -> Result<Vec<Entry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let candidates = {
            let fail = || self.fail("looking for due messages");
            let client = self.client().await?;
            let statement = client.prepare_cached(CANDIDATES).await.map_err(fail())?;
            let (accounts, most): (Vec<&str>, Vec<i64>) = limits
                .max_sends
                .iter()
                .map(|(account, most)| (account.as_str(), *most as i64))
                .unzip();
            client
                .query(
                    &statement,
                    &[
                        &(limit as i64),
                        &accounts,
                        &most,
                        &(DEFAULT_CONCURRENT_SENDS as i64),
                    ],
                )
                .await
                .map_err(fail())?
        };
        let mut claimed = Vec::new();
        for row in candidates {
            let room = limit - claimed.len();
            if room == 0 {
                break;
            }
            let (account, mailbox): (String, String) = (row.get(0), row.get(1));
            claimed.extend(self.claim_mailbox(&account, &mailbox, limits, room).await?);
        }
        Ok(claimed)
    }

    async fn renew(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        lease::renew(
            &client,
            self.database.target(),
            &self.owner,
            self.lease_time,
        )
        .await?;
        Ok(())
    }

    async fn release(&self, entry: &Entry) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let record = serde_json::to_value(entry)
            .map_err(|err| StoreError::Io(std::io::Error::other(err)))?;
        let released = lease::release(
            &client,
            self.database.target(),
            &entry.id,
            &self.owner,
            OffsetDateTime::from(entry.next_attempt),
            &record,
        )
        .await?;
        Ok(released)
    }

    async fn being_delivered(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT lease_until > now() FROM smtp2gmail.messages
                  WHERE id = $1 AND place = 'queue'",
                &[&id],
            )
            .await
            .map_err(self.fail("reading a message's lease"))?;
        Ok(row.and_then(|row| row.get::<_, Option<bool>>(0)) == Some(true))
    }

    async fn note(&self, key: &MailboxKey, note: Note) -> Result<bool, StoreError> {
        let news = |row: Option<tokio_postgres::Row>| {
            row.and_then(|row| row.get::<_, Option<bool>>(0))
                .unwrap_or(true)
        };
        match note {
            // The spool's adaptive pace (schedule::Pace), with its constants: additive increase,
            // multiplicative decrease, never below MIN_RATE (or the configured rate if lower).
            Note::Sent => self
                .limit_mailbox(key, RECOVER, &[&RECOVERY])
                .await
                .map(|_| true),
            Note::Throttled => self
                .limit_mailbox(key, SLOW_DOWN, &[&SLOWDOWN, &MIN_RATE])
                .await
                .map(|_| true),
            Note::Deferred(until) => self
                .limit_mailbox(key, DEFER, &[&until])
                .await
                .map(|_| true),
            Note::Held(until) => self.limit_mailbox(key, HOLD, &[&until]).await.map(news),
            Note::Paused(until) => {
                self.limit_account(PAUSE, &[&key.account, &until], "pausing an account")
                    .await
            }
            Note::Resumed => {
                let resumed = self
                    .limit_account(RESUME, &[&key.account], "resuming an account")
                    .await?;
                // Held mail is due now, for every replica.
                self.announce().await?;
                Ok(resumed)
            }
        }
    }

    async fn count_precondition(&self, key: &MailboxKey) -> Result<u32, StoreError> {
        let row = self.limit_mailbox(key, PRECONDITION, &[]).await?;
        Ok(row.map_or(1, |row| row.get::<_, i32>(0).max(1) as u32))
    }

    async fn lift(&self, key: &MailboxKey) -> Result<bool, StoreError> {
        let row = self.limit_mailbox(key, LIFT, &[]).await?;
        let (lifted, paused) = row.map_or((false, false), |row| (row.get(0), row.get(1)));
        if paused {
            SharedStore::note(self, key, Note::Resumed).await?;
        } else if lifted {
            self.announce().await?;
        }
        Ok(lifted || paused)
    }

    async fn announce(&self) -> Result<(), StoreError> {
        PgStore::announce(self).await
    }

    fn lease_time(&self) -> Duration {
        self.lease_time
    }

    async fn depths(&self) -> Result<HashMap<String, (usize, SystemTime)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT account, count(*), min(queued_at) FROM smtp2gmail.messages
                  WHERE place = 'queue' GROUP BY account",
                &[],
            )
            .await
            .map_err(self.fail("counting queued messages"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let (account, depth, oldest): (String, i64, SystemTime) =
                    (row.get(0), row.get(1), row.get(2));
                (account, (depth as usize, oldest))
            })
            .collect())
    }

    async fn wait_for_mail(&self, timeout: Duration) {
        self.listener.wait(&self.database, timeout).await
    }

    /// The earliest `due_at` of the queue: a planned attempt, or the end of a lease.
    /// Not only the earliest due message: a mailbox waiting for its next send slot (or its
    /// deferral, hold or its account's pause) counts from then, so a replica sending at a
    /// mailbox's rate sleeps until the next slot instead of polling.
    async fn next_due(&self) -> Result<Option<SystemTime>, StoreError> {
        let fail = || self.fail("looking for the next due message");
        let client = self.client().await?;
        let statement = client.prepare_cached(NEXT_DUE).await.map_err(fail())?;
        let row = client.query_one(&statement, &[]).await.map_err(fail())?;
        Ok(row.get(0))
    }
}

/// The earliest time a queued message may be claimable (see [`SharedStore::next_due`]);
/// `GREATEST` skips the NULLs of limits a mailbox does not have.
const NEXT_DUE: &str = concat!(
    with_queued_mailboxes!(),
    "
    SELECT min(GREATEST(q.due, l.next_send_at, l.deferred_until, l.held_until, a.paused_until))
      FROM queued q
      LEFT JOIN smtp2gmail.mailbox_limits l ON l.account = q.account AND l.mailbox = q.mailbox
      LEFT JOIN smtp2gmail.account_limits a ON a.account = q.account"
);
