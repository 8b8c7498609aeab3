//! A seeded random-input driver for the SMTP session, on stable Rust: hostile byte streams go
//! into a real [`Session`] over an in-memory pipe, and after each one the session must not panic
//! or hang, every reply must be well-formed, and a valid transaction sent next must be accepted
//! (unless the session legitimately closed, e.g. 421 after failed AUTH).
//!
//! Memory is measured, not assumed: a counting global allocator records the most bytes a session
//! holds at once while one input runs, and that peak must stay under [`memory_bound`], computed
//! from the limits the session runs with. The largest peak is printed at the end of the run.
//!
//! The normal test run does a few thousand inputs. The long run (see docs/security.md):
//!
//! ```text
//! FUZZ_CASES=10000000 FUZZ_SEED=0 cargo test --release --test session_fuzz -- --nocapture
//! ```
//!
//! A failing case prints its seed; `FUZZ_SEED=<seed> FUZZ_CASES=1` replays it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use common::test_config;
use smtp2gmail::config::{SmtpConfig, UserConfig};
use smtp2gmail::message::{Envelope, Message};
use smtp2gmail::relay::{Deliver, DeliveryError, Receipt};
use smtp2gmail::smtp::auth::Users;
use smtp2gmail::smtp::connection::{BODY_READ, Connection, MAX_QUEUED_REPLIES};
use smtp2gmail::smtp::session::{MAX_LINE, Origin, Session, SessionContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Counts the bytes allocated and freed while a session task is being polled on this thread
/// (see [`Counted`]). Per thread, so that the other test of this binary, the client side of the
/// pipe and the runtime's other threads do not disturb the figure. Password checks run on the
/// blocking pool and are not counted: server-wide, at most one per CPU runs at a time.
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// True while a session task is being polled on this thread.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed while counting, since [`reset_peak`].
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since [`reset_peak`].
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // `try_with`: the allocator also runs while a thread's locals are being torn down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let live = LIVE.get() + delta;
            LIVE.set(live);
            PEAK.set(PEAK.get().max(live));
        }
    });
}

// SAFETY: every call is passed on to `System` unchanged; only sizes are recorded, with no
// allocation of its own (the thread locals are `const`-initialised cells without destructors).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            account(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            account(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Starts a new measurement on this thread.
fn reset_peak() {
    LIVE.set(0);
    PEAK.set(0);
}

/// The most bytes held at once by counted code since [`reset_peak`].
fn peak() -> usize {
    PEAK.get().max(0) as usize
}

/// A future whose polls are counted: whatever it allocates, and frees, while it runs.
struct Counted<F>(Pin<Box<F>>);

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Stops counting however the poll ends.
        struct Stop;
        impl Drop for Stop {
            fn drop(&mut self) {
                COUNTING.set(false);
            }
        }
        COUNTING.set(true);
        let _stop = Stop;
        self.0.as_mut().poll(cx)
    }
}

/// Capacity of each direction of the in-memory pipe between the driver and the session.
const PIPE: usize = 64 * 1024;

/// The most one session may hold at once, from the limits it runs with. Each buffer is counted
/// at twice its content, because a growing `Vec` may double its capacity:
/// - the read buffer: a body read (`BODY_READ`) on top of an unfinished command line;
/// - queued replies: `MAX_QUEUED_REPLIES` plus one more reply (never longer than a line);
/// - the body: `max_message_size` plus one read's worth decoded before the size check, then the
///   message and the copy the delivery target keeps;
/// - a command line's copies while it is parsed (lossy UTF-8 can triple it), and the recipients;
/// - the server's end of the pipe;
/// - 64 KiB for the rest: the session and its task, the envelope, timers.
fn memory_bound(config: &SmtpConfig) -> usize {
    let line = MAX_LINE;
    let message = config.max_message_size as usize;
    let read = 2 * (BODY_READ + line);
    let replies = 2 * (MAX_QUEUED_REPLIES + line);
    let body = 2 * (message + read) + 2 * message;
    let commands = 8 * 3 * line + config.max_recipients * line;
    read + replies + body + commands + 2 * PIPE + 64 * 1024
}

/// Keeps only the last message delivered: the driver checks the last one, and a target that kept
/// every message would add them to the memory of the session that delivered them.
#[derive(Default)]
struct LastMessage(Mutex<Option<Vec<u8>>>);

#[async_trait::async_trait]
impl Deliver for LastMessage {
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let body = message
            .bytes()
            .await
            .expect("message readable")
            .into_owned();
        *self.0.lock().unwrap() = Some(body);
        Ok(Receipt::new(envelope.id.to_string()))
    }
}

impl LastMessage {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap().take()
    }
}

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

/// The limits of the driver's sessions: small, so that an input can reach every one of them.
fn limits() -> SmtpConfig {
    SmtpConfig {
        max_message_size: 4096,
        max_recipients: 3,
        ..test_config()
    }
}

/// A fresh server context for one input, delivering to `deliver`. The users are new too: their
/// failure throttle is server-wide state that grows with every address seen, not session memory.
fn context(deliver: Arc<dyn Deliver>) -> Arc<SessionContext> {
    Arc::new(SessionContext {
        config: limits(),
        deliver,
        shutdown: CancellationToken::new(),
        tls: None,
        users: users(),
        faults: None,
    })
}

/// A user whose hash is cheap to check, so the driver measures the session and not argon2.
fn users() -> Arc<Users> {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        hasher.hash_password(b"right", &salt).unwrap().to_string()
    });
    let user = UserConfig {
        name: "app".into(),
        password_hash: hash.clone(),
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

/// Runs one input (then [`RECOVERY`]) through a session; returns everything the server wrote
/// and the session's peak memory.
async fn run_case(ctx: Arc<SessionContext>, seed: u64, bytes: Vec<u8>) -> (Vec<u8>, usize) {
    run(ctx, LOOPBACK, seed, bytes, RECOVERY).await
}

/// Runs `bytes` and then `tail` through a session that came in at `origin`, written in chunks
/// whose size depends on `seed`; returns everything the server wrote, and the most bytes the
/// session held at once (everything allocated while its task ran, its buffers included).
async fn run(
    ctx: Arc<SessionContext>,
    origin: Origin,
    seed: u64,
    bytes: Vec<u8>,
    tail: &'static [u8],
) -> (Vec<u8>, usize) {
    let (client, server) = tokio::io::duplex(PIPE);
    // One address per case: AUTH failures are throttled per address across sessions, and the
    // driver must measure each input on its own, without delays earned by earlier ones.
    let remote = (std::net::Ipv4Addr::from(seed as u32), 1).into();
    let session = Counted(Box::pin(async move {
        let conn = Connection::new(
            Box::new(server),
            Duration::from_secs(60),
            CancellationToken::new(),
        );
        Session::new(conn, ctx, remote, origin).run().await
    }));
    reset_peak();
    let session = tokio::spawn(session);
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
    (out, peak())
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

/// Checks what a session wrote after an input and [`RECOVERY`]: well-formed replies, and the valid
/// message delivered last — unless the session was closed with a 421 (returns false then).
fn check_recovered(seed: u64, out: &[u8], target: &LastMessage) -> bool {
    check_replies(seed, out);
    let text = String::from_utf8_lossy(out);
    if text.contains("\r\n421 ") || text.starts_with("421 ") {
        return false;
    }
    assert!(
        text.ends_with("221 2.0.0 bye\r\n"),
        "seed {seed}: the valid transaction did not complete: {}",
        &text[text.len().saturating_sub(600)..]
    );
    assert_eq!(
        target.take().as_deref(),
        Some(&b"marker\r\n"[..]),
        "seed {seed}: the valid message was not delivered"
    );
    true
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread: every session task is polled on the thread that measures it.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs once through every path that sets up process-wide state on first use (the metrics
/// registry and its label sets), so that no measured input is charged for it.
async fn warm_up() {
    let mut bytes = b"EHLO x\r\nAUTH PLAIN AGFwcAB3cm9uZw==\r\nMAIL FROM:<a@example.com>\r\n\
RCPT TO:<b@example.com>\r\nDATA\r\n"
        .to_vec();
    bytes.extend_from_slice(&[b'x'; 5000]);
    bytes.extend_from_slice(b"\r\n.\r\n");
    let target = Arc::new(LastMessage::default());
    let (out, _) = run_case(context(target.clone()), 0, bytes).await;
    assert!(check_recovered(0, &out, &target));
}

#[test]
fn random_inputs_never_break_the_session() {
    let (first, count) = cases();
    let bound = memory_bound(&limits());
    runtime().block_on(async {
        warm_up().await;
        let mut closed = 0u64;
        let mut worst = (0, first);
        for seed in first..first + count {
            let mut rng = fastrand::Rng::with_seed(seed);
            let bytes = input(&mut rng);
            let target = Arc::new(LastMessage::default());
            let (out, peak) = run_case(context(target.clone()), seed, bytes).await;
            assert!(
                peak <= bound,
                "seed {seed}: the session held {peak} bytes at once, over the bound of {bound}"
            );
            worst = worst.max((peak, seed));
            if !check_recovered(seed, &out, &target) {
                closed += 1;
            }
        }
        eprintln!(
            "fuzz: {count} inputs from seed {first}, {closed} ended in a 421 close; \
             peak memory per session: at most {} bytes (seed {}), bound {bound}",
            worst.0, worst.1
        );
    });
}

/// Streams many times longer than the bound leave a session within the same bound: memory does
/// not grow with what a client sends. The floods are pipelined commands whose replies are longer
/// than they are (which a reply queue without a cap would hold all at once), tiny bare-LF lines,
/// an endless line, bodies over the size limit, and recipients over the cap. None of them is a
/// bad or idle command a session counts (one endless line is one error), so the session goes on.
#[test]
fn long_hostile_streams_stay_within_the_bound() {
    let mut stream =
        b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".to_vec();
    // First a body over the limit: it grows the read buffer to a body read, so that the floods
    // after it arrive in large reads.
    stream.extend([[b'y'; 98].as_slice(), b"\r\n"].concat().repeat(10_000));
    stream.extend_from_slice(b".\r\n");
    stream.extend(b"EHLO x\r\n".repeat(100_000));
    stream.extend(b"EHLO x\n".repeat(50_000));
    stream.extend_from_slice(b"NOOP ");
    stream.extend(vec![b'x'; 1 << 20]);
    stream.extend_from_slice(b"\r\nMAIL FROM:<a@example.com>\r\n");
    for i in 0..20_000 {
        stream.extend_from_slice(format!("RCPT TO:<r{i}@example.com>\r\n").as_bytes());
    }
    stream.extend_from_slice(b"BDAT 1048576 LAST\r\n");
    stream.extend(vec![b'z'; 1 << 20]);
    let bound = memory_bound(&limits());
    assert!(stream.len() > 4 * bound, "the stream dwarfs the bound");
    runtime().block_on(async {
        warm_up().await;
        let target = Arc::new(LastMessage::default());
        let (out, peak) = run(context(target.clone()), LOOPBACK, 699, stream, RECOVERY).await;
        assert!(check_recovered(699, &out, &target), "not closed");
        assert!(
            peak <= bound,
            "the session held {peak} bytes at once, over the bound of {bound}"
        );
        eprintln!(
            "hostile streams: {} bytes of replies, peak memory {peak} bytes, bound {bound}",
            out.len()
        );
    });
}

/// Floods of bad commands (bare newlines) or idle ones (HELP) end the session with 421 once the
/// session's allowance is used up, whatever follows, and within the same memory bound.
#[test]
fn floods_of_bad_or_idle_commands_end_the_session() {
    let floods: [Vec<u8>; 2] = [b"\n".repeat(200_000), b"HELP\r\n".repeat(100_000)];
    runtime().block_on(async {
        warm_up().await;
        for flood in floods {
            let target = Arc::new(LastMessage::default());
            let (out, peak) = run(context(target.clone()), LOOPBACK, 700, flood, RECOVERY).await;
            assert!(!check_recovered(700, &out, &target), "closed with 421");
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.ends_with("421 4.7.0 too many errors, closing connection\r\n"),
                "{}",
                &text[text.len().saturating_sub(300)..]
            );
            assert!(target.take().is_none(), "nothing after the flood was read");
            assert!(peak <= memory_bound(&limits()));
        }
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
    let target: Arc<dyn Deliver> = Arc::new(LastMessage::default());
    let (out, _) = run(context(target.clone()), clear, 0, Vec::new(), exchange).await;
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert!(text.contains("538 5.7.11 "), "{text}");
    let encrypted = Origin {
        listener: LISTENER,
        loopback: false,
        tls: true,
    };
    let (out, _) = run(context(target), encrypted, 0, Vec::new(), exchange).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("250 AUTH PLAIN LOGIN"), "{text}");
    assert!(text.contains("235 2.7.0 "), "{text}");
}
