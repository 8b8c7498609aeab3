//! Shared test harness: the server in this process ([`server::TestServer`], the library's
//! assembly) or as the real binary ([`process::ServerProcess`]), with the helpers both share
//! ([`serving::Serving`]); a recording delivery target, and a raw SMTP client that speaks bytes
//! over a real socket.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod burst;
pub mod credential_files;
pub mod django;
pub mod dsn;
pub mod fake_exchange_smtp;
pub mod fake_gmail;
pub mod fake_google;
pub mod fake_microsoft;
pub mod fake_oauth;
pub mod inbox;
pub mod logs;
pub mod pg_store;
pub mod postfix;
pub mod postgres;
pub mod process;
pub mod programs;
pub mod python;
pub mod server;
pub mod serving;
pub mod split_message;
pub mod tls;
pub mod webhooks;

#[allow(unused_imports)] // not every test binary starts a server in process
pub use server::{TestServer, test_config};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use smtp2gmail::message::{Envelope, Message};
use smtp2gmail::relay::{Deliver, DeliveryError, Receipt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A loopback port nothing listens on right now, for a server that needs a number in its
/// configuration (Postfix, PostgreSQL) rather than binding port 0 itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Generous bound on any single wait, so a broken server fails a test instead of hanging it.
/// Generous because it is not a timing goal: a debug build handling a 30 MiB message takes
/// seconds alone, several times that on a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// A delivery target that remembers what it was given and can be told to fail.
#[derive(Default)]
pub struct Recorder {
    delivered: Mutex<Vec<(Envelope, Vec<u8>)>>,
    scripted: Mutex<VecDeque<DeliveryError>>,
    notify: Notify,
}

impl Recorder {
    /// The next delivery fails with `error` (then deliveries succeed again).
    pub fn fail_next(&self, error: DeliveryError) {
        self.scripted.lock().unwrap().push_back(error);
    }

    /// Everything delivered so far.
    pub fn delivered(&self) -> Vec<(Envelope, Vec<u8>)> {
        self.delivered.lock().unwrap().clone()
    }

    /// The bodies delivered so far.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.delivered().into_iter().map(|(_, body)| body).collect()
    }
}

#[async_trait::async_trait]
impl Deliver for Recorder {
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        if let Some(error) = self.scripted.lock().unwrap().pop_front() {
            return Err(error);
        }
        let body = message
            .bytes()
            .await
            .expect("message body readable")
            .into_owned();
        assert_eq!(body.len() as u64, message.len());
        self.delivered
            .lock()
            .unwrap()
            .push((envelope.clone(), body));
        self.notify.notify_waiters();
        Ok(Receipt::new(envelope.id.to_string()))
    }
}

/// What a raw client can speak over: TCP, or TLS over TCP.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A raw SMTP client over a real socket.
pub struct Client {
    stream: BufReader<Box<dyn Stream>>,
}

impl Client {
    /// Connects and returns the first reply (the greeting, or a 421).
    pub async fn connect(addr: SocketAddr) -> (Client, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::over(Box::new(stream)).await
    }

    /// A client over an established stream; returns the first reply.
    pub async fn over(stream: Box<dyn Stream>) -> (Client, String) {
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Connects to an implicit-TLS listener trusting `cert`; returns the client and greeting.
    pub async fn connect_tls(addr: SocketAddr, cert: &tls::TestCert) -> (Client, String) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let stream = cert.handshake(Box::new(stream)).await.expect("handshake");
        Self::over(stream).await
    }

    /// After a `220` to STARTTLS: the client side of the handshake, then go on encrypted.
    pub async fn start_tls(self, cert: &tls::TestCert) -> Client {
        assert!(self.stream.buffer().is_empty(), "no bytes after the 220");
        let stream = cert
            .handshake(self.stream.into_inner())
            .await
            .expect("handshake");
        Client {
            stream: BufReader::new(stream),
        }
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .get_mut()
            .write_all(bytes.as_ref())
            .await
            .expect("send");
    }

    /// Reads one complete reply (all lines of a multi-line reply), CRLFs included.
    /// Returns an empty string if the server closed the connection.
    pub async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.stream.read_line(&mut line))
                .await
                .expect("reply within the wait bound")
                .expect("read");
            if n == 0 {
                return reply;
            }
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    }

    /// Sends one command line (CRLF added) and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// EHLO, MAIL, RCPT for each recipient, all expected to succeed.
    pub async fn start_transaction(&mut self, from: &str, to: &[&str]) {
        assert_code(&self.cmd("EHLO client.test").await, 250);
        assert_code(&self.cmd(&format!("MAIL FROM:<{from}>")).await, 250);
        for rcpt in to {
            assert_code(&self.cmd(&format!("RCPT TO:<{rcpt}>")).await, 250);
        }
    }

    /// Sends DATA, then `wire` (already dot-stuffed, with its terminator); returns the final reply.
    pub async fn data(&mut self, wire: &[u8]) -> String {
        assert_code(&self.cmd("DATA").await, 354);
        self.send(wire).await;
        self.reply().await
    }

    /// True once the server has closed the connection (reads EOF), false if data arrives.
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(WAIT, self.stream.read(&mut byte))
                .await
                .expect("EOF within the wait bound"),
            Ok(0) | Err(_)
        )
    }
}

/// An address of this machine that is not on loopback: the source address the kernel would use
/// for a packet leaving the machine (a UDP "connect" sends nothing). Tests of what non-loopback
/// clients are offered connect to it; on a machine with no network interface but `lo` (a build
/// sandbox) there is none: see [`cannot_check_here`].
pub fn non_loopback_ip() -> Option<std::net::IpAddr> {
    // Documentation prefixes (RFC 5737, RFC 3849): routed by the default route, never reached.
    for (bind, probe) in [("0.0.0.0:0", "192.0.2.1:9"), ("[::]:0", "[2001:db8::1]:9")] {
        let Ok(socket) = std::net::UdpSocket::bind(bind) else {
            continue;
        };
        if socket.connect(probe).is_err() {
            continue;
        }
        if let Ok(local) = socket.local_addr()
            && !local.ip().is_loopback()
            && !local.ip().is_unspecified()
        {
            return Some(local.ip());
        }
    }
    cannot_check_here("no non-loopback address on this machine (a network interface is needed)");
    None
}

/// For a test that cannot check what it is for on this machine, for want of something known only
/// when it runs (a network interface, IPv6), unlike the programs build.rs looks for: under CI
/// (`CI` set), where every test must run, the test fails; elsewhere it goes on to return having
/// checked less, and this says so on the terminal. Written to stderr directly, not with
/// `eprintln!`, which libtest captures and drops for a passing test.
pub fn cannot_check_here(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why}; under CI every test must run"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOT CHECKED HERE: {test}: {why}");
}

/// Sends one small message from app@example.com to alice@example.com (named in its To header) on
/// a new connection, and returns the reply to DATA.
pub async fn send_simple(addr: SocketAddr) -> String {
    let (mut client, _) = Client::connect(addr).await;
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    let reply = client
        .data(b"From: app@example.com\r\nTo: alice@example.com\r\n\r\nhi\r\n.\r\n")
        .await;
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    reply
}

/// Asserts the reply has `code` (and, for multi-line replies, on every line).
#[track_caller]
pub fn assert_code(reply: &str, code: u16) {
    assert!(
        !reply.is_empty() && reply.lines().all(|l| l.starts_with(&code.to_string())),
        "expected {code}, got {reply:?}"
    );
}
