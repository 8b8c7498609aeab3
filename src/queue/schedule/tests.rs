//! The retry schedule under paused tokio time: hours of backoff pass in milliseconds, and the
//! times asserted are the scheduler's own, not the test machine's speed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod holds;

use super::Scheduler;
use crate::config::QueueConfig;
use crate::message::Message;
use crate::queue::courier::{Clock, Courier, Limits};
use crate::queue::record::{Entry, Place, Request};
use crate::queue::spool::Spool;
use crate::queue::store::Store;
use crate::queue::test_envelope;
use crate::relay::{Cause, DeliveryError, Receipt, Scope};
use crate::status::Status;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A courier that answers from a script per message (delivered once the script runs out) and
/// reports every attempt with the tokio time it started.
struct Scripted {
    script: Mutex<HashMap<String, VecDeque<DeliveryError>>>,
    /// Messages whose delivery panics.
    panics: Mutex<Vec<String>>,
    /// How long each attempt takes.
    delay: Mutex<Duration>,
    generation: Mutex<u64>,
    /// While true every attempt meets a refused token (`credentials()`).
    revoked: Mutex<bool>,
    /// The holds the scheduler noted for readiness: (account, user).
    noted: Mutex<Vec<(String, Option<String>)>>,
    attempts: mpsc::UnboundedSender<(String, Instant)>,
}

#[async_trait::async_trait]
impl Courier for Scripted {
    async fn deliver(&self, entry: &Entry, _: &Message) -> Result<Receipt, DeliveryError> {
        let _ = self.attempts.send((entry.id.clone(), Instant::now()));
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if *self.revoked.lock().unwrap() {
            return Err(credentials());
        }
        if self.panics.lock().unwrap().contains(&entry.id) {
            panic!("a bug while delivering {}", entry.id);
        }
        let next = self
            .script
            .lock()
            .unwrap()
            .get_mut(&entry.id)
            .and_then(VecDeque::pop_front);
        match next {
            Some(error) => Err(error),
            None => Ok(Receipt {
                id: format!("gmail-{}", entry.id),
                queued: false,
            }),
        }
    }

    fn limits(&self, _name: &str) -> Option<Limits> {
        Some(Limits {
            max_sends: 5,
            generation: *self.generation.lock().unwrap(),
        })
    }

    fn accounts(&self) -> Vec<String> {
        vec!["default".into(), "other".into()]
    }

    fn note_hold(&self, account: &str, user: Option<&str>, _: &str, _: &str) {
        let held = (account.to_string(), user.map(str::to_string));
        self.noted.lock().unwrap().push(held);
    }
}

/// A running scheduler over a fresh spool, with the courier's attempt reports.
struct Harness {
    spool: Spool,
    courier: Arc<Scripted>,
    attempts: mpsc::UnboundedReceiver<(String, Instant)>,
    incoming: mpsc::UnboundedSender<Entry>,
    clock: Clock,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(config: QueueConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (report, attempts) = mpsc::unbounded_channel();
        let courier = Arc::new(Scripted {
            script: Mutex::new(HashMap::new()),
            panics: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            generation: Mutex::new(1),
            revoked: Mutex::new(false),
            noted: Mutex::new(Vec::new()),
            attempts: report,
        });
        let (incoming, receiver) = mpsc::unbounded_channel();
        let clock = Clock::tokio();
        let store: Arc<dyn Store> = Arc::new(spool.clone());
        let scheduler = Scheduler::new(store, courier.clone(), config, receiver)
            .await
            .with_clock(clock)
            .with_commands(Arc::new(spool.clone()));
        let shutdown = CancellationToken::new();
        tokio::spawn(scheduler.run(shutdown.clone(), Duration::from_secs(5)));
        Harness {
            spool,
            courier,
            attempts,
            incoming,
            clock,
            shutdown,
            _dir: dir,
        }
    }

    /// Queues a message for `account` that fails with `failures` (in order) before it is sent.
    async fn queue(&self, account: &str, failures: Vec<DeliveryError>) -> String {
        let entry = self.store(account, failures).await;
        let id = entry.id.clone();
        self.incoming.send(entry).unwrap();
        id
    }

    /// Queues a message for the mailbox of `user` under `account` (a service account sending as
    /// its senders).
    async fn queue_as(&self, account: &str, user: &str, failures: Vec<DeliveryError>) -> String {
        let entry = self.store_as(account, Some(user), failures).await;
        let id = entry.id.clone();
        self.incoming.send(entry).unwrap();
        id
    }

    /// Stores a message without announcing it, as the acceptor does just before it announces.
    async fn store(&self, account: &str, failures: Vec<DeliveryError>) -> Entry {
        self.store_as(account, None, failures).await
    }

    async fn store_as(
        &self,
        account: &str,
        user: Option<&str>,
        failures: Vec<DeliveryError>,
    ) -> Entry {
        let envelope = test_envelope(self.clock.now());
        let message = Message::from_bytes(b"Subject: test\r\n\r\nbody\r\n".to_vec());
        let entry = Entry::new(&envelope, message.len(), account).with_mailbox(user);
        self.spool
            .put(Place::Queue, &entry, &message)
            .await
            .unwrap();
        self.courier
            .script
            .lock()
            .unwrap()
            .insert(entry.id.clone(), failures.into());
        entry
    }

    /// The next attempt's message and start time.
    async fn attempt(&mut self) -> (String, Instant) {
        bounded(self.attempts.recv())
            .await
            .expect("the scheduler stopped")
    }

    /// Waits (in tokio time) until the scheduler has written `id`'s outcome.
    async fn settled(&self, id: &str, place: Place) -> Entry {
        bounded(self.settled_unbounded(id, place)).await
    }

    async fn settled_unbounded(&self, id: &str, place: Place) -> Entry {
        loop {
            if let Ok(Some(entry)) = self.spool.read(place, id).await
                && (place == Place::Dead || entry.attempts > 0)
            {
                return entry;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn delivered(&self, id: &str) {
        bounded(async {
            while self.spool.contains(Place::Queue, id).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

/// `work`, or a failure once two virtual days have passed: a stalled scheduler fails the test
/// instead of hanging it (under paused time two days pass in seconds).
async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(2 * 24 * HOUR, work)
        .await
        .expect("nothing happened for two (virtual) days")
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn temporary(retry_after: Option<Duration>) -> DeliveryError {
    DeliveryError::Temporary {
        status: Status::SYSTEM_TEMPORARY,
        reason: "Gmail answered 503".into(),
        retry_after,
        cause: Cause::Outage,
    }
}

fn credentials() -> DeliveryError {
    DeliveryError::Credentials {
        account: "default".into(),
        reason: "invalid_grant".into(),
        fix: "run smtp2gmail authorize".into(),
        scope: Scope::Account,
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        max_send_rate: 1000.0,
        ..QueueConfig::default()
    }
}

/// `got` is within the ±20 % jitter of `expected`.
fn assert_jittered(got: Duration, expected: Duration, what: &str) {
    let (low, high) = (
        expected.mul_f64(0.8),
        expected.mul_f64(1.2) + Duration::from_secs(1),
    );
    assert!(
        got >= low && got <= high,
        "{what}: waited {got:?}, expected {expected:?} ± 20 %"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_from_retry_min_to_retry_max() {
    let mut harness = Harness::start(config()).await;
    let id = harness.queue("default", vec![temporary(None); 8]).await;
    let mut starts = Vec::new();
    for _ in 0..9 {
        let (attempted, at) = harness.attempt().await;
        assert_eq!(attempted, id);
        starts.push(at);
    }
    // Defaults: 1 min doubling to 1 h.
    let expected = [1, 2, 4, 8, 16, 32, 60, 60].map(|m| m * MINUTE);
    for (i, gap) in starts.windows(2).map(|w| w[1] - w[0]).enumerate() {
        assert_jittered(gap, expected[i], &format!("wait after attempt {}", i + 1));
    }
    harness.delivered(&id).await;
    assert!(!harness.spool.contains(Place::Dead, &id).await.unwrap());
}

/// How long after failing once with `error` a message is tried again (and then delivered).
async fn retried_after(error: DeliveryError) -> Duration {
    let mut harness = Harness::start(config()).await;
    let id = harness.queue("default", vec![error]).await;
    let (_, first) = harness.attempt().await;
    let (_, second) = harness.attempt().await;
    harness.delivered(&id).await;
    second - first
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_google_is_honoured_exactly() {
    let after = Duration::from_secs(90);
    let waited = retried_after(temporary(Some(after))).await;
    assert!(
        waited >= after && waited < after + Duration::from_secs(1),
        "waited {waited:?}, Google asked for {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn daily_limit_defers_the_mailbox_for_hours() {
    let mut harness = Harness::start(config()).await;
    let limit = 6 * HOUR;
    let first = harness.queue("default", vec![temporary(Some(limit))]).await;
    let (_, limited_at) = harness.attempt().await;
    harness.settled(&first, Place::Queue).await;
    // Another message of the same mailbox waits out the deferral; another account does not.
    let held = harness.queue("default", vec![]).await;
    let free = harness.queue("other", vec![]).await;
    let (id, at) = harness.attempt().await;
    assert_eq!(id, free);
    assert!(at - limited_at < Duration::from_secs(2));
    let mut next = [harness.attempt().await, harness.attempt().await];
    next.sort_by_key(|(_, at)| *at);
    for (id, at) in next {
        assert!([&first, &held].contains(&&id));
        assert!(
            at - limited_at >= limit,
            "{id} sent {:?} after the limit",
            at - limited_at
        );
    }
}

#[tokio::test(start_paused = true)]
async fn operator_retry_lifts_the_accounts_deferral() {
    let mut harness = Harness::start(config()).await;
    let first = harness
        .queue("default", vec![temporary(Some(24 * HOUR))])
        .await;
    let (_, limited_at) = harness.attempt().await;
    harness.settled(&first, Place::Queue).await;
    let held = harness.queue("default", vec![]).await;
    tokio::time::sleep(MINUTE).await;
    harness.spool.submit(&Request::Retry { id: None }).unwrap();
    let mut retried = vec![harness.attempt().await, harness.attempt().await];
    retried.sort();
    let mut expected = vec![first.clone(), held.clone()];
    expected.sort();
    assert_eq!(
        retried.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    for (id, at) in retried {
        assert!(
            at - limited_at < 2 * MINUTE,
            "{id} waited {:?}",
            at - limited_at
        );
    }
    harness.delivered(&first).await;
    harness.delivered(&held).await;
}

#[tokio::test(start_paused = true)]
async fn credentials_problem_pauses_the_account_until_they_change() {
    let mut harness = Harness::start(config()).await;
    let id = harness.queue("default", vec![credentials()]).await;
    let (_, failed_at) = harness.attempt().await;
    harness.settled(&id, Place::Queue).await;
    // The message's own backoff (about a minute) passes; the paused account holds it.
    tokio::time::sleep(20 * MINUTE).await;
    assert!(harness.attempts.try_recv().is_err(), "retried while paused");
    let changed_at = Instant::now();
    *harness.courier.generation.lock().unwrap() = 2;
    let (_, resumed_at) = harness.attempt().await;
    assert!(resumed_at - failed_at >= 20 * MINUTE);
    assert!(
        resumed_at - changed_at < Duration::from_secs(2),
        "resumed {:?} after the new credentials",
        resumed_at - changed_at
    );
    harness.delivered(&id).await;
}

#[tokio::test(start_paused = true)]
async fn paused_account_is_probed_again_after_retry_max() {
    let waited = retried_after(credentials()).await;
    assert!(
        waited >= HOUR && waited < HOUR + Duration::from_secs(2),
        "probed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn message_older_than_max_age_becomes_a_dead_letter() {
    // Half a day rather than the default five, so the virtual days do not cost real seconds.
    let max_age = 12 * HOUR;
    let harness = Harness::start(QueueConfig {
        max_age,
        ..config()
    })
    .await;
    let id = harness.queue("default", vec![temporary(None); 1000]).await;
    let dead = harness.settled(&id, Place::Dead).await;
    let reason = dead.dead_reason.as_deref().expect("a dead letter says why");
    assert!(reason.starts_with("too old after"), "{reason}");
    let last = dead.history.last().expect("attempts are recorded").at;
    let age = last.duration_since(dead.received_at).unwrap();
    assert!(
        age > max_age && age < max_age + 2 * HOUR,
        "dead at age {age:?}"
    );
    // 7 attempts in the first hour of backoff, then about one an hour (retry_max).
    assert!(
        (14..=22).contains(&dead.attempts),
        "{} attempts",
        dead.attempts
    );
    assert!(!harness.spool.contains(Place::Queue, &id).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_backlog_does_not_hold_up_another_account() {
    let mut harness = Harness::start(QueueConfig {
        max_send_rate: 1.0,
        ..QueueConfig::default()
    })
    .await;
    for _ in 0..200 {
        harness.queue("default", vec![]).await;
    }
    let started = Instant::now();
    let other = harness.queue("other", vec![]).await;
    loop {
        let (id, at) = harness.attempt().await;
        if id == other {
            assert!(at - started < Duration::from_secs(2));
            break;
        }
    }
    harness.delivered(&other).await;
}

/// Waits (in tokio time) until `id`'s message file is gone.
async fn gone(spool: &Spool, id: &str) {
    while spool.contains(Place::Queue, id).await.unwrap() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_message_announced_while_its_retry_is_in_flight_is_sent_once() {
    // The acceptor announces after storing; an operator's retry, or the scan at start, can reach
    // the message first. The late announcement must not start a second delivery.
    let mut harness = Harness::start(config()).await;
    *harness.courier.delay.lock().unwrap() = MINUTE;
    let entry = harness.store("default", vec![]).await;
    harness
        .spool
        .submit(&Request::Retry {
            id: Some(entry.id.clone()),
        })
        .unwrap();
    let (id, _) = harness.attempt().await;
    assert_eq!(id, entry.id);
    harness.incoming.send(entry.clone()).unwrap();
    harness.delivered(&entry.id).await;
    tokio::time::sleep(10 * MINUTE).await;
    assert!(harness.attempts.try_recv().is_err(), "delivered twice");
}

#[tokio::test(start_paused = true)]
async fn a_message_deleted_before_it_was_announced_is_forgotten() {
    let mut harness = Harness::start(config()).await;
    let entry = harness.store("default", vec![]).await;
    harness
        .spool
        .submit(&Request::Delete {
            id: entry.id.clone(),
        })
        .unwrap();
    gone(&harness.spool, &entry.id).await;
    harness.incoming.send(entry.clone()).unwrap();
    tokio::time::sleep(10 * MINUTE).await;
    assert!(
        harness.attempts.try_recv().is_err(),
        "a deleted message was sent"
    );
    let queue = harness.spool.root().join("queue");
    assert_eq!(
        std::fs::read_dir(queue).unwrap().count(),
        0,
        "no record written back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_delivery_becomes_a_dead_letter_and_frees_its_slot() {
    let mut harness = Harness::start(config()).await;
    // More panics than the account's five delivery slots: a leaked slot would stall the account.
    let mut doomed = Vec::new();
    for _ in 0..6 {
        let entry = harness.store("default", vec![]).await;
        harness
            .courier
            .panics
            .lock()
            .unwrap()
            .push(entry.id.clone());
        doomed.push(entry.id.clone());
        harness.incoming.send(entry).unwrap();
    }
    for id in &doomed {
        let dead = harness.settled(id, Place::Dead).await;
        assert!(dead.dead_reason.unwrap().contains("a bug in smtp2gmail"));
    }
    let fine = harness.queue("default", vec![]).await;
    harness.delivered(&fine).await;
    while let Ok((id, _)) = harness.attempts.try_recv() {
        assert!(doomed.contains(&id) || id == fine);
    }
}

#[tokio::test(start_paused = true)]
async fn a_send_rate_above_the_wake_up_rate_is_kept() {
    let mut harness = Harness::start(QueueConfig {
        max_send_rate: 500.0,
        ..QueueConfig::default()
    })
    .await;
    *harness.courier.delay.lock().unwrap() = Duration::from_millis(1);
    for _ in 0..300 {
        let entry = harness.store("default", vec![]).await;
        harness.incoming.send(entry).unwrap();
    }
    let mut starts = Vec::new();
    for _ in 0..300 {
        starts.push(harness.attempt().await.1);
    }
    let took = starts[299] - starts[0];
    // 299 gaps of 2 ms; one wake-up's worth of slots may start together.
    assert!(
        took >= Duration::from_millis(550) && took <= Duration::from_millis(700),
        "300 sends at 500/s took {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_deleted_while_in_flight_is_not_written_back() {
    let mut harness = Harness::start(config()).await;
    *harness.courier.delay.lock().unwrap() = MINUTE;
    let id = harness.queue("default", vec![temporary(None)]).await;
    harness.attempt().await;
    harness
        .spool
        .submit(&Request::Delete { id: id.clone() })
        .unwrap();
    gone(&harness.spool, &id).await;
    // The attempt ends (a failure that would be retried) after the delete.
    tokio::time::sleep(10 * MINUTE).await;
    assert!(harness.attempts.try_recv().is_err(), "tried again");
    let queue = harness.spool.root().join("queue");
    assert_eq!(
        std::fs::read_dir(queue).unwrap().count(),
        0,
        "record written back"
    );
}
