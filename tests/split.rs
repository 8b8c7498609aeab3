//! Messages an MTA splits into several transactions (Postfix: 50 recipients each): in queue mode
//! every recipient receives the message exactly once, envelope-only (Bcc) recipients included,
//! and nothing is refused; a message whose transactions never name all its header recipients is
//! handled by `header_only_recipients`. The real server binary, lettre over real sockets, the
//! fake Gmail. (tests/postfix_relayhost.rs does the same with a real Postfix as the client.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::WAIT;
use common::fake_google::FakeGoogle;
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode};
use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp2gmail::config::{Delivery, HeaderOnlyRecipients};

/// The header recipients: 80 in To, 40 in Cc.
fn header_recipients() -> Vec<String> {
    (0..120).map(|i| format!("r{i:03}@example.org")).collect()
}

/// Envelope-only recipients (Bcc).
fn bcc_recipients() -> Vec<String> {
    (0..5).map(|i| format!("hidden{i}@example.net")).collect()
}

/// One message naming every header recipient, as an MTA would relay it.
fn message() -> Vec<u8> {
    let header = header_recipients();
    format!(
        "From: app@example.com\r\nTo: {}\r\nCc: {}\r\nSubject: split\r\n\
         Message-ID: <split-test-1@example.com>\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\r\n\
         one message, many recipients\r\n",
        header[..80].join(",\r\n "),
        header[80..].join(",\r\n "),
    )
    .into_bytes()
}

/// The three transactions Postfix would make: 50, 50 and 20 header recipients, the Bcc
/// recipients spread over them.
fn transactions() -> Vec<Vec<String>> {
    let (header, bcc) = (header_recipients(), bcc_recipients());
    vec![
        [&header[..50], &bcc[..2]].concat(),
        [&header[50..100], &bcc[2..3]].concat(),
        [&header[100..], &bcc[3..]].concat(),
    ]
}

/// Sends `message()` once per envelope, all at once on separate connections (as Postfix's
/// delivery agents do); returns the queue ids.
async fn send(served: &ServerProcess, envelopes: &[Vec<String>]) -> Vec<String> {
    let sends = envelopes.iter().map(|rcpts| {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(served.smtp.port())
            .build();
        let envelope = Envelope::new(
            Some("app@example.com".parse().unwrap()),
            rcpts.iter().map(|r| r.parse().unwrap()).collect(),
        )
        .unwrap();
        async move { transport.send_raw(&envelope, &message()).await }
    });
    let replies = futures_util::future::join_all(sends).await;
    replies
        .into_iter()
        .map(|reply| {
            let reply = reply.expect("every transaction is accepted");
            let text = reply.message().collect::<Vec<_>>().join(" ");
            assert!(text.contains("queued as "), "{text}");
            text.rsplit(' ').next().unwrap().to_string()
        })
        .collect()
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

/// Asserts that `recipients` (what Gmail delivered to) names everyone in `expected` exactly once.
#[track_caller]
fn assert_once_each(recipients: &[String], expected: impl IntoIterator<Item = String>) {
    let unique: BTreeSet<&String> = recipients.iter().collect();
    assert_eq!(unique.len(), recipients.len(), "someone would get it twice");
    let expected: BTreeSet<String> = expected.into_iter().collect();
    let got: BTreeSet<String> = recipients.iter().cloned().collect();
    assert_eq!(got, expected);
}

fn everyone() -> Vec<String> {
    [header_recipients(), bcc_recipients()].concat()
}

#[tokio::test]
async fn a_message_split_into_three_transactions_is_sent_once_to_everyone() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = gmail_mode(&google, dir.path(), Delivery::Queue);
    let served = ServerProcess::with_config(&config, dir.path()).await;
    let ids = send(&served, &transactions()).await;
    assert_eq!(ids.len(), 3);

    google.wait_for_uploads(1).await;
    served
        .wait_for_log("transactions of a split message merged")
        .await;
    until_messages(dir.path(), "queue", 0).await;
    assert!(messages(dir.path(), "held").is_empty());
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one Gmail send");
    assert_once_each(&uploads[0].recipients, everyone());
    // The received bytes (lettre ends them with one more CRLF), with a Bcc field in front.
    let body = &uploads[0].body;
    let from = body.windows(6).position(|w| w == b"From: ").unwrap();
    assert!(body.starts_with(b"Bcc: ") && body[from..].starts_with(&message()));

    // Postfix sends a transaction again when it never saw our 250: it adds nobody, so nothing
    // is sent again.
    send(&served, &transactions()[..1]).await;
    served
        .wait_for_log("repeats a message already released")
        .await;
    until_messages(dir.path(), "held", 0).await;
    assert_eq!(google.uploads().len(), 1, "no second copy");
    served.stop().await;
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

    let (ok, listed) = served.queue_command(&["list"]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains("DEAD LETTER"), "{listed}");
    assert!(
        listed.contains("split message <split-test-1@example.com> incomplete")
            && listed.contains("named 100 of its 120 header recipients")
            && listed.contains("r100@example.org")
            && listed.contains("header_only_recipients"),
        "{listed}"
    );
    let dead_id = dead.trim_end_matches(".msg");
    let (ok, shown) = served.queue_command(&["show", dead_id]).await;
    assert!(ok, "{shown}");
    assert!(shown.contains("merged from:  2 transactions"), "{shown}");
    assert!(
        shown.contains("in no envelope: 20 header recipients"),
        "{shown}"
    );
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
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one Gmail send, not one per transaction");
    // Gmail delivers to every header address; the Bcc recipients of the missing transaction
    // were never named to the server.
    assert_once_each(
        &uploads[0].recipients,
        [header_recipients(), bcc_recipients()[..3].to_vec()].concat(),
    );
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
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1);
    assert_once_each(&uploads[0].recipients, everyone());
    served.stop().await;
}
