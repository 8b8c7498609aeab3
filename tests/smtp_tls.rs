//! TLS end to end: STARTTLS and implicit TLS with raw clients and lettre, STARTTLS injection,
//! failed handshakes, and certificate reload.

mod common;

use common::tls::TestCert;
use common::{Client, TestServer, assert_code};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use smtp2gmail::config::{SmtpConfig, UserConfig};
use smtp2gmail::smtp::auth::hash_password;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_user(mut config: SmtpConfig) -> SmtpConfig {
    config.users = vec![UserConfig {
        name: "app".into(),
        password_hash: hash_password("s3cret-pw").unwrap(),
        senders: vec![],
    }];
    config
}

#[tokio::test]
async fn starttls_is_offered_only_when_configured_and_not_yet_active() {
    let plain = TestServer::start().await;
    let mut client = plain.client().await;
    let ehlo = client.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_code(&client.cmd("STARTTLS").await, 502);

    let cert = TestCert::new();
    let server = TestServer::with_config(cert.smtp_config()).await;
    let mut client = server.client().await;
    let ehlo = client.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("250-STARTTLS") || ehlo.contains("250 STARTTLS"),
        "{ehlo}"
    );
    assert_code(&client.cmd("STARTTLS").await, 220);
    let mut client = client.start_tls(&cert).await;
    // The greeting is forgotten: MAIL needs a new EHLO.
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 503);
    let ehlo = client.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_code(&client.cmd("STARTTLS").await, 503);
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b"Subject: x\r\n\r\nhi\r\n.\r\n").await, 250);
    assert_eq!(
        server.recorder.bodies(),
        vec![b"Subject: x\r\n\r\nhi\r\n".to_vec()]
    );
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let cert = TestCert::new();
    let server = TestServer::with_config(cert.smtp_config()).await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    // An attacker on the path appends commands to the client's STARTTLS.
    client
        .send("STARTTLS\r\nHELP\r\nMAIL FROM:<evil@example.com>\r\n")
        .await;
    assert_code(&client.reply().await, 220);
    let mut client = client.start_tls(&cert).await;
    // Had HELP been run, its 214 would come first.
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
}

#[tokio::test]
async fn a_failed_handshake_ends_only_that_connection() {
    let cert = TestCert::new();
    let config = SmtpConfig {
        listen_tls: vec!["127.0.0.1:0".parse().unwrap()],
        ..cert.smtp_config()
    };
    let server = TestServer::with_config(config).await;
    let tls_addr = server.tls_addr.unwrap();
    // Plaintext SMTP against the implicit-TLS port: the server hangs up on it.
    let mut bad = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    bad.write_all(b"EHLO client.test\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::WAIT, bad.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "closed within the wait bound"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("220"),
        "no greeting in clear"
    );
    let (mut good, greeting) = Client::connect_tls(tls_addr, &cert).await;
    assert_code(&greeting, 220);
    let ehlo = good.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "already encrypted: {ehlo}");
    good.start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&good.data(b"hi\r\n.\r\n").await, 250);
}

fn message() -> Message {
    Message::builder()
        .from("App <noreply@example.com>".parse().unwrap())
        .to("someone@example.net".parse().unwrap())
        .subject("over TLS")
        .header(ContentType::TEXT_PLAIN)
        .body("encrypted all the way".to_string())
        .unwrap()
}

fn lettre(port: u16, tls: Tls, mechanism: Mechanism) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(port)
        .tls(tls)
        .credentials(Credentials::new("app".into(), "s3cret-pw".into()))
        .authentication(vec![mechanism])
        .build()
}

fn tls_parameters(cert: &TestCert) -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(cert.pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap()
}

#[tokio::test]
async fn lettre_starttls_and_implicit_tls_with_auth() {
    let cert = TestCert::new();
    let config = SmtpConfig {
        listen_tls: vec!["127.0.0.1:0".parse().unwrap()],
        auth_required: Some(true),
        ..with_user(cert.smtp_config())
    };
    let server = TestServer::with_config(config).await;
    let starttls = lettre(
        server.addr.port(),
        Tls::Required(tls_parameters(&cert)),
        Mechanism::Plain,
    );
    starttls
        .send(message())
        .await
        .expect("STARTTLS + AUTH PLAIN");
    let implicit = lettre(
        server.tls_addr.unwrap().port(),
        Tls::Wrapper(tls_parameters(&cert)),
        Mechanism::Login,
    );
    implicit
        .send(message())
        .await
        .expect("implicit TLS + AUTH LOGIN");
    let delivered = server.recorder.delivered();
    assert_eq!(delivered.len(), 2);
    for (envelope, _) in delivered {
        assert_eq!(envelope.auth_user.as_deref(), Some("app"));
    }
}

/// The hostile inputs of the SMTP front-end spec, over STARTTLS: TLS must change nothing.
#[tokio::test]
async fn hostile_inputs_over_tls_leave_the_session_usable() {
    let cert = TestCert::new();
    let config = SmtpConfig {
        max_message_size: 1000,
        max_recipients: 2,
        ..with_user(cert.smtp_config())
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("STARTTLS").await, 220);
    let mut client = client.start_tls(&cert).await;
    // Out of order.
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 503);
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("DATA").await, 503);
    // An overlong line, control characters in addresses, an absurd SIZE.
    client.send(vec![b'x'; 64 * 1024]).await;
    assert_code(&client.cmd("").await, 500);
    assert_code(&client.cmd("MAIL FROM:<a\x01b@example.com>").await, 501);
    let size = "MAIL FROM:<a@example.com> SIZE=999999999999999999999999";
    assert_code(&client.cmd(size).await, 552);
    // AUTH cancelled, then a bare-LF command.
    assert_code(&client.cmd("AUTH LOGIN").await, 334);
    assert_eq!(
        client.cmd("*").await,
        "501 5.7.0 authentication cancelled\r\n"
    );
    client.send("NOOP\n").await;
    assert_code(&client.reply().await, 250);
    // Too many recipients, then a body with smuggling attempts: one message, stored as sent.
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_code(&client.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_code(&client.cmd("RCPT TO:<c@example.com>").await, 250);
    assert_code(&client.cmd("RCPT TO:<d@example.com>").await, 452);
    // In the body: a bare CR in the header section is refused on its own (tests/gmail_relay.rs).
    let smuggled =
        b"Subject: s\r\n\r\na\n.\nMAIL FROM:<x@example.com>\r\nb\n.\r\nc\r.\nd\r\n..dot\r\n.\r\n";
    assert_code(&client.data(smuggled).await, 250);
    // Over the size limit: read to the end, refused, session usable; the exact limit passes.
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let mut big = vec![b'y'; 1001];
    big.extend_from_slice(b"\r\n.\r\n");
    assert_code(&client.data(&big).await, 552);
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let mut exact = vec![b'z'; 998];
    exact.extend_from_slice(b"\r\n.\r\n");
    assert_code(&client.data(&exact).await, 250);
    // An empty message.
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b".\r\n").await, 250);
    let bodies = server.recorder.bodies();
    assert_eq!(bodies.len(), 3);
    assert_eq!(
        bodies[0],
        b"Subject: s\r\n\r\na\n.\nMAIL FROM:<x@example.com>\r\nb\n.\r\nc\r.\nd\r\n.dot\r\n"
            .to_vec()
    );
    assert_eq!(bodies[1].len(), 1000);
    assert!(bodies[2].is_empty());
    // A client that disconnects mid-DATA leaves nothing behind.
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.cmd("DATA").await, 354);
    client.send("Subject: cut\r\n\r\nhalf").await;
    drop(client);
    let mut next = server.client().await;
    assert_code(&next.cmd("NOOP").await, 250);
    assert_eq!(server.recorder.bodies().len(), 3);
}

#[tokio::test]
async fn unusable_certificates_are_a_configuration_error_and_reload_keeps_the_old_one() {
    let cert = TestCert::new();
    std::fs::write(cert.key_path(), "not a key").unwrap();
    let recorder = std::sync::Arc::new(common::Recorder::default());
    let err = smtp2gmail::smtp::Server::bind(cert.smtp_config(), recorder)
        .await
        .err()
        .expect("a bad key is refused");
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("key.pem"), "{err}");

    let good = TestCert::new();
    let tls = smtp2gmail::smtp::tls::Tls::load(&good.tls_config()).unwrap();
    let renewed = TestCert::new();
    std::fs::copy(renewed.cert_path(), good.cert_path()).unwrap();
    std::fs::copy(renewed.key_path(), good.key_path()).unwrap();
    tls.reload().expect("a renewed pair loads");
    std::fs::write(good.cert_path(), "half written").unwrap();
    assert!(tls.reload().is_err(), "a broken renewal is refused");
}

/// What the TLS watch does every poll (no SIGHUP on Windows; certbot and cert-manager send none):
/// a renewal of either file reloads once, a half-written one is refused and keeps the old pair,
/// and nothing changed means no reload.
#[test]
fn a_renewed_certificate_is_noticed_by_its_files_changing() {
    let good = TestCert::new();
    let tls = smtp2gmail::smtp::tls::Tls::load(&good.tls_config()).unwrap();
    assert!(tls.reload_if_changed().is_none(), "nothing changed yet");
    let renewed = TestCert::new();
    std::fs::copy(renewed.key_path(), good.key_path()).unwrap();
    std::fs::copy(renewed.cert_path(), good.cert_path()).unwrap();
    assert!(
        matches!(tls.reload_if_changed(), Some(Ok(()))),
        "renewal reloaded"
    );
    assert!(
        tls.reload_if_changed().is_none(),
        "reloaded once, not every poll"
    );
    std::fs::write(good.cert_path(), "half written").unwrap();
    assert!(
        matches!(tls.reload_if_changed(), Some(Err(_))),
        "a broken renewal is refused"
    );
    assert!(
        tls.reload_if_changed().is_none(),
        "refused once, until the file changes again"
    );
}
