//! Webhook events from the running server, received by a real local HTTP receiver: `deferred`,
//! `delivered`, `dead_letter` and `credentials` arrive signed and verify with an independent
//! Standard Webhooks implementation; a receiver that never answers does not hold up mail; and on
//! PostgreSQL, with two replicas, a dead letter is told once and gets one DSN.

mod common;

use std::path::Path;
use std::time::Duration;

use common::dsn::{field, is_dsn, part, python_reads, send_raw};
use common::fake_gmail::SendFault;
use common::fake_google::{
    FakeGoogle, NEW_REFRESH_TOKEN, authorized_token, write_token_atomically,
};
use common::postgres::PgServer;
use common::serving::{Serving, gmail_mode, queued_id};
use common::webhooks::{Receiver, SECRET, python_verifies, receiver, silent_receiver};
use common::{TestServer, WAIT};
use serde_json::{Value, json};
use smtp2gmail::config::{Config, Delivery, QueueBackend, WebhookConfig};
use smtp2gmail::notify::EventKind;
use smtp2gmail::relay::gmail::reload::CredentialWatcher;

/// Gmail queue mode sending as relay@example.com, every event to `url`.
fn with_webhook(google: &FakeGoogle, dir: &Path, url: &str) -> Config {
    let mut config = gmail_mode(google, dir, Delivery::Queue);
    config.gmail.user_id = Some("relay@example.com".into());
    config.notify.webhooks = vec![WebhookConfig {
        url: url.to_string(),
        events: EventKind::ALL.to_vec(),
        secret: SECRET.into(),
    }];
    config
}

/// Sends a message from app@example.com to alice@example.com with Message-ID
/// `<{tag}@example.com>`; its queue id.
async fn send_tagged(server: &impl Serving, tag: &str) -> String {
    let wire = format!(
        "From: app@example.com\r\nTo: alice@example.com\r\nMessage-ID: <{tag}@example.com>\r\n\
         Subject: {tag}\r\n\r\nhello\r\n.\r\n"
    );
    send_raw(
        server,
        "app@example.com",
        &["alice@example.com"],
        wire.as_bytes(),
    )
    .await
}

/// The first event of type `kind` about queued message `id`.
async fn event_about(receiver: &Receiver, kind: &str, id: &str) -> Value {
    let what = format!("{kind} about {id}");
    let wanted = |e: &Value| e["type"] == kind && e["data"]["queue_id"] == id;
    receiver.wait_for_event(&what, wanted).await["data"].clone()
}

/// The events of type `kind` received so far.
fn events_of(receiver: &Receiver, kind: &str) -> Vec<Value> {
    let all = receiver.events().into_iter();
    all.filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_the_running_server_arrive_signed_and_verify() {
    let hooks = receiver(&[]).await;
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = with_webhook(&google, dir.path(), hooks.url.as_str());
    let token_file = config.gmail.credentials.clone().unwrap();
    google.fail_sends([SendFault::google(503, "backendError")]);
    let server = TestServer::assembled(config).await;

    // A temporary failure, then the delivery.
    let id = send_tagged(&server, "ev1").await;
    let deferred = event_about(&hooks, "deferred", &id).await;
    assert_eq!(deferred["message_id"], "<ev1@example.com>");
    assert_eq!(deferred["account"], "default");
    assert_eq!(deferred["sender"], "app@example.com");
    assert_eq!(deferred["recipients"], json!(["alice@example.com"]));
    assert_eq!(deferred["status"], "4.4.1");
    assert!(
        deferred["reason"]
            .as_str()
            .unwrap()
            .contains("backendError")
    );
    assert_eq!(deferred["attempts"], 1);
    assert!(deferred["next_attempt"].is_string(), "{deferred}");
    let delivered = event_about(&hooks, "delivered", &id).await;
    assert_eq!(delivered["gmail_id"], "fake-gmail-1");
    assert_eq!(
        (delivered["status"].clone(), delivered["attempts"].clone()),
        (json!("2.0.0"), json!(2))
    );

    // A permanent refusal: a dead letter, and its DSN delivered (its sender is null).
    google.fail_sends_from(
        "dead@example.com",
        SendFault::google(400, "invalidArgument"),
    );
    let dead_id = queued_id(
        &server
            .send_as("dead@example.com", &["bob@example.org"])
            .await,
    );
    let dead = event_about(&hooks, "dead_letter", &dead_id).await;
    assert_eq!(dead["status"], "5.6.0");
    assert!(
        dead["reason"].as_str().unwrap().contains("invalidArgument"),
        "{dead}"
    );
    hooks
        .wait_for_event("the DSN's delivery", |e| {
            e["type"] == "delivered" && e["data"]["sender"].is_null()
        })
        .await;

    // The account's credentials refused: held; a new token file: resumed, and the mail goes out.
    google.accept_only_refresh_token(NEW_REFRESH_TOKEN);
    google.revoke_access_tokens();
    let held_id = queued_id(&server.send(&["alice@example.com"]).await);
    let held = hooks
        .wait_for_event("held", |e| {
            e["type"] == "credentials" && e["data"]["state"] == "held"
        })
        .await;
    assert_eq!(held["data"]["account"], "default");
    assert!(
        held["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{held}"
    );
    let accounts = server.handle().accounts().iter().cloned();
    let watcher = CredentialWatcher::new(accounts, Duration::from_secs(3600));
    write_token_atomically(&token_file, &authorized_token(&google));
    assert_eq!(watcher.poll(), 1);
    let resumed = hooks
        .wait_for_event("resumed", |e| {
            e["type"] == "credentials" && e["data"]["state"] == "resumed"
        })
        .await;
    assert!(resumed["data"]["reason"].is_null());
    event_about(&hooks, "delivered", &held_id).await;

    let requests = hooks.requests();
    assert_eq!(python_verifies(&requests), requests.len() as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_that_never_answers_does_not_hold_up_mail() {
    let (address, asked) = silent_receiver().await;
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let url = format!("http://{address}/hooks/secret-token");
    let server = TestServer::assembled(with_webhook(&google, dir.path(), &url)).await;
    server.send(&["alice@example.com"]).await;
    // The first event's request is made, and never answered: the sender waits on it...
    let mut asked = asked.clone();
    tokio::time::timeout(WAIT, asked.wait_for(|&n| n >= 1))
        .await
        .expect("the receiver is asked")
        .unwrap();
    // ...while mail goes on.
    for _ in 0..3 {
        server.send(&["alice@example.com"]).await;
    }
    google.wait_for_uploads(4).await;
    server.until_files("queue", 0).await;
    server.stop().await;
}

/// Two replicas of a queue on `db`, each with the webhook to `url`.
async fn replicas(google: &FakeGoogle, dir: &Path, db: &PgServer, url: &str) -> [TestServer; 2] {
    let mut config = with_webhook(google, dir, url);
    config.queue.backend = QueueBackend::Postgres;
    config.queue.url = db.url();
    config.queue.lease_time = Duration::from_secs(5);
    [
        TestServer::assembled(config.clone()).await,
        TestServer::assembled(config).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn on_postgres_a_dead_letter_is_told_once_with_one_dsn() {
    let db = PgServer::start();
    let hooks = receiver(&[]).await;
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let [first, second] = replicas(&google, dir.path(), &db, hooks.url.as_str()).await;
    google.fail_sends_from("app@example.com", SendFault::google(400, "invalidArgument"));
    let id = send_tagged(&first, "pg1").await;
    let dead = event_about(&hooks, "dead_letter", &id).await;
    assert_eq!(dead["message_id"], "<pg1@example.com>");
    google.wait_for_uploads(1).await;
    let dsn = &google.uploads()[0];
    assert!(is_dsn(dsn));
    assert_eq!(
        (dsn.user.as_str(), dsn.recipients.clone()),
        ("relay@example.com", vec!["app@example.com".to_string()])
    );
    let read = python_reads(&dsn.body);
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(field(&blocks[0], "X-Smtp2gmail-Queue-ID"), id);
    assert_eq!(field(&blocks[1], "Status"), "5.6.0");

    // Then a message through the other replica: its delivery is told, and the dead letter was
    // told once, by one replica, with one DSN.
    google.clear_faults_from("app@example.com");
    let later = queued_id(&second.send(&["alice@example.com"]).await);
    event_about(&hooks, "delivered", &later).await;
    hooks
        .wait_for_event("the DSN's delivery", |e| {
            e["type"] == "delivered" && e["data"]["sender"].is_null()
        })
        .await;
    assert_eq!(events_of(&hooks, "dead_letter").len(), 1);
    assert_eq!(google.uploads().iter().filter(|u| is_dsn(u)).count(), 1);
    let requests = hooks.requests();
    assert_eq!(python_verifies(&requests), requests.len() as u64);
    first.stop().await;
    second.stop().await;
}
