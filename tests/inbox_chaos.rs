//! Mailpit's chaos API against the real binary: triggers set over HTTP make real SMTP clients
//! (lettre, a raw session) meet the configured reply at MAIL, RCPT or AUTH, and nothing is
//! captured for a refused recipient. Off unless `inbox.chaos` is set, as Mailpit.

mod common;

use common::inbox::{self, json, send_json, text};
use common::process::ServerProcess;
use common::serving::{Serving, refused_with};
use common::{Client, assert_code};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use reqwest::Method;
use serde_json::{Value, json};

async fn chaos_server(dir: &std::path::Path, extra: &str) -> ServerProcess {
    inbox::write_config(dir, &format!("[inbox]\nchaos = true\n{extra}"));
    ServerProcess::in_dir(dir).await
}

async fn set_triggers(server: &ServerProcess, triggers: Value) -> Value {
    let (status, body) = send_json(server, Method::PUT, "/api/v1/chaos", Some(triggers)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn transport(server: &ServerProcess) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(server.smtp().port())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_trigger_refuses_at_rcpt_and_nothing_is_captured() {
    let dir = tempfile::tempdir().unwrap();
    let server = chaos_server(dir.path(), "").await;
    let defaults = json(&server, "/api/v1/chaos").await;
    assert_eq!(
        defaults,
        json!({
            "Sender": {"ErrorCode": 451, "Probability": 0},
            "Recipient": {"ErrorCode": 451, "Probability": 0},
            "Authentication": {"ErrorCode": 535, "Probability": 0},
        })
    );
    let set = set_triggers(
        &server,
        json!({"Recipient": {"ErrorCode": 451, "Probability": 100}}),
    )
    .await;
    assert_eq!(
        set["Recipient"],
        json!({"ErrorCode": 451, "Probability": 100})
    );
    assert_eq!(set["Sender"], json!({"ErrorCode": 451, "Probability": 0}));
    assert_eq!(json(&server, "/api/v1/webui").await["ChaosEnabled"], true);

    let message = text("app@example.com", "u@example.org", "refused", "hi");
    let refused = refused_with(transport(&server).send(message).await, "451");
    assert!(refused.contains("chaos"), "{refused}");
    // The reply comes at RCPT, with an enhanced status code.
    let (mut client, _) = Client::connect(server.smtp()).await;
    client.cmd("EHLO test").await;
    assert_code(&client.cmd("MAIL FROM:<app@example.com>").await, 250);
    let rcpt = client.cmd("RCPT TO:<u@example.org>").await;
    assert!(rcpt.starts_with("451 4.3.0 "), "{rcpt}");
    assert_code(&client.cmd("DATA").await, 503);
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 0);

    // Reset: every trigger back at 0 %, and mail goes through.
    let reset = set_triggers(&server, json!({})).await;
    assert_eq!(reset, defaults);
    let message = text("app@example.com", "u@example.org", "accepted", "hi");
    inbox::send(server.smtp(), message).await;
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_authentication_triggers() {
    let dir = tempfile::tempdir().unwrap();
    // A user, so that AUTH is offered (on loopback the inbox still asks for no password).
    let hash = smtp2gmail::smtp::auth::hash_password("pw").unwrap();
    let users = format!("[[smtp.users]]\nname = \"app\"\npassword_hash = \"{hash}\"\n");
    let server = chaos_server(dir.path(), &users).await;
    set_triggers(
        &server,
        json!({"Sender": {"ErrorCode": 550, "Probability": 100},
               "authentication": {"errorcode": 454, "probability": 100}}),
    )
    .await;
    let (mut client, _) = Client::connect(server.smtp()).await;
    client.cmd("EHLO test").await;
    let mail = client.cmd("MAIL FROM:<app@example.com>").await;
    assert!(mail.starts_with("550 5.1.0 "), "{mail}");
    // AUTH PLAIN of app / pw.
    let auth = client.cmd("AUTH PLAIN AGFwcABwdw==").await;
    assert!(auth.starts_with("454 4.7.0 "), "{auth}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_is_off_unless_configured_and_checks_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    let (status, body) = send_json(&server, Method::GET, "/api/v1/chaos", None).await;
    assert_eq!((status, body.as_str()), (400, "Chaos is not enabled"));
    let trigger = json!({"Recipient": {"ErrorCode": 451, "Probability": 100}});
    let (status, body) = send_json(&server, Method::PUT, "/api/v1/chaos", Some(trigger)).await;
    assert_eq!((status, body.as_str()), (400, "Chaos is not enabled"));
    assert_eq!(json(&server, "/api/v1/webui").await["ChaosEnabled"], false);
    inbox::send(
        server.smtp(),
        text("a@example.com", "b@example.org", "s", "b"),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let server = chaos_server(dir.path(), "").await;
    for (bad, reason) in [
        (
            json!({"Sender": {"ErrorCode": 250, "Probability": 1}}),
            "error code must be between 400 and 599",
        ),
        (
            json!({"Sender": {"ErrorCode": 451, "Probability": 101}}),
            "probability must be between 0 and 100",
        ),
    ] {
        let (status, body) = send_json(&server, Method::PUT, "/api/v1/chaos", Some(bad)).await;
        assert_eq!((status, body.as_str()), (400, reason));
    }
}
