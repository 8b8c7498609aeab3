//! What replicas of the queue on PostgreSQL share, against a real private server: claims that
//! never overlap, a mailbox's concurrency and send slots across replicas, leases that lapse,
//! deferred, held and paused mailboxes, and the adaptive send rate.
//!
//! Without PostgreSQL installed the tests are ignored, saying how to install it
//! (tests/common/postgres.rs).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use common::WAIT;
use common::pg_store::{MINUTE, ids, key, limits, put, store};
use common::postgres::{DATABASE, PgServer};
use smtp2gmail::queue::postgres::PgStore;
use smtp2gmail::queue::record::{Entry, Place};
use smtp2gmail::queue::schedule::{Limits, Note};
use smtp2gmail::queue::shared::SharedStore;
use smtp2gmail::queue::store::Store;

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn replicas_claiming_at_once_never_get_the_same_message() {
    let server = PgServer::start();
    let (one, two) = (store(&server, MINUTE).await, store(&server, MINUTE).await);
    assert_ne!(one.owner(), two.owner());
    let mut queued = HashSet::new();
    for i in 0..40 {
        // Many mailboxes, several messages each.
        let user = format!("user{}@example.com", i % 10);
        queued.insert(put(&one, Some(&user)).await.id);
    }
    let limits = limits(5, 1_000_000.0);
    let (mut got_one, mut got_two) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + WAIT;
    while got_one.len() + got_two.len() < queued.len() && Instant::now() < deadline {
        // A few each per round: one claim could take every message (all slots have come).
        let (a, b) = tokio::join!(one.claim(&limits, 4), two.claim(&limits, 4));
        for (got, claimed) in [(&mut got_one, a.unwrap()), (&mut got_two, b.unwrap())] {
            for entry in claimed {
                assert!(got.insert(entry.id), "claimed twice by one replica");
            }
        }
        // Room again in each mailbox: complete what was claimed.
        for id in got_one.iter().chain(&got_two) {
            one.complete(id).await.unwrap();
        }
    }
    assert!(
        got_one.is_disjoint(&got_two),
        "a message claimed by both replicas"
    );
    let all: HashSet<String> = got_one.union(&got_two).cloned().collect();
    assert_eq!(all, queued, "every message claimed");
    assert!(
        !got_one.is_empty() && !got_two.is_empty(),
        "both replicas claimed"
    );
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_mailboxs_concurrency_is_shared_by_three_replicas() {
    let server = PgServer::start();
    let replicas = [
        store(&server, MINUTE).await,
        store(&server, MINUTE).await,
        store(&server, MINUTE).await,
    ];
    for _ in 0..10 {
        put(&replicas[0], Some("busy@example.com")).await;
    }
    let limits = limits(2, 1_000_000.0);
    let mut claimed = Vec::new();
    for _ in 0..20 {
        let (a, b, c) = tokio::join!(
            replicas[0].claim(&limits, 10),
            replicas[1].claim(&limits, 10),
            replicas[2].claim(&limits, 10),
        );
        for got in [a, b, c] {
            claimed.extend(got.unwrap());
        }
    }
    assert_eq!(claimed.len(), 2, "max_sends 2 across all replicas");
    // One delivered: room for exactly one more.
    replicas[0].complete(&claimed[0].id).await.unwrap();
    let mut more = Vec::new();
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            replicas[1].claim(&limits, 10),
            replicas[2].claim(&limits, 10)
        );
        more.extend(a.unwrap());
        more.extend(b.unwrap());
    }
    assert_eq!(more.len(), 1);
}

/// When the next send slot of `user`'s mailbox comes, in seconds from now.
fn next_slot_in(server: &PgServer, user: &str) -> f64 {
    server
        .psql_in(
            DATABASE,
            &format!(
                "SELECT extract(epoch FROM next_send_at - now()) FROM smtp2gmail.mailbox_limits WHERE mailbox = '{user}'"
            ),
        )
        .parse()
        .unwrap()
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn send_slots_space_a_mailboxs_claims_by_its_rate() {
    let server = PgServer::start();
    let (one, two) = (store(&server, MINUTE).await, store(&server, MINUTE).await);
    for _ in 0..3 {
        put(&one, Some("paced@example.com")).await;
    }
    let other = put(&one, Some("other@example.com")).await;
    // One send every ten seconds.
    let limits = limits(5, 0.1);
    let first = one.claim(&limits, 10).await.unwrap();
    assert_eq!(first.len(), 2, "one per mailbox: {first:?}");
    assert!(first.iter().any(|e| e.id == other.id));
    assert!(
        two.claim(&limits, 10).await.unwrap().is_empty(),
        "the slot is taken"
    );
    assert!(one.claim(&limits, 10).await.unwrap().is_empty());
    let slot = next_slot_in(&server, "paced@example.com");
    assert!((8.0..=10.0).contains(&slot), "next slot in {slot} s");
    // A replica sleeps until that slot, rather than polling a message that is due but paced.
    let wake = one.next_due().await.unwrap().expect("mail is queued");
    let wait = wake.duration_since(SystemTime::now());
    let wait = wait.expect("the next slot is ahead").as_secs_f64();
    assert!((7.0..=10.0).contains(&wait), "wakes in {wait} s");

    // The ten seconds pass (made to, here).
    server.psql_in(
        DATABASE,
        "UPDATE smtp2gmail.mailbox_limits SET next_send_at = now() - interval '1 ms'",
    );
    assert_eq!(two.claim(&limits, 10).await.unwrap().len(), 1);
    assert!(one.claim(&limits, 10).await.unwrap().is_empty());
}

/// Slots that came while a replica was busy are taken at its next claim (several messages at
/// once, as the concurrency allows), but not those of a long pause: a replica that claimed one
/// message per claim could not keep a fast mailbox at its rate.
#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_claim_takes_the_send_slots_that_came_within_the_window() {
    let server = PgServer::start();
    let one = store(&server, MINUTE).await;
    for _ in 0..30 {
        put(&one, Some("fast@example.com")).await;
    }
    let long_ago = "UPDATE smtp2gmail.mailbox_limits SET next_send_at = now() - interval '1 hour'";
    // 200 sends a second, 20 at once: the slots of the last 50 ms (1 + 0.05 × 200).
    let limits = limits(20, 200.0);
    assert_eq!(one.claim(&limits, 100).await.unwrap().len(), 11);
    // An hour of unused slots still counts as 50 ms; 9 more may be in flight.
    server.psql_in(DATABASE, long_ago);
    assert_eq!(one.claim(&limits, 100).await.unwrap().len(), 9);
    server.psql_in(DATABASE, long_ago);
    assert!(
        one.claim(&limits, 100).await.unwrap().is_empty(),
        "20 in flight"
    );
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_lapsed_lease_passes_to_another_replica() {
    let server = PgServer::start();
    let short = Duration::from_secs(1);
    let (dying, other) = (store(&server, short).await, store(&server, MINUTE).await);
    let queued = put(&dying, None).await;
    let limits = limits(5, 1_000_000.0);
    let claimed = dying.claim(&limits, 10).await.unwrap();
    assert_eq!(ids(&claimed), ids(std::slice::from_ref(&queued)));
    assert!(other.claim(&limits, 10).await.unwrap().is_empty(), "leased");

    // `dying` stops renewing; its lease lapses and `other` takes the message over.
    let deadline = Instant::now() + WAIT;
    let taken = loop {
        let taken = other.claim(&limits, 10).await.unwrap();
        if !taken.is_empty() || Instant::now() > deadline {
            break taken;
        }
        other.wait_for_mail(Duration::from_millis(100)).await;
    };
    assert_eq!(ids(&taken), ids(std::slice::from_ref(&queued)));
    let mut failed = queued.clone();
    failed.record(SystemTime::now(), "500 backend error".into());
    assert!(
        !dying.release(&failed).await.unwrap(),
        "no longer its lease"
    );
    dying.renew().await.unwrap();
    let owner = server.psql_in(DATABASE, "SELECT lease_owner FROM smtp2gmail.messages");
    assert_eq!(owner, other.owner(), "renewing does not take it back");
    failed.next_attempt = SystemTime::now() + MINUTE;
    assert!(other.release(&failed).await.unwrap());
    assert_eq!(
        other.read(Place::Queue, &queued.id).await.unwrap(),
        Some(failed)
    );
    assert!(
        other.claim(&limits, 10).await.unwrap().is_empty(),
        "not due yet"
    );
    let due = other.next_due().await.unwrap().unwrap();
    assert!(due > SystemTime::now() + Duration::from_secs(50));
}

/// Claims of `store` until one finds something or `rounds` found nothing.
async fn claim_some(store: &PgStore, limits: &Limits, rounds: usize) -> Vec<Entry> {
    for _ in 0..rounds {
        let claimed = store.claim(limits, 10).await.unwrap();
        if !claimed.is_empty() {
            return claimed;
        }
    }
    Vec::new()
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn deferred_held_and_paused_mailboxes_are_not_claimed_until_they_end() {
    let server = PgServer::start();
    let store = store(&server, MINUTE).await;
    let limits = limits(5, 1_000_000.0);
    let (a, b) = (Some("a@example.com"), Some("b@example.com"));
    // A claim creates each mailbox's limits; give those messages back.
    for user in [a, b] {
        put(&store, user).await;
    }
    for claimed in claim_some(&store, &limits, 5).await {
        let mut entry = claimed;
        entry.next_attempt = SystemTime::now();
        assert!(store.release(&entry).await.unwrap());
    }
    let later = SystemTime::now() + Duration::from_secs(3600);
    let past = SystemTime::now() - Duration::from_secs(1);

    let check = async |note: Note, expected: &[Option<&str>]| {
        let claimed = claim_some(&store, &limits, 3).await;
        let users: HashSet<Option<String>> = claimed.iter().map(|e| e.mailbox.clone()).collect();
        let expected: HashSet<Option<String>> =
            expected.iter().map(|u| u.map(str::to_string)).collect();
        assert_eq!(users, expected, "after {note:?}");
        for mut entry in claimed {
            entry.next_attempt = SystemTime::now();
            assert!(store.release(&entry).await.unwrap());
        }
    };
    store.note(&key(a), Note::Deferred(later)).await.unwrap();
    check(Note::Deferred(later), &[b]).await;
    store.note(&key(a), Note::Deferred(past)).await.unwrap();
    store.note(&key(b), Note::Held(later)).await.unwrap();
    check(Note::Held(later), &[a]).await;
    store.note(&key(b), Note::Held(past)).await.unwrap();
    check(Note::Held(past), &[a, b]).await;

    store.note(&key(a), Note::Paused(later)).await.unwrap();
    store.note(&key(b), Note::Held(later)).await.unwrap();
    check(Note::Paused(later), &[]).await;
    store.note(&key(None), Note::Resumed).await.unwrap();
    check(Note::Resumed, &[a, b]).await;
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_mailboxs_rate_halves_when_throttled_and_recovers_with_sends() {
    let server = PgServer::start();
    let store = store(&server, MINUTE).await;
    put(&store, Some("a@example.com")).await;
    assert_eq!(store.claim(&limits(5, 2.0), 10).await.unwrap().len(), 1);
    let rate = || -> f64 {
        server
            .psql_in(
                DATABASE,
                "SELECT send_rate FROM smtp2gmail.mailbox_limits WHERE mailbox = 'a@example.com'",
            )
            .parse()
            .unwrap()
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let a = key(Some("a@example.com"));
    store.note(&a, Note::Throttled).await.unwrap();
    assert!(close(rate(), 1.0), "halved: {}", rate());
    store.note(&a, Note::Sent).await.unwrap();
    assert!(
        close(rate(), 1.04),
        "recovers by 1/50 of the configured rate: {}",
        rate()
    );
    for _ in 0..30 {
        store.note(&a, Note::Sent).await.unwrap();
    }
    assert!(
        close(rate(), 2.0),
        "never above the configured rate: {}",
        rate()
    );
    for _ in 0..20 {
        store.note(&a, Note::Throttled).await.unwrap();
    }
    assert!(
        close(rate(), 1.0 / 60.0),
        "at least one a minute: {}",
        rate()
    );
}
