//! Console mode prints (and captures) accepted mail after the 250 (`relay::backlog`): every
//! accepted message is printed, in the order each client sent them, also when the server is
//! stopped right after the last 250 — a clean shutdown drains the backlog first.

mod common;

use common::inbox;
use common::process::ServerProcess;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_is_printed_in_order_even_when_stopped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    inbox::write_config(dir.path(), "");
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let config = config.replacen("[smtp]\n", "[smtp]\nspill_dir = \"spill\"\n", 1);
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("spill")).unwrap();
    let server = ServerProcess::in_dir(dir.path()).await;
    let smtp = server.smtp;
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            for n in 0..PER_CLIENT {
                // Every fifth message is large enough to be spilled, so its body reaches the
                // backlog as a hard link to the spill file.
                let filler = if n % 5 == 0 { 2 << 20 } else { 100 };
                let body = "0123456789abcdef\r\n".repeat(filler / 18);
                let wire = format!("Subject: c{client}-m{n}\r\n\r\n{body}.\r\n");
                common::assert_code(&inbox::send_raw(smtp, wire.as_bytes()).await, 250);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    // At once: the backlog may still hold most of them.
    server.stop().await;

    let printed = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    let subjects: Vec<&str> = printed
        .lines()
        .filter_map(|line| line.strip_prefix("Subject:"))
        .map(str::trim)
        .collect();
    assert_eq!(subjects.len(), CLIENTS * PER_CLIENT, "{subjects:?}");
    for client in 0..CLIENTS {
        let mine: Vec<String> = subjects
            .iter()
            .filter(|s| s.starts_with(&format!("c{client}-")))
            .map(|s| s.to_string())
            .collect();
        let sent: Vec<String> = (0..PER_CLIENT).map(|n| format!("c{client}-m{n}")).collect();
        assert_eq!(mine, sent, "client {client}'s messages in the order sent");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spill"))
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "spill files or their links left behind: {left:?}"
    );
}
