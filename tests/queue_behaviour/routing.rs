//! A queued message is routed once, when it is accepted: the decision (account, the Bcc the rules
//! add) is stored with it and delivery follows it, whatever the configuration says by the time it
//! goes out — and the mail of an account removed from the configuration waits, visible, rather
//! than going out from another account. (How such an account is limited: `state`.)

use smtp2gmail::config::{AccountConfig, GmailConfig};
use smtp2gmail::message::header_edits::Piece;
use smtp2gmail::queue::record::Place;

use crate::bench::{Backend, Bench, Waits, hour_long_backoff};
use crate::common::TestServer;
use crate::common::fake_gmail::SendFault;
use crate::common::serving::{Serving, queued_id};

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

/// Accepts one message under `gmail`, lets its first attempt fail and stops the server: the
/// message waits an hour. Returns its id.
async fn queue_one_that_waits(bench: &Bench, gmail: &GmailConfig) -> String {
    bench
        .google
        .fail_sends([SendFault::google(503, "backendError")]);
    let queued = bench
        .serve_with(|config| {
            config.gmail = gmail.clone();
            hour_long_backoff(config);
        })
        .await;
    let id = send_with_bcc(&queued).await;
    queued.store().until_attempted(1).await;
    queued.stop().await;
    id
}

async fn a_queued_message_goes_out_as_decided_at_accept_after_the_config_changed(backend: Backend) {
    let bench = Bench::new(backend).await;
    let accepted = bench.config().gmail;
    let id = queue_one_that_waits(&bench, &accepted).await;
    // The Bcc is stored as its list of addresses (record version 2), not as bytes.
    let stored = bench.store().await;
    let stored = stored.store().read(Place::Queue, &id).await.unwrap();
    let upload = stored.unwrap().route.expect("decided at accept").upload;
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
    let queued = bench.serve_with(|config| config.gmail = changed).await;
    let (ok, out) = queued.queue_command(&["retry", &id]).await;
    assert!(ok, "{out}");
    bench.google.wait_for_uploads(1).await;
    queued.store().until(Place::Queue, 0).await;
    let body = String::from_utf8(bench.google.uploads()[0].body.clone()).unwrap();
    assert!(
        body.starts_with("Bcc: bob@example.com\r\nFrom: app@example.com\r\n"),
        "{body}"
    );
    assert_eq!(queued.store().count(Place::Dead).await.unwrap(), 0);
    queued.stop().await;
}
on_both_backends!(a_queued_message_goes_out_as_decided_at_accept_after_the_config_changed);

async fn mail_of_an_account_removed_from_the_config_waits_and_is_not_sent_from_another(
    backend: Backend,
) {
    let bench = Bench::new(backend).await;
    let base = bench.config().gmail;
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
    let id = queue_one_that_waits(&bench, &account("first")).await;

    // "first" is gone; "second" would take the sender, but the message was accepted for "first".
    let queued = bench
        .serve_with(|config| config.gmail = account("second"))
        .await;
    let (ok, out) = queued.queue_command(&["retry", &id]).await;
    assert!(ok, "{out}");
    // At least a second attempt: with retry_min 20 ms the attempts go on, and a wait for exactly
    // two could miss its moment.
    let record = queued.store().until_attempts(&id, 2).await;
    let error = record.last_error.unwrap_or_default();
    assert!(
        error.contains("account first is no longer configured"),
        "{error}"
    );
    assert_eq!(
        bench.google.uploads().len(),
        0,
        "never sent from another account"
    );
    assert_eq!(queued.store().ids(Place::Queue).await, [id], "still queued");
    queued.stop().await;
}
on_both_backends!(mail_of_an_account_removed_from_the_config_waits_and_is_not_sent_from_another);
