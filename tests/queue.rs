//! What only the file spool does: its files (a spool that cannot be written, a corrupt record, an
//! accept cut short, ids that are not paths) — and the backoff's arithmetic. The queue's
//! behaviour, the same on the spool and on PostgreSQL, is tested on both in
//! tests/queue_behaviour.

mod common;

use std::time::Duration;

use common::TestServer;
use common::fake_gmail::gmail_config;
use common::fake_google::FakeGoogle;
use common::serving::{Serving, queue_command_on_spool, queue_config, queued_id};
use smtp2gmail::config::QueueConfig;
use smtp2gmail::queue;

#[tokio::test]
async fn a_spool_that_cannot_be_written_is_451() {
    let (_google, _dir, queued) = TestServer::queued_with_defaults().await;
    // Root ignores permissions, so break the spool by putting a file where its directory was.
    std::fs::remove_dir_all(queued.spool().join("queue")).unwrap();
    std::fs::write(queued.spool().join("queue"), b"not a directory").unwrap();
    let reply = queued.send(&["alice@example.com"]).await;
    assert!(reply.starts_with("451 4.3.0 "), "{reply}");
    queued.stop().await;
}

#[tokio::test]
async fn a_message_file_whose_accept_never_finished_is_removed_at_start() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    // No record at its end, so no 250 was given for it.
    std::fs::write(spool.join("queue").join("0123456789abcdef.msg"), b"half").unwrap();
    let queued = TestServer::queued(&gmail_config(&google, dir.path()), queue_config(&spool)).await;
    assert!(
        queued.files("queue").is_empty(),
        "{:?}",
        queued.files("queue")
    );
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    queued.until_files("queue", 0).await;
    assert_eq!(google.uploads().len(), 1, "only the message accepted");
    queued.stop().await;
}

#[test]
fn backoff_doubles_from_retry_min_to_retry_max_with_jitter() {
    let config = QueueConfig {
        retry_min: Duration::from_secs(60),
        retry_max: Duration::from_secs(3600),
        ..QueueConfig::default()
    };
    for (attempts, base) in [(1, 60), (2, 120), (3, 240), (7, 3600), (40, 3600)] {
        let wait = queue::schedule::backoff(&config, attempts).as_secs_f64();
        let base = base as f64;
        assert!(
            wait >= base * 0.8 && wait <= base * 1.2,
            "attempt {attempts}: {wait}"
        );
    }
}

#[tokio::test]
async fn a_corrupt_record_is_reported_and_the_rest_of_the_queue_works() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    std::fs::write(spool.join("queue/00000000000000000001.json"), b"{ not json").unwrap();
    std::fs::write(
        spool.join("queue/00000000000000000001.msg"),
        b"kept for the operator",
    )
    .unwrap();
    let queued = TestServer::queued(&gmail_config(&google, dir.path()), queue_config(&spool)).await;
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    let (ok, listed) = queue_command_on_spool(&spool, &["list"]).await;
    assert!(
        ok && listed.contains("00000000000000000001  UNREADABLE RECORD"),
        "{listed}"
    );
    queued.until_files("queue", 2).await;
    assert!(
        spool.join("queue/00000000000000000001.msg").exists(),
        "nothing acknowledged is deleted"
    );
    queued.stop().await;
}

#[tokio::test]
async fn queue_commands_take_only_queue_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let dead = spool.join("dead");
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    std::fs::create_dir_all(&dead).unwrap();
    // Where `queue/../../victim/token` would point, with each of the spool's extensions.
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    for ext in ["msg", "json"] {
        std::fs::write(victim.join(format!("token.{ext}")), b"keep").unwrap();
    }
    let absolute = victim.join("token").display().to_string();
    for id in ["../../victim/token", absolute.as_str(), ".."] {
        for command in [["delete", id], ["show", id], ["retry", id]] {
            let (ok, said) = queue_command_on_spool(&spool, &command).await;
            assert!(
                !ok && said.contains("is not a queue id"),
                "{command:?}: {said}"
            );
        }
    }
    assert!(victim.join("token.msg").exists() && victim.join("token.json").exists());
}
