//! Bursts of numbered messages from concurrent lettre clients, and what reached the fake Gmail:
//! for the tests that kill servers mid-burst and count that every acknowledged message arrived.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::fake_google::FakeGoogle;
use super::fake_microsoft::FakeMicrosoft;

/// A fake provider whose accepted messages can be read back: the fake Gmail, the fake Graph.
pub trait Sink {
    /// Every message body it accepted, in order.
    fn bodies(&self) -> Vec<Vec<u8>>;
}

impl Sink for FakeGoogle {
    fn bodies(&self) -> Vec<Vec<u8>> {
        self.uploads()
            .into_iter()
            .map(|upload| upload.body)
            .collect()
    }
}

impl Sink for FakeMicrosoft {
    fn bodies(&self) -> Vec<Vec<u8>> {
        self.accepted()
            .into_iter()
            .map(|accepted| accepted.mime)
            .collect()
    }
}

/// Message `n`: subject `burst-N`.
pub fn message(n: usize) -> lettre::Message {
    lettre::Message::builder()
        .from("app@example.com".parse().unwrap())
        .to("alice@example.com".parse().unwrap())
        .subject(format!("burst-{n}"))
        .body(format!("message {n}\n"))
        .unwrap()
}

/// The `burst-N` subject of an uploaded message.
pub fn number(body: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("burst-")? + "burst-".len();
    text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The numbers the servers acknowledged (250).
pub type Acknowledged = Arc<Mutex<HashSet<usize>>>;

/// `clients` concurrent clients each sending `per_client` messages, client `c` to
/// `servers[c % servers.len()]`; a client stops at its first failure (its server is gone).
pub fn send(
    servers: &[SocketAddr],
    clients: usize,
    per_client: usize,
    acknowledged: &Acknowledged,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let addr = servers[client % servers.len()];
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let transport =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
                        .port(addr.port())
                        .build();
                for i in 0..per_client {
                    let n = client * per_client + i;
                    match transport.send(message(n)).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(n);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

/// Waits until at least `count` messages are acknowledged and `delivering()` says deliveries are
/// under way: the moment the crash tests kill a server.
pub async fn until_under_way(
    acknowledged: &Acknowledged,
    count: usize,
    delivering: impl Fn() -> bool,
) {
    tokio::time::timeout(super::WAIT, async {
        while acknowledged.lock().unwrap().len() < count || !delivering() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the burst gets going");
}

/// How many times each number reached Gmail.
pub fn delivered(sink: &impl Sink) -> HashMap<usize, usize> {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for body in sink.bodies() {
        *seen
            .entry(number(&body).expect("a burst subject"))
            .or_default() += 1;
    }
    seen
}

/// Waits (up to `bound`) until every acknowledged number reached Gmail; panics naming the
/// missing ones.
pub async fn until_delivered(google: &impl Sink, acknowledged: &HashSet<usize>, bound: Duration) {
    if let Err(missing) = delivered_within(google, acknowledged, bound).await {
        panic!("acknowledged but never delivered: {missing:?}");
    }
}

/// Waits (up to `bound`) until every acknowledged number reached Gmail; the missing ones if
/// some never did.
pub async fn delivered_within(
    google: &impl Sink,
    acknowledged: &HashSet<usize>,
    bound: Duration,
) -> Result<(), Vec<usize>> {
    let all_there = || {
        let seen = delivered(google);
        acknowledged.iter().all(|n| seen.contains_key(n))
    };
    let waited = tokio::time::timeout(bound, async {
        while !all_there() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if waited.await.is_ok() {
        return Ok(());
    }
    let seen = delivered(google);
    let mut missing: Vec<usize> = acknowledged
        .iter()
        .filter(|n| !seen.contains_key(n))
        .copied()
        .collect();
    missing.sort();
    Err(missing)
}
