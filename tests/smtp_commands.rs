//! The SMTP command dialogue over a real socket: extensions, ordering, addresses, limits.

mod common;

use common::{TestServer, assert_code, test_config};
use smtp2gmail::config::SmtpConfig;

#[tokio::test]
async fn ehlo_advertises_the_extensions() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let reply = client.cmd("EHLO client.test").await;
    assert_code(&reply, 250);
    for extension in [
        "PIPELINING",
        "SIZE 36700160",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "HELP",
    ] {
        assert!(
            reply.lines().any(|l| &l[4..] == extension),
            "{extension} missing from {reply}"
        );
    }
    assert_code(&client.cmd("HELO client.test").await, 250);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn size_follows_the_configuration() {
    let config = SmtpConfig {
        max_message_size: 1000,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    assert!(
        client
            .cmd("EHLO client.test")
            .await
            .contains("250-SIZE 1000\r\n")
    );
    assert_eq!(
        client.cmd("MAIL FROM:<a@example.com> SIZE=1001").await,
        "552 5.3.4 message size exceeds fixed limit of 1000 bytes\r\n"
    );
    assert_code(
        &client.cmd("MAIL FROM:<a@example.com> SIZE=1000").await,
        250,
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn simple_verbs_answer_with_enhanced_codes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    assert!(client.cmd("VRFY someone").await.starts_with("252 2.1.5 "));
    assert!(client.cmd("HELP").await.starts_with("214 2.0.0 "));
    assert!(client.cmd("EXPN list").await.starts_with("502 5.5.1 "));
    assert!(client.cmd("FROB").await.starts_with("500 5.5.1 "));
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 OK\r\n");
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    assert!(client.is_closed().await);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn commands_out_of_order_get_503() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert!(
        client
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("503 5.5.1 "),
        "MAIL before EHLO"
    );
    assert!(
        client
            .cmd("RCPT TO:<b@example.com>")
            .await
            .starts_with("503 5.5.1 "),
        "RCPT before MAIL"
    );
    assert!(
        client.cmd("DATA").await.starts_with("503 5.5.1 "),
        "DATA before MAIL"
    );
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert!(
        client
            .cmd("MAIL FROM:<a@example.com>")
            .await
            .starts_with("503 5.5.1 "),
        "nested MAIL"
    );
    assert!(
        client.cmd("DATA").await.starts_with("503 5.5.1 "),
        "DATA before RCPT"
    );
    client.send("BDAT 5 LAST\r\nhello").await;
    assert!(
        client.reply().await.starts_with("503 5.5.1 "),
        "BDAT before RCPT"
    );
    // The BDAT chunk was consumed, not taken for commands.
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn null_sender_and_parameters_are_accepted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("MAIL FROM:<>").await, 250);
    assert_code(&client.cmd("RSET").await, 250);
    assert_code(
        &client
            .cmd("MAIL FROM: <a@example.com> SIZE=100 BODY=8BITMIME SMTPUTF8")
            .await,
        250,
    );
    assert_code(&client.cmd("RCPT TO:<josé@example.com>").await, 250);
    assert_code(&client.cmd("RCPT TO:<Postmaster>").await, 250);
    let reply = client.data(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    assert_code(&reply, 250);
    let (envelope, _) = server.recorder.delivered().pop().unwrap();
    let rcpts: Vec<&str> = envelope.rcpt_to.iter().map(|a| a.as_str()).collect();
    assert_eq!(rcpts, ["josé@example.com", "postmaster"]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn control_characters_in_addresses_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert!(
        client
            .cmd("MAIL FROM:<a\0b@example.com>")
            .await
            .starts_with("501 5.1.7 ")
    );
    assert!(
        client
            .cmd("MAIL FROM:<\"a\0b\"@example.com>")
            .await
            .starts_with("501 5.1.7 ")
    );
    assert!(
        client
            .cmd("MAIL FROM:<a\x01b@example.com>")
            .await
            .starts_with("501 5.1.7 ")
    );
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert!(
        client
            .cmd("RCPT TO:<b\0c@example.com>")
            .await
            .starts_with("501 5.1.3 ")
    );
    assert!(
        client
            .cmd("RCPT TO:<\"b\x7f\"@example.com>")
            .await
            .starts_with("501 5.1.3 ")
    );
    assert!(
        client
            .cmd("RCPT TO:<no-at-sign>")
            .await
            .starts_with("501 5.1.3 ")
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn too_many_recipients_get_452_and_the_rest_is_delivered() {
    let config = SmtpConfig {
        max_recipients: 3,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    client
        .start_transaction(
            "a@example.com",
            &["1@example.com", "2@example.com", "3@example.com"],
        )
        .await;
    assert!(
        client
            .cmd("RCPT TO:<4@example.com>")
            .await
            .starts_with("452 4.5.3 ")
    );
    // A duplicate is not a new recipient and does not count against the limit.
    assert_code(&client.cmd("RCPT TO:<2@EXAMPLE.com>").await, 250);
    assert_code(&client.data(b"Subject: x\r\n\r\nbody\r\n.\r\n").await, 250);
    assert_eq!(server.recorder.delivered()[0].0.rcpt_to.len(), 3);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn long_lines_are_refused_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let long = format!("NOOP {}\r\n", "x".repeat(100_000));
    client.send(&long).await;
    assert!(client.reply().await.starts_with("500 5.5.2 "));
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn bare_lf_commands_are_accepted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .send("EHLO client.test\nMAIL FROM:<a@example.com>\nRCPT TO:<b@example.com>\n")
        .await;
    assert_code(&client.reply().await, 250);
    assert_eq!(client.reply().await, "250 2.1.0 OK\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 OK\r\n");
    assert_eq!(client.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    client
        .send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 OK\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 OK\r\n");
    assert!(client.reply().await.starts_with("501 5.1.3 "));
    assert_eq!(client.reply().await, "250 2.1.5 OK\r\n");
    assert!(client.reply().await.starts_with("354 "));
    client
        .send("Subject: pipelined\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .await;
    assert!(client.reply().await.starts_with("250 2.0.0 OK "));
    assert_eq!(client.reply().await, "221 2.0.0 bye\r\n");
    assert_eq!(server.recorder.delivered()[0].0.rcpt_to.len(), 2);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn address_edge_cases() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    // Non-ASCII needs SMTPUTF8 (RFC 6531); BINARYMIME is not offered.
    assert!(
        client
            .cmd("MAIL FROM:<josé@example.com>")
            .await
            .starts_with("553 5.6.7 ")
    );
    assert!(
        client
            .cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME")
            .await
            .starts_with("555 5.5.4 ")
    );
    // A quoted local part stays quoted.
    assert_code(
        &client.cmd("MAIL FROM:<\"john doe\"@example.com>").await,
        250,
    );
    assert!(
        client.cmd("RCPT TO:<>").await.starts_with("501 5.1.3 "),
        "<> is no recipient"
    );
    assert!(
        client
            .cmd("RCPT TO:<zoë@example.com>")
            .await
            .starts_with("553 5.6.7 ")
    );
    assert_code(&client.cmd("RCPT TO:<A@example.com>").await, 250);
    // Gmail's mailboxes are case-insensitive, local part included (docs/design.md, "One
    // vocabulary per stage"): a case variant is the same recipient.
    assert_eq!(
        client.cmd("RCPT TO:<a@EXAMPLE.com>").await,
        "250 2.1.5 OK (duplicate recipient)\r\n"
    );
    assert_code(&client.cmd("RCPT TO:<b@example.com>").await, 250);
    assert_code(&client.data(b"x\r\n.\r\n").await, 250);
    let (envelope, _) = server.recorder.delivered().pop().unwrap();
    assert_eq!(envelope.sender_display(), "\"john doe\"@example.com");
    let rcpts: Vec<&str> = envelope.rcpt_to.iter().map(|a| a.as_str()).collect();
    assert_eq!(rcpts, ["A@example.com", "b@example.com"]);
    drop(client);
    server.stop().await;
}

/// `Bob@x` and `bob@x` are one Gmail mailbox, so they are one envelope recipient: the first
/// spelling is kept, and Gmail gets one copy, not two.
#[tokio::test]
async fn case_variants_of_a_recipient_are_one_recipient() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    assert_code(&client.cmd("MAIL FROM:<a@example.com>").await, 250);
    assert_eq!(
        client.cmd("RCPT TO:<Bob@x.example>").await,
        "250 2.1.5 OK\r\n"
    );
    assert_eq!(
        client.cmd("RCPT TO:<bob@x.example>").await,
        "250 2.1.5 OK (duplicate recipient)\r\n"
    );
    assert_code(&client.data(b"x\r\n.\r\n").await, 250);
    let (envelope, _) = server.recorder.delivered().pop().unwrap();
    let rcpts: Vec<&str> = envelope.rcpt_to.iter().map(|a| a.as_str()).collect();
    assert_eq!(rcpts, ["Bob@x.example"]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn numbers_too_large_for_any_size() {
    let config = SmtpConfig {
        max_message_size: 1000,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.client().await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    for size in ["99999999999999999999", "99999999999999999999999"] {
        let reply = client
            .cmd(&format!("MAIL FROM:<a@example.com> SIZE={size}"))
            .await;
        assert!(reply.starts_with("552 5.3.4 "), "{size}: {reply}");
    }
    // An all-digit local part is not a size.
    assert_code(
        &client
            .cmd("MAIL FROM:<123456789012345678901234@example.com>")
            .await,
        250,
    );
    assert_code(&client.cmd("RCPT TO:<b@example.com>").await, 250);
    // The chunk that follows cannot be skipped: the session ends instead of running data as commands.
    client
        .send("BDAT 100000000000000000000005 LAST\r\nhelloNOOP\r\n")
        .await;
    assert!(client.reply().await.starts_with("552 5.3.4 "));
    assert!(client.is_closed().await);
    assert!(server.recorder.delivered().is_empty());
    server.stop().await;
}
