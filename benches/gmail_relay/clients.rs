//! The benchmark's SMTP clients: lettre with and without TCP_NODELAY, and what they achieved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::net::TcpStream;

use super::{RECIPIENT, SENDER};

/// What the clients of one step achieved.
#[derive(Debug, Default)]
pub struct Tally {
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if let Some(why) = other.first_error {
            self.first_error.get_or_insert(why);
        }
    }
}

/// How the benchmark's SMTP clients talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum ClientKind {
    /// lettre's SMTP client code over a socket with TCP_NODELAY, one connection per message
    Nodelay,
    /// lettre's AsyncSmtpTransport as applications use it (no pool): Nagle's algorithm stays on,
    /// and lettre writes the final ".\r\n" apart from the body, which costs a delayed ACK (~40 ms)
    Transport,
}

/// A message ready to send: its envelope and its bytes.
pub struct Mail {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

impl Mail {
    pub fn new(message: &Message) -> Arc<Mail> {
        Arc::new(Mail {
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
        })
    }
}

/// One client: `count` messages one after the other, each over a new connection (connect, EHLO,
/// MAIL, RCPT, DATA, QUIT).
pub async fn client(kind: ClientKind, addr: SocketAddr, count: usize, mail: Arc<Mail>) -> Tally {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .timeout(Some(Duration::from_secs(60)))
        .build();
    let mut tally = Tally::default();
    for _ in 0..count {
        let started = Instant::now();
        let outcome = match kind {
            ClientKind::Transport => transport
                .send_raw(&mail.envelope, &mail.bytes)
                .await
                .map_err(anyhow::Error::from),
            ClientKind::Nodelay => send_nodelay(addr, &mail).await,
        };
        match outcome {
            Ok(response) if response.is_positive() => tally.latencies.push(started.elapsed()),
            Ok(response) => {
                tally.errors += 1;
                let text = response.message().collect::<Vec<_>>().join(" ");
                let code = response.code();
                tally.first_error.get_or_insert(format!("{code} {text}"));
            }
            Err(err) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(format!("{err:#}"));
            }
        }
    }
    tally
}

/// One message over a fresh connection with TCP_NODELAY, then QUIT.
pub async fn send_nodelay(addr: SocketAddr, mail: &Mail) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let hello = ClientId::Domain("gmail-relay.bench.localhost".to_string());
    let mut connection =
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await?;
    let response = connection.send(&mail.envelope, &mail.bytes).await?;
    connection.quit().await?;
    Ok(response)
}

/// A message from [`SENDER`] to [`RECIPIENT`] (so the envelope matches the headers) whose body is
/// `size` bytes of ASCII lines of 70 characters and CRLF, so that lettre sends it as it is (7bit).
/// The CRs are there already because lettre inserts missing ones one `String::insert` at a time,
/// which takes minutes for 30 MB.
pub fn message(size: usize, subject: &str) -> anyhow::Result<Message> {
    let mut body = String::with_capacity(size + 80);
    let mut row = 0;
    while body.len() < size {
        let len = (size - body.len()).clamp(2, 72) - 2;
        body.extend((0..len).map(|i| char::from(b'a' + ((row + i) % 26) as u8)));
        body.push_str("\r\n");
        row += 1;
    }
    Ok(Message::builder()
        .from(SENDER.parse()?)
        .to(RECIPIENT.parse()?)
        .subject(subject)
        .body(body)?)
}
