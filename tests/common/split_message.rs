//! One message an MTA splits into several transactions (Postfix: at most 50 recipients each):
//! 120 header recipients (80 in To, 40 in Cc) and 5 envelope-only (Bcc) recipients, the
//! transactions Postfix would make of it, and the checks on what Gmail received. For the tests
//! of split messages on the spool (tests/split.rs), with a real Postfix
//! (tests/postfix_relayhost.rs), and across replicas (tests/postgres_split.rs).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::fake_gmail::Upload;
use super::fake_google::FakeGoogle;
use super::serving::Serving;

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
    send_spread(&[server], envelopes).await
}

/// Sends envelope `i` to `servers[i % servers.len()]` ([`send`]): the transactions of one
/// message reaching different replicas.
pub async fn send_spread(servers: &[SocketAddr], envelopes: &[Vec<String>]) -> Vec<String> {
    let parts: Vec<(SocketAddr, &[String])> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| (servers[i % servers.len()], e.as_slice()))
        .collect();
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

/// Asserts what `queue list` and `queue show` say of the one dead letter the first two of
/// [`transactions`] become when the third never comes (under `header_only_recipients =
/// "reject"`); returns its id.
pub async fn assert_dead_letter_of_the_first_two(server: &impl Serving) -> String {
    let (ok, listed) = server.queue_command(&["list"]).await;
    assert!(ok, "{listed}");
    assert_eq!(listed.matches("DEAD LETTER").count(), 1, "{listed}");
    assert!(!listed.contains("HELD"), "{listed}");
    assert!(
        listed.contains(&format!("split message <{MESSAGE_ID}> incomplete"))
            && listed.contains("named 100 of its 120 header recipients")
            && listed.contains("r100@example.org")
            && listed.contains("header_only_recipients"),
        "{listed}"
    );
    let dead = listed.lines().find(|l| l.contains("DEAD LETTER")).unwrap();
    let id = dead.split_whitespace().next().unwrap().to_string();
    let (ok, shown) = server.queue_command(&["show", &id]).await;
    assert!(ok, "{shown}");
    assert!(shown.contains("merged from:  2 transactions"), "{shown}");
    assert!(
        shown.contains("in no envelope: 20 header recipients"),
        "{shown}"
    );
    id
}

/// Asserts that Gmail got the first two of [`transactions`] as one message, the third never
/// having come (under `header_only_recipients = "allow"`): every header recipient (Gmail
/// delivers to them) and the Bcc recipients of those two, once each.
#[track_caller]
pub fn assert_one_send_for_the_first_two(google: &FakeGoogle) {
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one Gmail send, not one per transaction");
    // The Bcc recipients of the missing transaction were never named to the server.
    assert_once_each(
        &uploads[0].recipients,
        [header_recipients(), bcc_recipients()[..3].to_vec()].concat(),
    );
}

/// Asserts that Gmail got one message, naming every recipient (header and Bcc) once; returns it.
#[track_caller]
pub fn assert_one_send_to_everyone(google: &FakeGoogle) -> Upload {
    let mut uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one Gmail send");
    assert_once_each(&uploads[0].recipients, everyone());
    uploads.remove(0)
}

/// Asserts that `body` (what Gmail got) is [`message`] as received (lettre ends it with one more
/// CRLF) with a Bcc field in front.
#[track_caller]
pub fn assert_bcc_in_front_of_the_message(body: &[u8]) {
    let from = body.windows(6).position(|w| w == b"From: ").unwrap();
    assert!(body.starts_with(b"Bcc: ") && body[from..].starts_with(&message()));
}
