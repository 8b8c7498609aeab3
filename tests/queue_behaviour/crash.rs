//! The queue's promise under `kill -9` with mail in the queue: every message that got a 250 reaches
//! Gmail after a restart — exactly once, or at most twice if it was in flight when the server
//! died. On the spool the restarted server reads what the dead one left; on the database it is
//! another replica, which takes the dead one's messages over as their leases lapse. A test, not a
//! benchmark: it asserts counts, never times.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::{Backend, Bench};
use crate::common::burst::{self, Acknowledged};
use crate::common::serving::Serving;

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 120;

async fn kill_minus_9_loses_no_acknowledged_message(backend: Backend) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    google.set_send_latency(Duration::from_millis(2));
    let mut config = bench.config();
    config.queue.max_send_rate = 100_000.0;

    let doomed = bench.process(&config).await;
    let acknowledged: Acknowledged = Arc::default();
    let burst = burst::send(&[doomed.smtp], CLIENTS, PER_CLIENT, &acknowledged);
    // Kill once a third of the burst is acknowledged and deliveries are under way.
    let third = CLIENTS * PER_CLIENT / 3;
    burst::until_under_way(&acknowledged, third, || !google.uploads().is_empty()).await;
    doomed.kill().await; // SIGKILL
    for client in burst {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= third);

    // Restarted on the same queue: everything acknowledged is delivered.
    let survivor = bench.process(&config).await;
    let bound = Duration::from_secs(120);
    if let Err(missing) = burst::delivered_within(google, &acknowledged, bound).await {
        // What the survivor and the queue show is what finding the cause needs.
        let (_, listed) = survivor.queue_command(&["list"]).await;
        let leases = bench.database().map(|database| {
            database
                .psql("SELECT id, lease_owner, lease_until, due_at, now() FROM smtp2gmail.messages")
        });
        panic!(
            "acknowledged but never delivered: {missing:?}\nqueue:\n{listed}\nleases: {leases:?}\n\
             survivor's log:\n{}",
            survivor.log().join("\n")
        );
    }
    survivor.stop().await;

    let seen = burst::delivered(google);
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count == 2).collect();
    assert!(
        seen.values().all(|count| *count <= 2),
        "a message was sent three times or more"
    );
    // Duplicates are limited to what was in flight: at most the account's concurrency (5) per crash.
    assert!(
        twice.len() <= 5,
        "duplicates beyond what was in flight: {twice:?}"
    );
    eprintln!(
        "acknowledged {}, delivered {}, duplicates {}",
        acknowledged.len(),
        seen.len(),
        twice.len()
    );
}
on_both_backends!(kill_minus_9_loses_no_acknowledged_message [flavor = "multi_thread", worker_threads = 2]);
