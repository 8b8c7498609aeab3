//! Release through Gmail (the fake Google): the captured message goes to exactly the recipients
//! given, never to its original ones, and the answer carries Gmail's id or Google's error.

mod common;

use common::fake_gmail::SendFault;
use common::fake_google::FakeGoogle;
use common::inbox::{json, send, send_json, with_gmail};
use common::process::ServerProcess;
use common::serving::Serving;
use reqwest::Method;
use serde_json::json;

async fn release(server: &ServerProcess, id: &str, to: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url(&format!("/api/v1/message/{id}/release")))
        .json(&json!({ "To": to }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_goes_to_exactly_the_given_recipients() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = with_gmail(dir.path(), &google, "").await;
    let html = "<p>Welcome</p>";
    send(
        server.smtp,
        common::inbox::rich("Release me", html, "hidden@example.com"),
    )
    .await;
    let webui = json(&server, "/api/v1/webui").await;
    assert_eq!(webui["MessageRelay"]["Enabled"], true);
    assert_eq!(webui["ReleaseHelp"], "");

    let response = release(
        &server,
        "latest",
        json!(["QA <qa@example.org>", "dev@example.org"]),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gmail-message-id"], "fake-gmail-1");
    assert_eq!(response.text().await.unwrap(), "ok");
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1);
    let mut recipients = uploads[0].recipients.clone();
    recipients.sort();
    assert_eq!(recipients, ["dev@example.org", "qa@example.org"]);
    let body = String::from_utf8_lossy(&uploads[0].body);
    for original in ["bob@example.org", "carol@example.net", "hidden@example.com"] {
        assert!(
            !body.contains(original),
            "{original} must not be addressed: {body}"
        );
    }
    assert!(body.contains("Subject: Release me") && body.contains("report.pdf"));
    assert_eq!(uploads[0].from.as_deref(), Some("ann@example.com"));

    // Twice is fine: a new Message-ID each time.
    let again = release(&server, "latest", json!(["qa@example.org"])).await;
    assert_eq!(again.status(), 200);
    let uploads = google.uploads();
    assert_eq!(uploads[1].recipients, ["qa@example.org"]);
    let message_id = |raw: &[u8]| {
        let text = String::from_utf8_lossy(raw).into_owned();
        text.lines()
            .find(|l| l.starts_with("Message-ID:"))
            .unwrap()
            .to_string()
    };
    assert_ne!(message_id(&uploads[0].body), message_id(&uploads[1].body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_errors_say_what_is_wrong() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = with_gmail(dir.path(), &google, "").await;
    let message = common::inbox::text("app@example.com", "u@example.org", "s", "b");
    send(server.smtp, message).await;
    let bad = release(&server, "latest", json!(["not an address"])).await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("Invalid email address"));
    assert_eq!(release(&server, "latest", json!([])).await.status(), 400);
    assert_eq!(
        release(&server, "nope", json!(["a@example.org"]))
            .await
            .status(),
        404
    );
    let (status, _) = send_json(
        &server,
        Method::POST,
        "/api/v1/message/latest/release",
        Some(json!({"to": 1})),
    )
    .await;
    assert_eq!(status, 400);
    // A key that names nothing is refused, not ignored: here a Cc the release would not honour.
    let (status, text) = send_json(
        &server,
        Method::POST,
        "/api/v1/message/latest/release",
        Some(json!({"To": ["qa@example.org"], "Cc": ["boss@example.org"]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("unknown field `cc`"), "{text}");

    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    let refused = release(&server, "latest", json!(["qa@example.org"])).await;
    assert_eq!(refused.status(), 502);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("Gmail did not send it") && text.contains("invalidArgument"),
        "{text}"
    );
    assert!(google.uploads().is_empty());
}

/// A message stored before bare CRs were refused at the end of DATA (or a file put in file mode's
/// folder by hand) is not released: `X-A: 1<CR>Bcc: …` would reach Gmail, which may read a Bcc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_with_a_bare_cr_in_its_header_section_is_not_released() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mail = dir.path().join("mail");
    std::fs::create_dir(&mail).unwrap();
    let id = "00000000001abcdef02";
    let smuggling = "From: app@example.com\r\nTo: u@example.org\r\n\
X-A: 1\rBcc: smuggled@evil.example\r\nSubject: hi\r\n\r\nhello\r\n";
    std::fs::write(mail.join(format!("{id}.eml")), smuggling).unwrap();
    let file_mode = format!(
        "[relay]\nmode = \"file\"\n[file]\ndir = '{}'\n",
        mail.display()
    );
    let server = with_gmail(dir.path(), &google, &file_mode).await;
    let response = release(&server, id, json!(["qa@example.org"])).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("bare CR in the header section"), "{text}");
    assert!(google.uploads().is_empty(), "nothing reaches Gmail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_release_says_how_to_configure_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::inbox::console(dir.path()).await;
    send(
        server.smtp,
        common::inbox::text("a@example.com", "b@example.org", "s", "b"),
    )
    .await;
    let response = release(&server, "latest", json!(["qa@example.org"])).await;
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("[gmail] credentials") && text.contains("smtp2gmail authorize"),
        "{text}"
    );
}
