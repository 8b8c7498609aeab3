//! Pacing: a mailbox meeting Google's per-user quota slows down and everything still arrives; a
//! mailbox never has more deliveries at once than its account's `max_concurrent_sends`. (The send
//! rate's slots: `delivery::shutdown_lets_the_delivery_in_flight_finish…`.)

use std::time::Duration;

use smtp2gmail::queue::record::Place;

use crate::bench::{Backend, Bench, Waits};
use crate::common::fake_gmail::Quota;
use crate::common::serving::{Serving, queued_id};

async fn a_per_user_quota_below_the_configured_rate_slows_the_mailbox_and_everything_arrives(
    backend: Backend,
) {
    let bench = Bench::new(backend).await;
    // As Google counts it: sends per user per window (here 3 per second, to keep the test short).
    bench.google.set_quota(Quota {
        sends: 3,
        window: Duration::from_secs(1),
    });
    let queued = bench.serve().await;
    for _ in 0..8 {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    bench.google.wait_for_uploads(8).await;
    queued.store().until(Place::Queue, 0).await;
    assert!(
        bench.google.over_quota() > 0,
        "the configured 1000/s met the quota"
    );
    assert_eq!(queued.store().count(Place::Dead).await.unwrap(), 0);
    queued.stop().await;
}
on_both_backends!(
    a_per_user_quota_below_the_configured_rate_slows_the_mailbox_and_everything_arrives
);

async fn a_mailbox_keeps_its_accounts_concurrency(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench.google.set_send_latency(Duration::from_millis(50));
    let queued = bench
        .serve_with(|config| config.gmail.max_concurrent_sends = Some(2))
        .await;
    for _ in 0..10 {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    bench.google.wait_for_uploads(10).await;
    queued.store().until(Place::Queue, 0).await;
    let most = bench.google.most_concurrent_sends();
    assert!(most <= 2, "{most} at once");
    queued.stop().await;
}
on_both_backends!(a_mailbox_keeps_its_accounts_concurrency);
