//! Helpers for the inbox tests: a server with the inbox on free ports, mail sent with lettre,
//! JSON from the API.

use std::net::SocketAddr;
use std::path::Path;

use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::Value;

use super::process::ServerProcess;
use super::serving::Serving;

/// Writes `config.toml` in `dir`: SMTP and HTTP on free loopback ports, then `extra`.
pub fn write_config(dir: &Path, extra: &str) {
    let config = format!(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\nshutdown_grace = \"2s\"\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}"
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

/// A console-mode server in `dir` with release through the fake Google (a token.json written
/// into `dir`); `extra` is more configuration.
pub async fn with_gmail(
    dir: &Path,
    google: &super::fake_google::FakeGoogle,
    extra: &str,
) -> ServerProcess {
    use super::fake_google::{token_json, write_json};
    write_json(dir, "token.json", &token_json(&google.token_uri()));
    let gmail = format!(
        "[gmail]\ncredentials = \"token.json\"\napi_base = \"{}\"\n{extra}",
        google.api_base()
    );
    write_config(dir, &gmail);
    ServerProcess::in_dir(dir).await
}

/// A console-mode server with the inbox, in `dir`.
pub async fn console(dir: &Path) -> ServerProcess {
    write_config(dir, "");
    ServerProcess::in_dir(dir).await
}

/// A file-mode server with the inbox, its `file.dir` `dir/mail`; `extra` ends the config.
pub async fn file_mode_with(dir: &Path, extra: &str) -> ServerProcess {
    let config = format!(
        "[relay]\nmode = \"file\"\n[file]\ndir = '{}'\n{extra}",
        dir.join("mail").display()
    );
    write_config(dir, &config);
    ServerProcess::in_dir(dir).await
}

/// Sends `message` over SMTP with lettre (envelope from its headers).
pub async fn send(smtp: SocketAddr, message: lettre::Message) {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(smtp.port())
        .build();
    let response = transport.send(message).await.unwrap();
    assert_eq!(response.code().to_string(), "250");
}

/// A plain text message.
pub fn text(from: &str, to: &str, subject: &str, body: &str) -> lettre::Message {
    lettre::Message::builder()
        .from(from.parse::<Mailbox>().unwrap())
        .to(to.parse().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_string())
        .unwrap()
}

/// An HTML message with a text alternative, an inline image and a PDF attachment; `bcc` only in
/// the envelope.
pub fn rich(subject: &str, html: &str, bcc: &str) -> lettre::Message {
    let alternative = MultiPart::alternative()
        .singlepart(SinglePart::plain("Hello in text".to_string()))
        .singlepart(SinglePart::html(html.to_string()));
    let related = MultiPart::related().multipart(alternative).singlepart(
        Attachment::new_inline("logo".to_string())
            .body(PNG.to_vec(), ContentType::parse("image/png").unwrap()),
    );
    let mixed = MultiPart::mixed().multipart(related).singlepart(
        Attachment::new("report.pdf".to_string())
            .body(PDF.to_vec(), ContentType::parse("application/pdf").unwrap()),
    );
    lettre::Message::builder()
        .from("Ann Example <ann@example.com>".parse::<Mailbox>().unwrap())
        .to("bob@example.org".parse().unwrap())
        .cc("carol@example.net".parse().unwrap())
        .bcc(bcc.parse().unwrap())
        .subject(subject)
        .multipart(mixed)
        .unwrap()
}

/// A tiny PNG (1x1).
pub const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\0\0\0\0IEND\xaeB`\x82";
/// The start of a PDF.
pub const PDF: &[u8] = b"%PDF-1.4\n% fake report\n";

/// GET `path` as JSON; panics unless 200.
pub async fn json(server: &ServerProcess, path: &str) -> Value {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A request with a JSON body (as Mailpit clients send them): status and body text.
pub async fn send_json(
    server: &ServerProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = reqwest::Client::new().request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The IDs of a message list, in order.
pub fn ids(list: &Value) -> Vec<String> {
    list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_str().unwrap().to_string())
        .collect()
}

/// The subjects of a message list, in order.
pub fn subjects(list: &Value) -> Vec<String> {
    list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Subject"].as_str().unwrap().to_string())
        .collect()
}

/// Sends `wire` (dot-stuffed, with its terminator) as one message from app@example.com to
/// u@example.org over a raw SMTP connection; returns the reply to the data.
pub async fn send_raw(smtp: SocketAddr, wire: &[u8]) -> String {
    let (mut client, _) = super::Client::connect(smtp).await;
    client
        .start_transaction("app@example.com", &["u@example.org"])
        .await;
    client.data(wire).await
}
