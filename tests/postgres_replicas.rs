//! Replicas sharing one queue on a real PostgreSQL server (started by the test, see
//! tests/common/postgres.rs): the real `smtp2gmail serve` binaries against the fake Google.
//! Without PostgreSQL installed the tests are ignored, saying how to install it.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::burst::{self, Acknowledged};
use common::fake_gmail::SendFault;
use common::fake_google::FakeGoogle;
use common::postgres::PgServer;
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode, queue_command, queued_id, write_config};
use common::{WAIT, assert_code};
use smtp2gmail::config::{Config, Delivery, QueueBackend};

/// The configuration of a replica of the shared queue at `db`.
fn replica_config(google: &FakeGoogle, dir: &Path, db: &PgServer) -> Config {
    let mut config = gmail_mode(google, dir, Delivery::Queue);
    config.queue.backend = QueueBackend::Postgres;
    config.queue.url = db.url();
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
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db);
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
async fn a_replica_killed_mid_burst_loses_nothing_its_leases_pass_to_another() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(20));
    let config = replica_config(&google, dir.path(), &db);
    let doomed = ServerProcess::with_config(&config, dir.path()).await;
    let acknowledged: Acknowledged = Arc::default();
    let burst = burst::send(&[doomed.smtp], 4, 60, &acknowledged);
    tokio::time::timeout(WAIT, async {
        while acknowledged.lock().unwrap().len() < 60 || google.uploads().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the burst gets going");
    doomed.kill().await; // SIGKILL: its claims are leases that lapse
    for client in burst {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let survivor = ServerProcess::with_config(&config, dir.path()).await;
    let bound = Duration::from_secs(60);
    if let Err(missing) = burst::delivered_within(&google, &acknowledged, bound).await {
        // Rare under heavy load (the survivor seemed to send nothing); what it and the database
        // show is what finding the cause needs.
        let (_, listed) = survivor.queue_command(&["list"]).await;
        panic!(
            "acknowledged but never delivered: {missing:?}\nqueue:\n{listed}\nleases: {}\n\
             survivor's log:\n{}",
            db.psql_in(
                "queue",
                "SELECT id, lease_owner, lease_until, due_at, now() FROM smtp2gmail.messages"
            ),
            survivor.log().join("\n")
        );
    }
    let seen = burst::delivered(&google);
    assert!(seen.values().all(|n| *n <= 2), "sent three times: {seen:?}");
    let twice = seen.values().filter(|n| **n == 2).count();
    assert!(twice <= 5, "duplicates beyond what was in flight: {twice}");
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn while_the_database_is_down_clients_get_451_and_the_replica_recovers_alone() {
    let mut db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db);
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
async fn queue_commands_work_on_the_database_from_anywhere() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    let config = replica_config(&google, dir.path(), &db);
    let replica = ServerProcess::with_config(&config, dir.path()).await;
    let (mut client, _) = common::Client::connect(replica.smtp).await;
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    let reply = client.data(b"Subject: dead\r\n\r\nx\r\n.\r\n").await;
    let id = queued_id(&reply);
    replica.wait_for_log("dead letter").await;

    // Another "host": only the config, no server lock, no spool.
    let other = tempfile::tempdir().unwrap();
    let elsewhere = replica_config(&google, other.path(), &db);
    let elsewhere = write_config(&elsewhere, &other.path().join("smtp2gmail.toml"));
    let (ok, listed) = queue_command(&elsewhere, &["list"]).await;
    assert!(
        ok && listed.contains(&id) && listed.contains("DEAD LETTER"),
        "{listed}"
    );
    let (ok, shown) = queue_command(&elsewhere, &["show", &id]).await;
    assert!(ok && shown.contains("invalidArgument"), "{shown}");
    let (ok, out) = queue_command(&elsewhere, &["retry", &id]).await;
    assert!(ok, "{out}");
    google.wait_for_uploads(1).await;
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let (_, listed) = queue_command(&elsewhere, &["list"]).await;
            if listed.contains("the queue is empty") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    waited.await.expect("delivered after the retry");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn three_replicas_together_keep_one_mailboxs_concurrency() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(50));
    // Two at a time for the mailbox, whichever replica sends.
    let mut config = replica_config(&google, dir.path(), &db);
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
