//! Accepting and delivering: a 250 means stored, then delivered (with retries); what policy
//! refuses is refused before 250; the queue accepts while Gmail is down; large messages stream;
//! a shutdown lets the delivery in flight finish and keeps the rest.

use std::time::Duration;

use smtp2gmail::queue::record::Place;

use crate::bench::{Backend, Bench, Waits};
use crate::common::fake_gmail::SendFault;
use crate::common::serving::{MESSAGE, Serving, queued_id};
use crate::common::{WAIT, assert_code};

async fn a_250_means_stored_then_delivered_with_retries(backend: Backend) {
    let bench = Bench::new(backend).await;
    // Before the first message: the queue sends nothing until then.
    bench
        .google
        .fail_sends([SendFault::google(503, "backendError")]);
    let queued = bench.serve().await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    bench.google.wait_for_uploads(1).await;
    queued.store().until(Place::Queue, 0).await;
    let uploads = bench.google.uploads();
    assert_eq!(uploads.len(), 1, "once");
    assert_eq!(
        uploads[0].body,
        &MESSAGE[..MESSAGE.len() - 3],
        "the exact bytes"
    );
    assert!(!id.is_empty());
    queued.stop().await;
}
on_both_backends!(a_250_means_stored_then_delivered_with_retries);

async fn a_401_refreshes_the_token_and_the_queued_message_is_delivered_once(backend: Backend) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    let queued = bench.serve().await;
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    let tokens = google.token_requests();
    // Google stops honouring the access token the server holds (revoked, or expired early).
    google.revoke_access_tokens();
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(2).await;
    queued.store().until(Place::Queue, 0).await;
    assert_eq!(google.unauthorized_sends(), 1, "one 401");
    assert_eq!(google.token_requests(), tokens + 1, "one refresh");
    assert_eq!(google.uploads().len(), 2, "each message once");
    queued.stop().await;
}
on_both_backends!(a_401_refreshes_the_token_and_the_queued_message_is_delivered_once);

async fn policy_is_decided_before_250_and_nothing_is_queued(backend: Backend) {
    let bench = Bench::new(backend).await;
    let queued = bench.serve().await;
    // To: alice is in the header, but the envelope names only bob: a header-only recipient.
    let reply = queued.send(&["bob@example.com"]).await;
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    for place in [Place::Queue, Place::Held, Place::Dead] {
        assert_eq!(queued.store().count(place).await.unwrap(), 0, "{place:?}");
    }
    queued.stop().await;
}
on_both_backends!(policy_is_decided_before_250_and_nothing_is_queued);

async fn the_queue_accepts_while_gmail_is_down(backend: Backend) {
    let bench = Bench::new(backend).await;
    // Before the first message: the queue sends nothing until then.
    let down = std::iter::repeat_n(SendFault::google(503, "backendError"), 1000);
    bench.google.fail_sends(down);
    let queued = bench.serve().await;
    for _ in 0..3 {
        assert_code(&queued.send(&["alice@example.com"]).await, 250);
    }
    assert_eq!(queued.store().count(Place::Queue).await.unwrap(), 3);
    queued.stop().await;
}
on_both_backends!(the_queue_accepts_while_gmail_is_down);

async fn large_queued_messages_are_streamed_with_the_bcc_added(backend: Backend) {
    let bench = Bench::new(backend).await;
    let queued = bench.serve().await;
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    let message = format!(
        "From: app@example.com\r\nTo: alice@example.com\r\n\r\n{}",
        line.repeat(5_000_000 / line.len())
    );
    let mut client = queued.client().await;
    client
        .start_transaction("app@example.com", &["alice@example.com", "bob@example.com"])
        .await;
    queued_id(&client.data(format!("{message}.\r\n").as_bytes()).await);
    drop(client);
    bench.google.wait_for_uploads(1).await;
    let expected = format!("Bcc: bob@example.com\r\n{message}");
    assert!(
        bench.google.uploads()[0].body == expected.as_bytes(),
        "the streamed upload differs"
    );
    queued.store().until(Place::Queue, 0).await;
    if backend == Backend::Spool {
        // The body was spilled into the spool while it arrived and linked into the queue; the
        // database's spills are temporary files of the system.
        queued.until_files("incoming", 0).await;
    }
    queued.stop().await;
}
on_both_backends!(large_queued_messages_are_streamed_with_the_bcc_added);

async fn shutdown_lets_the_delivery_in_flight_finish_and_keeps_the_rest_queued(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench.google.set_send_latency(Duration::from_millis(200));
    // One start per 100 s: the second message cannot start before the shutdown.
    let queued = bench
        .serve_with(|config| config.queue.max_send_rate = 0.01)
        .await;
    let first = queued_id(&queued.send(&["alice@example.com"]).await);
    let second = queued_id(&queued.send(&["alice@example.com"]).await);
    let started = tokio::time::timeout(WAIT, async {
        while bench.google.most_concurrent_sends() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(started.await.is_ok(), "the first delivery never started");
    queued.stop().await;
    assert_eq!(
        bench.google.uploads().len(),
        1,
        "the delivery in flight finished"
    );
    let store = bench.store().await;
    assert_eq!(
        store.store().ids(Place::Queue).await,
        [second],
        "{first} was delivered and removed"
    );
}
on_both_backends!(shutdown_lets_the_delivery_in_flight_finish_and_keeps_the_rest_queued);
