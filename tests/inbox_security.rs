//! What keeps the inbox to its owner: the Host check against DNS rebinding, the Origin and JSON
//! checks against cross-site requests (the WebSocket included), and the password when the inbox
//! is reachable from the network.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::inbox::{json, send, text};
use common::process::ServerProcess;
use common::serving::Serving;
use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};

/// A raw HTTP/1.1 request over a socket (reqwest will not send some of these headers as given).
fn raw_request(authority: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(authority).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Headers are enough: stop at the blank line (a WebSocket stays open).
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::inbox::console(dir.path()).await;
    let client = reqwest::Client::new();
    let port = server
        .http_authority()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    for path in ["/", "/api/v1/messages", "/api/events"] {
        let evil = client
            .get(server.url(path))
            .header(HOST, format!("evil.example:{port}"));
        assert_eq!(status(evil).await, 403, "{path}");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let ok = client
            .get(server.url("/api/v1/messages"))
            .header(HOST, host);
        assert_eq!(status(ok).await, 200);
    }
    // The operator's endpoints are for probes, which send whatever Host they like.
    let probe = client
        .get(server.url("/healthz"))
        .header(HOST, "kubelet.internal");
    assert_eq!(status(probe).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_cannot_change_anything() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::inbox::console(dir.path()).await;
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "keep me", "x"),
    )
    .await;
    let client = reqwest::Client::new();
    let messages = server.url("/api/v1/messages");
    let own_origin = server.http().unwrap().trim_end_matches('/').to_string();

    // A script on another site (fetch sends its Origin).
    let evil = client
        .delete(&messages)
        .header(ORIGIN, "http://evil.example")
        .json(&serde_json::json!({}));
    assert_eq!(status(evil).await, 403);
    let null = client.delete(&messages).header(ORIGIN, "null");
    assert_eq!(status(null).await, 403);
    // A form post: no JSON body, whatever its Origin says.
    let form = client
        .put(&messages)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("Read=true");
    assert_eq!(status(form).await, 415);
    let plain = client
        .post(server.url("/api/v1/message/latest/release"))
        .header(CONTENT_TYPE, "text/plain")
        .body("{\"To\": [\"x@example.org\"]}");
    assert_eq!(status(plain).await, 415);
    // State never changes on GET.
    let get = client.get(server.url("/api/v1/message/latest/release"));
    assert_eq!(status(get).await, 405);
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 1);
    // Opening a message marks it read (Mailpit's API does), but not for an `<img src>` on
    // another site: Chromium sends `Sec-Fetch-Site` and no `Origin` for it.
    for site in ["cross-site", "same-site"] {
        let img = client
            .get(server.url("/api/v1/message/latest"))
            .header("sec-fetch-site", site)
            .header("sec-fetch-mode", "no-cors")
            .header("sec-fetch-dest", "image");
        let response = img.send().await.unwrap();
        assert_eq!(response.status(), 403, "{site}");
        assert!(!response.text().await.unwrap().contains("keep me"));
        assert_eq!(
            json(&server, "/api/v1/messages").await["unread"],
            1,
            "{site}"
        );
    }
    // The inbox's own page, and clients that are not browsers, may.
    let own = client
        .get(server.url("/api/v1/message/latest"))
        .header("sec-fetch-site", "same-origin");
    assert_eq!(status(own).await, 200);
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 0);
    let unread = client
        .put(&messages)
        .json(&serde_json::json!({"Read": false}));
    assert_eq!(status(unread).await, 200);
    assert_eq!(
        status(client.get(server.url("/api/v1/message/latest"))).await,
        200
    );
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 0);

    // The inbox's own page may.
    let own = client
        .put(&messages)
        .header(ORIGIN, &own_origin)
        .json(&serde_json::json!({"Read": true}));
    assert_eq!(status(own).await, 200);
    assert_eq!(json(&server, "/api/v1/messages").await["unread"], 0);
}

fn upgrade(authority: &str, origin: &str) -> String {
    raw_request(
        authority,
        &format!(
            "GET /api/events HTTP/1.1\r\nHost: {authority}\r\nOrigin: {origin}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
}

/// Reads one unmasked text frame from a server.
fn read_frame(stream: &mut TcpStream) -> String {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81, "a final text frame");
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            stream.read_exact(&mut n).unwrap();
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            stream.read_exact(&mut n).unwrap();
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_for_the_inbox_page_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::inbox::console(dir.path()).await;
    let authority = server.http_authority();
    let refused = upgrade(&authority, "http://evil.example");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    let mut stream = TcpStream::connect(&authority).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let request = format!(
        "GET /api/events HTTP/1.1\r\nHost: {authority}\r\nOrigin: http://{authority}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");

    send(
        server.smtp,
        text("a@example.com", "b@example.org", "live", "x"),
    )
    .await;
    let event: serde_json::Value = serde_json::from_str(&read_frame(&mut stream)).unwrap();
    assert_eq!(event["Type"], "new");
    assert_eq!(event["Data"]["Subject"], "live");
    let stats: serde_json::Value = serde_json::from_str(&read_frame(&mut stream)).unwrap();
    assert_eq!(
        (stats["Type"].as_str(), stats["Data"]["Total"].as_u64()),
        (Some("stats"), Some(1))
    );
    let id = event["Data"]["ID"].as_str().unwrap();
    let delete = reqwest::Client::new()
        .delete(server.url("/api/v1/messages"))
        .json(&serde_json::json!({"IDs": [id]}));
    assert_eq!(status(delete).await, 200);
    let event: serde_json::Value = serde_json::from_str(&read_frame(&mut stream)).unwrap();
    assert_eq!(event["Type"], "truncate", "the last message went: {event}");
    // A page still listening does not keep the server from stopping: the stream is closed.
    server.stop().await;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.ends_with(&[0x88, 0]),
        "the last frame closes: {rest:?}"
    );
}

fn remote_config(dir: &std::path::Path, users: bool) {
    guarded_config(dir, "0.0.0.0:0", users, "");
}

/// A config with the inbox on `listen`, `[inbox]` settings `inbox`, and with `users` one user
/// `dev` whose password is `inbox secret`.
fn guarded_config(dir: &std::path::Path, listen: &str, users: bool, inbox: &str) {
    let mut extra = format!("[http]\nlisten = \"{listen}\"\n[inbox]\n{inbox}\n");
    if users {
        let hash = smtp2gmail::smtp::auth::hash_password("inbox secret").unwrap();
        extra = format!("[[smtp.users]]\nname = \"dev\"\npassword_hash = \"{hash}\"\n{extra}");
    }
    let config = format!("[smtp]\nlisten = [\"127.0.0.1:0\"]\nshutdown_grace = \"2s\"\n{extra}");
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

#[test]
fn a_remote_inbox_without_users_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    remote_config(dir.path(), false);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .args(["serve", "--config", "config.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("http.listen") && stderr.contains("[[smtp.users]]"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_inbox_asks_for_a_password() {
    let dir = tempfile::tempdir().unwrap();
    remote_config(dir.path(), true);
    let server = ServerProcess::in_dir(dir.path()).await;
    assert!(
        server
            .startup
            .contains("asks for an [[smtp.users]] password"),
        "{}",
        server.startup
    );
    let base = server.http().unwrap().replace("0.0.0.0", "127.0.0.1");
    let url = |path: &str| format!("{}{path}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for path in ["/", "/api/v1/messages", "/api/v1/message/latest/release"] {
        let response = client.get(url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
    }
    let release = client
        .post(url("/api/v1/message/latest/release"))
        .json(&serde_json::json!({"To": ["x@example.org"]}));
    assert_eq!(status(release).await, 401);
    let wrong = client
        .get(url("/api/v1/messages"))
        .basic_auth("dev", Some("guess"));
    assert_eq!(status(wrong).await, 401);
    for _ in 0..2 {
        let right = client
            .get(url("/api/v1/messages"))
            .basic_auth("dev", Some("inbox secret"));
        assert_eq!(status(right).await, 200);
    }
    assert_eq!(
        status(client.get(url("/healthz"))).await,
        200,
        "probes need no password"
    );
}

/// Every local user, and a reverse proxy on the machine, reach a loopback inbox: with
/// `inbox.auth_required` it asks them for a password too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_inbox_asks_for_a_password_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    guarded_config(dir.path(), "127.0.0.1:0", false, "auth_required = true");
    // `check` loads the config as `serve` does, and ends whatever it finds.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .args(["check", "--config", "config.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "no users: no start");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("inbox.auth_required"), "{stderr}");

    guarded_config(dir.path(), "127.0.0.1:0", true, "auth_required = true");
    let server = ServerProcess::in_dir(dir.path()).await;
    assert!(
        server
            .startup
            .contains("asks for an [[smtp.users]] password")
    );
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "private", "x"),
    )
    .await;
    let client = reqwest::Client::new();
    // As a reverse proxy on the machine forwards it.
    let proxied = client
        .post(server.url("/api/v1/message/latest/release"))
        .header(HOST, "127.0.0.1")
        .json(&serde_json::json!({"To": ["x@example.org"]}));
    assert_eq!(status(proxied).await, 401);
    for path in ["/", "/api/v1/messages", "/api/v1/message/latest"] {
        assert_eq!(status(client.get(server.url(path))).await, 401, "{path}");
    }
    let wrong = client
        .get(server.url("/api/v1/messages"))
        .basic_auth("dev", Some("guess"));
    assert_eq!(status(wrong).await, 401);
    let right = client
        .get(server.url("/api/v1/messages"))
        .basic_auth("dev", Some("inbox secret"));
    let list: serde_json::Value = right.send().await.unwrap().json().await.unwrap();
    assert_eq!(list["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_html_and_parts_are_served_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::inbox::console(dir.path()).await;
    let message = "Subject: hostile\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<a href=https://x.example target=_self rel=opener>x</a>\
<script>alert(1)</script><img src=\"cid:pic\">\r\n\
--b\r\nContent-Type: image/png\r\nContent-ID: <pic>\r\n\r\npng\r\n\
--b\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=page.html\r\n\r\n\
<script>alert(2)</script>\r\n--b--\r\n.\r\n";
    common::assert_code(
        &common::inbox::send_raw(server.smtp, message.as_bytes()).await,
        250,
    );

    let response = reqwest::get(server.url("/view/latest.html?embed=1"))
        .await
        .unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        policy.starts_with("sandbox allow-popups allow-popups-to-escape-sandbox;"),
        "{policy}"
    );
    assert!(!policy.contains("allow-scripts") && !policy.contains("allow-same-origin"));
    assert!(
        policy.contains("default-src 'none'") && !policy.contains("img-src *"),
        "{policy}"
    );
    let html = response.text().await.unwrap();
    assert!(
        html.contains("<a target=\"_blank\" rel=\"noopener noreferrer\" href=https://x.example")
    );
    assert!(
        html.contains("<img src=\"data:image/png;base64,cG5n\">"),
        "cid: is the part as a data: URL: {html}"
    );
    let remote = reqwest::get(server.url("/view/latest.html?images=1"))
        .await
        .unwrap();
    let policy = remote.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        policy.contains("img-src") && policy.contains(" * data:"),
        "{policy}"
    );

    let page = reqwest::get(server.url("/")).await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let script = reqwest::get(server.url("/assets/app.js")).await.unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(script.text().await.unwrap().contains("/api/events"));

    // An HTML attachment is downloaded, never shown, and could not run if it were.
    let message = json(&server, "/api/v1/message/latest").await;
    let part = message["Attachments"][0]["PartID"]
        .as_str()
        .unwrap()
        .to_string();
    let response = reqwest::get(server.url(&format!("/api/v1/message/latest/part/{part}")))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"page.html\""),
        "{disposition}"
    );
    assert_eq!(response.headers()["content-security-policy"], "sandbox");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
}
