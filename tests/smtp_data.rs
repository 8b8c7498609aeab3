//! Message bodies over a real socket: DATA and BDAT, dot-unstuffing, smuggling, size limits,
//! failures at the end of DATA.

mod common;

use common::{Client, TestServer, assert_code, test_config};
use smtp2gmail::config::SmtpConfig;
use smtp2gmail::relay::DeliveryError;
use smtp2gmail::status::Status;

#[tokio::test]
async fn body_is_delivered_byte_for_byte() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let body: &[u8] = b"Subject: caf\xc3\xa9\r\nX-Bin: \x01\x7f\xff\r\n\r\nline\r\n\r\n  spaced  \r\nno final newline";
    let mut wire = body.to_vec();
    wire.extend_from_slice(b"\r\n.\r\n");
    let reply = client.data(&wire).await;
    assert!(reply.starts_with("250 2.0.0 OK "), "{reply}");
    let (envelope, delivered) = server.recorder.delivered().pop().unwrap();
    let mut expected = body.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(delivered, expected);
    assert_eq!(reply, format!("250 2.0.0 OK {}\r\n", envelope.id));
    assert_eq!(envelope.sender_display(), "a@example.com");
    assert_eq!(envelope.helo, "client.test");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn dots_are_unstuffed_including_the_first_line() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(
        &client.data(b"..first\r\n\r\n..\r\n...x\r\n.\r\n").await,
        250,
    );
    assert_eq!(
        server.recorder.bodies(),
        [b".first\r\n\r\n.\r\n..x\r\n".to_vec()]
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn empty_message_is_accepted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    // DATA and the terminator in one write, as a client that pipelines would.
    client.send("DATA\r\n.\r\n").await;
    assert!(client.reply().await.starts_with("354 "));
    assert_code(&client.reply().await, 250);
    assert_eq!(server.recorder.bodies(), [Vec::<u8>::new()]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn smuggled_terminators_are_content() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let smuggled = "Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n\
                    second\r\n\n.\n\r.\nmore\r\n.\r\n";
    assert_code(&client.data(smuggled.as_bytes()).await, 250);
    assert_eq!(
        client.cmd("NOOP").await,
        "250 2.0.0 OK\r\n",
        "no stray replies from a second envelope"
    );
    let delivered = server.recorder.delivered();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].1.ends_with(b"\n.\n\r.\nmore\r\n"));
    drop(client);
    server.stop().await;
}

fn limited(max_message_size: u64) -> SmtpConfig {
    SmtpConfig {
        max_message_size,
        ..test_config()
    }
}

#[tokio::test]
async fn message_at_the_limit_is_accepted_and_one_byte_more_is_552() {
    let server = TestServer::with_config(limited(100)).await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let exact = format!("{}\r\n", "x".repeat(98));
    assert_code(&client.data(format!("{exact}.\r\n").as_bytes()).await, 250);
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let over = format!("{}\r\n", "x".repeat(99));
    assert!(
        client
            .data(format!("{over}.\r\n").as_bytes())
            .await
            .starts_with("552 5.3.4 ")
    );
    assert_eq!(server.recorder.bodies(), [exact.into_bytes()]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn oversized_data_is_read_to_the_end_then_refused_and_the_session_goes_on() {
    let server = TestServer::with_config(limited(10_000)).await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let line = format!("{}\r\n", "y".repeat(998));
    let mut wire = line.repeat(3_000).into_bytes(); // 3 MB: through the spill threshold too
    wire.extend_from_slice(b".\r\n");
    assert!(client.data(&wire).await.starts_with("552 5.3.4 "));
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 OK\r\n");
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_code(&client.data(b"small\r\n.\r\n").await, 250);
    assert_eq!(server.recorder.bodies(), [b"small\r\n".to_vec()]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn large_message_spills_to_disk_and_arrives_intact() {
    let spill = tempfile::tempdir().unwrap();
    let config = SmtpConfig {
        spill_dir: Some(spill.path().to_path_buf()),
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    let body: Vec<u8> = (0..4_999_992u32)
        .map(|i| b"abcdefghij\r\n"[(i % 12) as usize])
        .collect();
    let mut wire = body.clone();
    wire.extend_from_slice(b".\r\n");
    assert_code(&client.data(&wire).await, 250);
    assert!(server.recorder.bodies()[0] == body, "5 MB body differs");
    drop(client);
    server.stop().await;
    assert_eq!(
        std::fs::read_dir(spill.path()).unwrap().count(),
        0,
        "spill file removed"
    );
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    client.send("BDAT 12\r\nSubject: x\r\n").await;
    assert_eq!(client.reply().await, "250 2.0.0 12 octets received\r\n");
    // Dots are not special in BDAT, and the chunk may contain anything, even command-like lines.
    client
        .send("BDAT 19\r\n\r\n.\r\nQUIT\r\n..body\r\nBDAT 0 LAST\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.0.0 19 octets received\r\n");
    assert!(client.reply().await.starts_with("250 2.0.0 OK "));
    assert_eq!(
        server.recorder.bodies(),
        [b"Subject: x\r\n\r\n.\r\nQUIT\r\n..body\r\n".to_vec()]
    );
    assert!(
        client.cmd("DATA").await.starts_with("503 "),
        "transaction ended"
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn oversized_bdat_is_refused_at_last() {
    let server = TestServer::with_config(limited(10)).await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    client
        .send("BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678")
        .await;
    assert_code(&client.reply().await, 250);
    assert!(client.reply().await.starts_with("552 5.3.4 "));
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    assert!(server.recorder.bodies().is_empty());
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn data_after_bdat_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    client.send("BDAT 3\r\nabc").await;
    assert_code(&client.reply().await, 250);
    assert!(client.cmd("DATA").await.starts_with("503 5.5.1 "));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn disconnect_mid_data_delivers_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert!(client.cmd("DATA").await.starts_with("354 "));
    client
        .send("Subject: cut short\r\n\r\nhalf a message\r\n")
        .await;
    drop(client);
    // Once the server has drained, the session that saw the disconnect is gone.
    let recorder = server.recorder.clone();
    server.stop().await;
    assert!(recorder.delivered().is_empty());
}

async fn failure_leaves_session_usable(error: DeliveryError, expected: &str) {
    let server = TestServer::start().await;
    server.recorder.fail_next(error);
    let mut client = server.client().await;
    client
        .start_transaction("a@example.com", &["b@example.com"])
        .await;
    assert_eq!(client.data(b"first\r\n.\r\n").await, expected);
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 OK\r\n");
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_code(&client.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_code(&client.data(b"second\r\n.\r\n").await, 250);
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    assert_eq!(server.recorder.bodies(), [b"second\r\n".to_vec()]);
    server.stop().await;
}

#[tokio::test]
async fn temporary_failure_is_451_and_the_session_goes_on() {
    let error = DeliveryError::Temporary {
        status: Status::NO_ANSWER,
        reason: "upstream unavailable".into(),
        retry_after: None,
        cause: Default::default(),
    };
    failure_leaves_session_usable(error, "451 4.4.1 upstream unavailable\r\n").await;
}

#[tokio::test]
async fn permanent_failure_is_554_and_the_session_goes_on() {
    let error = DeliveryError::Permanent {
        status: Status::BAD_MESSAGE,
        reason: "malformed message".into(),
    };
    failure_leaves_session_usable(error, "554 5.6.0 malformed message\r\n").await;
}

#[tokio::test]
async fn policy_failure_is_550() {
    let error = DeliveryError::Permanent {
        status: Status::POLICY,
        reason: "sender not allowed".into(),
    };
    failure_leaves_session_usable(error, "550 5.7.1 sender not allowed\r\n").await;
}

#[tokio::test]
async fn many_messages_on_one_connection() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 0..20 {
        client
            .start_transaction("a@example.com", &["b@example.com"])
            .await;
        assert_code(
            &client
                .data(format!("message {i}\r\n.\r\n").as_bytes())
                .await,
            250,
        );
    }
    assert_eq!(server.recorder.delivered().len(), 20);
    let (mut other, _) = Client::connect(server.addr).await;
    assert_eq!(other.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    drop(client);
    server.stop().await;
}
