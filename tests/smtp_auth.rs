//! SMTP AUTH on a loopback listener (where it is offered without TLS): PLAIN and LOGIN, one reply
//! for every refusal, cancellation, `auth_required`, the senders restriction, brute-force closing,
//! and the per-IP connection cap; and off loopback, AUTH without TLS only on the listeners
//! `allow_auth_without_tls` names.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use common::tls::TestCert;
use common::{Client, Recorder, TestServer, assert_code, non_loopback_ip, test_config};
use smtp2gmail::config::{AuthWithoutTls, SmtpConfig, UserConfig};
use smtp2gmail::smtp::auth::hash_password;

const PASSWORD: &str = "correct horse battery staple";

fn config(senders: &[&str]) -> SmtpConfig {
    SmtpConfig {
        auth_required: Some(true),
        users: vec![UserConfig {
            name: "app".into(),
            password_hash: hash_password(PASSWORD).unwrap(),
            senders: senders.iter().map(|s| s.to_string()).collect(),
        }],
        ..test_config()
    }
}

fn plain(user: &str, password: &str) -> String {
    BASE64.encode(format!("\0{user}\0{password}"))
}

async fn greeted(server: &TestServer) -> Client {
    let mut client = server.client().await;
    let ehlo = client.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "loopback offers AUTH: {ehlo}"
    );
    client
}

#[tokio::test]
async fn plain_and_login_authenticate_and_are_recorded() {
    let server = TestServer::with_config(config(&[])).await;
    let mut client = greeted(&server).await;
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 530);
    let reply = client
        .cmd(&format!("AUTH PLAIN {}", plain("app", PASSWORD)))
        .await;
    assert_eq!(reply, "235 2.7.0 authentication succeeded\r\n");
    assert_code(
        &client
            .cmd(&format!("AUTH PLAIN {}", plain("app", PASSWORD)))
            .await,
        503,
    );
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b"hi\r\n.\r\n").await, 250);

    let mut client = greeted(&server).await;
    assert_eq!(client.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        client.cmd(&BASE64.encode("app")).await,
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_code(&client.cmd(&BASE64.encode(PASSWORD)).await, 235);
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b"hi\r\n.\r\n").await, 250);

    // PLAIN without an initial response prompts with an empty 334.
    let mut client = greeted(&server).await;
    assert_eq!(client.cmd("AUTH PLAIN").await, "334 \r\n");
    assert_code(&client.cmd(&plain("app", PASSWORD)).await, 235);

    let delivered = server.recorder.delivered();
    assert_eq!(delivered.len(), 2);
    assert!(
        delivered
            .iter()
            .all(|(e, _)| e.auth_user.as_deref() == Some("app"))
    );
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_reply() {
    let server = TestServer::with_config(config(&[])).await;
    let mut client = greeted(&server).await;
    let wrong_password = client
        .cmd(&format!("AUTH PLAIN {}", plain("app", "nope")))
        .await;
    let unknown_user = client
        .cmd(&format!("AUTH PLAIN {}", plain("root", PASSWORD)))
        .await;
    assert_eq!(
        wrong_password,
        "535 5.7.8 authentication credentials invalid\r\n"
    );
    assert_eq!(unknown_user, wrong_password);
}

#[tokio::test]
async fn cancelled_and_malformed_exchanges_return_to_the_start() {
    let server = TestServer::with_config(config(&[])).await;
    let mut client = greeted(&server).await;
    assert_code(&client.cmd("AUTH LOGIN").await, 334);
    assert_eq!(
        client.cmd("*").await,
        "501 5.7.0 authentication cancelled\r\n"
    );
    assert_code(&client.cmd("AUTH PLAIN").await, 334);
    assert_eq!(
        client.cmd("*").await,
        "501 5.7.0 authentication cancelled\r\n"
    );
    assert_code(&client.cmd("AUTH PLAIN !!!notbase64").await, 501);
    assert_code(&client.cmd("AUTH CRAM-MD5").await, 504);
    assert_code(
        &client
            .cmd(&format!("AUTH PLAIN {}", plain("app", PASSWORD)))
            .await,
        235,
    );
}

#[tokio::test]
async fn senders_restrict_the_envelope_sender() {
    let server = TestServer::with_config(config(&["noreply@example.com", "*@example.org"])).await;
    let mut client = greeted(&server).await;
    assert_code(
        &client
            .cmd(&format!("AUTH PLAIN {}", plain("app", PASSWORD)))
            .await,
        235,
    );
    let refused = client.cmd("MAIL FROM:<ceo@example.com>").await;
    assert!(refused.starts_with("550 5.7.1 "), "{refused}");
    assert_code(&client.cmd("MAIL FROM:<>").await, 550);
    assert_code(&client.cmd("MAIL FROM:<anyone@example.org>").await, 250);
    assert_code(&client.cmd("RSET").await, 250);
    assert_code(&client.cmd("MAIL FROM:<noreply@example.com>").await, 250);
    assert_code(&client.cmd("RCPT TO:<b@example.net>").await, 250);
    // The From header is held to the same list: Gmail shows it, and sends as it with a
    // service account.
    let forged = client
        .data(b"From: CEO <ceo@example.com>\r\n\r\nwire money\r\n.\r\n")
        .await;
    assert!(forged.starts_with("550 5.7.1 "), "{forged}");
    client
        .start_transaction("noreply@example.com", &["b@example.net"])
        .await;
    let own = b"From: App <NoReply@example.com>\r\n\r\nhello\r\n.\r\n";
    assert_code(&client.data(own).await, 250);
    assert_eq!(server.recorder.bodies().len(), 1);
}

#[tokio::test]
async fn repeated_failures_close_the_connection() {
    let server = TestServer::with_config(config(&[])).await;
    let mut client = greeted(&server).await;
    for _ in 0..2 {
        assert_code(
            &client
                .cmd(&format!("AUTH PLAIN {}", plain("app", "guess")))
                .await,
            535,
        );
    }
    let last = client
        .cmd(&format!("AUTH PLAIN {}", plain("app", "guess")))
        .await;
    assert!(last.starts_with("421 4.7.0 "), "{last}");
    assert!(client.is_closed().await);
    // Counted for /metrics (other tests in this binary fail too, so at least these three).
    let metrics = smtp2gmail::telemetry::render();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("smtp2gmail_smtp_auth_failures_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 3.0, "{metrics}");
}

#[tokio::test]
async fn without_users_auth_is_not_offered_and_mail_needs_none() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ehlo = client.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_code(&client.cmd("AUTH PLAIN AGFwcABwdw==").await, 502);
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
}

/// Through this machine's non-loopback address, since loopback clients are not held to the
/// per-IP cap.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let Some(ip) = non_loopback_ip() else {
        return;
    };
    let config = SmtpConfig {
        listen: vec![SocketAddr::new(ip, 0)],
        max_connections_per_ip: 2,
        ..test_config()
    };
    let server = TestServer::as_configured(config, Arc::new(Recorder::default())).await;
    let _first = server.client().await;
    let _second = server.client().await;
    let (mut third, reply) = Client::connect(server.addr).await;
    assert!(reply.starts_with("421 4.7.0 "), "{reply}");
    assert!(third.is_closed().await);
}

/// Two listeners reached from the network, one named in `allow_auth_without_tls`: AUTH in clear
/// on that one only; the other offers it after STARTTLS. Both are reached through this machine's
/// non-loopback address, since a connection through 127.0.0.1 is local and always offered AUTH.
#[tokio::test]
async fn auth_without_tls_only_on_the_listeners_named() {
    let Some(ip) = non_loopback_ip() else {
        return;
    };
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    // Port 0 twice, on two different addresses, so that each listener has its own name.
    let named = SocketAddr::new(ip, 0);
    let other = SocketAddr::new(any, 0);
    let cert = TestCert::new();
    let config = SmtpConfig {
        listen: vec![named, other],
        allow_auth_without_tls: AuthWithoutTls::On(vec![named]),
        tls: Some(cert.tls_config()),
        ..config(&[])
    };
    let recorder = Arc::new(Recorder::default());
    let server = TestServer::as_configured(config, recorder.clone()).await;
    let (named_port, other_port) = (server.addrs[0].port(), server.addrs[1].port());

    let (mut clear, greeting) = Client::connect(SocketAddr::new(ip, named_port)).await;
    assert_code(&greeting, 220);
    let ehlo = clear.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "named listener: {ehlo}");
    let auth = format!("AUTH PLAIN {}", plain("app", PASSWORD));
    assert_code(&clear.cmd(&auth).await, 235);
    clear
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&clear.data(b"hi\r\n.\r\n").await, 250);
    assert_eq!(recorder.delivered().len(), 1);

    let (mut other, greeting) = Client::connect(SocketAddr::new(ip, other_port)).await;
    assert_code(&greeting, 220);
    let ehlo = other.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("AUTH"), "other listener, in clear: {ehlo}");
    assert_eq!(
        other.cmd(&auth).await,
        "538 5.7.11 encryption required: send STARTTLS first\r\n"
    );
    assert_code(&other.cmd("MAIL FROM:<a@example.com>").await, 530);
    assert_code(&other.cmd("STARTTLS").await, 220);
    let mut other = other.start_tls(&cert).await;
    let ehlo = other.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "under TLS: {ehlo}");
    assert_code(&other.cmd(&auth).await, 235);
    drop((clear, other));
    server.stop().await;
}

/// A dual-stack `[::]` listener sees a client of 127.0.0.1 as `::ffff:127.0.0.1`: still loopback,
/// so AUTH is offered in clear as on any loopback listener, and the client is 127.0.0.1.
#[tokio::test]
async fn a_dual_stack_listener_counts_ipv4_loopback_as_loopback() {
    let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    if std::net::TcpListener::bind(any6).is_err() {
        common::cannot_check_here("no IPv6 on this machine");
        return;
    }
    let config = SmtpConfig {
        listen: vec![any6],
        auth_required: Some(true),
        ..config(&[])
    };
    let recorder = Arc::new(Recorder::default());
    let server = TestServer::as_configured(config, recorder.clone()).await;
    let port = server.addrs[0].port();
    let (mut client, greeting) =
        Client::connect(SocketAddr::new([127, 0, 0, 1].into(), port)).await;
    assert_code(&greeting, 220);
    let ehlo = client.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let auth = format!("AUTH PLAIN {}", plain("app", PASSWORD));
    assert_code(&client.cmd(&auth).await, 235);
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b"hi\r\n.\r\n").await, 250);
    // The client's address as it is: 127.0.0.1, not ::ffff:127.0.0.1 (per-IP cap, logs).
    let delivered = recorder.delivered();
    assert_eq!(delivered[0].0.remote.ip(), IpAddr::from([127, 0, 0, 1]));
    drop(client);
    server.stop().await;
}
