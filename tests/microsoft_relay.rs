//! Microsoft 365 mode end to end: real SMTP clients (Django's stock SMTP backend among them), the
//! server as `serve` assembles it, and the fake Microsoft (token endpoint and Graph) on
//! 127.0.0.1.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::burst::{self, Acknowledged};
use common::fake_exchange_smtp::FakeExchangeSmtp;
use common::process::ServerProcess;

use common::fake_microsoft::{self, FakeMicrosoft, GraphFault};
use common::serving::{Serving, queue_config, queued_id};
use common::{TestServer, assert_code, django};
use smtp2gmail::config::{Config, Delivery, FromPolicy, LargeMessages, RelayMode};

/// The mailbox the app sends through, and the From the fake lets it use.
const MAILBOX: &str = "app@contoso.example";

/// Microsoft mode against `fake`, with the client secret in `dir/secret`, delivering as
/// `delivery`; `adjust` may change the configuration.
async fn serve(
    fake: &FakeMicrosoft,
    dir: &Path,
    delivery: Delivery,
    adjust: impl FnOnce(&mut Config),
) -> TestServer {
    let mut config = Config {
        microsoft: fake.config(&dir.join("secret"), MAILBOX),
        queue: queue_config(&dir.join("spool")),
        ..Config::default()
    };
    config.relay.mode = RelayMode::Microsoft;
    config.relay.delivery = delivery;
    config.smtp.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    config.smtp.shutdown_grace = Duration::from_secs(5);
    config.http.listen = "127.0.0.1:0".to_string();
    adjust(&mut config);
    TestServer::assembled(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_with_bcc_reaches_each_envelope_recipient_once_and_hides_bcc() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Queue, |_| {}).await;
    let sent = django::send(
        server.addr,
        MAILBOX,
        &["alice@example.com"],
        &["bob@example.com"],
        &["carol@example.com"],
    )
    .await;
    assert_eq!(sent, "1");
    fake.wait_for_accepted(1).await;
    server.until_files("queue", 0).await;
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 1, "one message, one request");
    let message = &accepted[0];
    assert_eq!(message.mailbox, MAILBOX);
    let mut recipients = message.recipients.clone();
    recipients.sort();
    assert_eq!(
        recipients,
        ["alice@example.com", "bob@example.com", "carol@example.com"],
        "every envelope recipient exactly once"
    );
    let mime = String::from_utf8_lossy(&message.mime);
    assert!(
        mime.contains("\r\nBcc: carol@example.com\r\n")
            || mime.starts_with("Bcc: carol@example.com\r\n"),
        "{mime}"
    );
    assert!(
        mime.contains("Hello from Django."),
        "the body is the one Django sent"
    );
    let copy = String::from_utf8_lossy(&message.delivered_copy);
    assert!(
        !copy.contains("carol"),
        "the To and Cc recipients do not see the Bcc: {copy}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_throttled_burst_is_paced_by_retry_after_and_nothing_is_lost() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Queue, |_| {}).await;
    fake.fail_sends([
        GraphFault::Throttled(1),
        GraphFault::Throttled(1),
        GraphFault::Unavailable(1),
    ]);
    let started = Instant::now();
    for _ in 0..8 {
        queued_id(&server.send_as(MAILBOX, &["alice@example.com"]).await);
    }
    fake.wait_for_accepted(8).await;
    server.until_files("queue", 0).await;
    assert_eq!(fake.accepted().len(), 8, "each message exactly once");
    assert_eq!(fake.send_requests(), 8 + 3);
    // The mailbox waited as long as Graph asked before it was sent to again.
    assert!(started.elapsed() >= Duration::from_secs(1));
    server.stop().await;
}

#[tokio::test]
async fn an_expired_secret_answers_451_naming_the_fix_until_the_secret_file_is_replaced() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Sync, |_| {}).await;
    fake.expire_secret();
    let reply = server.send_as(MAILBOX, &["alice@example.com"]).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    assert!(
        reply.contains("AADSTS7000222") && reply.contains("has expired"),
        "{reply}"
    );
    let secret_file = dir.path().join("secret");
    assert!(
        reply.contains(&secret_file.display().to_string()),
        "names where the new secret goes: {reply}"
    );
    std::fs::write(&secret_file, fake_microsoft::NEW_CLIENT_SECRET).unwrap();
    // The credential watcher notices the file; the reload it makes is what SIGHUP would do.
    let account = server.account("default");
    let generation = account.tokens.generation();
    server.handle().reload("test").await;
    assert!(account.tokens.generation() > generation);
    assert_code(&server.send_as(MAILBOX, &["alice@example.com"]).await, 250);
    assert_eq!(fake.accepted().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn mail_held_for_an_expired_secret_goes_at_once_when_the_new_secret_is_written() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Queue, |config| {
        // Without the new secret the message would wait an hour.
        config.queue.retry_min = Duration::from_secs(3600);
        config.queue.retry_max = Duration::from_secs(3600);
    })
    .await;
    fake.expire_secret();
    queued_id(&server.send_as(MAILBOX, &["alice@example.com"]).await);
    server.until_unready_naming("has expired").await;
    assert!(fake.accepted().is_empty());
    // The operator writes the new secret where client_secret = "file:…" points; no signal.
    std::fs::write(dir.path().join("secret"), fake_microsoft::NEW_CLIENT_SECRET).unwrap();
    fake.wait_for_accepted(1).await;
    server.until_files("queue", 0).await;
    server.stop().await;
}

#[tokio::test]
async fn send_as_denied_is_permanent_with_a_dsn_to_the_sender() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Queue, |_| {}).await;
    let mut client = server.client().await;
    client
        .start_transaction(MAILBOX, &["alice@example.com"])
        .await;
    let message =
        "From: ceo@contoso.example\r\nTo: alice@example.com\r\nSubject: s\r\n\r\nhi\r\n.\r\n";
    queued_id(&client.data(message.as_bytes()).await);
    // The message becomes a dead letter; its DSN goes through the same mailbox, from itself.
    server.until_files("dead", 2).await;
    fake.wait_for_accepted(1).await;
    let dsn = &fake.accepted()[0];
    let text = String::from_utf8_lossy(&dsn.mime);
    assert_eq!(dsn.recipients, [MAILBOX], "to the envelope sender");
    assert!(
        text.contains("multipart/report") && text.contains("ErrorSendAsDenied"),
        "{text}"
    );
    assert!(text.contains("Status: 5.7.1"), "{text}");
    assert!(
        text.contains("Microsoft 365 refused the message permanently"),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: X-Microsoft-Graph;"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_mailbox_outside_the_access_policy_is_held_with_the_fix() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Sync, |_| {}).await;
    fake.restrict_to(&["other@contoso.example"]);
    let reply = server.send_as(MAILBOX, &["alice@example.com"]).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    assert!(reply.contains("ErrorAccessDenied"), "{reply}");
    let (_, readiness) = server.readiness().await;
    assert!(
        readiness.to_string().contains("RBAC for Applications"),
        "{readiness}"
    );
    server.stop().await;
}

#[tokio::test]
async fn size_follows_the_graph_request_limit_when_there_is_no_large_path() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Sync, |_| {}).await;
    let size = server.advertised_size().await as u64;
    // 4,000,000 bytes of base64 less room for the Bcc field and a From rewrite.
    assert!(size < 3_000_000 && size > 2_900_000, "SIZE {size}");
    // Larger: 552 at DATA, nothing sent.
    let line = format!("{}\r\n", "y".repeat(76));
    let message = format!(
        "From: {MAILBOX}\r\nTo: a@example.com\r\n\r\n{}",
        line.repeat(40_000)
    );
    let mut client = server.client().await;
    client.start_transaction(MAILBOX, &["a@example.com"]).await;
    let reply = client.data(format!("{message}.\r\n").as_bytes()).await;
    assert!(reply.starts_with("552 "), "{reply}");
    assert_eq!(fake.send_requests(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_9_during_a_burst_loses_no_acknowledged_message() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    // The burst's From is app@example.com: the mailbox has Send As for it.
    fake.grant_send_as(MAILBOX, "app@example.com");
    let mut config = Config {
        microsoft: fake.config(&dir.path().join("secret"), MAILBOX),
        queue: queue_config(&dir.path().join("spool")),
        ..Config::default()
    };
    config.relay.mode = RelayMode::Microsoft;
    config.smtp.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    config.http.listen = String::new();
    let doomed = ServerProcess::with_config(&config, dir.path()).await;
    let acknowledged: Acknowledged = Arc::default();
    let burst = burst::send(&[doomed.smtp], 4, 60, &acknowledged);
    burst::until_under_way(&acknowledged, 60, || !fake.accepted().is_empty()).await;
    doomed.kill().await; // SIGKILL
    for client in burst {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let survivor = ServerProcess::with_config(&config, dir.path()).await;
    burst::until_delivered(&fake, &acknowledged, Duration::from_secs(120)).await;
    survivor.stop().await;
    let seen = burst::delivered(&fake);
    assert!(
        seen.values().all(|count| *count <= 2),
        "sent three times or more"
    );
    let twice = seen.values().filter(|count| **count == 2).count();
    // Only what was in flight when the server died: at most the mailbox's concurrency.
    assert!(twice <= 4, "{twice} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_message_goes_byte_exact_through_smtp_with_xoauth2() {
    let fake = Arc::new(FakeMicrosoft::start().await);
    let exchange = FakeExchangeSmtp::start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&fake, dir.path(), Delivery::Queue, |config| {
        let microsoft = &mut config.microsoft;
        microsoft.large_messages = LargeMessages::Smtp;
        microsoft.smtp_host = "localhost".into();
        microsoft.smtp_port = exchange.addr.port();
        microsoft.smtp_ca = Some(exchange.cert.cert_path());
    })
    .await;
    assert!(
        server.advertised_size().await > 30_000_000,
        "SIZE follows the SMTP path"
    );
    let line = format!("{}\r\n", "x".repeat(76));
    let body = line.repeat(10 * 1024 * 1024 / line.len());
    let message = format!(
        "From: {MAILBOX}\r\nTo: alice@example.com\r\nSubject: large\r\n\r\n.leading dot\r\n{body}"
    );
    let mut client = server.client().await;
    client
        .start_transaction(MAILBOX, &["alice@example.com"])
        .await;
    let wire = format!("{}.\r\n", message.replace("\r\n.", "\r\n.."));
    queued_id(&client.data(wire.as_bytes()).await);
    server.until_files("queue", 0).await;
    let submitted = exchange.submitted();
    assert_eq!(submitted.len(), 1);
    let sent = &submitted[0];
    assert_eq!(
        (sent.user.as_str(), sent.mail_from.as_str()),
        (MAILBOX, MAILBOX)
    );
    assert_eq!(sent.rcpt_to, ["alice@example.com"]);
    assert!(
        sent.data == message.as_bytes(),
        "byte-exact ({} bytes)",
        sent.data.len()
    );
    assert!(fake.accepted().is_empty(), "nothing through Graph");
    server.stop().await;
}

#[tokio::test]
async fn past_the_daily_recipient_budget_mail_waits_instead_of_bouncing() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Queue, |config| {
        config.microsoft.max_recipients_per_day = Some(3);
    })
    .await;
    queued_id(
        &server
            .send_as(MAILBOX, &["a@example.com", "b@example.com"])
            .await,
    );
    fake.wait_for_accepted(1).await;
    let waiting = queued_id(
        &server
            .send_as(MAILBOX, &["c@example.com", "d@example.com"])
            .await,
    );
    // Two more would make four of three: the message stays queued, the mailbox deferred.
    let deferred = tokio::time::timeout(common::WAIT, async {
        loop {
            let (_, listed) = server.queue_command(&["show", &waiting]).await;
            if listed.contains("daily recipient budget") {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let listed = deferred
        .await
        .expect("the message is deferred for the budget");
    assert!(listed.contains(MAILBOX), "{listed}");
    assert_eq!(fake.accepted().len(), 1, "nothing more was sent");
    assert_eq!(
        server.files("queue").len(),
        2,
        "the message and its record stay queued"
    );
    server.stop().await;
}

#[tokio::test]
async fn send_as_denied_for_a_declared_from_is_held_with_the_fix() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let server = serve(&fake, dir.path(), Delivery::Sync, |config| {
        config.microsoft.send_as = vec!["ceo@contoso.example".into()];
        config.microsoft.from_policy = Some(FromPolicy::Reject);
    })
    .await;
    let reply = server
        .send_as("ceo@contoso.example", &["alice@example.com"])
        .await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    assert!(
        reply.contains("ErrorSendAsDenied") && reply.contains("Add-RecipientPermission"),
        "{reply}"
    );
    fake.grant_send_as(MAILBOX, "ceo@contoso.example");
    assert_code(
        &server
            .send_as("ceo@contoso.example", &["alice@example.com"])
            .await,
        250,
    );
    server.stop().await;
}
