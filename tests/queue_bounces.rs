//! Delivery status notifications from the running queue, against the fake Google: a message Gmail
//! refuses for good gets one DSN, to its sender, through the account it was routed to, readable by
//! Python's `email` package; none for the null sender or auto-submitted mail; none about a DSN;
//! 4.4.7 when `queue.max_age` passes; one delay warning, also across a restart; `bounce_to`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::dsn::{field, is_dsn, part, python_reads, send_raw};
use common::fake_gmail::{SendFault, gmail_config};
use common::fake_google::FakeGoogle;
use common::postgres::PgServer;
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode, queued_id};
use common::{TestServer, WAIT};
use serde_json::Value;
use smtp2gmail::config::{AccountConfig, Config, Delivery, QueueBackend};

/// The account [gmail] configures: relay@example.com, for app@example.com.
const RELAY: &str = "relay@example.com";
/// The second account's address, for anyone at support.example.com.
const SUPPORT: &str = "support@example.com";

/// Gmail queue mode with two accounts (the fake's token for both; each sends as its own
/// address, which is also the `userId` of its uploads), `smtp.hostname` relay.example.com.
fn two_accounts(google: &FakeGoogle, dir: &Path) -> Config {
    let mut config = gmail_mode(google, dir, Delivery::Queue);
    config.smtp.hostname = "relay.example.com".into();
    config.gmail.user_id = Some(RELAY.into());
    config.gmail.senders = vec!["app@example.com".into()];
    config.gmail.accounts = vec![AccountConfig {
        name: "support".into(),
        credentials: config.gmail.credentials.clone(),
        user_id: Some(SUPPORT.into()),
        senders: vec!["*@support.example.com".into()],
        ..AccountConfig::default()
    }];
    config
}

/// One account, sending as relay@example.com.
fn one_account(google: &FakeGoogle, dir: &Path) -> Config {
    let mut config = gmail_mode(google, dir, Delivery::Queue);
    config.gmail.user_id = Some(RELAY.into());
    config
}

/// Waits until the spool's record of `id` in `place` satisfies `done`; returns it.
async fn until_record(spool: &Path, place: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = spool.join(place).join(format!("{id}.json"));
    let read = || -> Option<Value> { serde_json::from_slice(&std::fs::read(&path).ok()?).ok() };
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(record) = read().filter(|r| done(r)) {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited
        .await
        .unwrap_or_else(|_| panic!("{id} in {place}: {:?}", read()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_gmail_refuses_gets_one_dsn_to_its_sender_through_its_account() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends_from(
        "help@support.example.com",
        SendFault::Google {
            status: 400,
            reason: "invalidArgument",
            message: "Invalid To header".into(),
        },
    );
    let server = ServerProcess::with_config(&two_accounts(&google, dir.path()), dir.path()).await;
    let original = b"From: help@support.example.com\r\nTo: bob@example.org\r\n\
        Message-ID: <inv42@support.example.com>\r\nSubject: Invoice 42\r\n\r\nhello\r\n.\r\n";
    let id = send_raw(
        &server,
        "help@support.example.com",
        &["bob@example.org"],
        original,
    )
    .await;
    google.wait_for_uploads(1).await;
    let line = server.wait_for_log("DSN queued").await;
    assert!(
        line.contains(&format!("id={id}")) && line.contains("dsn="),
        "the dead letter's id and its DSN's: {line}"
    );

    let dsn = &google.uploads()[0];
    assert!(is_dsn(dsn));
    assert_eq!(
        dsn.user, SUPPORT,
        "through the account the message was routed to"
    );
    assert_eq!(dsn.recipients, ["help@support.example.com"]);
    assert_eq!(dsn.from.as_deref(), Some(SUPPORT));
    let read = python_reads(&dsn.body);
    assert_eq!(read["defects"], serde_json::json!([]));
    assert_eq!(read["content_type"], "multipart/report");
    assert_eq!(read["report_type"], "delivery-status");
    let fields = &read["fields"];
    assert_eq!(
        field(fields, "Subject"),
        "Undelivered Mail Returned to Sender"
    );
    assert_eq!(field(fields, "Auto-Submitted"), "auto-replied");
    assert_eq!(field(fields, "In-Reply-To"), "<inv42@support.example.com>");
    let text = part(&read, "text/plain")["text"].as_str().unwrap();
    assert!(
        text.contains("Gmail refused the message permanently"),
        "{text}"
    );
    assert!(
        text.contains(&format!("smtp2gmail queue retry {id}")),
        "{text}"
    );
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(field(&blocks[0], "Reporting-MTA"), "dns; relay.example.com");
    assert_eq!(field(&blocks[0], "X-Smtp2gmail-Queue-ID"), id);
    assert!(!field(&blocks[0], "Arrival-Date").is_empty());
    assert_eq!(
        field(&blocks[1], "Final-Recipient"),
        "rfc822; bob@example.org"
    );
    assert_eq!(field(&blocks[1], "Action"), "failed");
    assert_eq!(field(&blocks[1], "Status"), "5.6.0");
    let diagnostic = field(&blocks[1], "Diagnostic-Code");
    assert!(
        diagnostic.starts_with("X-Gmail-API;") && diagnostic.contains("Invalid To header"),
        "{diagnostic}"
    );
    let headers = part(&read, "text/rfc822-headers");
    assert_eq!(field(&headers["headers"], "Subject"), "Invoice 42");

    // Exactly one: the next message goes out, and nothing else did.
    server.send(&["alice@example.com"]).await;
    google.wait_for_uploads(2).await;
    server.until_files("queue", 0).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads.iter().filter(|u| is_dsn(u)).count(), 1);
    assert_eq!(uploads[1].user, RELAY);
    assert_eq!(
        server.files("dead").len(),
        2,
        "the original stays a dead letter"
    );
    server.stop().await;
}

#[tokio::test]
async fn null_sender_and_auto_submitted_mail_get_no_dsn() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let refused = || SendFault::google(400, "invalidArgument");
    google.fail_sends([refused(), refused()]);
    let server = TestServer::assembled(one_account(&google, dir.path())).await;
    send_raw(
        &server,
        "",
        &["alice@example.com"],
        common::serving::MESSAGE,
    )
    .await;
    server.until_files("dead", 2).await;
    let robot = b"From: app@example.com\r\nTo: alice@example.com\r\n\
        Auto-Submitted: auto-generated\r\nSubject: nightly report\r\n\r\nok\r\n.\r\n";
    send_raw(&server, "app@example.com", &["alice@example.com"], robot).await;
    server.until_files("dead", 4).await;
    // A DSN would be queued before this message could be claimed; it goes out alone.
    server.send(&["alice@example.com"]).await;
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    let uploads = google.uploads();
    assert_eq!(
        uploads.len(),
        1,
        "no DSN: {:?}",
        uploads
            .iter()
            .map(|u| String::from_utf8_lossy(&u.body).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(!is_dsn(&uploads[0]));
    server.stop().await;
}

#[tokio::test]
async fn a_dsn_that_fails_is_dropped_without_a_second_one() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let refused = || SendFault::google(400, "invalidArgument");
    // The message, then its DSN, are refused.
    google.fail_sends([refused(), refused()]);
    let server = TestServer::assembled(one_account(&google, dir.path())).await;
    let id = queued_id(&server.send(&["alice@example.com"]).await);
    let waited = tokio::time::timeout(WAIT, async {
        while google.send_requests() < 2 || !server.files("queue").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(waited.await.is_ok(), "{} requests", google.send_requests());
    // Then an ordinary message: were there a DSN about the DSN, it would be queued before this one
    // could be claimed, and still be in the queue or uploaded when this one is through.
    server.send(&["alice@example.com"]).await;
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    assert_eq!(
        google.send_requests(),
        3,
        "the message, its DSN, the next message"
    );
    assert!(!is_dsn(&google.uploads()[0]));
    let dead = server.files("dead");
    assert_eq!(
        dead,
        [format!("{id}.json"), format!("{id}.msg")],
        "the DSN was dropped"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_its_account_cannot_send_waits_in_the_queue_like_any_message() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    // The message is refused; the account then cannot send at all (Gmail off for its user).
    google.fail_sends_from("app@example.com", SendFault::google(400, "invalidArgument"));
    google.fail_sends_from(RELAY, SendFault::mail_service_not_enabled());
    let server = TestServer::assembled(one_account(&google, dir.path())).await;
    let id = queued_id(&server.send(&["alice@example.com"]).await);
    server.until_files("dead", 2).await;
    let dsn = until_queued_dsn(&server).await;
    let (ok, shown) = server.queue_command(&["show", &dsn]).await;
    assert!(
        ok && shown.contains(&format!("DSN about:    {id}")),
        "{shown}"
    );
    assert!(shown.contains("from:         <>"), "{shown}");
    assert!(google.uploads().is_empty());
    // Gmail turned on, SIGHUP: the DSN goes out.
    google.clear_faults_from(RELAY);
    server.handle().reload("SIGHUP").await;
    google.wait_for_uploads(1).await;
    assert!(is_dsn(&google.uploads()[0]));
    server.until_files("queue", 0).await;
    server.stop().await;
}

/// The id of the DSN waiting in the queue, once its record says it was attempted and held.
async fn until_queued_dsn(server: &TestServer) -> String {
    let spool = server.spool();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let records = server.files("queue").into_iter();
            for name in records.filter(|n| n.ends_with(".json")) {
                let text = std::fs::read_to_string(spool.join("queue").join(&name));
                let record: Value =
                    serde_json::from_str(&text.unwrap_or_default()).unwrap_or_default();
                if record["dsn_for"].is_string() && record["held"].is_string() {
                    return name.trim_end_matches(".json").to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited.await.expect("a DSN held in the queue")
}

#[tokio::test]
async fn a_message_given_up_at_max_age_gets_a_dsn_with_4_4_7() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends_from("app@example.com", SendFault::google(503, "backendError"));
    let mut config = one_account(&google, dir.path());
    config.queue.max_age = Duration::from_secs(1);
    config.queue.split_window = Duration::ZERO;
    let server = TestServer::assembled(config).await;
    let id = queued_id(&server.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    let dsn = &google.uploads()[0];
    assert_eq!(dsn.recipients, ["app@example.com"]);
    let read = python_reads(&dsn.body);
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(field(&blocks[0], "X-Smtp2gmail-Queue-ID"), id);
    assert_eq!(field(&blocks[1], "Action"), "failed");
    assert_eq!(field(&blocks[1], "Status"), "4.4.7");
    assert!(field(&blocks[1], "Diagnostic-Code").contains("backendError"));
    let text = part(&read, "text/plain")["text"].as_str().unwrap();
    assert!(text.contains("within 1s (queue.max_age)"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_warning_goes_out_once_also_across_a_restart() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends_from("app@example.com", SendFault::google(503, "backendError"));
    let mut config = one_account(&google, dir.path());
    config.notify.delay_warning = Duration::from_millis(300);
    let server = ServerProcess::with_config(&config, dir.path()).await;
    let id = queued_id(&server.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    let warning = &google.uploads()[0];
    let read = python_reads(&warning.body);
    assert_eq!(
        field(&read["fields"], "Subject"),
        "Delayed Mail (still being retried)"
    );
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(field(&blocks[1], "Action"), "delayed");
    assert_eq!(field(&blocks[1], "Status"), "4.4.1");
    assert!(!field(&blocks[1], "Will-Retry-Until").is_empty());
    let spool = server.spool();
    let warned = until_record(&spool, "queue", &id, |r| r["delay_warned"] == true).await;
    let attempts = warned["attempts"].as_u64().unwrap();
    let (_, shown) = server.queue_command(&["show", &id]).await;
    assert!(shown.contains("delay warning sent"), "{shown}");
    // Attempts go on; no second warning.
    until_record(&spool, "queue", &id, |r| {
        r["attempts"].as_u64() >= Some(attempts + 3)
    })
    .await;
    server.stop().await;
    assert_eq!(google.uploads().len(), 1);

    let server = ServerProcess::start(&dir.path().join("smtp2gmail.toml")).await;
    until_record(&spool, "queue", &id, |r| {
        r["attempts"].as_u64() >= Some(attempts + 6)
    })
    .await;
    assert_eq!(
        google.uploads().len(),
        1,
        "not warned again after the restart"
    );
    google.clear_faults_from("app@example.com");
    google.wait_for_uploads(2).await;
    server.until_files("queue", 0).await;
    assert!(!is_dsn(&google.uploads()[1]));
    server.stop().await;
}

#[tokio::test]
async fn bounce_to_sends_the_dsn_to_the_fixed_address_instead() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    let mut config = one_account(&google, dir.path());
    config.notify.bounce_to = vec!["postmaster@example.net".into()];
    config.notify.bounce_to_sender = false;
    let server = TestServer::assembled(config).await;
    server.send(&["alice@example.com"]).await;
    google.wait_for_uploads(1).await;
    let dsn = &google.uploads()[0];
    assert!(is_dsn(dsn));
    assert_eq!(dsn.recipients, ["postmaster@example.net"]);
    server.stop().await;
}

#[tokio::test]
async fn sync_mode_sends_no_dsn() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    let mut config = one_account(&google, dir.path());
    config.relay.delivery = Delivery::Sync;
    config.gmail = gmail_config(&google, dir.path());
    let server = TestServer::assembled(config).await;
    let reply = server.send(&["alice@example.com"]).await;
    assert!(reply.starts_with("5"), "the client is told: {reply}");
    server.send(&["alice@example.com"]).await;
    google.wait_for_uploads(1).await;
    assert!(!is_dsn(&google.uploads()[0]));
    assert_eq!(google.send_requests(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn on_postgres_replicas_send_one_delay_warning_also_across_a_restart() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends_from("app@example.com", SendFault::google(503, "backendError"));
    let mut config = one_account(&google, dir.path());
    config.queue.backend = QueueBackend::Postgres;
    config.queue.url = db.url();
    config.queue.lease_time = Duration::from_secs(5);
    config.notify.delay_warning = Duration::from_millis(300);
    let first = TestServer::assembled(config.clone()).await;
    let second = TestServer::assembled(config.clone()).await;
    let id = queued_id(&first.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    assert!(is_dsn(&google.uploads()[0]));
    let record = |key: &str| {
        let sql = format!("SELECT entry->>'{key}' FROM smtp2gmail.messages WHERE id = '{id}'");
        db.psql_in(common::postgres::DATABASE, &sql)
    };
    let attempts = || record("attempts").parse::<u64>().unwrap_or(0);
    let until_attempts = |at_least: u64| async move {
        let waited = tokio::time::timeout(WAIT, async {
            while attempts() < at_least {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(waited.await.is_ok(), "{} attempts", attempts());
    };
    assert_eq!(record("delay_warned"), "true");
    let warned_at = attempts();
    // Both replicas attempt it meanwhile: still one warning.
    until_attempts(warned_at + 4).await;
    assert_eq!(google.uploads().len(), 1);
    first.stop().await;
    second.stop().await;
    let again = TestServer::assembled(config).await;
    until_attempts(warned_at + 8).await;
    assert_eq!(
        google.uploads().len(),
        1,
        "not warned again after the restart"
    );
    again.stop().await;
}
