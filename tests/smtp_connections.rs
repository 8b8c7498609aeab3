//! Connection-level behaviour: the connection caps, the idle timeout, graceful shutdown; and the
//! caps and timeouts again on an implicit-TLS listener, where a stalled handshake is bounded too.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::tls::TestCert;
use common::{Client, Recorder, TestServer, WAIT, assert_code, non_loopback_ip, test_config};
use smtp2gmail::config::SmtpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let mut again = greeted_plain_when_free(server.addr, "a slot frees up after QUIT").await;
    assert_eq!(again.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    drop((first, again));
    server.stop().await;
}

/// Local programs (a pool of web workers, a local Postfix) open many connections from 127.0.0.1:
/// loopback is not held to `max_connections_per_ip`, only to the global `max_connections`.
#[tokio::test]
async fn a_thousand_idle_loopback_clients_are_held_and_a_new_one_is_greeted() {
    // Both ends of every connection live in this process: 2000 descriptors and more.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    assert!(
        nofile >= 2100,
        "the open-file limit {nofile} is too low for this test"
    );
    let config = SmtpConfig {
        max_connections: 1001,
        ..test_config()
    };
    assert_eq!(config.max_connections_per_ip, 50, "the shipped per-IP cap");
    let server = TestServer::with_config(config).await;
    let mut idle = Vec::with_capacity(1000);
    for n in 0..1000 {
        let (client, greeting) = Client::connect(server.addr).await;
        assert!(greeting.starts_with("220 "), "idle client {n}: {greeting}");
        idle.push(client);
    }
    let mut new = server.client().await;
    assert_code(&new.cmd("EHLO client.test").await, 250);
    // The global cap still holds for loopback...
    let (mut over, reply) = Client::connect(server.addr).await;
    assert_eq!(reply, "421 4.7.0 too many connections, try again later\r\n");
    assert!(over.is_closed().await);
    // ...and the idle clients were held all along.
    for n in [0, 999] {
        assert_eq!(
            idle[n].cmd("NOOP").await,
            "250 2.0.0 OK\r\n",
            "idle client {n}"
        );
    }
    drop((idle, new));
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
    told_idle_timeout(&mut client).await;
    server.stop().await;
}

/// After EHLO the client sends nothing: the next thing the server says is the timeout (encrypted
/// on a TLS connection), then it closes.
async fn told_idle_timeout(client: &mut Client) {
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_eq!(
        client.reply().await,
        "421 4.4.2 idle timeout, closing connection\r\n"
    );
    assert!(client.is_closed().await);
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

// The same limits on an implicit-TLS listener (`listen_tls`), where the handshake comes first.

/// A server with only an implicit-TLS listener, on loopback.
async fn tls_server(cert: &TestCert, config: SmtpConfig) -> (TestServer, SocketAddr) {
    tls_server_on(Ipv4Addr::LOCALHOST.into(), cert, config).await
}

/// A server with only an implicit-TLS listener on `ip` (port 0).
async fn tls_server_on(
    ip: IpAddr,
    cert: &TestCert,
    config: SmtpConfig,
) -> (TestServer, SocketAddr) {
    let config = SmtpConfig {
        listen: vec![],
        listen_tls: vec![SocketAddr::new(ip, 0)],
        tls: Some(cert.tls_config()),
        ..config
    };
    let server = TestServer::as_configured(config, Arc::new(Recorder::default())).await;
    let addr = server.tls_addr.unwrap();
    (server, addr)
}

/// Everything the server sends on a raw TCP connection until it closes it.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("closed by the server within the wait bound")
        .expect("read");
    received
}

/// A client greeted with 220 once a slot is free: a session task releases its slot just after
/// its socket closes, so the first attempts may still be refused. Fails with `why` after `WAIT`.
async fn greeted_plain_when_free(addr: SocketAddr, why: &str) -> Client {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (client, reply) = Client::connect(addr).await;
        if reply.starts_with("220 ") {
            return client;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A TLS client greeted with 220, once the session that held the slot has let go of it (its task
/// ends just after the socket closes, so the first attempts may still be refused).
async fn greeted_when_free(addr: SocketAddr, cert: &TestCert) -> Client {
    for _ in 0..10_000 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        if let Ok(stream) = cert.handshake(Box::new(stream)).await {
            let (client, greeting) = Client::over(stream).await;
            if greeting.starts_with("220 ") {
                return client;
            }
        }
        tokio::task::yield_now().await;
    }
    panic!("no slot came free");
}

/// Over the cap, a TLS listener refuses before any handshake work: the 421 goes out in clear
/// (what a raw reader sees), a TLS client sees its handshake fail at once instead of hanging.
async fn assert_refused_at_once(addr: SocketAddr, cert: &TestCert) {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let said = until_closed(&mut raw).await;
    assert_eq!(said, b"421 4.7.0 too many connections, try again later\r\n");
    let stream = TcpStream::connect(addr).await.unwrap();
    let handshake = tokio::time::timeout(WAIT, cert.handshake(Box::new(stream))).await;
    assert!(
        matches!(handshake, Ok(Err(_))),
        "the handshake fails at once"
    );
}

#[tokio::test]
async fn idle_tls_clients_are_told_421_and_disconnected() {
    let cert = TestCert::new();
    let config = SmtpConfig {
        idle_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let (server, addr) = tls_server(&cert, config).await;
    let (mut client, greeting) = Client::connect_tls(addr, &cert).await;
    assert_code(&greeting, 220);
    told_idle_timeout(&mut client).await;
    server.stop().await;
}

/// With a cap of two (`config`), two TLS clients of `ip` are served, a third gets 421 before any
/// handshake, and a slot freed by QUIT serves the next client.
async fn third_tls_client_is_refused_at_once(ip: IpAddr, config: SmtpConfig) {
    let cert = TestCert::new();
    let (server, addr) = tls_server_on(ip, &cert, config).await;
    let (_first, greeting) = Client::connect_tls(addr, &cert).await;
    assert_code(&greeting, 220);
    let (mut second, greeting) = Client::connect_tls(addr, &cert).await;
    assert_code(&greeting, 220);
    assert_refused_at_once(addr, &cert).await;
    assert_eq!(second.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    assert!(second.is_closed().await);
    let mut again = greeted_when_free(addr, &cert).await;
    assert_eq!(again.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    drop(again);
    server.stop().await;
}

#[tokio::test]
async fn tls_connections_over_the_cap_get_421_at_once() {
    third_tls_client_is_refused_at_once(
        Ipv4Addr::LOCALHOST.into(),
        SmtpConfig {
            max_connections: 2,
            ..test_config()
        },
    )
    .await;
}

/// Through this machine's non-loopback address, since loopback clients are not held to the
/// per-IP cap.
#[tokio::test]
async fn one_address_cannot_take_every_tls_connection() {
    let Some(ip) = non_loopback_ip() else {
        return;
    };
    third_tls_client_is_refused_at_once(
        ip,
        SmtpConfig {
            max_connections_per_ip: 2,
            ..test_config()
        },
    )
    .await;
}

/// A client that connects to the TLS port and never sends a ClientHello, or stops half-way
/// through one, holds its slot only until the handshake times out (`idle_timeout`): with one
/// slot, the next client is served once the silent one has been closed.
#[tokio::test]
async fn a_stalled_tls_handshake_does_not_hold_a_slot() {
    let cert = TestCert::new();
    let config = SmtpConfig {
        idle_timeout: Duration::from_millis(200),
        max_connections: 1,
        ..test_config()
    };
    let (server, addr) = tls_server(&cert, config).await;
    // Not a byte sent: closed by the server with nothing said (a greeting would be in clear).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(until_closed(&mut silent).await, b"");
    let mut client = greeted_when_free(addr, &cert).await;
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    assert!(client.is_closed().await);
    // The header of a handshake record announcing 512 bytes, then silence.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"\x16\x03\x01\x02\x00").await.unwrap();
    assert_eq!(until_closed(&mut stalled).await, b"");
    greeted_when_free(addr, &cert).await;
    drop(server);
}

/// A client that pipelines commands and never reads the replies fills the socket buffers until
/// the server cannot write; it is dropped after `idle_timeout` like a silent one, instead of
/// holding its slot (and a graceful shutdown) for ever.
#[tokio::test]
async fn a_client_that_never_reads_does_not_hold_a_slot() {
    let config = SmtpConfig {
        idle_timeout: Duration::from_millis(200),
        max_connections: 1,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut deaf = TcpStream::connect(server.addr).await.unwrap();
    // Writes until the server stops reading (its replies have nowhere to go), then waits; the
    // write fails once the server has dropped the connection.
    let flood = tokio::spawn(async move {
        let commands = b"NOOP\r\n".repeat(64 * 1024);
        while deaf.write_all(&commands).await.is_ok() {}
        deaf
    });
    let mut client = greeted_plain_when_free(
        server.addr,
        "the slot is still held by the client that does not read",
    )
    .await;
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    let flood = tokio::time::timeout(WAIT, flood).await;
    assert!(
        flood.is_ok(),
        "the writes fail once the server has dropped the connection"
    );
    server.stop().await;
}
