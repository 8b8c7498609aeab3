//! Messages an MTA splits into several transactions (Postfix: 50 recipients each), on the spool:
//! a message whose transactions never name all its header recipients is handled by
//! `header_only_recipients`, and held transactions survive a restart. The real server binary,
//! lettre over real sockets, the fake Gmail. (The merge itself, every recipient exactly once on
//! both backends: tests/queue_behaviour/split.rs; with a real Postfix as the client:
//! tests/postfix_relayhost.rs.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::WAIT;
use common::fake_google::FakeGoogle;
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode};
use common::split_message::{self, transactions};
use smtp2gmail::config::{Delivery, HeaderOnlyRecipients};

/// Sends `message()` once per envelope to `served`, all at once; returns the queue ids.
async fn send(served: &ServerProcess, envelopes: &[Vec<String>]) -> Vec<String> {
    split_message::send_to(served.smtp, envelopes).await
}

/// The `.msg` files in a spool directory.
fn messages(dir: &Path, place: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("spool").join(place))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".msg"))
        .collect();
    names.sort();
    names
}

/// Waits until `place` holds `count` messages.
async fn until_messages(dir: &Path, place: &str, count: usize) {
    let waited = tokio::time::timeout(WAIT, async {
        while messages(dir, place).len() != count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(waited.await.is_ok(), "{place}: {:?}", messages(dir, place));
}

#[tokio::test]
async fn transactions_that_never_name_everyone_become_a_dead_letter_under_reject() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = gmail_mode(&google, dir.path(), Delivery::Queue);
    config.queue.split_window = Duration::from_secs(1);
    let served = ServerProcess::with_config(&config, dir.path()).await;
    // The third transaction (r100..r119 and two Bcc recipients) never comes.
    let ids = send(&served, &transactions()[..2]).await;

    until_messages(dir.path(), "dead", 1).await;
    let logged = served.wait_for_log("dead letter").await;
    assert!(logged.contains("never in an envelope"), "{logged}");
    assert!(messages(dir.path(), "held").is_empty());
    let dead = &messages(dir.path(), "dead")[0];
    assert!(ids.iter().any(|id| dead.starts_with(id.as_str())));

    let listed = split_message::assert_dead_letter_of_the_first_two(&served).await;
    assert_eq!(format!("{listed}.msg"), *dead);
    // Nothing was sent to the recipients; the sender is told, by one DSN (5.7.1, the reason).
    served.wait_for_log("DSN queued").await;
    google.wait_for_uploads(1).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].recipients, ["app@example.com"]);
    let dsn = String::from_utf8_lossy(&uploads[0].body);
    assert!(
        dsn.contains("Status: 5.7.1") && dsn.contains("In-Reply-To: <split-test-1@example.com>"),
        "{dsn}"
    );
    served.stop().await;
}

#[tokio::test]
async fn transactions_that_never_name_everyone_are_sent_once_under_allow() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = gmail_mode(&google, dir.path(), Delivery::Queue);
    config.queue.split_window = Duration::from_secs(1);
    config.gmail.header_only_recipients = Some(HeaderOnlyRecipients::Allow);
    let served = ServerProcess::with_config(&config, dir.path()).await;
    send(&served, &transactions()[..2]).await;

    google.wait_for_uploads(1).await;
    let logged = served.wait_for_log("split message incomplete").await;
    assert!(logged.contains("r100@example.org"), "{logged}");
    until_messages(dir.path(), "queue", 0).await;
    assert!(messages(dir.path(), "held").is_empty());
    split_message::assert_one_send_for_the_first_two(&google);
    served.stop().await;
}

#[tokio::test]
async fn held_transactions_survive_a_restart_and_are_merged_after_it() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = gmail_mode(&google, dir.path(), Delivery::Queue);
    let served = ServerProcess::with_config(&config, dir.path()).await;
    let first = send(&served, &transactions()[..2]).await;
    served.stop().await;
    let held = messages(dir.path(), "held");
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(first.iter().all(|id| held.contains(&format!("{id}.msg"))));

    let served = ServerProcess::with_config(&config, dir.path()).await;
    served
        .wait_for_log("resuming held transactions of split messages")
        .await;
    let (ok, listed) = served.queue_command(&["list"]).await;
    assert!(ok && listed.matches("HELD").count() == 2, "{listed}");
    send(&served, &transactions()[2..]).await;
    google.wait_for_uploads(1).await;
    until_messages(dir.path(), "queue", 0).await;
    assert!(messages(dir.path(), "held").is_empty());
    split_message::assert_one_send_to_everyone(&google);
    served.stop().await;
}
