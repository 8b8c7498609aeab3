//! The queue's promise under `kill -9`: every message that got a 250 reaches Gmail after a
//! restart — exactly once, or at most twice if it was in flight when the server died.
//! This is a test, not a benchmark: it asserts counts, never times.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::WAIT;
use common::fake_google::{self, FakeGoogle};
use common::served::Served;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 120;

fn message(n: usize) -> lettre::Message {
    lettre::Message::builder()
        .from("app@example.com".parse().unwrap())
        .to("alice@example.com".parse().unwrap())
        .subject(format!("crash-test-{n}"))
        .body(format!("message {n}\n"))
        .unwrap()
}

/// The `crash-test-N` subject of an uploaded message.
fn subject(body: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("crash-test-")? + "crash-test-".len();
    text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_9_loses_no_acknowledged_message() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(2));
    let token = fake_google::write_json(
        dir.path(),
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = dir.path().join("smtp2gmail.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[relay]\nmode = \"gmail\"\n\
             [queue]\ndir = {:?}\nretry_min = \"50ms\"\nretry_max = \"200ms\"\nmax_send_rate = 100000.0\n\
             [gmail]\napi_base = {:?}\ncredentials = {:?}\n",
            dir.path().join("spool").display().to_string(),
            google.api_base(),
            token.display().to_string(),
        ),
    )
    .unwrap();

    let server = Served::start(&config).await;
    let addr = server.addr;
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let burst: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let transport =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
                        .port(addr.port())
                        .build();
                for i in 0..PER_CLIENT {
                    let n = client * PER_CLIENT + i;
                    match transport.send(message(n)).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(n);
                        }
                        Err(_) => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    // Kill once a third of the burst is acknowledged and deliveries are under way.
    let third = CLIENTS * PER_CLIENT / 3;
    tokio::time::timeout(WAIT, async {
        while acknowledged.lock().unwrap().len() < third || google.uploads().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the burst gets going");
    server.kill().await; // SIGKILL
    for client in burst {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= third);

    // Restart on the same spool: everything acknowledged is delivered.
    let server = Served::start(&config).await;
    let delivered = || {
        let mut seen: HashMap<usize, usize> = HashMap::new();
        for upload in google.uploads() {
            *seen
                .entry(subject(&upload.body).expect("a crash-test subject"))
                .or_default() += 1;
        }
        seen
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        while !acknowledged.iter().all(|n| delivered().contains_key(n)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "undelivered: {:?}",
            acknowledged
                .iter()
                .filter(|n| !delivered().contains_key(n))
                .collect::<Vec<_>>()
        )
    });
    server.kill().await;

    let seen = delivered();
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count == 2).collect();
    assert!(
        seen.values().all(|count| *count <= 2),
        "a message was sent three times or more"
    );
    // Duplicates are limited to what was in flight: at most the account's concurrency (5) per crash.
    assert!(
        twice.len() <= 5,
        "duplicates beyond what was in flight: {twice:?}"
    );
    eprintln!(
        "acknowledged {}, delivered {}, duplicates {}",
        acknowledged.len(),
        seen.len(),
        twice.len()
    );
}
