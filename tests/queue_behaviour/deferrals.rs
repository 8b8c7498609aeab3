//! Temporary failures keep the message queued for a later attempt: Gmail unreachable, hanging up
//! or timing out; the daily sending limit defers for hours; a "Retry after" in the past is
//! ordinary backoff; "Precondition check failed." is retried.

use std::time::{Duration, SystemTime};

use smtp2gmail::queue::record::Place;

use smtp2gmail::queue::record::Entry;

use crate::bench::{Backend, Bench, Waits, hour_long_backoff};
use crate::common::TestServer;
use crate::common::fake_gmail::SendFault;
use crate::common::serving::{Serving, queued_id};

/// Sends one message and waits for its first attempt to fail; its record then.
async fn first_failure(queued: &TestServer) -> Entry {
    queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until_attempted(1).await;
    queued.store().only(Place::Queue).await
}

async fn the_daily_sending_limit_defers_for_hours_not_seconds(backend: Backend) {
    let bench = Bench::new(backend).await;
    // Before the first message: the queue sends nothing until then.
    bench.google.fail_sends([SendFault::RetryAfter {
        status: 429,
        seconds: 3 * 3600,
    }]);
    let queued = bench.serve().await;
    let wait = first_failure(&queued)
        .await
        .next_attempt
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        wait > Duration::from_secs(2 * 3600),
        "retry in {wait:?}, not hours"
    );
    assert!(bench.google.uploads().is_empty());
    queued.stop().await;
}
on_both_backends!(the_daily_sending_limit_defers_for_hours_not_seconds);

async fn a_retry_after_in_the_past_is_ordinary_backoff_not_a_retry_loop(backend: Backend) {
    let bench = Bench::new(backend).await;
    let skewed = SystemTime::now() - Duration::from_secs(300);
    bench
        .google
        .fail_sends([SendFault::retry_after_in_message(skewed)]);
    let queued = bench.serve_with(hour_long_backoff).await;
    let wait = first_failure(&queued)
        .await
        .next_attempt
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        wait > Duration::from_secs(30 * 60),
        "retried after {wait:?}: the past time must not mean now"
    );
    queued.stop().await;
}
on_both_backends!(a_retry_after_in_the_past_is_ordinary_backoff_not_a_retry_loop);

async fn an_unreachable_gmail_keeps_the_message_queued(backend: Backend) {
    let bench = Bench::new(backend).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let queued = bench
        .serve_with(|config| config.gmail.api_base = format!("http://{closed}"))
        .await;
    let record = first_failure(&queued).await;
    let error = record.last_error.unwrap_or_default();
    assert!(error.contains("could not connect"), "{error}");
    assert!(record.dead_reason.is_none());
    queued.stop().await;
}
on_both_backends!(an_unreachable_gmail_keeps_the_message_queued);

/// A "Gmail" at a loopback address that accepts connections and then hangs up (`hang_up`) or
/// never answers.
async fn broken_gmail(hang_up: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            if !hang_up {
                held.push(socket);
            }
        }
    });
    format!("http://{addr}")
}

async fn dropped_connections_and_timeouts_keep_the_message_queued(backend: Backend) {
    for (hang_up, expected) in [(true, "Gmail API"), (false, "timed out")] {
        let bench = Bench::new(backend).await;
        let api_base = broken_gmail(hang_up).await;
        let queued = bench
            .serve_with(|config| config.gmail.api_base = api_base)
            .await;
        let record = first_failure(&queued).await;
        let error = record.last_error.unwrap_or_default();
        assert!(error.contains(expected), "{error}");
        assert!(
            record.dead_reason.is_none(),
            "a temporary failure, not a dead letter"
        );
        queued.stop().await;
    }
}
on_both_backends!(dropped_connections_and_timeouts_keep_the_message_queued);

async fn a_failed_precondition_is_retried_not_a_dead_letter(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench.google.fail_sends([
        SendFault::precondition_check_failed(),
        SendFault::precondition_check_failed(),
    ]);
    let queued = bench.serve().await;
    queued_id(&queued.send(&["alice@example.com"]).await);
    bench.google.wait_for_uploads(1).await;
    queued.store().until(Place::Queue, 0).await;
    assert_eq!(queued.store().count(Place::Dead).await.unwrap(), 0);
    queued.stop().await;
}
on_both_backends!(a_failed_precondition_is_retried_not_a_dead_letter);
