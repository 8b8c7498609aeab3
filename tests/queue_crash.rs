//! The queue's promise under `kill -9`: every message that got a 250 reaches Gmail after a
//! restart — exactly once, or at most twice if it was in flight when the server died.
//! This is a test, not a benchmark: it asserts counts, never times.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::WAIT;
use common::burst::{self, Acknowledged};
use common::fake_google::FakeGoogle;
use common::process::ServerProcess;
use common::serving::gmail_mode;
use smtp2gmail::config::Delivery;

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_9_loses_no_acknowledged_message() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(2));
    let mut config = gmail_mode(&google, dir.path(), Delivery::Queue);
    config.queue.max_send_rate = 100_000.0;

    let server = ServerProcess::with_config(&config, dir.path()).await;
    let acknowledged: Acknowledged = Arc::default();
    let burst = burst::send(&[server.smtp], CLIENTS, PER_CLIENT, &acknowledged);
    // Kill once a third of the burst is acknowledged and deliveries are under way.
    let third = CLIENTS * PER_CLIENT / 3;
    tokio::time::timeout(WAIT, async {
        while acknowledged.lock().unwrap().len() < third || google.uploads().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the burst gets going");
    server.kill().await; // SIGKILL
    for client in burst {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= third);

    // Restart on the same spool: everything acknowledged is delivered.
    let server = ServerProcess::with_config(&config, dir.path()).await;
    burst::until_delivered(&google, &acknowledged, Duration::from_secs(120)).await;
    server.kill().await;

    let seen = burst::delivered(&google);
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
