//! The inbox's memory stays bounded whatever requests arrive at once: many parallel requests of
//! every kind that reads a message (view, HTML, text, headers, raw, part, body search) over
//! several large messages. The server is a process of its own, so its peak RSS (VmHWM) is the
//! inbox's alone.

mod common;

use common::inbox::{console, ids, json, send_raw};
use common::serving::Serving;
use futures_util::StreamExt;

/// Large messages held by the inbox…
const MESSAGES: usize = 5;
/// …each about this big: a short text body and one attachment.
const MESSAGE_BYTES: usize = 29 << 20;
/// Each kind of request is made this many times per message, all at once.
const ROUNDS: usize = 3;
/// The bound on the server's peak RSS: with one large message read at a time, 430–560 MiB
/// (captures included, and freed memory the allocator keeps); without a bound, the requests
/// below took 2.7 GiB.
const PEAK_MIB: u64 = 800;
/// A word only the text bodies contain, so a search must read every message.
const NEEDLE: &str = "quokkaneedle";

/// A message of about [`MESSAGE_BYTES`] on the wire (dot-stuffing needs nothing: base64 lines
/// never start with a dot), with its terminator.
fn large_message(n: usize) -> Vec<u8> {
    let mut wire = format!(
        "From: app@example.com\r\nTo: u@example.org\r\nSubject: large {n}\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nthe {NEEDLE} is in the body\r\n\
--b\r\nContent-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"data{n}.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    while wire.len() < MESSAGE_BYTES {
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b"--b--\r\n.\r\n");
    wire
}

/// The server's peak resident set size in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// GETs `url` and reads the answer as it arrives, keeping only its length; the status.
async fn fetch(client: reqwest::Client, url: String) -> (u16, String, usize) {
    let response = client.get(&url).send().await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.bytes_stream();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        len += chunk.unwrap().len();
    }
    (status, url, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_of_every_kind_stay_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = console(dir.path()).await;
    for n in 0..MESSAGES {
        common::assert_code(&send_raw(server.smtp, &large_message(n)).await, 250);
    }
    let list = json(&server, "/api/v1/messages").await;
    let messages = ids(&list);
    assert_eq!(messages.len(), MESSAGES);
    let message = json(&server, &format!("/api/v1/message/{}", messages[0])).await;
    let part = message["Attachments"][0]["PartID"]
        .as_str()
        .unwrap()
        .to_string();

    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    for id in messages.iter().cycle().take(ROUNDS * MESSAGES) {
        for path in [
            format!("/api/v1/message/{id}"),
            format!("/view/{id}.txt"),
            format!("/api/v1/message/{id}/headers"),
            format!("/api/v1/message/{id}/raw"),
            format!("/api/v1/message/{id}/part/{part}"),
            format!("/api/v1/message/{id}/part/{part}"),
        ] {
            requests.push(fetch(client.clone(), server.url(&path)));
        }
    }
    for _ in 0..ROUNDS * MESSAGES {
        let search = server.url(&format!("/api/v1/search?query={NEEDLE}"));
        requests.push(fetch(client.clone(), search));
    }
    let answers = futures_util::future::join_all(requests).await;
    for (status, url, len) in &answers {
        assert_eq!(*status, 200, "{url}");
        if url.ends_with("/raw") {
            assert!(*len > MESSAGE_BYTES, "{url}: {len} bytes");
        }
    }
    let found = json(&server, &format!("/api/v1/search?query={NEEDLE}")).await;
    assert_eq!(
        found["messages_count"], MESSAGES,
        "the search read every body"
    );

    let peak = peak_rss_kib(server.pid());
    assert!(
        peak < PEAK_MIB * 1024,
        "the server's peak RSS is {} MiB",
        peak / 1024
    );
}
