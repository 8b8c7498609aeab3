//! Claiming messages for sending, under leases that lapse when their replica dies.
//!
//! A claim sets `lease_owner` and `lease_until`; the generated `due_at` (the later of the planned
//! attempt and the lease's end) then moves past the lease, so the same index that finds due mail
//! skips leased mail and finds it again once a lease lapses. `FOR UPDATE SKIP LOCKED` lets
//! replicas claim at the same moment without waiting for, or taking, each other's rows. Every
//! later statement about a claimed message names its owner: a replica whose lease lapsed and
//! was taken over changes nothing (the cost is at most one duplicate send, the at-least-once
//! promise).

use std::time::Duration;

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;

use super::error::{DatabaseError, Step, Target};

/// A message a replica now holds the lease on.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The queue id.
    pub id: String,
    /// The account (config name) that sends it.
    pub account: String,
    /// The Gmail mailbox that sends it.
    pub mailbox: String,
    /// The queue's entry record.
    pub entry: serde_json::Value,
}

const CLAIM: &str = "
    UPDATE smtp2gmail.messages m
       SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
      FROM (SELECT id FROM smtp2gmail.messages
             WHERE place = 'queue' AND account = $4 AND mailbox = $5 AND due_at <= now()
             ORDER BY due_at
             LIMIT $3
               FOR UPDATE SKIP LOCKED) due
     WHERE m.id = due.id
 RETURNING m.id, m.account, m.mailbox, m.entry";

/// Claims up to `limit` due messages of one mailbox (`account`, `mailbox`) for `owner`, for
/// `lease`. Always one mailbox: claims take turns on its limits row (see `claims`), and a
/// statement prepared once and planned generically keeps to the `(account, mailbox, due_at)`
/// index only when nothing in it is optional.
pub async fn claim(
    client: &impl GenericClient,
    target: &Target,
    owner: &str,
    lease: Duration,
    limit: i64,
    (account, mailbox): (&str, &str),
) -> Result<Vec<Claimed>, DatabaseError> {
    let fail = |err| target.classify(&err, Step::Use, "claiming due messages");
    let statement = client.prepare_cached(CLAIM).await.map_err(fail)?;
    let rows = client
        .query(
            &statement,
            &[&owner, &lease.as_secs_f64(), &limit, &account, &mailbox],
        )
        .await
        .map_err(fail)?;
    Ok(rows
        .into_iter()
        .map(|row| Claimed {
            id: row.get(0),
            account: row.get(1),
            mailbox: row.get(2),
            entry: row.get(3),
        })
        .collect())
}

/// Extends every lease `owner` holds to `lease` from now; returns how many it holds. Run a few
/// times per lease, so a slow upload does not lose its message to another replica.
pub async fn renew(
    client: &impl GenericClient,
    target: &Target,
    owner: &str,
    lease: Duration,
) -> Result<u64, DatabaseError> {
    client
        .execute(
            "UPDATE smtp2gmail.messages SET lease_until = now() + make_interval(secs => $2)
              WHERE lease_owner = $1",
            &[&owner, &lease.as_secs_f64()],
        )
        .await
        .map_err(|err| target.classify(&err, Step::Use, "renewing leases"))
}

/// Gives a message back after a failed attempt: next tried at `next_attempt`, with its updated
/// `entry`. False when `owner` no longer held the lease (another replica took it over).
pub async fn release(
    client: &impl GenericClient,
    target: &Target,
    id: &str,
    owner: &str,
    next_attempt: OffsetDateTime,
    entry: &serde_json::Value,
) -> Result<bool, DatabaseError> {
    let changed = client
        .execute(
            "UPDATE smtp2gmail.messages
                SET lease_owner = NULL, lease_until = NULL, next_attempt = $3, entry = $4
              WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner, &next_attempt, entry],
        )
        .await
        .map_err(|err| target.classify(&err, Step::Use, "releasing a message"))?;
    Ok(changed == 1)
}
