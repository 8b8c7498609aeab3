//! A seeded random-input driver for the SMTP session, on stable Rust: hostile byte streams go
//! into a real [`Session`] over an in-memory pipe, and after each one the session must not panic
//! or hang, every reply must be well-formed, and a valid transaction sent next must be accepted
//! (unless the session legitimately closed, e.g. 421 after failed AUTH).
//!
//! The normal test run does a few thousand inputs. The long run (see docs/security.md):
//!
//! ```text
//! FUZZ_CASES=10000000 FUZZ_SEED=0 cargo test --release --test session_fuzz -- --nocapture
//! ```
//!
//! A failing case prints its seed; `FUZZ_SEED=<seed> FUZZ_CASES=1` replays it.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use common::{Recorder, test_config};
use smtp2gmail::config::{SmtpConfig, UserConfig};
use smtp2gmail::smtp::auth::Users;
use smtp2gmail::smtp::connection::Connection;
use smtp2gmail::smtp::session::{Origin, Session, SessionContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Pieces inputs are made of: commands in every state, edge-case parameters, AUTH exchanges
/// (one with the right password), body terminators, and raw bytes in between.
const TOKENS: &[&[u8]] = &[
    b"EHLO fuzz\r\n",
    b"HELO fuzz\r\n",
    b"MAIL FROM:<a@example.com>\r\n",
    b"MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
    b"MAIL FROM:<evil@elsewhere.test>\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<\xc3\xa9@example.com>\r\n",
    b"MAIL FROM:<a@example.com> SIZE=99999999999999999999999\r\n",
    b"RCPT TO:<b@example.com>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\nhello",
    b"BDAT 0 LAST\r\n",
    b"BDAT 3 LAST\r\nabc",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH CRAM-MD5\r\n",
    // \0app\0right
    b"AUTH PLAIN AGFwcAByaWdodA==\r\n",
    // \0app\0wrong
    b"AUTH PLAIN AGFwcAB3cm9uZw==\r\n",
    b"YXBw\r\n",
    b"cmlnaHQ=\r\n",
    b"*\r\n",
    b"=\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"Subject: x\r\n\r\nbody\r\n",
];

/// Longest command line is 4 KiB; a few random runs go past it.
const MAX_RANDOM_RUN: usize = 6000;

fn input(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rng.usize(1..24) {
        if rng.u8(..) < 40 {
            let len = if rng.u8(..) < 8 {
                rng.usize(..MAX_RANDOM_RUN)
            } else {
                rng.usize(..32)
            };
            bytes.extend((0..len).map(|_| rng.u8(..)));
        } else {
            bytes.extend_from_slice(TOKENS[rng.usize(..TOKENS.len())]);
        }
    }
    bytes
}

/// Ends whatever the input left open (an AUTH prompt, a DATA body), then one valid transaction.
const RECOVERY: &[u8] = b"\r\n.\r\n*\r\nRSET\r\nEHLO fuzz\r\nMAIL FROM:<ok@example.com>\r\n\
RCPT TO:<b@example.com>\r\nDATA\r\nmarker\r\n.\r\nQUIT\r\n";

fn context(users: Arc<Users>) -> Arc<SessionContext> {
    let config = SmtpConfig {
        max_message_size: 4096,
        max_recipients: 3,
        ..test_config()
    };
    Arc::new(SessionContext {
        config,
        deliver: Arc::new(Recorder::default()),
        shutdown: CancellationToken::new(),
        tls: None,
        users,
    })
}

/// A user whose hash is cheap to check, so the driver measures the session and not argon2.
fn users() -> Arc<Users> {
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
    let hash = hasher.hash_password(b"right", &salt).unwrap().to_string();
    let user = UserConfig {
        name: "app".into(),
        password_hash: hash,
        senders: vec!["*@example.com".into()],
    };
    Arc::new(Users::new(&[user]).unwrap())
}

/// The listener the driver's sessions pretend to have come in on.
const LISTENER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 2525);

const LOOPBACK: Origin = Origin {
    listener: LISTENER,
    loopback: true,
    tls: false,
};

/// Runs one input (then [`RECOVERY`]) through a session; returns everything the server wrote.
async fn run_case(ctx: Arc<SessionContext>, seed: u64, bytes: Vec<u8>) -> Vec<u8> {
    run(ctx, LOOPBACK, seed, bytes, RECOVERY).await
}

/// Runs `bytes` and then `tail` through a session that came in at `origin`, written in chunks
/// whose size depends on `seed`; returns everything the server wrote.
async fn run(
    ctx: Arc<SessionContext>,
    origin: Origin,
    seed: u64,
    bytes: Vec<u8>,
    tail: &'static [u8],
) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let conn = Connection::new(
        Box::new(server),
        Duration::from_secs(60),
        CancellationToken::new(),
    );
    // One address per case: AUTH failures are throttled per address across sessions, and the
    // driver must measure each input on its own, without delays earned by earlier ones.
    let remote = (std::net::Ipv4Addr::from(seed as u32), 1).into();
    let session = tokio::spawn(Session::new(conn, ctx, remote, origin).run());
    let (mut reader, mut writer) = tokio::io::split(client);
    let write = async move {
        // A write error means the session closed early, which is allowed.
        for chunk in bytes.chunks(1 + (seed as usize % 700)) {
            if writer.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(tail).await;
        let _ = writer.shutdown().await;
    };
    let mut out = Vec::new();
    let read = reader.read_to_end(&mut out);
    let (_, read) = tokio::join!(write, read);
    read.unwrap_or_else(|err| panic!("seed {seed}: reading replies: {err}"));
    session
        .await
        .unwrap_or_else(|err| panic!("seed {seed}: session panicked: {err}"));
    out
}

fn check_replies(seed: u64, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    for line in text.split_terminator("\r\n") {
        let bytes = line.as_bytes();
        assert!(
            bytes.len() >= 4
                && bytes[..3].iter().all(u8::is_ascii_digit)
                && (bytes[3] == b' ' || bytes[3] == b'-'),
            "seed {seed}: malformed reply line {line:?}"
        );
    }
    assert!(text.ends_with("\r\n"), "seed {seed}: unterminated reply");
}

fn cases() -> (u64, u64) {
    let var = |name, default| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (var("FUZZ_SEED", 0), var("FUZZ_CASES", 2000))
}

#[test]
fn random_inputs_never_break_the_session() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (first, count) = cases();
    let users = users();
    runtime.block_on(async {
        let mut closed = 0u64;
        for seed in first..first + count {
            let mut rng = fastrand::Rng::with_seed(seed);
            let bytes = input(&mut rng);
            let recorder = Arc::new(Recorder::default());
            let mut ctx = context(users.clone());
            Arc::get_mut(&mut ctx).unwrap().deliver = recorder.clone();
            let out = run_case(ctx, seed, bytes).await;
            check_replies(seed, &out);
            let text = String::from_utf8_lossy(&out);
            if text.contains("\r\n421 ") || text.starts_with("421 ") {
                closed += 1;
                continue;
            }
            assert!(
                text.ends_with("221 2.0.0 bye\r\n"),
                "seed {seed}: the valid transaction did not complete: {}",
                &text[text.len().saturating_sub(600)..]
            );
            let last = recorder.bodies().pop();
            assert_eq!(
                last.as_deref(),
                Some(&b"marker\r\n"[..]),
                "seed {seed}: the valid message was not delivered"
            );
        }
        eprintln!("fuzz: {count} inputs from seed {first}, {closed} ended in a 421 close");
    });
}

/// Off loopback and without TLS, AUTH is neither advertised nor accepted: passwords must not
/// cross a network in clear. Under TLS it is both.
#[tokio::test]
async fn auth_needs_tls_off_loopback() {
    let exchange = b"EHLO x\r\nAUTH PLAIN AGFwcAByaWdodA==\r\nQUIT\r\n";
    let clear = Origin {
        listener: LISTENER,
        loopback: false,
        tls: false,
    };
    let out = run(context(users()), clear, 0, Vec::new(), exchange).await;
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert!(text.contains("538 5.7.11 "), "{text}");
    let encrypted = Origin {
        listener: LISTENER,
        loopback: false,
        tls: true,
    };
    let out = run(context(users()), encrypted, 0, Vec::new(), exchange).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("250 AUTH PLAIN LOGIN"), "{text}");
    assert!(text.contains("235 2.7.0 "), "{text}");
}
