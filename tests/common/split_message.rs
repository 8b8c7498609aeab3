//! A message an MTA splits into several transactions (Postfix: 50 recipients each), for the tests
//! of holding and merging them (tests/split.rs, tests/queue_behaviour): 120 header recipients, 5
//! envelope-only (Bcc) ones, the three transactions Postfix would make, and the check that Gmail
//! was asked to deliver to each recipient exactly once.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// The header recipients: 80 in To, 40 in Cc.
pub fn header_recipients() -> Vec<String> {
    (0..120).map(|i| format!("r{i:03}@example.org")).collect()
}

/// Envelope-only recipients (Bcc).
pub fn bcc_recipients() -> Vec<String> {
    (0..5).map(|i| format!("hidden{i}@example.net")).collect()
}

/// Every recipient, header and envelope-only.
pub fn everyone() -> Vec<String> {
    [header_recipients(), bcc_recipients()].concat()
}

/// One message naming every header recipient, as an MTA would relay it.
pub fn message() -> Vec<u8> {
    let header = header_recipients();
    format!(
        "From: app@example.com\r\nTo: {}\r\nCc: {}\r\nSubject: split\r\n\
         Message-ID: <split-test-1@example.com>\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\r\n\
         one message, many recipients\r\n",
        header[..80].join(",\r\n "),
        header[80..].join(",\r\n "),
    )
    .into_bytes()
}

/// The three transactions Postfix would make: 50, 50 and 20 header recipients, the Bcc
/// recipients spread over them.
pub fn transactions() -> Vec<Vec<String>> {
    let (header, bcc) = (header_recipients(), bcc_recipients());
    vec![
        [&header[..50], &bcc[..2]].concat(),
        [&header[50..100], &bcc[2..3]].concat(),
        [&header[100..], &bcc[3..]].concat(),
    ]
}

/// Sends [`message`] once per envelope, all at once on separate connections (as Postfix's
/// delivery agents do), envelope `i` to `servers[i % servers.len()]`; returns the queue ids.
pub async fn send(servers: &[SocketAddr], envelopes: &[Vec<String>]) -> Vec<String> {
    let sends = envelopes.iter().enumerate().map(|(i, rcpts)| {
        let server = servers[i % servers.len()];
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.ip().to_string())
                .port(server.port())
                .build();
        let envelope = Envelope::new(
            Some("app@example.com".parse().unwrap()),
            rcpts.iter().map(|r| r.parse().unwrap()).collect(),
        )
        .unwrap();
        async move { transport.send_raw(&envelope, &message()).await }
    });
    let replies = futures_util::future::join_all(sends).await;
    replies
        .into_iter()
        .map(|reply| {
            let reply = reply.expect("every transaction is accepted");
            let text = reply.message().collect::<Vec<_>>().join(" ");
            assert!(text.contains("queued as "), "{text}");
            text.rsplit(' ').next().unwrap().to_string()
        })
        .collect()
}

/// Asserts that `recipients` (what Gmail delivered to) names everyone in `expected` exactly once.
#[track_caller]
pub fn assert_once_each(recipients: &[String], expected: impl IntoIterator<Item = String>) {
    let unique: BTreeSet<&String> = recipients.iter().collect();
    assert_eq!(unique.len(), recipients.len(), "someone would get it twice");
    let expected: BTreeSet<String> = expected.into_iter().collect();
    let got: BTreeSet<String> = recipients.iter().cloned().collect();
    assert_eq!(got, expected);
}
