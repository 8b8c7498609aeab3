//! Gmail mode end to end: a real SMTP client, the server, the relay, and the fake Google on
//! 127.0.0.1 (token endpoint and upload endpoint).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_gmail::{SendFault, gmail_config};
use common::fake_google::{self, FakeGoogle, Fault};
use common::{Client, TestServer, assert_code, test_config};
use smtp2gmail::config::{AccountConfig, FromPolicy, GmailConfig, HeaderOnlyRecipients};
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::{Gmail, http_client};

/// Retries as in production, but with waits short enough for a test.
const FAST: RetryPolicy = RetryPolicy {
    attempts: 3,
    budget: Duration::from_secs(5),
    first_backoff: Duration::from_millis(10),
};

async fn start(gmail: &GmailConfig) -> TestServer {
    let relay = Gmail::from_config(gmail, http_client().unwrap())
        .unwrap()
        .with_retry(FAST);
    TestServer::with_target(test_config(), Arc::new(relay)).await
}

/// Sends `message` from `from` to `rcpts` and returns the final reply.
async fn send(server: &TestServer, from: &str, rcpts: &[&str], message: &str) -> String {
    let mut client = server.client().await;
    client.start_transaction(from, rcpts).await;
    assert!(message.ends_with('\n'));
    let wire = format!("{}.\r\n", message.replace('\n', "\r\n"));
    let reply = client.data(wire.as_bytes()).await;
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    reply
}

/// The Django-style message from app@example.com to the two recipients its headers name.
async fn send_django(server: &TestServer) -> String {
    send(
        server,
        "app@example.com",
        &["alice@example.com", "bob@example.com"],
        DJANGO_STYLE,
    )
    .await
}

const DJANGO_STYLE: &str = "From: app@example.com\nTo: Alice <alice@example.com>\nCc: bob@EXAMPLE.com\nSubject: report\nMessage-ID: <1@example.com>\n\nhello\n";

#[tokio::test]
async fn envelope_only_recipients_become_bcc_and_nothing_else_changes() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    let rcpts = ["alice@example.com", "bob@example.com", "carol@example.com"];
    let reply = send(&server, "app@example.com", &rcpts, DJANGO_STYLE).await;
    assert_eq!(
        reply, "250 2.0.0 OK fake-gmail-1\r\n",
        "the reply carries Gmail's id"
    );
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1);
    let mut recipients = uploads[0].recipients.clone();
    recipients.sort();
    assert_eq!(recipients, rcpts);
    let sent = DJANGO_STYLE.replace('\n', "\r\n");
    let body = String::from_utf8(uploads[0].body.clone()).unwrap();
    let added = body
        .strip_suffix(sent.as_str())
        .expect("the received bytes follow the added header unchanged");
    assert_eq!(added, "Bcc: carol@example.com\r\n");
    assert_eq!(uploads[0].user, "me");
    server.stop().await;
}

#[tokio::test]
async fn all_recipients_in_headers_means_the_exact_bytes() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    assert_code(&send_django(&server).await, 250);
    assert_eq!(
        google.uploads()[0].body,
        DJANGO_STYLE.replace('\n', "\r\n").into_bytes()
    );
    server.stop().await;
}

/// `X-A: 1<CR>Bcc: …` is one field to our header reader and two to others (Python's, possibly
/// Gmail's): a Bcc the recipient rules never saw. Refused at the end of DATA, nothing uploaded,
/// whatever the policy on header recipients.
#[tokio::test]
async fn a_bare_cr_cannot_hide_a_bcc_from_the_recipient_rules() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let smuggling = "From: app@example.com\nTo: alice@example.com\n\
X-A: 1\rBcc: smuggled@evil.example\nSubject: hi\n\nhello\n";
    for policy in [HeaderOnlyRecipients::Reject, HeaderOnlyRecipients::Allow] {
        let mut gmail = gmail_config(&google, dir.path());
        gmail.header_only_recipients = Some(policy);
        let server = start(&gmail).await;
        let reply = send(
            &server,
            "app@example.com",
            &["alice@example.com"],
            smuggling,
        )
        .await;
        assert_eq!(
            reply,
            "550 5.6.0 bare CR in the header section (a CR must be followed by LF)\r\n"
        );
        server.stop().await;
    }
    assert!(google.uploads().is_empty(), "nothing reaches Gmail");
}

/// A field after the part of the message the rules read (the first 256 KiB) would reach Gmail
/// unread: a header section that does not end there is refused.
#[tokio::test]
async fn a_bcc_beyond_the_head_cannot_hide_from_the_recipient_rules() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    let padding = format!("X-Pad: {}\n", "p".repeat(990)).repeat(300);
    let message = format!(
        "From: app@example.com\nTo: alice@example.com\n{padding}Bcc: hidden@evil.example\n\nhi\n"
    );
    let reply = send(&server, "app@example.com", &["alice@example.com"], &message).await;
    assert!(
        reply.starts_with("554 5.6.0 header section longer than 262144 bytes"),
        "{reply}"
    );
    assert!(google.uploads().is_empty(), "nothing reaches Gmail");
    // A long body is no header section.
    let long_body =
        format!("From: app@example.com\nTo: alice@example.com\n\n{padding}Bcc: body@x.example\n");
    let reply = send(
        &server,
        "app@example.com",
        &["alice@example.com"],
        &long_body,
    )
    .await;
    assert_code(&reply, 250);
    server.stop().await;
}

#[tokio::test]
async fn header_only_recipients_are_refused_unless_allowed() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    let reply = send(
        &server,
        "app@example.com",
        &["alice@example.com"],
        DJANGO_STYLE,
    )
    .await;
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    assert!(
        reply.contains("bob@example.com") && reply.contains("header_only_recipients"),
        "{reply}"
    );
    assert!(google.uploads().is_empty());
    server.stop().await;

    let mut gmail = gmail_config(&google, dir.path());
    gmail.header_only_recipients = Some(HeaderOnlyRecipients::Allow);
    let server = start(&gmail).await;
    assert_code(
        &send(
            &server,
            "app@example.com",
            &["alice@example.com"],
            DJANGO_STYLE,
        )
        .await,
        250,
    );
    assert_eq!(
        google.uploads()[0].recipients,
        ["alice@example.com", "bob@example.com"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_30_mb_message_goes_through_the_upload_endpoint_intact() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let message = format!(
        "From: app@example.com\r\nTo: alice@example.com\r\n\r\n{}",
        line.repeat(30 * 1024 * 1024 / line.len())
    );
    let mut client = server.client().await;
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    assert_code(
        &client.data(format!("{message}.\r\n").as_bytes()).await,
        250,
    );
    let uploads = google.uploads();
    assert!(
        uploads[0].body == message.as_bytes(),
        "uploaded bytes differ"
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_then_success_is_retried_within_the_transaction() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    google.fail_sends([
        SendFault::google(429, "rateLimitExceeded"),
        SendFault::RetryAfter {
            status: 503,
            seconds: 0,
        },
    ]);
    let reply = send_django(&server).await;
    assert_eq!(reply, "250 2.0.0 OK fake-gmail-1\r\n");
    assert_eq!(google.uploads().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_lasting_outage_is_451_and_nothing_is_sent() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    google.fail_sends(std::iter::repeat_n(
        SendFault::google(503, "backendError"),
        3,
    ));
    let reply = send_django(&server).await;
    assert!(
        reply.starts_with("451 4.4.1 ") && reply.contains("503"),
        "{reply}"
    );
    assert!(google.uploads().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_missing_mailbox_is_451_with_the_fix_and_a_precondition_is_retried() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    google.fail_sends([SendFault::mail_service_not_enabled()]);
    let reply = common::send_simple(server.addr).await;
    assert!(reply.starts_with("451 4.7.0"), "{reply}");
    assert!(reply.contains("turn Gmail on"), "{reply}");
    google.fail_sends([SendFault::precondition_check_failed()]);
    assert_code(&common::send_simple(server.addr).await, 250);
    assert_eq!(google.uploads().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_request_is_554_with_googles_message() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    google.fail_sends([SendFault::Google {
        status: 400,
        reason: "invalidArgument",
        message: "Invalid To header".into(),
    }]);
    let reply = send_django(&server).await;
    assert!(
        reply.starts_with("554 5.6.0 ") && reply.contains("Invalid To header"),
        "{reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_access_token_is_refreshed_once() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    assert_code(&send_django(&server).await, 250);
    assert_eq!(google.token_requests(), 1);
    google.revoke_access_tokens();
    assert_code(&send_django(&server).await, 250);
    assert_eq!(google.unauthorized_sends(), 1);
    assert_eq!(google.token_requests(), 2);
    assert_eq!(google.uploads().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn invalid_grant_is_451_with_the_fix() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    google.fail_token_requests(2, Fault::invalid_grant());
    for _ in 0..2 {
        let reply = send_django(&server).await;
        assert!(
            reply.starts_with("451 4.7.0 "),
            "never a 5xx for dead credentials: {reply}"
        );
        assert!(
            reply.contains("invalid_grant") && reply.contains("smtp2gmail authorize"),
            "{reply}"
        );
    }
    // New credentials at Google's end: the next message goes through.
    assert_code(&send_django(&server).await, 250);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_sends_share_one_refresh_and_respect_the_concurrency_limit() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(20));
    let mut gmail = gmail_config(&google, dir.path());
    gmail.max_concurrent_sends = Some(4);
    let server = start(&gmail).await;
    let sends = (0..50).map(|_| {
        send(
            &server,
            "app@example.com",
            &["alice@example.com", "bob@example.com"],
            DJANGO_STYLE,
        )
    });
    for reply in futures_util::future::join_all(sends).await {
        assert_code(&reply, 250);
    }
    assert_eq!(google.uploads().len(), 50);
    assert_eq!(
        google.token_requests(),
        1,
        "one refresh for 50 concurrent sends"
    );
    assert!(
        google.most_concurrent_sends() <= 4,
        "at most 4 at once, saw {}",
        google.most_concurrent_sends()
    );
    server.stop().await;
}

#[tokio::test]
async fn messages_are_routed_by_sender_then_from_header() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut gmail = gmail_config(&google, dir.path());
    gmail.senders = vec!["*@example.com".into()];
    gmail.accounts = vec![AccountConfig {
        name: "support".into(),
        senders: vec!["support@example.org".into()],
        credentials: gmail.credentials.clone(),
        user_id: Some("support@example.org".into()),
        ..AccountConfig::default()
    }];
    let server = start(&gmail).await;
    let to_alice = "To: alice@example.com\n\nhi\n";
    assert_code(
        &send(
            &server,
            "app@example.com",
            &["alice@example.com"],
            &format!("From: app@example.com\n{to_alice}"),
        )
        .await,
        250,
    );
    assert_code(
        &send(
            &server,
            "support@example.org",
            &["alice@example.com"],
            &format!("From: support@example.org\n{to_alice}"),
        )
        .await,
        250,
    );
    // A bounce (null sender) is routed by its From header.
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("MAIL FROM:<>").await, 250);
    assert_code(&client.cmd("RCPT TO:<alice@example.com>").await, 250);
    assert_code(
        &client
            .data(
                format!(
                    "From: Support@Example.org\r\n{}.\r\n",
                    to_alice.replace('\n', "\r\n")
                )
                .as_bytes(),
            )
            .await,
        250,
    );
    // Nobody serves this sender.
    let reply = client.cmd("MAIL FROM:<intruder@elsewhere.test>").await;
    assert_code(&reply, 250);
    assert_code(&client.cmd("RCPT TO:<alice@example.com>").await, 250);
    let reply = client
        .data(
            format!(
                "From: intruder@elsewhere.test\r\n{}.\r\n",
                to_alice.replace('\n', "\r\n")
            )
            .as_bytes(),
        )
        .await;
    assert!(
        reply.starts_with("550 5.7.1 ") && reply.contains("intruder@elsewhere.test"),
        "{reply}"
    );
    let users: Vec<String> = google.uploads().into_iter().map(|u| u.user).collect();
    assert_eq!(users, ["me", "support@example.org", "support@example.org"]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn from_policy_keep_rewrite_reject() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let message = "From: \"The Shop\" <shop@example.com>\nTo: alice@example.com\n\nhi\n";
    for (policy, expected_code, expected_from) in [
        (FromPolicy::Keep, 250, Some("shop@example.com")),
        (FromPolicy::Rewrite, 250, Some("app@example.com")),
        (FromPolicy::Reject, 550, None),
    ] {
        let mut gmail = gmail_config(&google, dir.path());
        gmail.send_as = vec!["app@example.com".into()];
        gmail.from_policy = Some(policy);
        let server = start(&gmail).await;
        let before = google.uploads().len();
        let reply = send(&server, "shop@example.com", &["alice@example.com"], message).await;
        assert_code(&reply, expected_code);
        let uploads = google.uploads();
        match expected_from {
            Some(from) => assert_eq!(uploads[before].from.as_deref(), Some(from), "{policy:?}"),
            None => {
                assert_eq!(uploads.len(), before);
                assert!(
                    reply.contains("shop@example.com") && reply.contains("send_as"),
                    "{reply}"
                );
            }
        }
        if policy == FromPolicy::Rewrite {
            let body = String::from_utf8(uploads[before].body.clone()).unwrap();
            assert!(body.contains("\"The Shop\" <app@example.com>"), "{body}");
            assert!(
                body.contains("Reply-To: \"The Shop\" <shop@example.com>"),
                "{body}"
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn service_account_sends_as_the_envelope_sender() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let key_file = fake_google::service_account_json(&google.token_uri());
    google.trust_service_account(&key_file);
    let key = fake_google::write_json(dir.path(), "sa.json", &key_file);
    let gmail = GmailConfig {
        api_base: google.api_base(),
        credentials: Some(key),
        senders: vec!["*@example.com".into()],
        ..GmailConfig::default()
    };
    let server = start(&gmail).await;
    let message = "From: app@example.com\nTo: alice@example.com\n\nhi\n";
    assert_code(
        &send(&server, "app@example.com", &["alice@example.com"], message).await,
        250,
    );
    assert_eq!(google.subjects(), ["app@example.com"]);
    server.stop().await;
}

#[test]
fn service_account_without_senders_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = fake_google::write_json(
        dir.path(),
        "sa.json",
        &fake_google::service_account_json("http://127.0.0.1:9/token"),
    );
    let gmail = GmailConfig {
        credentials: Some(key),
        ..GmailConfig::default()
    };
    let err = Gmail::from_config(&gmail, http_client().unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("senders"), "{err}");
}

#[tokio::test]
async fn raw_client_sees_the_same_answers() {
    // Guard against the harness: a plain socket client gets Gmail's id too.
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = start(&gmail_config(&google, dir.path())).await;
    let (mut client, greeting) = Client::connect(server.addr).await;
    assert!(greeting.starts_with("220 "));
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    let reply = client
        .data(b"To: alice@example.com\r\n\r\nx\r\n.\r\n")
        .await;
    assert_eq!(reply, "250 2.0.0 OK fake-gmail-1\r\n");
    drop(client);
    server.stop().await;
}
