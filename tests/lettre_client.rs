//! A real Rust SMTP client (lettre) against the server in file mode: what lands on disk is exactly
//! what the client sent, with the envelope beside it.

mod common;

use std::path::Path;

use common::{TestServer, test_config};
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp2gmail::relay::FileDrop;

fn transport(server: &TestServer) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(server.addr.port())
        .build()
}

/// The (eml, json) pairs in `dir`, sorted by id.
fn stored(dir: &Path) -> Vec<(Vec<u8>, serde_json::Value)> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".eml").map(str::to_string))
        .collect();
    ids.sort();
    ids.iter()
        .map(|id| {
            let eml = std::fs::read(dir.join(format!("{id}.eml"))).unwrap();
            let json = std::fs::read(dir.join(format!("{id}.json"))).unwrap();
            (eml, serde_json::from_slice(&json).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn lettre_message_is_stored_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_target(
        test_config(),
        std::sync::Arc::new(FileDrop::new(dir.path().into())),
    )
    .await;
    let message = lettre::Message::builder()
        .from("Sender <sender@example.com>".parse::<Mailbox>().unwrap())
        .to("Rcpt <rcpt@example.com>".parse().unwrap())
        .cc("cc@example.com".parse().unwrap())
        .bcc("hidden@example.com".parse().unwrap())
        .subject("Grüße aus Köln")
        .header(ContentType::TEXT_PLAIN)
        .body("Héllo\n.leading dot\n".to_string())
        .unwrap();
    let formatted = message.formatted();
    let response = transport(&server).send(message).await.unwrap();
    assert_eq!(response.code().to_string(), "250");

    let stored = stored(dir.path());
    assert_eq!(stored.len(), 1);
    let (eml, json) = &stored[0];
    // lettre always ends DATA with "\r\n.\r\n", even after a final CRLF: that CRLF is content.
    let mut sent = formatted.clone();
    sent.extend_from_slice(b"\r\n");
    assert_eq!(eml, &sent, "stored bytes differ from what lettre sent");
    assert_eq!(json["mail_from"], "sender@example.com");
    let mut rcpts: Vec<&str> = json["rcpt_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["cc@example.com", "hidden@example.com", "rcpt@example.com"]
    );
    assert_eq!(json["size"], sent.len());
    assert_eq!(json["helo"].as_str().map(|h| !h.is_empty()), Some(true));
    assert!(
        json["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(json["received_at"].as_str().unwrap().ends_with('Z'));
    let id = json["id"].as_str().unwrap();
    assert!(
        response.message().any(|line| line.contains(id)),
        "the reply names the id"
    );
    server.stop().await;
}

#[tokio::test]
async fn several_messages_over_one_lettre_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_target(
        test_config(),
        std::sync::Arc::new(FileDrop::new(dir.path().into())),
    )
    .await;
    let transport = transport(&server);
    for i in 0..5 {
        let message = lettre::Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .subject(format!("message {i}"))
            .body(format!("body {i}\n"))
            .unwrap();
        transport.send(message).await.unwrap();
    }
    assert_eq!(stored(dir.path()).len(), 5);
    drop(transport);
    server.stop().await;
}

#[tokio::test]
async fn unwritable_directory_is_451_not_250() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"a file where the mail directory should be").unwrap();
    let server =
        TestServer::with_target(test_config(), std::sync::Arc::new(FileDrop::new(blocked))).await;
    let message = lettre::Message::builder()
        .from("a@example.com".parse().unwrap())
        .to("b@example.com".parse().unwrap())
        .body("x\n".to_string())
        .unwrap();
    let err = transport(&server).send(message).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("4.3.0"), "{err}");
    server.stop().await;
}
