//! Webhook events against real local HTTP receivers: signed as Standard Webhooks says (verified
//! by an independent implementation in Python, tests/notify/verify_webhooks.py), retried while the
//! receiver fails, given up after the timeout and the attempts when it never answers, dropped and
//! counted when a receiver's queue is full, and never holding up the caller.
//!
//! The tests run on tokio's current-thread runtime: a worker runs only when the test awaits, so
//! "nothing was sent when `event` returned" shows that `event` did no network work itself.

mod common;

use std::time::{Duration, SystemTime};

use common::logs::{Captured, capture_here};
use common::webhooks::{SECRET, python_verifies, receiver, silent_receiver};
use serde_json::Value;
use smtp2gmail::notify::signature::SigningKey;
use smtp2gmail::notify::{
    CredentialsEvent, CredentialsState, Detail, Endpoint, Event, EventKind, MessageEvent, Notifier,
    WebhookDelivery, WebhookStats,
};
use smtp2gmail::status::Status;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a test waits for something that should take milliseconds before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn quick(attempts: u32, timeout: Duration) -> WebhookDelivery {
    WebhookDelivery {
        capacity: 100,
        timeout,
        attempts,
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
    }
}

fn endpoint(url: url::Url, events: &[EventKind]) -> Endpoint {
    Endpoint::new(1, url, events.to_vec(), SigningKey::parse(SECRET).unwrap())
}

/// A notifier for `endpoints`, its workers on a tracker of their own; cancel the token to stop.
fn start(
    endpoints: Vec<Endpoint>,
    delivery: WebhookDelivery,
) -> (Notifier, TaskTracker, CancellationToken) {
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start(endpoints, delivery, &tasks, &shutdown).unwrap();
    (notifier, tasks, shutdown)
}

fn dead_letter() -> Event {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_889_730);
    Event {
        at,
        detail: Detail::DeadLetter(MessageEvent {
            queue_id: "019de0a1b2c3d4e5f6".into(),
            message_id: Some("<inv42@example.com>".into()),
            account: "default".into(),
            mailbox: None,
            sender: Some("app@example.com".into()),
            recipients: vec!["bob@example.org".into()],
            status: Some(Status(5, 7, 1)),
            reason: Some("Invalid To header".into()),
            received_at: at - Duration::from_secs(60),
            attempts: 1,
            next_attempt: None,
            gmail_id: None,
        }),
    }
}

fn credentials_held() -> Event {
    Event::now(Detail::Credentials(CredentialsEvent {
        account: "support".into(),
        mailbox: None,
        state: CredentialsState::Held,
        reason: Some("invalid_grant".into()),
    }))
}

async fn wait_stats(notifier: &Notifier, done: impl FnMut(&WebhookStats) -> bool) -> WebhookStats {
    let mut stats = notifier.stats();
    let waited = tokio::time::timeout(PATIENCE, stats.wait_for(done)).await;
    let stats = waited
        .expect("the webhook worker did not get there in time")
        .unwrap();
    *stats
}

#[tokio::test]
async fn signed_events_verify_with_the_standard_webhooks_algorithm() {
    let all = receiver(&[]).await;
    let delivered_only = receiver(&[]).await;
    let (notifier, _tasks, shutdown) = start(
        vec![
            endpoint(all.url.clone(), &EventKind::ALL),
            endpoint(delivered_only.url.clone(), &[EventKind::Delivered]),
        ],
        quick(3, Duration::from_secs(5)),
    );
    notifier.event(dead_letter());
    notifier.event(credentials_held());
    let stats = wait_stats(&notifier, |s| s.sent == 2).await;
    assert_eq!((stats.failed, stats.dropped, stats.attempts), (0, 0, 2));
    assert_eq!(
        *delivered_only.count.borrow(),
        0,
        "it wants only delivered events"
    );

    let received = all.received.lock().unwrap().clone();
    assert_eq!(python_verifies(&received), 2);
    let first = &received[0];
    assert_eq!(first.headers["content-type"], "application/json");
    let id = first.headers["webhook-id"].to_str().unwrap();
    assert!(id.starts_with("evt_") && !id.contains('.'), "{id}");
    assert_ne!(id, received[1].headers["webhook-id"], "one id per event");
    let body: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body["type"], "dead_letter");
    assert_eq!(body["timestamp"], "2026-05-04T10:15:30.000Z");
    assert_eq!(body["data"]["queue_id"], "019de0a1b2c3d4e5f6");
    assert_eq!(body["data"]["status"], "5.7.1");
    let second: Value = serde_json::from_str(&received[1].body).unwrap();
    assert_eq!(second["type"], "credentials");
    assert_eq!(second["data"]["state"], "held");

    // A signature made with another key does not verify: the check above can fail.
    let mut forged = first.clone();
    let other = SigningKey::parse("whsec_KysrKysrKysrKysrKysrKysrKysrKysrKysrKys=").unwrap();
    let timestamp: u64 = first.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let signature = other.sign(id, timestamp, first.body.as_bytes());
    forged
        .headers
        .insert("webhook-signature", signature.parse().unwrap());
    let refused = std::panic::catch_unwind(|| python_verifies(&[forged]));
    assert!(refused.is_err(), "a wrong signature was accepted");
    shutdown.cancel();
}

#[tokio::test]
async fn a_receiver_answering_500_twice_still_gets_the_event() {
    let flaky = receiver(&[500, 500]).await;
    let (notifier, _tasks, shutdown) = start(
        vec![endpoint(flaky.url.clone(), &EventKind::ALL)],
        quick(5, Duration::from_secs(5)),
    );
    notifier.event(dead_letter());
    let stats = wait_stats(&notifier, |s| s.sent == 1).await;
    assert_eq!((stats.failed, stats.attempts), (0, 3));
    let received = flaky.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    let ids: Vec<_> = received
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one id for every attempt: {ids:?}"
    );
    assert_eq!(python_verifies(&received), 3, "each attempt is signed");
    shutdown.cancel();
}

#[tokio::test]
async fn a_receiver_that_answers_410_gone_is_not_asked_again() {
    let gone = receiver(&[410]).await;
    let (notifier, _tasks, shutdown) = start(
        vec![endpoint(gone.url.clone(), &EventKind::ALL)],
        quick(5, Duration::from_secs(5)),
    );
    notifier.event(dead_letter());
    let stats = wait_stats(&notifier, |s| s.failed == 1).await;
    assert_eq!((stats.sent, stats.attempts), (0, 1));
    shutdown.cancel();
}

#[tokio::test]
async fn a_receiver_that_never_answers_neither_blocks_the_caller_nor_keeps_the_event() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _guard = capture_here(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let (address, connections) = silent_receiver().await;
    let url: url::Url = format!("http://{address}/hooks/secret-token")
        .parse()
        .unwrap();
    let (notifier, _tasks, shutdown) = start(
        vec![endpoint(url, &EventKind::ALL)],
        quick(2, Duration::from_millis(300)),
    );
    notifier.event(dead_letter());
    assert_eq!(
        *connections.borrow(),
        0,
        "event() returned before any request was made"
    );
    let stats = wait_stats(&notifier, |s| s.failed == 1).await;
    assert_eq!((stats.sent, stats.attempts), (0, 2));
    assert_eq!(*connections.borrow(), 2, "one connection per attempt");

    let logs = logs.text();
    assert!(
        logs.contains("webhook event not delivered, given up: no answer within 300ms"),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("webhook 1 (http://{address})")),
        "{logs}"
    );
    assert!(
        !logs.contains("secret-token"),
        "the URL's path is not logged: {logs}"
    );
    assert!(
        !logs.contains("KioqKioq"),
        "the secret is not logged: {logs}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_shutdown_ends_the_workers() {
    let (address, connections) = silent_receiver().await;
    let url: url::Url = format!("http://{address}/hooks/secret-token")
        .parse()
        .unwrap();
    let delivery = WebhookDelivery {
        capacity: 2,
        ..quick(5, Duration::from_secs(30))
    };
    let (notifier, tasks, shutdown) = start(vec![endpoint(url, &EventKind::ALL)], delivery);
    for _ in 0..5 {
        notifier.event(dead_letter());
    }
    assert_eq!(
        *notifier.stats().borrow(),
        WebhookStats {
            dropped: 3,
            ..WebhookStats::default()
        },
        "two fit, three are dropped at once"
    );
    // The worker takes the first event and waits for the silent receiver.
    tokio::time::timeout(PATIENCE, connections.clone().wait_for(|&n| n == 1))
        .await
        .unwrap()
        .unwrap();
    notifier.event(dead_letter());
    assert_eq!(notifier.stats().borrow().dropped, 3, "room for one again");

    let metrics = smtp2gmail::telemetry::render();
    assert!(
        metrics
            .contains("smtp2gmail_webhook_events_total{type=\"dead_letter\",outcome=\"dropped\"}"),
        "{metrics}"
    );

    // Stopping ends the worker at once, although its receiver never answers; what it had not
    // sent is dropped and counted.
    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(PATIENCE, tasks.wait()).await.unwrap();
    assert_eq!(
        *notifier.stats().borrow(),
        WebhookStats {
            dropped: 6,
            attempts: 1,
            ..WebhookStats::default()
        }
    );
    notifier.event(dead_letter());
    assert_eq!(
        notifier.stats().borrow().dropped,
        7,
        "after shutdown, events are dropped"
    );
}

#[tokio::test]
async fn without_webhooks_events_go_nowhere() {
    let notifier = Notifier::off();
    notifier.event(dead_letter());
    assert_eq!(*notifier.stats().borrow(), WebhookStats::default());
}
