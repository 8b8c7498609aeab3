//! Gmail's upload limit (36,700,160 bytes) holds after the relay's own additions, in sync and in
//! queue mode, with lettre over real sockets against the fake Gmail (which answers 413 above the
//! limit, as Gmail does): the advertised SIZE leaves room for the Bcc header of `max_recipients`
//! envelope-only recipients, and a message whose upload would still be too large (here: a long
//! From copied into Reply-To by a From rewrite) is refused at the end of DATA with 552 5.3.4 —
//! never 250 and then a dead letter.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_gmail::{UPLOAD_LIMIT, gmail_config};
use common::fake_google::FakeGoogle;
use common::{TestServer, assert_code, test_config};
use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp2gmail::config::{FromPolicy, GmailConfig, QueueConfig, SmtpConfig};
use smtp2gmail::queue;
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::{Deliver, Gmail, http_client};
use tokio_util::sync::CancellationToken;

/// How accepted mail reaches Gmail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Queue,
}

/// A server in gmail mode against a fake Google; in queue mode with its scheduler running.
struct Bridge {
    google: FakeGoogle,
    dir: tempfile::TempDir,
    server: TestServer,
    shutdown: CancellationToken,
}

impl Bridge {
    /// `[gmail]` is the fake's, with `adjust` applied.
    async fn start(mode: Mode, adjust: impl FnOnce(&mut GmailConfig)) -> Bridge {
        let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
        let mut config = gmail_config(&google, dir.path());
        adjust(&mut config);
        let once = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        let gmail = Arc::new(
            Gmail::from_config(&config, http_client().unwrap())
                .unwrap()
                .with_retry(once),
        );
        let shutdown = CancellationToken::new();
        let (target, smtp): (Arc<dyn Deliver>, SmtpConfig) = match mode {
            Mode::Sync => (gmail, test_config()),
            Mode::Queue => {
                let config = QueueConfig {
                    dir: dir.path().join("spool"),
                    retry_min: Duration::from_millis(20),
                    max_send_rate: 1000.0,
                    ..QueueConfig::default()
                };
                let started = queue::start(&config, gmail).unwrap();
                let run = started.scheduler.run(shutdown.clone(), Duration::ZERO);
                let lock = started.lock;
                tokio::spawn(async move {
                    run.await;
                    drop(lock);
                });
                let smtp = SmtpConfig {
                    spill_dir: Some(started.spill_dir),
                    ..test_config()
                };
                (started.acceptor, smtp)
            }
        };
        let server = TestServer::with_target(smtp, target).await;
        Bridge {
            google,
            dir,
            server,
            shutdown,
        }
    }

    /// The SIZE the server advertises in its EHLO reply.
    async fn advertised_size(&self) -> usize {
        let mut client = self.server.client().await;
        let ehlo = client.cmd("EHLO client.test").await;
        assert_code(&ehlo, 250);
        ehlo.lines()
            .find_map(|line| line.strip_prefix("250-SIZE "))
            .and_then(|size| size.trim().parse().ok())
            .unwrap_or_else(|| panic!("no SIZE in {ehlo}"))
    }

    /// Sends `bytes` with lettre from app@example.com to `rcpts`.
    async fn send(
        &self,
        rcpts: &[String],
        bytes: &[u8],
    ) -> Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error> {
        let envelope = Envelope::new(
            Some("app@example.com".parse().unwrap()),
            rcpts.iter().map(|r| r.parse().unwrap()).collect(),
        )
        .unwrap();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(self.server.addr.port())
            .timeout(Some(common::WAIT))
            .build();
        transport.send_raw(&envelope, bytes).await
    }

    /// The message files in the spool's `places` (`queue`, `dead`); none outside queue mode.
    fn spooled(&self, places: &[&str]) -> Vec<std::path::PathBuf> {
        places
            .iter()
            .filter_map(|place| std::fs::read_dir(self.dir.path().join("spool").join(place)).ok())
            .flatten()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "msg"))
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.stop().await;
    }
}

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
async fn the_advertised_size_fits_gmail_after_the_bcc_header(mode: Mode) {
    let bridge = Bridge::start(mode, |_| {}).await;
    let size = bridge.advertised_size().await;
    assert!(
        size < UPLOAD_LIMIT,
        "SIZE {size} leaves no room for a Bcc header"
    );
    let rcpts = envelope_only_recipients(100, 256);
    let message = message_of(size, "From: app@example.com\r\n");
    let reply = bridge.send(&rcpts, &message).await;
    let reply = reply.unwrap_or_else(|err| panic!("{mode:?}: refused: {err}"));
    assert_eq!(reply.code().to_string(), "250");
    bridge.google.wait_for_uploads(1).await;
    let upload = &bridge.google.uploads()[0];
    assert!(upload.body.len() <= UPLOAD_LIMIT);
    assert!(
        upload.body.len() > size + 100 * 256,
        "the Bcc field is there"
    );
    assert_eq!(upload.recipients.len(), 100);
    assert!(bridge.spooled(&["dead"]).is_empty(), "delivered, not dead");
    bridge.stop().await;
}

#[tokio::test]
async fn sync_the_advertised_size_fits_gmail_after_the_bcc_header() {
    the_advertised_size_fits_gmail_after_the_bcc_header(Mode::Sync).await;
}

#[tokio::test]
async fn queue_the_advertised_size_fits_gmail_after_the_bcc_header() {
    the_advertised_size_fits_gmail_after_the_bcc_header(Mode::Queue).await;
}

/// A From rewrite adds a Reply-To holding the original From; a From far longer than the SIZE
/// headroom allows for makes the upload too large: refused at the end of DATA with 552 5.3.4,
/// before any upload and before anything is queued.
async fn too_large_after_our_additions_is_refused_at_the_end_of_data(mode: Mode) {
    let bridge = Bridge::start(mode, |gmail| {
        gmail.send_as = vec!["relay@example.com".to_string()];
        gmail.from_policy = Some(FromPolicy::Rewrite);
    })
    .await;
    let size = bridge.advertised_size().await;
    let rcpts = vec!["alice@example.com".to_string()];
    let header = format!("{}To: alice@example.com\r\n", long_from());
    let error = bridge
        .send(&rcpts, &message_of(size, &header))
        .await
        .expect_err("refused");
    let text = error.to_string();
    assert_eq!(
        error.status().map(|code| code.to_string()),
        Some("552".to_string()),
        "{mode:?}: {text}"
    );
    assert!(
        text.contains("5.3.4") && text.contains("too large for Gmail"),
        "{text}"
    );
    assert_eq!(bridge.google.send_requests(), 0, "nothing was uploaded");
    assert!(
        bridge.spooled(&["queue", "dead"]).is_empty(),
        "nothing was queued"
    );
    // The same size with an ordinary From fits.
    let header = "From: App <app@example.com>\r\nTo: alice@example.com\r\n";
    let sent = bridge.send(&rcpts, &message_of(size, header)).await;
    assert!(sent.is_ok(), "{sent:?}");
    bridge.google.wait_for_uploads(1).await;
    assert!(bridge.google.uploads()[0].body.len() <= UPLOAD_LIMIT);
    bridge.stop().await;
}

#[tokio::test]
async fn sync_too_large_after_our_additions_is_refused_at_the_end_of_data() {
    too_large_after_our_additions_is_refused_at_the_end_of_data(Mode::Sync).await;
}

#[tokio::test]
async fn queue_too_large_after_our_additions_is_refused_at_the_end_of_data() {
    too_large_after_our_additions_is_refused_at_the_end_of_data(Mode::Queue).await;
}
