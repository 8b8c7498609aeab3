//! Mailpit's send API and the webhook on new mail, against the real binary: a message posted as
//! JSON is filed and captured like one received over SMTP; every captured message's summary
//! reaches a real HTTP receiver, signed as the queue's webhooks are.

mod common;

use base64::Engine;
use common::inbox::{self, PNG, json, send, send_json, text};
use common::serving::Serving;
use common::webhooks::{self, SECRET};
use reqwest::Method;
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_is_filed_and_captured_like_smtp_mail() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::file_mode_with(dir.path(), "").await;
    let request = json!({
        "From": {"Email": "app@example.com", "Name": "App"},
        "To": [{"Email": "ann@example.org", "Name": "Ann"}],
        "Cc": [{"Email": "cc@example.org"}],
        "Bcc": ["hidden@example.org"],
        "ReplyTo": [{"Email": "help@example.com"}],
        "Subject": "Sent through the API",
        "Text": "the text part",
        "HTML": "<p>the <b>HTML</b> part <img src=\"cid:logo\"></p>",
        "Attachments": [
            {"Content": b64(b"a,b\n1,2\n"), "Filename": "data.csv", "ContentType": "text/csv"},
            {"Content": format!("data:image/png;base64,{}", b64(PNG)), "Filename": "logo.png",
             "ContentType": "image/png", "ContentID": "logo"}
        ],
        "Headers": {"X-Campaign": "spring"},
        "Tags": ["api", "Spring"]
    });
    let (status, body) = send_json(&server, Method::POST, "/api/v1/send", Some(request)).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let id = answer["ID"].as_str().unwrap().to_string();
    assert_eq!(answer, json!({"ID": id}));

    // Filed as file mode files any message, envelope included.
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("mail/{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(record["mail_from"], "app@example.com");
    assert_eq!(
        record["rcpt_to"],
        json!(["ann@example.org", "cc@example.org", "hidden@example.org"])
    );
    let message = json(&server, &format!("/api/v1/message/{id}")).await;
    assert_eq!(message["Subject"], "Sent through the API");
    assert_eq!(
        message["From"],
        json!({"Name": "App", "Address": "app@example.com"})
    );
    assert_eq!(
        message["To"],
        json!([{"Name": "Ann", "Address": "ann@example.org"}])
    );
    assert_eq!(message["Cc"][0]["Address"], "cc@example.org");
    assert_eq!(message["Bcc"][0]["Address"], "hidden@example.org");
    assert_eq!(message["ReplyTo"][0]["Address"], "help@example.com");
    assert_eq!(message["Tags"], json!(["Spring", "api"]));
    assert_eq!(message["Text"].as_str().unwrap().trim(), "the text part");
    assert!(message["HTML"].as_str().unwrap().contains("<b>HTML</b>"));
    assert_eq!(message["Attachments"][0]["FileName"], "data.csv");
    assert_eq!(message["Inline"][0]["ContentID"], "logo");
    assert_eq!(message["Inline"][0]["Size"], PNG.len());
    let headers = json(&server, &format!("/api/v1/message/{id}/headers")).await;
    assert_eq!(headers["X-Campaign"], json!(["spring"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_are_mailpit_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    let to = json!([{"Email": "a@example.org"}]);
    for (request, error) in [
        (
            json!({"From": {"Email": "nobody"}, "To": to}),
            "invalid From address: nobody",
        ),
        (
            json!({"From": {"Email": "a@example.com"}, "To": to, "Headers": {"Subject": "x"}}),
            "cannot overwrite header: \"Subject\"",
        ),
        (
            json!({"From": {"Email": "a@example.com"}, "To": [{"Email": "x y"}]}),
            "invalid To address: x y",
        ),
    ] {
        let (status, body) = send_json(&server, Method::POST, "/api/v1/send", Some(request)).await;
        assert_eq!(status, 400);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"Error": error})
        );
    }
    // The inbox's protections hold: a form post from another site is refused.
    let refused = reqwest::Client::new()
        .post(server.url("/api/v1/send"))
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_client_error());
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_each_summary_signed() {
    let receiver = webhooks::receiver(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[inbox]\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\n",
        receiver.url
    );
    inbox::write_config(dir.path(), &config);
    let server = common::process::ServerProcess::in_dir(dir.path()).await;
    send(
        server.smtp,
        text(
            "app@example.com",
            "u@example.org",
            "hooked",
            "secret body words",
        ),
    )
    .await;
    send(
        server.smtp,
        text("app@example.com", "v@example.org", "second", "more"),
    )
    .await;

    let first = receiver
        .wait_for_event("hooked", |e| e["Subject"] == "hooked")
        .await;
    receiver
        .wait_for_event("second", |e| e["Subject"] == "second")
        .await;
    let listed = json(&server, "/api/v1/messages").await;
    let item = &listed["messages"][1];
    let mut expected = item.clone();
    // The summary as it was at capture: unread.
    expected["Read"] = json!(false);
    assert_eq!(first, expected);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].headers["webhook-id"].to_str().unwrap(),
        format!("msg_{}", item["ID"].as_str().unwrap())
    );
    assert_eq!(webhooks::python_verifies(&requests), 2);
    let log = server.log().join("\n");
    assert!(!log.contains("secret body words") && !log.contains(&SECRET[6..]));
    assert!(
        !log.contains("secret-token"),
        "the URL's path is not logged"
    );
}
