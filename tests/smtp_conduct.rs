//! What ends a session: an HTTP request (a web page making a browser post an SMTP dialogue to this
//! port), a line that looks like a header field, too many bad commands, too many idle ones.

mod common;

use common::{Client, TestServer, WAIT, assert_code};
use smtp2gmail::smtp::session::{MAX_ERRORS, MAX_JUNK_COMMANDS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The SMTP dialogue a page puts in the body of its request.
const SMUGGLED: &str = "EHLO evil.example\r\nMAIL FROM:<attacker@evil.example>\r\n\
RCPT TO:<victim@example.com>\r\nDATA\r\nFrom: attacker@evil.example\r\nTo: victim@example.com\r\n\
Subject: sent by a web page\r\n\r\nhello\r\n.\r\nQUIT\r\n";

/// What Chromium sends for `fetch("http://127.0.0.1:PORT/", {method: "POST", mode: "no-cors",
/// body: SMUGGLED})` from a page on another site: request line, fields, empty line, body.
fn browser_post(port: u16) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n\
Content-Length: {}\r\nsec-ch-ua-platform: \"Linux\"\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
sec-ch-ua: \"Chromium\";v=\"131\"\r\nContent-Type: text/plain;charset=UTF-8\r\nsec-ch-ua-mobile: ?0\r\n\
Accept: */*\r\nOrigin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Dest: empty\r\nReferer: http://evil.example/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    )
}

/// Connects, writes `request` in one write as a browser does (without waiting for the greeting),
/// and reads until the server closes. A reset counts as closed: a server that closes with the
/// request still unread makes the kernel answer with RST.
async fn one_request(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server closes the connection");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_web_page_cannot_send_mail_through_the_smtp_port() {
    let server = TestServer::start().await;
    let answer = one_request(&server, browser_post(server.addr.port()).as_bytes()).await;
    assert!(
        !answer.contains("354") && !answer.contains("250"),
        "the smuggled dialogue was obeyed: {answer}"
    );
    assert!(
        server.recorder.delivered().is_empty(),
        "a message was accepted from an HTTP request"
    );
    // Other request methods, and a request that waits for the greeting first.
    for method in ["GET", "PUT", "CONNECT", "OPTIONS"] {
        let request = format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n{SMUGGLED}");
        let answer = one_request(&server, request.as_bytes()).await;
        assert!(!answer.contains("250"), "{method}: {answer}");
    }
    let (mut client, _) = Client::connect(server.addr).await;
    client.send(browser_post(server.addr.port())).await;
    assert_eq!(
        client.reply().await,
        "421 4.7.0 this is an SMTP server; closing connection\r\n"
    );
    assert!(client.is_closed().await);
    assert!(server.recorder.delivered().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_header_field_sent_as_a_command_ends_the_session() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("app@example.com", &["b@example.com"])
        .await;
    // A client that forgot DATA (or a page whose request lost its request line): message text
    // sent as commands.
    assert_eq!(
        client.cmd("Subject: hello").await,
        "421 4.7.0 this is an SMTP server; closing connection\r\n"
    );
    assert!(client.is_closed().await);
    assert!(server.recorder.delivered().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn too_many_bad_commands_end_the_session() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for _ in 1..MAX_ERRORS {
        assert!(client.cmd("FROB").await.starts_with("500 5.5.1 "));
    }
    // Commands that are fine do not count, nor do refusals for order.
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    assert_code(&client.cmd("RCPT TO:<b@example.com>").await, 503);
    assert!(client.cmd("FROB").await.starts_with("500 5.5.1 "));
    assert_eq!(
        client.reply().await,
        "421 4.7.0 too many errors, closing connection\r\n"
    );
    assert!(client.is_closed().await);
    server.stop().await;
}

async fn noops(client: &mut Client, n: u32) {
    for _ in 0..n {
        assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    }
}

#[tokio::test]
async fn idle_commands_are_bounded_between_messages() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    noops(&mut client, MAX_JUNK_COMMANDS + MAX_ERRORS - 1).await;
    // An accepted message starts the count again.
    client
        .start_transaction("app@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b"Subject: s\r\n\r\nhi\r\n.\r\n").await, 250);
    noops(&mut client, MAX_JUNK_COMMANDS + MAX_ERRORS - 1).await;
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 OK\r\n");
    assert_eq!(
        client.reply().await,
        "421 4.7.0 too many errors, closing connection\r\n"
    );
    assert!(client.is_closed().await);
    server.stop().await;
}
