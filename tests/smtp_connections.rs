//! Connection-level behaviour: the connection cap, the idle timeout, graceful shutdown.

mod common;

use std::time::Duration;

use common::{Client, TestServer, assert_code, test_config};
use smtp2gmail::config::SmtpConfig;

#[tokio::test]
async fn connections_over_the_cap_get_421_at_once() {
    let config = SmtpConfig {
        max_connections: 2,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let first = server.client().await;
    let mut second = server.client().await;
    let (mut third, reply) = Client::connect(server.addr).await;
    assert_eq!(reply, "421 4.7.0 too many connections, try again later\r\n");
    assert!(third.is_closed().await);
    // A slot freed is a slot available again.
    assert_eq!(second.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    assert!(second.is_closed().await);
    let mut again = None;
    for _ in 0..10_000 {
        // The session task releases its slot just after the socket closes; retry until it has.
        let (client, reply) = Client::connect(server.addr).await;
        if reply.starts_with("220 ") {
            again = Some(client);
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut again = again.expect("a slot frees up after QUIT");
    assert_eq!(again.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    drop((first, again));
    server.stop().await;
}

#[tokio::test]
async fn idle_clients_are_told_421_and_disconnected() {
    let config = SmtpConfig {
        idle_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    // Send nothing: the next thing the server says is the timeout.
    assert_eq!(
        client.reply().await,
        "421 4.4.2 idle timeout, closing connection\r\n"
    );
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    server.begin_shutdown();
    assert_eq!(
        client.reply().await,
        "421 4.3.2 server shutting down, try again later\r\n"
    );
    assert!(client.is_closed().await);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_transaction_finish() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    server.begin_shutdown();
    // The listener is closed for new clients...
    let mut refused = false;
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(server.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "listener still accepting after shutdown");
    // ...but the client in the middle of a transaction gets to deliver, then is told 421.
    assert_code(
        &client.data(b"Subject: last one\r\n\r\nbody\r\n.\r\n").await,
        250,
    );
    assert_eq!(
        client.reply().await,
        "421 4.3.2 server shutting down, try again later\r\n"
    );
    assert_eq!(server.recorder.delivered().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_transactions_after_the_grace_period() {
    let config = SmtpConfig {
        shutdown_grace: Duration::from_millis(100),
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert!(client.cmd("DATA").await.starts_with("354 "));
    client.send("Subject: never finished\r\n").await;
    server.begin_shutdown();
    assert_eq!(
        client.reply().await,
        "421 4.3.2 server shutting down, try again later\r\n"
    );
    assert!(client.is_closed().await);
    let recorder = server.recorder.clone();
    server.stop().await;
    assert!(recorder.delivered().is_empty());
}
