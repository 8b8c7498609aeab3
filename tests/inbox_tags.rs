//! Tags as Mailpit has them, against the real binary: `X-Tags` at capture (and plus addresses
//! when configured), `PUT /api/v1/tags`, rename, delete, `tag:` in search, tags in lists and
//! messages; in file mode they survive a restart.

mod common;

use std::path::Path;

use common::inbox::{ids, json, send, send_json, subjects};
use common::process::ServerProcess;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{Value, json};

/// A message with `X-Tags: tags` (none when empty).
fn tagged(to: &str, subject: &str, tags: &str) -> lettre::Message {
    let mut builder = lettre::Message::builder()
        .from("app@example.com".parse().unwrap())
        .to(to.parse().unwrap())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    if !tags.is_empty() {
        let name = HeaderName::new_from_ascii("X-Tags".to_string()).unwrap();
        builder = builder.raw_header(HeaderValue::new(name, tags.to_string()));
    }
    builder.body("hi".to_string()).unwrap()
}

async fn put(server: &ServerProcess, path: &str, body: Value) -> (u16, String) {
    send_json(server, Method::PUT, path, Some(body)).await
}

fn tags_of(list: &Value) -> Vec<Value> {
    let messages = list["messages"].as_array().unwrap();
    messages.iter().map(|m| m["Tags"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_from_headers_set_renamed_deleted_and_searched() {
    let dir = tempfile::tempdir().unwrap();
    common::inbox::write_config(dir.path(), "[inbox]\ntags_plus_addresses = true\n");
    let server = ServerProcess::in_dir(dir.path()).await;
    send(
        server.smtp,
        tagged("a@example.org", "one", " signup, Welcome!,SIGNUP"),
    )
    .await;
    send(server.smtp, tagged("app+billing@example.org", "two", "")).await;
    send(server.smtp, tagged("c@example.org", "three", "")).await;

    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(subjects(&list), ["three", "two", "one"]);
    assert_eq!(
        tags_of(&list),
        [json!([]), json!(["billing"]), json!(["Welcome", "signup"])]
    );
    assert_eq!(list["tags"], json!(["Welcome", "billing", "signup"]));
    assert_eq!(
        json(&server, "/api/v1/tags").await,
        json!(["Welcome", "billing", "signup"])
    );
    let id = ids(&list);
    let one = json(&server, &format!("/api/v1/message/{}", id[2])).await;
    assert_eq!(one["Tags"], json!(["Welcome", "signup"]));

    // Set: exactly these tags on these messages ([] removes them).
    let body = json!({"Tags": ["urgent", "Sign up"], "IDs": [id[0], id[1]]});
    assert_eq!(put(&server, "/api/v1/tags", body).await, (200, "ok".into()));
    let body = json!({"Tags": [], "IDs": [id[2]]});
    assert_eq!(put(&server, "/api/v1/tags", body).await, (200, "ok".into()));
    let list = json(&server, "/api/v1/messages").await;
    let both = json!(["Sign up", "urgent"]);
    assert_eq!(tags_of(&list), [both.clone(), both, json!([])]);

    // Search.
    let found = json(&server, "/api/v1/search?query=tag:urgent").await;
    assert_eq!(subjects(&found), ["three", "two"]);
    let found = json(
        &server,
        "/api/v1/search?query=tag:%22sign%20up%22%20subject:two",
    )
    .await;
    assert_eq!(subjects(&found), ["two"]);
    let found = json(&server, "/api/v1/search?query=-is:tagged").await;
    assert_eq!(subjects(&found), ["one"]);

    // Rename and delete.
    let (status, body) = put(&server, "/api/v1/tags/urgent", json!({"Name": "later"})).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = put(&server, "/api/v1/tags/later", json!({"Name": "Sign up"})).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "tag already exists: Sign up")
    );
    let (status, body) = put(&server, "/api/v1/tags/nothing", json!({"Name": "x"})).await;
    assert_eq!((status, body.as_str()), (400, "tag not found: nothing"));
    let (status, _) = send_json(&server, Method::DELETE, "/api/v1/tags/Sign%20up", None).await;
    assert_eq!(status, 200);
    assert_eq!(json(&server, "/api/v1/tags").await, json!(["later"]));
    let info = json(&server, "/api/v1/info").await;
    assert_eq!(info["Tags"], json!({"later": 2}));
    let (status, body) = send_json(&server, Method::DELETE, "/api/v1/tags/gone", None).await;
    assert_eq!((status, body.as_str()), (400, "tag not found: gone"));
}

async fn file_mode(dir: &Path) -> ServerProcess {
    common::inbox::file_mode_with(dir, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_keeps_tags_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = file_mode(dir.path()).await;
    send(
        server.smtp,
        tagged("a@example.org", "header", "from-header"),
    )
    .await;
    send(server.smtp, tagged("b@example.org", "set", "")).await;
    send(server.smtp, tagged("c@example.org", "deleted", "")).await;
    let id = ids(&json(&server, "/api/v1/messages").await);
    let body = json!({"Tags": ["kept"], "IDs": [id[1], id[0]]});
    assert_eq!(put(&server, "/api/v1/tags", body).await.0, 200);
    let (status, _) = put(
        &server,
        "/api/v1/tags/from-header",
        json!({"Name": "renamed"}),
    )
    .await;
    assert_eq!(status, 200);
    let body = json!({"IDs": [id[0]]});
    assert_eq!(
        send_json(&server, Method::DELETE, "/api/v1/messages", Some(body))
            .await
            .0,
        200
    );
    server.stop().await;

    let server = file_mode(dir.path()).await;
    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(subjects(&list), ["set", "header"]);
    assert_eq!(tags_of(&list), [json!(["kept"]), json!(["renamed"])]);
    let log = std::fs::read_to_string(dir.path().join("mail/.smtp2gmail-inbox-tags")).unwrap();
    assert!(
        !log.contains(&id[0]),
        "the deleted message's tags are gone: {log}"
    );
}
