//! Replicas sharing one queue on a real PostgreSQL server (started by the test, see
//! tests/common/postgres.rs): the real `smtp2gmail serve` binaries against the fake Google —
//! what only several replicas, or the database going down, show. The queue's behaviour, the same
//! on one replica as on the spool (a killed replica's mail passing to the next one, the `queue`
//! commands from any host…), is tested on both backends in tests/queue_behaviour.
//! Without PostgreSQL installed the tests are ignored, saying how to install it.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::burst::{self, Acknowledged};
use common::fake_gmail::SendFault;
use common::fake_google::FakeGoogle;
use common::postgres::{PgServer, TestDatabase};
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode, queue_command};
use common::{WAIT, assert_code};
use smtp2gmail::config::{Config, Delivery, QueueBackend};

/// The configuration of a replica of the shared queue at `db`.
fn replica_config(google: &FakeGoogle, dir: &Path, url: &str) -> Config {
    let mut config = gmail_mode(google, dir, Delivery::Queue);
    config.queue.backend = QueueBackend::Postgres;
    config.queue.url = url.to_string();
    config.queue.lease_time = Duration::from_secs(5);
    config
}

async fn start_replicas(config: &Config, dir: &Path, n: usize) -> Vec<ServerProcess> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(ServerProcess::with_config(config, dir).await);
    }
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn three_replicas_share_one_queue_and_send_each_message_once() {
    let db = TestDatabase::create();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db.url());
    let replicas = start_replicas(&config, dir.path(), 3).await;
    let addrs: Vec<_> = replicas.iter().map(|r| r.smtp).collect();
    let acknowledged: Acknowledged = Arc::default();
    for client in burst::send(&addrs, 6, 10, &acknowledged) {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), 60, "every message accepted");
    burst::until_delivered(&google, &acknowledged, WAIT).await;
    let seen = burst::delivered(&google);
    assert!(seen.values().all(|n| *n == 1), "sent twice: {seen:?}");
    // A replica removes a message after Gmail's 200, so the uploads are in before the removals;
    // stopping waits for the deliveries in flight, removals included.
    let config_file = replicas[0].config_file().to_path_buf();
    for replica in replicas {
        replica.stop().await;
    }
    let (ok, listed) = queue_command(&config_file, &["list"]).await;
    assert!(ok && listed.contains("the queue is empty"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn while_the_database_is_down_clients_get_451_and_the_replica_recovers_alone() {
    // A server of its own: the test stops it.
    let mut db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db.url());
    let replica = ServerProcess::with_config(&config, dir.path()).await;
    assert_eq!(replica.get("/readyz").await.0, 200);
    // The account's queue, as every replica sees it, while Gmail refuses the upload for now.
    google.fail_sends_from("held@example.com", SendFault::google(503, "backendError"));
    let (mut client, _) = common::Client::connect(replica.smtp).await;
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    let before = b"From: held@example.com\r\nSubject: before\r\n\r\nx\r\n.\r\n";
    assert_code(&client.data(before).await, 250);
    metric_becomes(&replica, "smtp2gmail_queue_depth{account=\"default\"} 1").await;

    // Gmail keeps refusing it through the outage: a send whose removal met the database down
    // would go out again after it (at least once), and two uploads could both be "before".
    db.stop();
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    let reply = client.data(b"Subject: during\r\n\r\nx\r\n.\r\n").await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    let (status, body) = replica.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database"), "{body}");
    metric_becomes(&replica, "smtp2gmail_queue_store_up 0").await;

    db.start_again();
    google.clear_faults_from("held@example.com");
    let accepted = tokio::time::timeout(WAIT, async {
        loop {
            client
                .start_transaction("app@example.com", &["alice@example.com"])
                .await;
            let reply = client.data(b"Subject: after\r\n\r\nx\r\n.\r\n").await;
            if reply.starts_with("250") {
                return;
            }
            assert!(reply.starts_with("451"), "{reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    accepted.await.expect("the replica recovers by itself");
    google.wait_for_uploads(2).await;
    let subjects: HashSet<String> = google
        .uploads()
        .iter()
        .filter_map(|u| {
            let text = String::from_utf8_lossy(&u.body).into_owned();
            let subject = text.lines().find(|l| l.starts_with("Subject: "));
            subject.map(str::to_string)
        })
        .collect();
    assert_eq!(
        subjects,
        ["Subject: before", "Subject: after"]
            .map(String::from)
            .into()
    );
    assert_eq!(replica.get("/readyz").await.0, 200);
    metric_becomes(&replica, "smtp2gmail_queue_store_up 1").await;
    replica.stop().await;
}

/// Waits for `/metrics` to show `line` (the queue is reported every ten seconds).
async fn metric_becomes(server: &ServerProcess, line: &str) {
    let shown = tokio::time::timeout(WAIT, async {
        loop {
            let (_, metrics) = server.get("/metrics").await;
            if metrics.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    if shown.await.is_err() {
        panic!(
            "/metrics never showed {line:?}: {}",
            server.get("/metrics").await.1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn three_replicas_together_keep_one_mailboxs_concurrency() {
    let db = TestDatabase::create();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(50));
    // Two at a time for the mailbox, whichever replica sends.
    let mut config = replica_config(&google, dir.path(), &db.url());
    config.gmail.max_concurrent_sends = Some(2);
    let replicas = start_replicas(&config, dir.path(), 3).await;
    let addrs: Vec<_> = replicas.iter().map(|r| r.smtp).collect();
    let acknowledged: Acknowledged = Arc::default();
    for client in burst::send(&addrs, 3, 10, &acknowledged) {
        client.await.unwrap();
    }
    let acknowledged: HashSet<usize> = acknowledged.lock().unwrap().clone();
    burst::until_delivered(&google, &acknowledged, WAIT).await;
    assert!(
        google.most_concurrent_sends() <= 2,
        "{} at once",
        google.most_concurrent_sends()
    );
    for replica in replicas {
        replica.stop().await;
    }
}
