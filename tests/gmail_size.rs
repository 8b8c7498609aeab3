//! Gmail's upload limit (36,700,160 bytes) holds after the relay's own additions, in sync and in
//! queue mode, with lettre over real sockets against the fake Gmail (which answers 413 above the
//! limit, as Gmail does): the advertised SIZE leaves room for the Bcc header of `max_recipients`
//! envelope-only recipients, and a message whose upload would still be too large (here: a long
//! From copied into Reply-To by a From rewrite) is refused at the end of DATA with 552 5.3.4 —
//! never 250 and then a dead letter.

mod common;

use common::TestServer;
use common::fake_gmail::UPLOAD_LIMIT;
use common::serving::{Serving, refused_with};
use smtp2gmail::config::{Delivery, FromPolicy};

/// The sender of every message here.
const FROM: &str = "app@example.com";

/// `count` recipients of `octets` each, none of them named in the headers, so each goes into the
/// Bcc field the relay adds. The server takes addresses of up to 256 octets (RFC 5321's path
/// limit).
fn envelope_only_recipients(count: usize, octets: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let local = format!("{i:03}{}", "r".repeat(61));
            let mut domain = "example".to_string();
            // Labels of at most 63, never leaving a gap of one octet (a label needs its dot).
            while local.len() + 1 + domain.len() < octets {
                let room = octets - local.len() - 1 - domain.len();
                let mut label = (room - 1).min(63);
                if room - (label + 1) == 1 {
                    label -= 1;
                }
                domain = format!("{}.{domain}", "d".repeat(label));
            }
            let address = format!("{local}@{domain}");
            assert_eq!(address.len(), octets);
            address
        })
        .collect()
}

/// A message of exactly `size` bytes as the server counts it: `header`, an empty line and lines of
/// text (no line starts with a dot, so what is sent is what is counted). Without its final CRLF,
/// which lettre adds in front of the terminating dot.
fn message_of(size: usize, header: &str) -> Vec<u8> {
    let mut message = format!("{header}Subject: a large report\r\n\r\n").into_bytes();
    let line = [b"0123456789abcdef".repeat(4).as_slice(), b"\r\n"].concat();
    while message.len() + line.len() + 2 <= size {
        message.extend_from_slice(&line);
    }
    message.extend(std::iter::repeat_n(b'z', size - message.len() - 2));
    assert_eq!(message.len() + 2, size);
    message
}

/// A From header of about 40 KB: a long display name, folded into lines of 70 or so.
fn long_from() -> String {
    let words = vec!["Quarterly"; 5000].join(" ");
    let folded: Vec<String> = words
        .as_bytes()
        .chunks(70)
        .map(|chunk| String::from_utf8(chunk.to_vec()).unwrap())
        .collect();
    format!("From: {} <app@example.com>\r\n", folded.join("\r\n "))
}

/// A message of exactly the advertised SIZE, to 100 (`max_recipients`) envelope-only recipients
/// of the longest address RFC 5321 allows, is accepted and delivered within Gmail's limit.
async fn the_advertised_size_fits_gmail_after_the_bcc_header(mode: Delivery) {
    let (google, _dir, server) = TestServer::gmail(mode, |_, _, _| {}).await;
    let size = server.advertised_size().await;
    assert!(
        size < UPLOAD_LIMIT,
        "SIZE {size} leaves no room for a Bcc header"
    );
    let rcpts = envelope_only_recipients(100, 256);
    let message = message_of(size, "From: app@example.com\r\n");
    let reply = server.send_with_lettre(FROM, &rcpts, &message).await;
    let reply = reply.unwrap_or_else(|err| panic!("{mode:?}: refused: {err}"));
    assert_eq!(reply.code().to_string(), "250");
    google.wait_for_uploads(1).await;
    let upload = &google.uploads()[0];
    assert!(upload.body.len() <= UPLOAD_LIMIT);
    assert!(
        upload.body.len() > size + 100 * 256,
        "the Bcc field is there"
    );
    assert_eq!(upload.recipients.len(), 100);
    assert!(server.files("dead").is_empty(), "delivered, not dead");
    server.stop().await;
}

#[tokio::test]
async fn sync_the_advertised_size_fits_gmail_after_the_bcc_header() {
    the_advertised_size_fits_gmail_after_the_bcc_header(Delivery::Sync).await;
}

#[tokio::test]
async fn queue_the_advertised_size_fits_gmail_after_the_bcc_header() {
    the_advertised_size_fits_gmail_after_the_bcc_header(Delivery::Queue).await;
}

/// A From rewrite adds a Reply-To holding the original From; a From far longer than the SIZE
/// headroom allows for makes the upload too large: refused at the end of DATA with 552 5.3.4,
/// before any upload and before anything is queued.
async fn too_large_after_our_additions_is_refused_at_the_end_of_data(mode: Delivery) {
    let (google, _dir, server) = TestServer::gmail(mode, |_, _, gmail| {
        gmail.send_as = vec!["relay@example.com".to_string()];
        gmail.from_policy = Some(FromPolicy::Rewrite);
    })
    .await;
    let size = server.advertised_size().await;
    let rcpts = vec!["alice@example.com".to_string()];
    let header = format!("{}To: alice@example.com\r\n", long_from());
    let sent = server
        .send_with_lettre(FROM, &rcpts, &message_of(size, &header))
        .await;
    let text = refused_with(sent, "552");
    assert!(
        text.contains("5.3.4") && text.contains("too large for Gmail"),
        "{text}"
    );
    assert_eq!(google.send_requests(), 0, "nothing was uploaded");
    assert!(
        server.files("queue").is_empty() && server.files("dead").is_empty(),
        "nothing was queued"
    );
    // The same size with an ordinary From fits.
    let header = "From: App <app@example.com>\r\nTo: alice@example.com\r\n";
    let sent = server
        .send_with_lettre(FROM, &rcpts, &message_of(size, header))
        .await;
    assert!(sent.is_ok(), "{sent:?}");
    google.wait_for_uploads(1).await;
    assert!(google.uploads()[0].body.len() <= UPLOAD_LIMIT);
    server.stop().await;
}

#[tokio::test]
async fn sync_too_large_after_our_additions_is_refused_at_the_end_of_data() {
    too_large_after_our_additions_is_refused_at_the_end_of_data(Delivery::Sync).await;
}

#[tokio::test]
async fn queue_too_large_after_our_additions_is_refused_at_the_end_of_data() {
    too_large_after_our_additions_is_refused_at_the_end_of_data(Delivery::Queue).await;
}
