//! The queue's storage on PostgreSQL (`PgStore`) against a real private server
//! (tests/common/postgres.rs): the records and bytes of messages, a failed put, an outage, the
//! `queue` commands, merge records, and the wake-up on new mail. What replicas share (claims,
//! leases, limits) is in tests/postgres_claims.rs.
//!
//! Without PostgreSQL installed the tests are ignored, saying how to install it
//! (tests/common/postgres.rs).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::WAIT;
use common::pg_store::{MIB, MINUTE, entry, ids, limits, put, store};
use common::postgres::{DATABASE, PgServer};
use smtp2gmail::message::Message;
use smtp2gmail::queue::control::ControlError;
use smtp2gmail::queue::record::Merge;
use smtp2gmail::queue::record::{Place, Request};
use smtp2gmail::queue::shared::SharedStore;
use smtp2gmail::queue::store::MergeJournal;
use smtp2gmail::queue::store::{Store, StoreError};

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn records_round_trip_through_put_read_list_update_move_and_remove() {
    let server = PgServer::start();
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
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_five_mib_message_comes_back_byte_for_byte_from_memory_and_from_a_file() {
    let server = PgServer::start();
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
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_put_that_fails_midway_leaves_nothing_behind() {
    let server = PgServer::start();
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
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_put_while_the_database_is_down_is_unavailable_and_stores_nothing() {
    let mut server = PgServer::start();
    let store = store(&server, MINUTE).await;
    put(&store, None).await;
    assert_eq!(store.problem(), None, "ready while the database answers");
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
    let problem = store.problem().expect("/readyz reports the outage");
    assert!(problem.contains("database"), "{problem}");
    server.start_again();
    assert_eq!(
        store.count(Place::Queue).await.unwrap(),
        1,
        "nothing stored while down"
    );
    assert_eq!(store.problem(), None, "ready again by itself");
    put(&store, None).await;
    assert_eq!(
        store.count(Place::Queue).await.unwrap(),
        2,
        "works again by itself"
    );
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn queue_commands_retry_and_delete_directly() {
    let server = PgServer::start();
    // The database has no command channel: a command acts on the tables, from any host.
    let store = std::sync::Arc::new(store(&server, MINUTE).await);
    let commands = smtp2gmail::queue::Commands::Database(store.clone());
    let mut dead = put(&store, None).await;
    dead.dead_reason = Some("550 refused".into());
    dead.next_attempt = SystemTime::now() + Duration::from_secs(3600);
    store
        .move_to(Place::Queue, Place::Dead, &dead)
        .await
        .unwrap();

    let done = commands
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

    let done = commands
        .steer(Request::Delete {
            id: dead.id.clone(),
        })
        .await
        .unwrap();
    assert!(done.contains("deleted"), "{done}");
    assert_eq!(store.count(Place::Queue).await.unwrap(), 0);
    let again = commands
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
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn new_mail_wakes_a_waiting_replica_at_once() {
    let server = PgServer::start();
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

/// The listening session does not survive a restart of the server; the store listens again
/// by itself, and new mail wakes the replica as before.
#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn after_a_database_restart_new_mail_still_wakes_a_waiting_replica() {
    let mut server = PgServer::start();
    let waiting = store(&server, MINUTE).await;
    waiting.listen().await.unwrap();
    server.stop();
    server.start_again();
    let listeners = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'";
    tokio::time::timeout(WAIT, async {
        while server.psql_in(DATABASE, listeners) != "1" {
            // Wake-ups about the lost session are due; take them out of the way.
            waiting.wait_for_mail(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the store never listened again");
    // Any wake-up still pending from the reconnection.
    waiting.wait_for_mail(Duration::ZERO).await;

    let accepting = Arc::new(store(&server, MINUTE).await);
    let put_later = tokio::spawn(async move { put(&accepting, None).await });
    // Far longer than the test may take: only the notification can end this wait in time.
    tokio::time::timeout(WAIT, waiting.wait_for_mail(Duration::from_secs(3600)))
        .await
        .expect("new mail after the restart did not wake the replica");
    put_later.await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn merge_records_are_kept_until_forgotten() {
    let server = PgServer::start();
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

/// Mail queued by the previous version (records without `"version"`) is read by this one from the
/// database too; a record of a newer version is reported, not half-read.
#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn the_database_reads_records_of_the_previous_version() {
    let server = PgServer::start();
    let store = store(&server, MINUTE).await;
    let queued = put(&store, None).await;
    let sql = |change: &str| {
        server.psql_in(
            DATABASE,
            &format!("UPDATE smtp2gmail.messages SET entry = {change}"),
        )
    };
    sql("entry - 'version'");
    let read = store.read(Place::Queue, &queued.id).await.unwrap().unwrap();
    assert_eq!(read, queued, "read as version 1, brought up to date");
    sql("jsonb_set(entry, '{version}', '99')");
    let err = store.read(Place::Queue, &queued.id).await.unwrap_err();
    assert!(err.to_string().contains("newer smtp2gmail"), "{err}");
}
