//! Memory stays flat whatever a client sends: an endless command line and an oversized DATA are
//! read and thrown away as they arrive. One test per binary, so the process's peak RSS belongs to it.

mod common;

use common::{TestServer, assert_code, test_config};
use smtp2gmail::config::SmtpConfig;

/// The process's peak resident set size in KiB (VmHWM).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn huge_inputs_do_not_grow_memory() {
    let config = SmtpConfig {
        max_message_size: 1024 * 1024,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    let chunk = vec![b'x'; 64 * 1024];
    let before = peak_rss_kib();

    // 50 MB without a newline, then the newline: one 500, and the session goes on.
    client.send("NOOP ").await;
    for _ in 0..800 {
        client.send(&chunk).await;
    }
    client.send("\r\n").await;
    assert!(client.reply().await.starts_with("500 5.5.2 "));
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");

    // 50 MB of DATA against a 1 MiB limit.
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert!(client.cmd("DATA").await.starts_with("354 "));
    let line: Vec<u8> = [&chunk[..998], b"\r\n"].concat();
    let block = line.repeat(64);
    for _ in 0..800 {
        client.send(&block).await;
    }
    client.send(".\r\n").await;
    assert!(client.reply().await.starts_with("552 5.3.4 "));
    assert_code(&client.cmd("NOOP").await, 250);

    let grown = peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "peak RSS grew by {grown} KiB while receiving 100 MB of junk"
    );
    drop(client);
    server.stop().await;
}
