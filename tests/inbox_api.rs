//! The inbox's Mailpit-compatible API against the real binary in console mode: mail sent with
//! lettre over SMTP, every endpoint read with reqwest over HTTP.

mod common;

use common::inbox::{self, PDF, PNG, ids, json, send, send_json, subjects, text};
use common::process::ServerProcess;
use common::serving::Serving;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_mode_serves_the_inbox_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    inbox::write_config(dir.path(), "");
    let server = ServerProcess::in_dir(dir.path()).await;
    let inbox_url = format!(
        "inbox at {} (the last 1000 messages in memory)",
        server.http().unwrap()
    );
    assert!(server.startup.contains(&inbox_url), "{}", server.startup);
    let (status, page) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>smtp2gmail inbox</title>"), "{page}");
    // Health and metrics stay where they were.
    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(server.get("/metrics").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paging_and_message_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    for n in 1..=3 {
        let subject = format!("plain {n}");
        send(
            server.smtp,
            text("app@example.com", "u@example.org", &subject, "hi"),
        )
        .await;
    }
    let html = "<p>Hello <b>Bob</b></p><img src=\"cid:logo\">";
    send(
        server.smtp,
        inbox::rich("Welcome", html, "hidden@example.com"),
    )
    .await;

    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(list["total"], 4);
    assert_eq!(list["unread"], 4);
    assert_eq!(list["messages_count"], 4);
    assert_eq!(list["count"], 4);
    assert_eq!(list["start"], 0);
    assert_eq!(list["tags"], json!([]));
    assert_eq!(
        subjects(&list),
        ["Welcome", "plain 3", "plain 2", "plain 1"]
    );
    let first = &list["messages"][0];
    assert_eq!(
        first["From"],
        json!({"Name": "Ann Example", "Address": "ann@example.com"})
    );
    assert_eq!(
        first["To"],
        json!([{"Name": "", "Address": "bob@example.org"}])
    );
    assert_eq!(first["Cc"][0]["Address"], "carol@example.net");
    assert_eq!(
        first["Bcc"],
        json!([{"Name": "", "Address": "hidden@example.com"}])
    );
    assert_eq!(first["Attachments"], 2);
    assert_eq!(first["Read"], false);
    assert_eq!(first["Snippet"], "Hello in text");
    assert!(first["Size"].as_u64().unwrap() > 100);
    assert!(first["Created"].as_str().unwrap().ends_with('Z'));

    let page = json(&server, "/api/v1/messages?start=1&limit=2").await;
    assert_eq!(subjects(&page), ["plain 3", "plain 2"]);
    assert_eq!(
        (page["start"].clone(), page["count"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(page["total"], 4);

    // The message itself, which marks it read.
    let id = ids(&list)[0].clone();
    let message = json(&server, &format!("/api/v1/message/{id}")).await;
    assert_eq!(message["ID"], id.as_str());
    assert_eq!(message["Subject"], "Welcome");
    assert!(message["HTML"].as_str().unwrap().contains("<b>Bob</b>"));
    assert_eq!(message["Text"].as_str().unwrap().trim(), "Hello in text");
    assert_eq!(message["ReturnPath"], "ann@example.com");
    assert_eq!(message["Bcc"][0]["Address"], "hidden@example.com");
    let attachment = &message["Attachments"][0];
    assert_eq!(attachment["FileName"], "report.pdf");
    assert_eq!(attachment["ContentType"], "application/pdf");
    assert_eq!(attachment["Size"], PDF.len());
    let inline = &message["Inline"][0];
    assert_eq!(inline["ContentID"], "logo");
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 3);
    assert_eq!(
        json(&server, "/api/v1/messages").await["messages"][0]["Read"],
        true
    );

    // Parts, decoded, with their types.
    let part = attachment["PartID"].as_str().unwrap();
    let response = reqwest::get(server.url(&format!("/api/v1/message/{id}/part/{part}")))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("filename=\"report.pdf\"")
    );
    assert_eq!(response.bytes().await.unwrap(), PDF);
    let part = inline["PartID"].as_str().unwrap();
    let bytes = reqwest::get(server.url(&format!("/api/v1/message/latest/part/{part}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes, PNG);
    assert_eq!(
        server
            .get(&format!("/api/v1/message/{id}/part/999"))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_headers_latest_views_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    let raw = "From: app@example.com\r\nTo: u@example.org\r\nSubject: exact\r\nX-Test: a\r\n\
               X-TEST: b\r\nMessage-ID: <m1@example.com>\r\n\r\nline one\r\n..dot\r\n";
    let wire = format!("{raw}.\r\n");
    common::assert_code(&inbox::send_raw(server.smtp, wire.as_bytes()).await, 250);
    let stored = raw.replace("\r\n..dot", "\r\n.dot");

    let (status, body) = server.get("/api/v1/message/latest/raw").await;
    assert_eq!((status, body.as_str()), (200, stored.as_str()));
    let response = reqwest::get(server.url("/api/v1/message/latest/raw?dl=1"))
        .await
        .unwrap();
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment; filename=\"") && disposition.ends_with(".eml\""));

    let headers = json(&server, "/api/v1/message/latest/headers").await;
    assert_eq!(headers["X-Test"], json!(["a", "b"]));
    assert_eq!(headers["Message-Id"], json!(["<m1@example.com>"]));
    assert_eq!(headers["Subject"], json!(["exact"]));

    let message = json(&server, "/api/v1/message/latest").await;
    assert_eq!(message["MessageID"], "m1@example.com");
    assert_eq!(message["HTML"], "");
    let (status, text) = server.get("/view/latest.txt").await;
    assert_eq!((status, text.trim_end()), (200, "line one\r\n.dot"));
    assert_eq!(server.get("/view/latest.html").await.0, 404, "no HTML part");

    let info = json(&server, "/api/v1/info").await;
    assert_eq!(info["Messages"], 1);
    assert_eq!(info["Unread"], 0);
    assert_eq!(info["Database"], "memory");
    assert_eq!(info["RuntimeStats"]["SMTPAccepted"], 1);
    assert!(info["Version"].is_string() && info["RuntimeStats"]["Memory"].as_u64().unwrap() > 0);
    let webui = json(&server, "/api/v1/webui").await;
    assert_eq!(webui["MessageRelay"]["Enabled"], false);
    assert!(
        webui["ReleaseHelp"]
            .as_str()
            .unwrap()
            .contains("[gmail] credentials")
    );
    assert_eq!(json(&server, "/api/v1/tags").await, json!([]));

    for path in [
        "/api/v1/message/nope",
        "/api/v1/message/nope/raw",
        "/view/nope.html",
    ] {
        assert_eq!(server.get(path).await.0, 404, "{path}");
    }
}

async fn search(server: &ServerProcess, query: &str) -> Value {
    let url = format!("/api/v1/search?query={}", url_escape(query));
    json(server, &url).await
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_read_state_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    let mail = [
        (
            "alice@example.com",
            "bob@example.org",
            "Password reset",
            "your code is 991-XYZ",
        ),
        (
            "carol@example.com",
            "dave@example.org",
            "Welcome aboard",
            "hello dave",
        ),
        (
            "alice@example.com",
            "erin@example.org",
            "Weekly report",
            "numbers inside",
        ),
    ];
    for (from, to, subject, body) in mail {
        send(server.smtp, text(from, to, subject, body)).await;
    }
    let cases: &[(&str, &[&str])] = &[
        ("subject:reset", &["Password reset"]),
        ("from:alice", &["Weekly report", "Password reset"]),
        ("to:dave", &["Welcome aboard"]),
        ("991-xyz", &["Password reset"]),
        ("\"hello dave\"", &["Welcome aboard"]),
        ("-from:alice", &["Welcome aboard"]),
        ("from:alice report", &["Weekly report"]),
        ("nothing-matches-this", &[]),
    ];
    for (query, expected) in cases {
        let found = search(&server, query).await;
        assert_eq!(&subjects(&found), expected, "{query}");
        assert_eq!(found["messages_count"], expected.len(), "{query}");
        assert_eq!(found["total"], 3);
    }
    let (status, body) = server.get("/api/v1/search?query=").await;
    assert_eq!(status, 400, "{body}");

    // Read state: by IDs, by search, all.
    let all = ids(&json(&server, "/api/v1/messages").await);
    let put = |body: Value| send_json(&server, Method::PUT, "/api/v1/messages", Some(body));
    assert_eq!(
        put(json!({"Read": true, "IDs": [all[0]]})).await,
        (200, "ok".into())
    );
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 2);
    assert_eq!(
        subjects(&search(&server, "is:read").await),
        ["Weekly report"]
    );
    assert_eq!(put(json!({"Read": true, "Search": "to:dave"})).await.0, 200);
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 1);
    assert_eq!(
        put(json!({"Read": true, "IDs": ["x"], "Search": "y"}))
            .await
            .0,
        400
    );
    assert_eq!(put(json!({})).await.0, 200, "no IDs: all, unread");
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 3);
    assert_eq!(put(json!({"Read": true})).await.0, 200);
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 0);

    // Delete by IDs, by search, all.
    let delete = |body: Option<Value>| send_json(&server, Method::DELETE, "/api/v1/messages", body);
    assert_eq!(
        delete(Some(json!({"IDs": [all[0]]}))).await,
        (200, "ok".into())
    );
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 2);
    assert_eq!(
        server.get(&format!("/api/v1/message/{}", all[0])).await.0,
        404
    );
    let path = format!("/api/v1/search?query={}", url_escape("subject:welcome"));
    assert_eq!(send_json(&server, Method::DELETE, &path, None).await.0, 200);
    assert_eq!(
        subjects(&json(&server, "/api/v1/messages").await),
        ["Password reset"]
    );
    assert_eq!(delete(None).await.0, 200, "no body: everything");
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 0);
    assert_eq!(server.get("/api/v1/message/latest").await.0, 404);
}

/// Mailpit's Go decoder matches keys whatever their case, so `ids` is `IDs`; a key that names
/// nothing must be refused, never read as "no IDs", which means every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_key_is_refused_not_taken_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    for subject in ["one", "two", "three"] {
        send(
            server.smtp,
            text("a@example.com", "b@example.org", subject, "x"),
        )
        .await;
    }
    let all = ids(&json(&server, "/api/v1/messages").await);
    let request = |method: Method, body: &str| {
        let request = reqwest::Client::new()
            .request(method, server.url("/api/v1/messages"))
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let list = || json(&server, "/api/v1/messages");

    for body in [
        format!(r#"{{"idz": ["{}"]}}"#, all[0]),
        format!(r#"{{"IDs": ["{}"], "Search": "x", "Serach": "y"}}"#, all[0]),
        "{".to_string(),
        "[]".to_string(),
    ] {
        let (status, text) = request(Method::DELETE, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let (status, text) = request(Method::PUT, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let (_, text) = request(Method::DELETE, r#"{"idz": []}"#).await;
    assert!(text.contains("unknown field `idz`"), "{text}");
    assert_eq!(list().await["total"], 3);
    assert_eq!(list().await["unread"], 3);

    // Lowercase keys are Mailpit's keys: these messages, not all of them.
    let body = format!(r#"{{"read": true, "ids": ["{}"]}}"#, all[0]);
    assert_eq!(request(Method::PUT, &body).await, (200, "ok".into()));
    assert_eq!(list().await["unread"], 2);
    let body = format!(r#"{{"ids": ["{}"]}}"#, all[1]);
    assert_eq!(request(Method::DELETE, &body).await, (200, "ok".into()));
    assert_eq!(list().await["total"], 2);
    // As in Mailpit: `{}` and an empty list mean every message.
    assert_eq!(
        request(Method::PUT, r#"{"Read": true, "IDs": []}"#).await.0,
        200
    );
    assert_eq!(list().await["unread"], 0);
    assert_eq!(request(Method::DELETE, "{}").await.0, 200);
    assert_eq!(list().await["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_mode_keeps_the_last_max_messages() {
    let dir = tempfile::tempdir().unwrap();
    inbox::write_config(dir.path(), "[inbox]\nmax_messages = 2\n");
    let server = ServerProcess::in_dir(dir.path()).await;
    for n in 1..=3 {
        send(
            server.smtp,
            text("a@example.com", "b@example.org", &format!("m{n}"), "x"),
        )
        .await;
    }
    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(subjects(&list), ["m3", "m2"]);
    assert_eq!(list["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_large_messages_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let server = inbox::console(dir.path()).await;
    let broken =
        b"Subject: =?x-bogus?q?=FF?=\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=klingon\r\nContent-Transfer-Encoding: base64\r\n\r\n\
!!!not base64\xff\xfe\r\n--b\r\nContent-Type: multipart/alternative\r\n\r\n.\r\n";
    common::assert_code(&inbox::send_raw(server.smtp, broken).await, 250);
    // 30 MiB of body: spilled to disk while received, parsed off the async threads.
    let mut big = b"Subject: big\r\nContent-Type: text/html\r\n\r\n".to_vec();
    let line = b"<p>0123456789012345678901234567890123456789012345678901234567890123456789</p>\r\n";
    while big.len() < 30 << 20 {
        big.extend_from_slice(line);
    }
    big.extend_from_slice(b".\r\n");
    common::assert_code(&inbox::send_raw(server.smtp, &big).await, 250);

    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(subjects(&list)[0], "big");
    let big_id = ids(&list)[0].clone();
    let broken_id = ids(&list)[1].clone();
    let message = json(&server, &format!("/api/v1/message/{broken_id}")).await;
    assert!(message["Text"].is_string());
    let message = json(&server, &format!("/api/v1/message/{big_id}")).await;
    assert!(message["HTML"].as_str().unwrap().len() > 29 << 20);
    assert!(message["Size"].as_u64().unwrap() > 30 << 20);
    assert_eq!(server.get(&format!("/view/{big_id}.html")).await.0, 200);
}
