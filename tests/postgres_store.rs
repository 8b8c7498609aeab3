//! The queue's storage on PostgreSQL (`PgStore`) against a real private server
//! (tests/common/postgres.rs): the records and bytes of messages, an outage, and what replicas
//! share — claims, leases, the limits of mailboxes and accounts, and the wake-up on new mail.
//!
//! Without PostgreSQL installed the tests print how to run them and pass without checking
//! anything (`bash tests/postgres/install.sh`, or `.ci/run`).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::WAIT;
use common::postgres::{DATABASE, PgServer};
use smtp2gmail::config::DatabaseUrl;
use smtp2gmail::message::{Address, Envelope, Message, MessageId};
use smtp2gmail::queue::control::{ControlError, Request};
use smtp2gmail::queue::entry::{Entry, Place};
use smtp2gmail::queue::postgres::{Database, PgStore};
use smtp2gmail::queue::schedule::MailboxKey;
use smtp2gmail::queue::shared::{Note, SharedLimits, SharedStore};
use smtp2gmail::queue::split::Merge;
use smtp2gmail::queue::store::{Store, StoreError};

const MINUTE: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

/// A replica's store on `server`, connected and migrated as at start.
async fn store(server: &PgServer, lease_time: Duration) -> PgStore {
    let url = DatabaseUrl::parse(&server.url()).unwrap();
    let (database, _) = tokio::time::timeout(WAIT, Database::open(url, 4))
        .await
        .expect("opening the database hangs")
        .unwrap();
    PgStore::new(database, lease_time)
}

/// A record for a message from app@example.com accepted now, sent by account `default` as
/// `user` (or as the account's one mailbox).
fn entry(user: Option<&str>) -> Entry {
    let envelope = Envelope {
        id: MessageId::generate(),
        mail_from: Some(Address::new("app@example.com")),
        rcpt_to: vec![Address::new("someone@example.org")],
        remote: ([127, 0, 0, 1], 40000).into(),
        helo: "client.example".into(),
        auth_user: None,
        received_at: SystemTime::now(),
    };
    Entry::new(&envelope, 5, "default").with_mailbox(user)
}

async fn put(store: &PgStore, user: Option<&str>) -> Entry {
    let entry = entry(user);
    store
        .put(
            Place::Queue,
            &entry,
            &Message::from_bytes(b"hello".to_vec()),
        )
        .await
        .unwrap();
    entry
}

/// Limits with `max_sends` per mailbox of `default` and `rate` sends per second.
fn limits(max_sends: usize, rate: f64) -> SharedLimits {
    SharedLimits {
        max_send_rate: rate,
        max_sends: HashMap::from([("default".to_string(), max_sends)]),
    }
}

fn ids(entries: &[Entry]) -> HashSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

fn key(user: Option<&str>) -> MailboxKey {
    MailboxKey {
        account: "default".into(),
        user: user.map(str::to_string),
    }
}

#[tokio::test]
async fn records_round_trip_through_put_read_list_update_move_and_remove() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = store(&server, MINUTE).await;
    let first = put(&store, None).await;
    let second = put(&store, Some("Sales@Example.com")).await;

    assert_eq!(
        store.read(Place::Queue, &first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.read(Place::Dead, &first.id).await.unwrap(), None);
    assert!(store.contains(Place::Queue, &second.id).await.unwrap());
    assert!(!store.contains(Place::Held, &second.id).await.unwrap());
    let (listed, broken) = store.list(Place::Queue).await.unwrap();
    assert_eq!(ids(&listed), ids(&[first.clone(), second.clone()]));
    assert_eq!(listed[0].id, first.id, "oldest first");
    assert!(broken.is_empty());
    assert_eq!(store.count(Place::Queue).await.unwrap(), 2);

    let duplicate = store
        .put(
            Place::Queue,
            &first,
            &Message::from_bytes(b"other".to_vec()),
        )
        .await;
    assert!(matches!(duplicate, Err(StoreError::Exists(id)) if id == first.id));

    let mut updated = first.clone();
    updated.record(SystemTime::now(), "429 too fast".into());
    store.update(Place::Queue, &updated).await.unwrap();
    assert_eq!(
        store.read(Place::Queue, &first.id).await.unwrap(),
        Some(updated.clone())
    );

    updated.dead_reason = Some("gave up".into());
    store
        .move_to(Place::Queue, Place::Dead, &updated)
        .await
        .unwrap();
    assert_eq!(
        store.read(Place::Dead, &first.id).await.unwrap(),
        Some(updated.clone())
    );
    assert!(!store.contains(Place::Queue, &first.id).await.unwrap());
    let bytes = store.message(Place::Dead, &updated).await.unwrap().unwrap();
    assert_eq!(
        &*bytes.bytes().await.unwrap(),
        b"hello",
        "the bytes moved with the record"
    );
    assert!(
        store.update(Place::Queue, &updated).await.is_err(),
        "no longer queued"
    );

    assert!(store.remove(Place::Dead, &first.id).await.unwrap());
    assert!(!store.remove(Place::Dead, &first.id).await.unwrap());
    assert!(
        store
            .message(Place::Dead, &updated)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count(Place::Dead).await.unwrap(), 0);
    let chunks = server.psql_in(DATABASE, "SELECT count(*) FROM smtp2gmail.message_chunks");
    assert_eq!(chunks, "1", "the removed message's bytes went with it");

    // A record this version cannot read is listed apart and hides nothing.
    server.psql_in(
        DATABASE,
        "INSERT INTO smtp2gmail.messages (id, entry, account, mailbox, size)
         VALUES ('bad', '{\"id\": \"bad\"}', 'default', '', 0)",
    );
    let (listed, broken) = store.list(Place::Queue).await.unwrap();
    assert_eq!(ids(&listed), ids(&[second]));
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].0, "bad");
    assert!(matches!(broken[0].1, StoreError::Unreadable(_)));
}

/// 5 MiB and 7 bytes of varied bytes.
fn large_body() -> Vec<u8> {
    (0..5 * MIB + 7).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn a_five_mib_message_comes_back_byte_for_byte_from_memory_and_from_a_file() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = store(&server, MINUTE).await;
    let body = large_body();

    // From memory, and from a file (a spilled body), each read back through a temporary file.
    let in_memory = entry(None);
    let message = Message::from_bytes(body.clone());
    store.put(Place::Queue, &in_memory, &message).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    let mut with_trailer = body.clone();
    with_trailer.extend_from_slice(b"not part of the message");
    std::fs::write(&path, &with_trailer).unwrap();
    let from_file = entry(None);
    let message = Message::stored(path.clone(), body.len() as u64);
    store.put(Place::Queue, &from_file, &message).await.unwrap();
    let chunks = server.psql_in(
        DATABASE,
        &format!(
            "SELECT count(*) || ' ' || max(length(data)) FROM smtp2gmail.message_chunks WHERE id = '{}'",
            from_file.id
        ),
    );
    assert_eq!(chunks, format!("6 {MIB}"), "chunks of at most 1 MiB");

    for stored in [&in_memory, &from_file] {
        let read = store.message(Place::Queue, stored).await.unwrap().unwrap();
        assert_eq!(read.len(), body.len() as u64);
        let spilled = read
            .file()
            .expect("a large message is read into a file")
            .to_path_buf();
        assert!(read.to_bytes().await.unwrap() == body, "byte for byte");
        let mut copied = Vec::new();
        read.copy_to(&mut copied).await.unwrap();
        assert!(copied == body);
        drop(read);
        assert!(
            !spilled.exists(),
            "the temporary file goes with the message"
        );
    }

    // A small message stays in memory.
    let small = put(&store, None).await;
    let read = store.message(Place::Queue, &small).await.unwrap().unwrap();
    assert!(read.file().is_none());
    assert_eq!(&*read.bytes().await.unwrap(), b"hello");
}

#[tokio::test]
async fn a_put_that_fails_midway_leaves_nothing_behind() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = store(&server, MINUTE).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short");
    std::fs::write(&path, vec![b'x'; 2 * MIB]).unwrap();
    // Says 3 MiB, holds 2: the first two chunks are written before the end is found short.
    let broken = Message::stored(path, 3 * MIB as u64);
    let entry = entry(None);
    let err = store.put(Place::Queue, &entry, &broken).await.unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err}");
    let left = server.psql_in(
        DATABASE,
        "SELECT (SELECT count(*) FROM smtp2gmail.messages) + (SELECT count(*) FROM smtp2gmail.message_chunks)",
    );
    assert_eq!(left, "0");
    // The same id stores fine afterwards (the client sends again after its 451).
    store
        .put(
            Place::Queue,
            &entry,
            &Message::from_bytes(b"again".to_vec()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_put_while_the_database_is_down_is_unavailable_and_stores_nothing() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let store = store(&server, MINUTE).await;
    put(&store, None).await;
    server.stop();
    for _ in 0..2 {
        let entry = entry(None);
        let stored = tokio::time::timeout(
            WAIT,
            store.put(Place::Queue, &entry, &Message::from_bytes(b"down".to_vec())),
        )
        .await
        .expect("a put during an outage hangs");
        assert!(
            matches!(stored, Err(StoreError::Unavailable(_))),
            "{stored:?}"
        );
    }
    server.start_again();
    assert_eq!(
        store.count(Place::Queue).await.unwrap(),
        1,
        "nothing stored while down"
    );
    put(&store, None).await;
    assert_eq!(
        store.count(Place::Queue).await.unwrap(),
        2,
        "works again by itself"
    );
}

#[tokio::test]
async fn replicas_claiming_at_once_never_get_the_same_message() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let (one, two) = (store(&server, MINUTE).await, store(&server, MINUTE).await);
    assert_ne!(one.owner(), two.owner());
    let mut queued = HashSet::new();
    for i in 0..40 {
        // Many mailboxes, several messages each: claims take one per mailbox and send slot.
        let user = format!("user{}@example.com", i % 10);
        queued.insert(put(&one, Some(&user)).await.id);
    }
    let limits = limits(5, 1_000_000.0);
    let (mut got_one, mut got_two) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + WAIT;
    while got_one.len() + got_two.len() < queued.len() && Instant::now() < deadline {
        let (a, b) = tokio::join!(one.claim(&limits, 64), two.claim(&limits, 64));
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
async fn a_mailboxs_concurrency_is_shared_by_three_replicas() {
    let Some(server) = PgServer::start() else {
        return;
    };
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
async fn send_slots_space_a_mailboxs_claims_by_its_rate() {
    let Some(server) = PgServer::start() else {
        return;
    };
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

    // The ten seconds pass (made to, here).
    server.psql_in(
        DATABASE,
        "UPDATE smtp2gmail.mailbox_limits SET next_send_at = now() - interval '1 ms'",
    );
    assert_eq!(two.claim(&limits, 10).await.unwrap().len(), 1);
    assert!(one.claim(&limits, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_lapsed_lease_passes_to_another_replica() {
    let Some(server) = PgServer::start() else {
        return;
    };
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
async fn claim_some(store: &PgStore, limits: &SharedLimits, rounds: usize) -> Vec<Entry> {
    for _ in 0..rounds {
        let claimed = store.claim(limits, 10).await.unwrap();
        if !claimed.is_empty() {
            return claimed;
        }
    }
    Vec::new()
}

#[tokio::test]
async fn deferred_held_and_paused_mailboxes_are_not_claimed_until_they_end() {
    let Some(server) = PgServer::start() else {
        return;
    };
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
async fn a_mailboxs_rate_halves_when_throttled_and_recovers_with_sends() {
    let Some(server) = PgServer::start() else {
        return;
    };
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

#[tokio::test]
async fn queue_commands_retry_and_delete_directly() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = store(&server, MINUTE).await;
    assert!(store.requests().await.is_empty());
    let mut dead = put(&store, None).await;
    dead.dead_reason = Some("550 refused".into());
    dead.next_attempt = SystemTime::now() + Duration::from_secs(3600);
    store
        .move_to(Place::Queue, Place::Dead, &dead)
        .await
        .unwrap();

    let done = store
        .steer(Request::Retry {
            id: Some(dead.id.clone()),
        })
        .await
        .unwrap();
    assert!(done.contains("moved back from the dead letters"), "{done}");
    let retried = store.read(Place::Queue, &dead.id).await.unwrap().unwrap();
    assert_eq!(retried.dead_reason, None);
    let claimed = store.claim(&limits(5, 1_000_000.0), 10).await.unwrap();
    assert_eq!(ids(&claimed), ids(&[retried]), "due at once");

    let done = store
        .steer(Request::Delete {
            id: dead.id.clone(),
        })
        .await
        .unwrap();
    assert!(done.contains("deleted"), "{done}");
    assert_eq!(store.count(Place::Queue).await.unwrap(), 0);
    let again = store
        .steer(Request::Delete {
            id: dead.id.clone(),
        })
        .await;
    assert!(
        matches!(again, Err(ControlError::NoSuchMessage(_))),
        "{again:?}"
    );
}

#[tokio::test]
async fn new_mail_wakes_a_waiting_replica_at_once() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let (accepting, waiting) = (
        Arc::new(store(&server, MINUTE).await),
        store(&server, MINUTE).await,
    );
    waiting.listen().await.unwrap();
    let put_later = {
        let accepting = accepting.clone();
        tokio::spawn(async move { put(&accepting, None).await })
    };
    // Far longer than the test may take: only the notification can end this wait in time.
    tokio::time::timeout(WAIT, waiting.wait_for_mail(Duration::from_secs(3600)))
        .await
        .expect("the new mail did not wake the replica");
    put_later.await.unwrap();
    assert!(waiting.next_due().await.unwrap().is_some());
}

#[tokio::test]
async fn merge_records_are_kept_until_forgotten() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let store = store(&server, MINUTE).await;
    let merge = Merge {
        entry: entry(None),
        dead: false,
        served: HashSet::from(["someone@example.org".to_string()]),
        at: SystemTime::now(),
    };
    store.save_merge(&merge).await.unwrap();
    store.save_merge(&merge).await.unwrap();
    let (merges, broken) = store.merges().await.unwrap();
    assert!(broken.is_empty());
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0].entry, merge.entry);
    assert_eq!(merges[0].served, merge.served);
    store.forget_merge(&merge.entry.id).await.unwrap();
    assert!(store.merges().await.unwrap().0.is_empty());
}
