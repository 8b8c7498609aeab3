//! One message an MTA splits into several transactions (Postfix: at most 50 recipients each):
//! 120 header recipients (80 in To, 40 in Cc) and 5 envelope-only (Bcc) recipients, the
//! transactions Postfix would make of it, and the checks on what Gmail received. For the tests
//! of split messages on the spool (tests/split.rs), with a real Postfix
//! (tests/postfix_relayhost.rs), and across replicas (tests/postgres_split.rs).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// The Message-ID of [`message`].
pub const MESSAGE_ID: &str = "split-test-1@example.com";

/// The header recipients.
pub fn header_recipients() -> Vec<String> {
    (0..120).map(|i| format!("r{i:03}@example.org")).collect()
}

/// Envelope-only recipients (Bcc).
pub fn bcc_recipients() -> Vec<String> {
    (0..5).map(|i| format!("hidden{i}@example.net")).collect()
}

/// Every recipient: the header's and the Bcc ones.
pub fn everyone() -> Vec<String> {
    [header_recipients(), bcc_recipients()].concat()
}

/// The message with Message-ID [`MESSAGE_ID`], naming every header recipient, as an MTA would
/// relay it.
pub fn message() -> Vec<u8> {
    message_with_id(MESSAGE_ID)
}

/// The message with Message-ID `id`.
pub fn message_with_id(id: &str) -> Vec<u8> {
    let header = header_recipients();
    format!(
        "From: app@example.com\r\nTo: {}\r\nCc: {}\r\nSubject: split\r\n\
         Message-ID: <{id}>\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\r\n\
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

/// Sends [`message`] from app@example.com once per (server, envelope), all at once on separate
/// connections (as Postfix's delivery agents do); every transaction must get its 250. Returns
/// the queue ids, in order.
pub async fn send(parts: &[(SocketAddr, &[String])]) -> Vec<String> {
    let sends = parts.iter().map(|(server, rcpts)| {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
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

/// Sends each of `envelopes` to `server` ([`send`]).
pub async fn send_to(server: SocketAddr, envelopes: &[Vec<String>]) -> Vec<String> {
    let parts: Vec<(SocketAddr, &[String])> =
        envelopes.iter().map(|e| (server, e.as_slice())).collect();
    send(&parts).await
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
