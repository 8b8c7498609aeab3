//! Split merging: the transactions of one message an MTA split (Postfix: 50 recipients each) are
//! held, merged and sent once, each recipient exactly once, nothing refused — on the database with
//! the transactions reaching different replicas. A transaction sent again after the merge (Postfix
//! never saw the 250) adds nobody and sends nothing.

use std::time::Duration;

use smtp2gmail::queue::record::Place;

use crate::bench::{Backend, Bench, Waits};
use crate::common::WAIT;
use crate::common::process::ServerProcess;
use crate::common::split_message::{
    assert_once_each, everyone, message, send_spread as send, transactions,
};

/// Waits until one of `servers` logs a line containing `needle`.
async fn logged_by_any(servers: &[ServerProcess], needle: &str) {
    let logged = tokio::time::timeout(WAIT, async {
        while !servers
            .iter()
            .any(|server| server.log().iter().any(|line| line.contains(needle)))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    if logged.await.is_err() {
        let logs: Vec<Vec<String>> = servers.iter().map(ServerProcess::log).collect();
        panic!("no log line with {needle:?}: {logs:#?}");
    }
}

async fn a_message_split_into_three_transactions_is_sent_once_to_everyone(backend: Backend) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    let config = bench.config();
    let mut servers = Vec::new();
    for _ in 0..backend.servers() {
        servers.push(bench.process(&config).await);
    }
    let addrs: Vec<_> = servers.iter().map(|server| server.smtp).collect();
    let ids = send(&addrs, &transactions()).await;
    assert_eq!(ids.len(), 3);

    google.wait_for_uploads(1).await;
    logged_by_any(&servers, "transactions of a split message merged").await;
    let stored = bench.store().await;
    stored.store().until(Place::Queue, 0).await;
    stored.store().until(Place::Held, 0).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one Gmail send");
    assert_once_each(&uploads[0].recipients, everyone());
    // The received bytes (lettre ends them with one more CRLF), with a Bcc field in front.
    let body = &uploads[0].body;
    let from = body.windows(6).position(|w| w == b"From: ").unwrap();
    assert!(body.starts_with(b"Bcc: ") && body[from..].starts_with(&message()));

    // Postfix sends a transaction again when it never saw our 250 (to whichever server it
    // reaches): it adds nobody, so nothing is sent again.
    send(&addrs[addrs.len() - 1..], &transactions()[..1]).await;
    logged_by_any(&servers, "repeats a message already released").await;
    stored.store().until(Place::Held, 0).await;
    stored.store().until(Place::Queue, 0).await;
    assert_eq!(google.uploads().len(), 1, "no second copy");
    for server in servers {
        server.stop().await;
    }
}
on_both_backends!(
    a_message_split_into_three_transactions_is_sent_once_to_everyone
    [flavor = "multi_thread", worker_threads = 2]
);
