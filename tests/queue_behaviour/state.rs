//! The scheduler core's state interface (`queue::schedule::State`) itself, where a behaviour is a
//! question to the state rather than something a server shows within a test's time: how an
//! account removed from the configuration is limited, how "Precondition check failed." streaks
//! count, when a hold is news. The spool's state in memory and the replicas' state in the
//! database must give the same answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp2gmail::config::QueueConfig;
use smtp2gmail::message::Message;
use smtp2gmail::queue::record::{Entry, Place};
use smtp2gmail::queue::schedule::{Limits, MailboxKey, MemoryState, Note, State};
use smtp2gmail::queue::shared::{SharedState, SharedStore};
use smtp2gmail::queue::spool::Spool;
use smtp2gmail::queue::store::Store;
use smtp2gmail::relay::gmail::accounts::DEFAULT_CONCURRENT_SENDS;

use crate::bench::Backend;
use crate::common::pg_store::{MINUTE, entry, store_at};
use crate::common::postgres::TestDatabase;

/// The account most tests queue for; `limits` configures only `default`, so [`GONE`] is "an
/// account removed from the configuration while its mail was queued".
const DEFAULT: &str = "default";
const GONE: &str = "gone";

/// The limits of a configuration whose only account is `default`.
fn limits(rate: f64) -> Limits {
    Limits {
        max_send_rate: rate,
        max_sends: HashMap::from([(DEFAULT.to_string(), 2)]),
    }
}

/// A backend's state, with what keeps its storage alive.
enum Backed {
    Memory {
        state: Box<MemoryState>,
        _spool: tempfile::TempDir,
    },
    Shared {
        state: SharedState,
        _database: TestDatabase,
    },
}

/// `$body` with `$state` bound to the backend's state, whichever it is.
macro_rules! on_state {
    ($backed:expr, $state:ident => $body:expr) => {
        match $backed {
            Backed::Memory { state, .. } => {
                let $state = &mut **state;
                $body
            }
            Backed::Shared { state, .. } => {
                let $state = state;
                $body
            }
        }
    };
}

/// Stores `count` messages of `account` in `store`.
async fn queue(store: &dyn Store, account: &str, count: usize) {
    for _ in 0..count {
        let entry = Entry {
            account: account.into(),
            ..entry(None)
        };
        let message = Message::from_bytes(b"hello".to_vec());
        store.put(Place::Queue, &entry, &message).await.unwrap();
    }
}

/// The backend's state over a fresh store holding `count` messages of `account`, as a server
/// under `limits` starts it.
async fn state(backend: Backend, count: usize, account: &str, limits: &Limits) -> Backed {
    match backend {
        Backend::Spool => {
            let dir = tempfile::tempdir().unwrap();
            let spool: Arc<dyn Store> = Arc::new(Spool::open(dir.path()).unwrap());
            queue(&*spool, account, count).await;
            let config = QueueConfig {
                max_send_rate: limits.max_send_rate,
                ..QueueConfig::default()
            };
            let idle = tokio::sync::mpsc::unbounded_channel().1;
            let mut state = MemoryState::new(spool, &config, idle);
            state.load(limits).await;
            Backed::Memory {
                state: Box::new(state),
                _spool: dir,
            }
        }
        Backend::Postgres => {
            let database = TestDatabase::create();
            let store: Arc<dyn SharedStore> = Arc::new(store_at(&database.url(), MINUTE).await);
            queue(&*store, account, count).await;
            Backed::Shared {
                state: SharedState::new(store),
                _database: database,
            }
        }
    }
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

/// The backend's state with one message of `default`, claimed: the claim creates the database's
/// row for the mailbox, as in service.
async fn one_claimed(backend: Backend) -> Backed {
    let fast = limits(1_000_000.0);
    let mut backed = state(backend, 1, DEFAULT, &fast).await;
    let took = on_state!(&mut backed, state => claimed(state, &fast).await);
    assert_eq!(took, 1);
    backed
}

fn key() -> MailboxKey {
    MailboxKey {
        account: DEFAULT.into(),
        user: None,
    }
}

/// An account removed from the configuration gets the default concurrency and the configured
/// send rate (the spool gave it neither, the database both).
async fn a_removed_account_gets_the_default_concurrency_and_the_configured_pace(backend: Backend) {
    let fast = limits(1_000_000.0);
    let mut backed = state(backend, 10, GONE, &fast).await;
    let took = on_state!(&mut backed, state => claimed_over(state, &fast).await);
    assert_eq!(took, DEFAULT_CONCURRENT_SENDS);

    let slow = limits(1.0 / 60.0);
    let mut backed = state(backend, 10, GONE, &slow).await;
    let took = on_state!(&mut backed, state => claimed_over(state, &slow).await);
    assert_eq!(took, 1, "paced like any mailbox");
}
on_both_backends!(a_removed_account_gets_the_default_concurrency_and_the_configured_pace);

/// "Precondition check failed." streaks are the state's: counted in a row, ended by a send that
/// goes through (replicas count together).
async fn precondition_streaks_count_in_a_row_until_a_send_goes_through(backend: Backend) {
    let mut backed = one_claimed(backend).await;
    on_state!(&mut backed, state => {
        for expected in 1..=3 {
            assert_eq!(state.precondition(&key()).await.unwrap(), expected);
        }
        state.note(&key(), Note::Sent).await.unwrap();
        assert_eq!(state.precondition(&key()).await.unwrap(), 1);
    });
}
on_both_backends!(precondition_streaks_count_in_a_row_until_a_send_goes_through);

/// A hold is news once; an operator's retry lifts it.
async fn a_held_mailbox_is_news_once_and_an_operator_retry_lifts_it(backend: Backend) {
    let mut backed = one_claimed(backend).await;
    on_state!(&mut backed, state => {
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert!(state.note(&key(), Note::Held(later)).await.unwrap());
        assert!(!state.note(&key(), Note::Held(later)).await.unwrap(), "not news");
        assert!(state.lift(&key()).await.unwrap());
        assert!(!state.lift(&key()).await.unwrap(), "nothing left to lift");
    });
}
on_both_backends!(a_held_mailbox_is_news_once_and_an_operator_retry_lifts_it);
