//! What Gmail mode writes to the log, captured at trace level for every crate (reqwest, hyper and
//! rustls included): never a secret or a message body, and a credential problem once, not once
//! per message. One test per binary: it installs the global subscriber.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_google::{self, FakeGoogle, Fault};
use common::logs::Captured;
use common::{TestServer, assert_code, test_config};
use smtp2gmail::config::GmailConfig;
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::{Gmail, http_client};

async fn send(server: &TestServer) -> String {
    send_to(server, &["alice@example.com"]).await
}

async fn send_to(server: &TestServer, rcpts: &[&str]) -> String {
    let mut client = server.client().await;
    client.start_transaction("app@example.com", rcpts).await;
    let reply = client.data(b"To: alice@example.com\r\nSubject: BODY-MARKER-SUBJECT\r\n\r\nBODY-MARKER-TEXT\r\n.\r\n").await;
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    reply
}

#[tokio::test]
async fn no_secrets_no_bodies_and_one_warning_per_credential_problem() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let token = fake_google::write_json(
        dir.path(),
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let gmail = GmailConfig {
        api_base: google.api_base(),
        credentials: Some(token),
        ..GmailConfig::default()
    };
    let retry = RetryPolicy {
        attempts: 2,
        budget: Duration::from_secs(5),
        first_backoff: Duration::from_millis(1),
    };
    let relay = Gmail::from_config(&gmail, http_client().unwrap())
        .unwrap()
        .with_retry(retry);
    let server = TestServer::with_target(test_config(), Arc::new(relay)).await;

    assert_code(&send(&server).await, 250); // first token
    // An envelope-only recipient (Django's bcc=): the added Bcc is logged, as Postfix logs to=.
    let with_bcc = ["alice@example.com", "hidden-bcc@example.com"];
    assert_code(&send_to(&server, &with_bcc).await, 250);
    google.revoke_access_tokens();
    assert_code(&send(&server).await, 250); // 401, refresh, retry
    google.fail_token_requests(100, Fault::invalid_grant());
    google.revoke_access_tokens();
    for _ in 0..3 {
        assert_code(&send(&server).await, 451);
    }
    server.stop().await;

    let log = captured.text();
    assert!(log.contains("TRACE"), "trace level was captured");
    for secret in [
        fake_google::CLIENT_SECRET,
        fake_google::REFRESH_TOKEN,
        "fake-access-",
        "fake-stale-access-token",
    ] {
        assert!(!log.contains(secret), "{secret:?} appears in the log");
    }
    for body in ["BODY-MARKER-SUBJECT", "BODY-MARKER-TEXT"] {
        assert!(
            !log.contains(body),
            "message content {body:?} appears in the log"
        );
    }
    let edits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("headers added for Gmail"))
        .collect();
    assert_eq!(edits.len(), 1, "{log}");
    assert!(edits[0].contains("hidden-bcc@example.com"), "{}", edits[0]);
    let warnings = log
        .lines()
        .filter(|l| l.contains("credentials need attention"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for three refused messages:\n{log}"
    );
}
