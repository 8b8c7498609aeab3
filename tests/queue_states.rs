//! The scheduler core's state interface (`queue::schedule::State`) on both backends: the spool's
//! state in memory and the replicas' state in a private PostgreSQL. Each test runs the same
//! steps against both and asserts the same answers, through the interface only — the seed of the
//! queue's behaviour suite over both backends.
//!
//! Without PostgreSQL installed the tests are ignored, saying how to install it
//! (tests/common/postgres.rs).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::pg_store::{MINUTE, entry, store};
use common::postgres::PgServer;
use smtp2gmail::config::QueueConfig;
use smtp2gmail::message::Message;
use smtp2gmail::queue::record::{Entry, Place};
use smtp2gmail::queue::schedule::{Limits, MailboxKey, MemoryState, Note, State};
use smtp2gmail::queue::shared::{SharedState, SharedStore};
use smtp2gmail::queue::spool::Spool;
use smtp2gmail::queue::store::Store;
use smtp2gmail::relay::gmail::accounts::DEFAULT_CONCURRENT_SENDS;

/// The account every test queues for; `limits` configures only `default`, so this one is "an
/// account removed from the configuration while its mail was queued".
const GONE: &str = "gone";

/// The limits of a configuration whose only account is `default`.
fn limits(rate: f64) -> Limits {
    Limits {
        max_send_rate: rate,
        max_sends: HashMap::from([("default".to_string(), 2)]),
    }
}

/// Stores `count` messages of account `account` in `store`.
async fn queue(store: &dyn Store, account: &str, count: usize) -> Vec<Entry> {
    let mut queued = Vec::new();
    for _ in 0..count {
        let entry = Entry {
            account: account.into(),
            ..entry(None)
        };
        let message = Message::from_bytes(b"hello".to_vec());
        store.put(Place::Queue, &entry, &message).await.unwrap();
        queued.push(entry);
    }
    queued
}

/// The spool's state over a fresh spool holding `count` messages of `account`.
async fn spool_state(
    count: usize,
    account: &str,
    limits: &Limits,
) -> (MemoryState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spool: Arc<dyn Store> = Arc::new(Spool::open(dir.path()).unwrap());
    queue(&*spool, account, count).await;
    let config = QueueConfig {
        max_send_rate: limits.max_send_rate,
        ..QueueConfig::default()
    };
    let mut state = MemoryState::new(spool, &config, tokio::sync::mpsc::unbounded_channel().1);
    state.load(limits).await;
    (state, dir)
}

/// A replica's state over `server`'s database holding `count` messages of `account`.
async fn database_state(server: &PgServer, count: usize, account: &str) -> SharedState {
    let store: Arc<dyn SharedStore> = Arc::new(store(server, MINUTE).await);
    queue(&*store, account, count).await;
    SharedState::new(store)
}

/// How many messages one claim takes now.
async fn claimed(state: &mut impl State, limits: &Limits) -> usize {
    let now = SystemTime::now();
    state.claim(limits, 100, now).await.unwrap().len()
}

/// How many messages claims take over a few send-rate wake-ups (a backend may start a burst's
/// sends over more than one claim), without any delivery ending.
async fn claimed_over(state: &mut impl State, limits: &Limits) -> usize {
    let mut total = 0;
    for _ in 0..8 {
        total += claimed(state, limits).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    total
}

/// An account removed from the configuration gets the default concurrency and the configured
/// send rate on both backends (the spool gave it neither, the database both).
#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_removed_account_is_limited_the_same_on_both_backends() {
    let server = PgServer::start();
    let fast = limits(1_000_000.0);
    let (mut spool, _dir) = spool_state(10, GONE, &fast).await;
    let mut database = database_state(&server, 10, GONE).await;
    assert_eq!(
        claimed_over(&mut spool, &fast).await,
        DEFAULT_CONCURRENT_SENDS
    );
    assert_eq!(
        claimed_over(&mut database, &fast).await,
        DEFAULT_CONCURRENT_SENDS
    );

    let slow = limits(1.0 / 60.0);
    let (mut spool, _dir) = spool_state(10, GONE, &slow).await;
    let server = PgServer::start();
    let mut database = database_state(&server, 10, GONE).await;
    assert_eq!(
        claimed_over(&mut spool, &slow).await,
        1,
        "paced like any mailbox"
    );
    assert_eq!(
        claimed_over(&mut database, &slow).await,
        1,
        "paced like any mailbox"
    );
}

/// "Precondition check failed." streaks are the state's: counted in a row, ended by a send that
/// goes through, on both backends (replicas count together).
#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn precondition_streaks_count_in_a_row_until_a_send_goes_through() {
    let server = PgServer::start();
    let fast = limits(1_000_000.0);
    let (mut spool, _dir) = spool_state(1, "default", &fast).await;
    let mut database = database_state(&server, 1, "default").await;
    // A claim creates the database's row for the mailbox, as in service.
    assert_eq!(claimed(&mut spool, &fast).await, 1);
    assert_eq!(claimed(&mut database, &fast).await, 1);
    let key = MailboxKey {
        account: "default".into(),
        user: None,
    };
    for expected in 1..=3 {
        assert_eq!(spool.precondition(&key).await.unwrap(), expected);
        assert_eq!(database.precondition(&key).await.unwrap(), expected);
    }
    spool.note(&key, Note::Sent).await.unwrap();
    database.note(&key, Note::Sent).await.unwrap();
    assert_eq!(spool.precondition(&key).await.unwrap(), 1);
    assert_eq!(database.precondition(&key).await.unwrap(), 1);
}

/// A hold is news once; an operator's retry lifts it, on both backends.
#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_held_mailbox_is_news_once_and_an_operator_retry_lifts_it() {
    let server = PgServer::start();
    let fast = limits(1_000_000.0);
    let (mut spool, _dir) = spool_state(1, "default", &fast).await;
    let mut database = database_state(&server, 1, "default").await;
    assert_eq!(claimed(&mut spool, &fast).await, 1);
    assert_eq!(claimed(&mut database, &fast).await, 1);
    let key = MailboxKey {
        account: "default".into(),
        user: None,
    };
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert!(spool.note(&key, Note::Held(later)).await.unwrap());
    assert!(database.note(&key, Note::Held(later)).await.unwrap());
    assert!(
        !spool.note(&key, Note::Held(later)).await.unwrap(),
        "not news"
    );
    assert!(
        !database.note(&key, Note::Held(later)).await.unwrap(),
        "not news"
    );
    assert!(spool.lift(&key).await.unwrap());
    assert!(database.lift(&key).await.unwrap());
    assert!(!spool.lift(&key).await.unwrap(), "nothing left to lift");
    assert!(!database.lift(&key).await.unwrap(), "nothing left to lift");
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
    let queued = queue(&store, "default", 1).await.remove(0);
    let sql = |change: &str| {
        server.psql_in(
            common::postgres::DATABASE,
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
