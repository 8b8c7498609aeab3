//! A service account sending as each envelope sender (`impersonate = "sender"`), end to end with
//! lettre, against a fake Google that knows which users the domain has: a sender Google does not
//! know ("Invalid email or User ID") fails that message for good — 550 in sync mode, a dead letter
//! with the reason in `queue show` in queue mode — while the account stays ready and its other
//! senders are served at once. Missing delegation stays an account-wide problem with the Admin
//! console fix.

mod common;

use std::time::Duration;

use common::TestServer;
use common::fake_google::{FakeGoogle, service_account_json, write_json};
use common::serving::{Serving, gmail_mode, refused_with};
use smtp2gmail::config::{Delivery, GmailConfig};

/// Every real key file names Google's endpoint; the configuration sends requests to the fake.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A user of the domain.
const KNOWN: &str = "app@example.com";
/// An address the account may send as (`senders`) that is no user of the domain.
const GHOST: &str = "ghost@example.com";

/// The fake's service account as the account's credentials, impersonating the sender, for the
/// senders `*@example.com`; the domain has the users app@ and alice@.
fn service_account(google: &FakeGoogle, dir: &std::path::Path, gmail: &mut GmailConfig) {
    let key = service_account_json(GOOGLE_TOKEN_URI);
    google.trust_service_account(&key);
    google.set_domain_users(&[KNOWN, "alice@example.com"]);
    gmail.credentials = Some(write_json(dir, "sa.json", &key));
    gmail.token_uri = Some(google.token_uri());
    gmail.senders = vec!["*@example.com".to_string()];
    gmail.impersonate = Some("sender".to_string());
}

/// A message from `from` to alice@example.com.
fn message(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: alice@example.com\r\nSubject: hello\r\n\r\nhi").into_bytes()
}

/// Sends from `from` to alice@example.com with lettre.
async fn send_from(
    server: &TestServer,
    from: &str,
) -> Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error> {
    let to = vec!["alice@example.com".to_string()];
    server.send_with_lettre(from, &to, &message(from)).await
}

/// Ready, with no problem listed.
async fn assert_ready(server: &TestServer) {
    let (status, body) = server.readiness().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn sync_an_unknown_sender_gets_550_and_the_others_are_served() {
    let (google, _dir, server) = TestServer::gmail(Delivery::Sync, service_account).await;
    let text = refused_with(send_from(&server, GHOST).await, "550");
    assert!(
        text.contains("5.1.0")
            && text.contains("ghost@example.com is not a user of the Google Workspace domain")
            && text.contains("Invalid email or User ID"),
        "{text}"
    );
    assert_ready(&server).await;
    let sent = send_from(&server, KNOWN).await;
    assert!(sent.is_ok(), "{sent:?}");
    assert_eq!(google.uploads().len(), 1);
    assert_eq!(google.subjects(), [KNOWN]);
    assert_ready(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn queue_an_unknown_sender_is_a_dead_letter_and_the_others_go_out_at_once() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = gmail_mode(&google, dir.path(), Delivery::Queue);
    service_account(&google, dir.path(), &mut config.gmail);
    // A paused account would hold its mail for an hour, far longer than any test waits.
    config.queue.retry_max = Duration::from_secs(3600);
    let server = TestServer::assembled(config).await;
    let queued = send_from(&server, GHOST).await.expect("queued");
    let id = queued
        .message()
        .next()
        .and_then(|line| line.strip_prefix("2.0.0 queued as "))
        .expect("a queue id")
        .to_string();
    server.until_files("dead", 2).await;
    // The account was not paused: the next sender's mail goes out now, not after retry_max.
    let sent = send_from(&server, KNOWN).await;
    assert!(sent.is_ok(), "{sent:?}");
    google.wait_for_uploads(1).await;
    assert_eq!(google.subjects(), [KNOWN]);
    assert_ready(&server).await;
    let (ok, shown) = server.queue_command(&["show", &id]).await;
    assert!(
        ok && shown.contains("ghost@example.com is not a user of the Google Workspace domain"),
        "{shown}"
    );
    server.stop().await;
}

#[tokio::test]
async fn missing_delegation_holds_the_mail_and_names_the_admin_console_fix() {
    let (_google, _dir, server) = TestServer::gmail(Delivery::Sync, |google, dir, gmail| {
        service_account(google, dir, gmail);
        google.revoke_delegation();
    })
    .await;
    let text = refused_with(send_from(&server, KNOWN).await, "451");
    assert!(
        text.contains("unauthorized_client") && text.contains("Manage Domain Wide Delegation"),
        "{text}"
    );
    let (status, body) = server.readiness().await;
    assert_eq!(status, 503, "{body}");
    let fix = body["problems"][0]["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("admin.google.com")
            && fix.contains("100000000000000000001")
            && fix.contains("https://www.googleapis.com/auth/gmail.send"),
        "{body}"
    );
    server.stop().await;
}
