//! A queued message is routed once, when it is accepted: the decision (account, the Bcc the
//! rules add) is stored with it and delivery follows it, whatever the configuration says by the
//! time it goes out.

mod common;

use std::time::Duration;

use common::TestServer;
use common::fake_gmail::{SendFault, gmail_config};
use common::fake_google::FakeGoogle;
use common::serving::{Serving, queue_config, queued_id};
use smtp2gmail::config::{AccountConfig, GmailConfig};
use smtp2gmail::message::header_edits::Piece;
use smtp2gmail::queue::record::Entry;

/// A message from app@example.com to alice (To header) and bob (envelope only).
async fn send_with_bcc(queued: &TestServer) -> String {
    let mut client = queued.client().await;
    client
        .start_transaction("app@example.com", &["alice@example.com", "bob@example.com"])
        .await;
    let message =
        b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: s\r\n\r\nhi\r\n.\r\n";
    let reply = client.data(message).await;
    queued_id(&reply)
}

/// The spool's record of `id`, as text.
fn record(spool: &std::path::Path, id: &str) -> String {
    let json = spool.join("queue").join(format!("{id}.json"));
    std::fs::read_to_string(json).unwrap()
}

/// Accepts one message under `gmail`, lets its first attempt fail and stops the server: the
/// message waits an hour. Returns the queue config (for a restart) and the message's id.
async fn queue_one_that_waits(
    google: &FakeGoogle,
    gmail: &GmailConfig,
    spool: &std::path::Path,
) -> (smtp2gmail::config::QueueConfig, String) {
    let mut config = queue_config(spool);
    config.retry_min = Duration::from_secs(3600);
    config.retry_max = Duration::from_secs(3600);
    google.fail_sends([SendFault::google(503, "backendError")]);
    let queued = TestServer::queued(gmail, config.clone()).await;
    let id = send_with_bcc(&queued).await;
    queued.until_failed_once(1).await;
    queued.stop().await;
    config.retry_min = Duration::from_millis(20);
    (config, id)
}

#[tokio::test]
async fn a_queued_message_goes_out_as_decided_at_accept_after_the_config_changed() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let spool = dir.path().join("spool");
    let accepted = gmail_config(&google, dir.path());
    let (config, id) = queue_one_that_waits(&google, &accepted, &spool).await;
    // The Bcc is stored as its list of addresses (record version 2), not as bytes.
    let stored = Entry::from_json(record(&spool, &id).as_bytes()).unwrap();
    let upload = stored.route.expect("decided at accept").upload;
    let bcc = upload.iter().find_map(|piece| match piece {
        Piece::Bcc(bcc) => Some(bcc.addresses.clone()),
        _ => None,
    });
    assert_eq!(bcc, Some(vec!["bob@example.com".to_string()]), "{upload:?}");

    // Restarted with a configuration under which the sender has no account and Bcc would differ:
    // the message was accepted (250) under the old one and goes out as it was decided then.
    let changed = GmailConfig {
        senders: vec!["someone-else@example.com".into()],
        ..accepted
    };
    let queued = TestServer::queued(&changed, config).await;
    let (ok, out) = queued.queue_command(&["retry", &id]).await;
    assert!(ok, "{out}");
    google.wait_for_uploads(1).await;
    queued.until_files("queue", 0).await;
    let body = String::from_utf8(google.uploads()[0].body.clone()).unwrap();
    assert!(
        body.starts_with("Bcc: bob@example.com\r\nFrom: app@example.com\r\n"),
        "{body}"
    );
    assert!(queued.files("dead").is_empty());
    queued.stop().await;
}

#[tokio::test]
async fn mail_of_an_account_removed_from_the_config_waits_and_is_not_sent_from_another() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let spool = dir.path().join("spool");
    let base = gmail_config(&google, dir.path());
    let account = |name: &str| GmailConfig {
        credentials: None,
        accounts: vec![AccountConfig {
            name: name.into(),
            credentials: base.credentials.clone(),
            senders: vec!["*@example.com".into()],
            ..AccountConfig::default()
        }],
        ..base.clone()
    };
    let (config, id) = queue_one_that_waits(&google, &account("first"), &spool).await;

    // "first" is gone; "second" would take the sender, but the message was accepted for "first".
    let queued = TestServer::queued(&account("second"), config).await;
    let (ok, out) = queued.queue_command(&["retry", &id]).await;
    assert!(ok, "{out}");
    // At least a second attempt: with retry_min 20 ms the attempts go on, and a wait for exactly
    // two could miss its moment.
    let attempts = || {
        let record: serde_json::Value = serde_json::from_str(&record(&spool, &id)).unwrap();
        record["attempts"].as_u64().unwrap()
    };
    let waited = tokio::time::timeout(common::WAIT, async {
        while attempts() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(waited.await.is_ok(), "{}", record(&spool, &id));
    let stored = record(&spool, &id);
    assert!(
        stored.contains("account first is no longer configured"),
        "{stored}"
    );
    assert_eq!(google.uploads().len(), 0, "never sent from another account");
    assert_eq!(
        queued.files("queue").len(),
        2,
        "still queued (message and record)"
    );
    queued.stop().await;
}
