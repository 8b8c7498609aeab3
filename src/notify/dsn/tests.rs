//! The DSN read back with mail-parser: its fields, its parts, and what outside text cannot do to
//! it. (tests/notify_dsn.rs reads it with Python's `email` package.)

use std::time::{Duration, SystemTime};

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::*;
use crate::message::{Address, MessageId};

const ORIGINAL: &[u8] = b"From: App <app@example.com>\r\nTo: bob@example.org\r\n\
Bcc: hidden@example.net\r\nSubject: Invoice 42\r\nMessage-ID: <inv42@example.com>\r\n\
Date: Mon, 04 May 2026 10:00:00 +0000\r\n\r\nThe body, which is not returned.\r\n";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn envelope(sender: &str) -> Envelope {
    Envelope {
        id: MessageId::from_stored("019de0a1b2c3d4e5f6"),
        mail_from: Some(Address::new(sender)),
        rcpt_to: vec![Address::new("bob@example.org")],
        remote: ([127, 0, 0, 1], 40000).into(),
        helo: "client".into(),
        auth_user: None,
        received_at: at(1_777_888_800),
    }
}

fn failed(address: &str, diagnostic: Option<&str>) -> RecipientOutcome {
    RecipientOutcome {
        address: address.into(),
        action: Action::Failed,
        status: Status(5, 7, 1),
        diagnostic: diagnostic.map(str::to_string),
        last_attempt: Some(at(1_777_889_730)),
    }
}

fn compose_with(recipients: &[RecipientOutcome], head: &[u8], to: &[String]) -> Dsn {
    let envelope = envelope("app@example.com");
    compose(&Report {
        original: &envelope,
        original_head: head,
        recipients,
        explanation: "Gmail refused the message.\n\nThe operator can fix the account and run \
                      `smtp2gmail queue retry 019de0a1b2c3d4e5f6`.",
        reporting_host: "relay.example.com",
        diagnostic_type: GMAIL_DIAGNOSTIC_TYPE,
        from: "app@example.com",
        to,
        will_retry_until: Some(at(1_778_320_800)),
        now: at(1_777_889_731),
    })
    .unwrap()
}

fn sender() -> Vec<String> {
    vec!["app@example.com".to_string()]
}

/// The fields of the delivery-status part, each block as (name, unfolded value) pairs.
fn status_blocks(raw: &[u8]) -> Vec<Vec<(String, String)>> {
    let message = MessageParser::new().parse(raw).unwrap();
    let part = message
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .unwrap();
    let text = String::from_utf8(part.contents().to_vec()).unwrap();
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .map(|l| {
                    let (name, value) = l.split_once(':').unwrap();
                    (name.to_string(), value.trim().to_string())
                })
                .collect()
        })
        .collect()
}

fn value<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_failure_report_has_the_three_parts_and_the_fields() {
    let dsn = compose_with(
        &[failed("bob@example.org", Some("Invalid To header"))],
        ORIGINAL,
        &sender(),
    );
    let message = MessageParser::new().parse(&dsn.raw).unwrap();
    assert_eq!(message.subject(), Some(FAILED_SUBJECT));
    let content_type = message.content_type().unwrap();
    assert_eq!(content_type.subtype(), Some("report"));
    assert_eq!(
        content_type.attribute("report-type"),
        Some("delivery-status")
    );
    assert_eq!(message.in_reply_to().as_text(), Some("inv42@example.com"));
    assert_eq!(message.references().as_text(), Some("inv42@example.com"));
    assert_eq!(
        message.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(
        message.message_id(),
        Some(&dsn.message_id[1..dsn.message_id.len() - 1])
    );
    assert!(dsn.message_id.ends_with(".dsn@relay.example.com>"));
    let from = message.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("app@example.com"));
    assert_eq!(from.name(), Some("Mail Delivery System"));

    let types: Vec<String> = message.parts[1..]
        .iter()
        .map(|p| {
            let c = p.content_type().unwrap();
            format!("{}/{}", c.ctype(), c.subtype().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );

    let blocks = status_blocks(&dsn.raw);
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        value(&blocks[0], "Reporting-MTA"),
        Some("dns; relay.example.com")
    );
    assert_eq!(
        value(&blocks[0], "Arrival-Date"),
        Some("Mon, 04 May 2026 10:00:00 +0000")
    );
    let recipient = &blocks[1];
    assert_eq!(
        value(recipient, "Final-Recipient"),
        Some("rfc822; bob@example.org")
    );
    assert_eq!(value(recipient, "Action"), Some("failed"));
    assert_eq!(value(recipient, "Status"), Some("5.7.1"));
    assert_eq!(
        value(recipient, "Diagnostic-Code"),
        Some("X-Gmail-API; Invalid To header")
    );
    assert_eq!(
        value(recipient, "Will-Retry-Until"),
        None,
        "only for delays"
    );

    let headers = String::from_utf8(message.parts[3].contents().to_vec()).unwrap();
    assert!(headers.contains("Subject: Invoice 42\r\n"), "{headers}");
    assert!(
        !headers.contains("Bcc"),
        "the synthesised Bcc is not returned: {headers}"
    );
    assert!(!String::from_utf8_lossy(&dsn.raw).contains("The body"));

    let text = message.body_text(0).unwrap();
    assert!(text.contains("    Subject: Invoice 42\r\n"), "{text}");
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("queue retry 019de0a1b2c3d4e5f6"), "{text}");
    assert!(text.contains("Invalid To header"), "{text}");
}

#[test]
fn a_delay_warning_says_it_is_one() {
    let mut delayed = failed("bob@example.org", None);
    delayed.action = Action::Delayed;
    delayed.status = Status(4, 4, 1);
    let dsn = compose_with(&[delayed], ORIGINAL, &sender());
    let message = MessageParser::new().parse(&dsn.raw).unwrap();
    assert_eq!(message.subject(), Some(DELAYED_SUBJECT));
    let blocks = status_blocks(&dsn.raw);
    assert_eq!(value(&blocks[1], "Action"), Some("delayed"));
    assert_eq!(value(&blocks[1], "Status"), Some("4.4.1"));
    assert_eq!(value(&blocks[1], "Diagnostic-Code"), None);
    assert_eq!(
        value(&blocks[1], "Will-Retry-Until"),
        Some("Sat, 09 May 2026 10:00:00 +0000")
    );
    let text = message.body_text(0).unwrap();
    assert!(text.contains("YOU DO NOT NEED TO RESEND"), "{text}");
}

#[test]
fn line_breaks_in_a_diagnostic_or_an_address_forge_no_field() {
    let dsn = compose_with(
        &[failed(
            "bob@example.org\r\nAction: delivered",
            Some("bad\r\nAction: delivered\r\n\r\nX-Evil: 1\nStatus: 2.0.0"),
        )],
        ORIGINAL,
        &sender(),
    );
    let blocks = status_blocks(&dsn.raw);
    assert_eq!(blocks.len(), 2, "no block was added: {blocks:?}");
    let recipient = &blocks[1];
    let names: Vec<&str> = recipient.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Final-Recipient",
            "Action",
            "Status",
            "Diagnostic-Code",
            "Last-Attempt-Date"
        ]
    );
    assert_eq!(value(recipient, "Action"), Some("failed"));
    assert_eq!(value(recipient, "Status"), Some("5.7.1"));
    assert_eq!(
        value(recipient, "Diagnostic-Code"),
        Some("X-Gmail-API; bad Action: delivered X-Evil: 1 Status: 2.0.0")
    );
    let message = MessageParser::new().parse(&dsn.raw).unwrap();
    assert!(message.header("X-Evil").is_none());
}

#[test]
fn an_address_that_cannot_be_a_header_is_refused() {
    let envelope = envelope("app@example.com");
    let recipients = [failed("bob@example.org", None)];
    let report = |to: &[String]| {
        compose(&Report {
            original: &envelope,
            original_head: ORIGINAL,
            recipients: &recipients,
            explanation: "",
            reporting_host: "relay.example.com",
            diagnostic_type: GMAIL_DIAGNOSTIC_TYPE,
            from: "app@example.com",
            to,
            will_retry_until: None,
            now: at(1_777_889_731),
        })
    };
    let forged = ["a@x\r\nBcc: evil@y".to_string()];
    assert!(matches!(report(&forged), Err(DsnError::Address { .. })));
    assert_eq!(report(&[]), Err(DsnError::Empty));
}

#[test]
fn a_long_diagnostic_is_folded_and_cut() {
    let words = "quota exceeded for this user ".repeat(100);
    let unbroken = "x".repeat(5000);
    for diagnostic in [words.as_str(), unbroken.as_str()] {
        let dsn = compose_with(
            &[failed("bob@example.org", Some(diagnostic))],
            ORIGINAL,
            &sender(),
        );
        let raw = String::from_utf8(dsn.raw.clone()).unwrap();
        assert!(raw.split("\r\n").all(|l| l.len() <= 998), "a line over 998");
        let blocks = status_blocks(&dsn.raw);
        let code = value(&blocks[1], "Diagnostic-Code").unwrap();
        assert!(code.len() <= 20 + text::MAX_VALUE + 3, "{}", code.len());
        assert!(code.ends_with("..."), "cut is marked");
    }
    let dsn = compose_with(
        &[failed("bob@example.org", Some(&words))],
        ORIGINAL,
        &sender(),
    );
    let status = String::from_utf8(dsn.raw).unwrap();
    let diagnostic_lines = status
        .split("Diagnostic-Code:")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .take_while(|l| !l.contains(':') || l.starts_with(' '));
    for line in diagnostic_lines {
        assert!(line.len() <= 78, "{line:?}");
    }
}

#[test]
fn non_ascii_addresses_are_escaped_in_the_report_and_kept_in_headers() {
    let head = "From: Jöran <jöran@bücher.example>\r\nTo: 用户@例子.广告\r\nSubject: Grüße\r\n\r\n"
        .as_bytes();
    let dsn = compose_with(
        &[failed("用户@例子.广告", Some("Bad recipient"))],
        head,
        &["jöran@bücher.example".to_string()],
    );
    let blocks = status_blocks(&dsn.raw);
    assert_eq!(
        value(&blocks[1], "Final-Recipient"),
        Some("utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.\\x{5E7F}\\x{544A}")
    );
    let message = MessageParser::new().parse(&dsn.raw).unwrap();
    let to = message.to().unwrap().first().unwrap();
    assert_eq!(to.address(), Some("jöran@bücher.example"));
    let headers_part = message.parts.last().unwrap();
    let content_type = headers_part.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("message", Some("global-headers"))
    );
    let text = message.body_text(0).unwrap();
    assert!(text.contains("Subject: Grüße"), "{text}");
}

#[test]
fn the_boundary_is_in_no_part() {
    // Whatever the boundary, the original headers cannot end a part: the composer picks one
    // that no part contains. A field that holds a would-be boundary shows the check runs.
    let head = b"Subject: --=_dsn_0000000000000000\r\nX-B: --=_dsn_\r\n\r\n";
    let dsn = compose_with(&[failed("bob@example.org", None)], head, &sender());
    let message = MessageParser::new().parse(&dsn.raw).unwrap();
    assert_eq!(message.parts.len(), 4, "the multipart and its three parts");
    let PartType::Text(headers) = &message.parts[3].body else {
        panic!("{:?}", message.parts[3].body);
    };
    assert!(headers.contains("X-B: --=_dsn_"), "{headers}");
}

#[test]
fn a_message_without_message_id_is_answered_without_threading() {
    let dsn = compose_with(
        &[failed("bob@example.org", None)],
        b"Subject: s\r\n\r\n",
        &sender(),
    );
    let message = MessageParser::new().parse(&dsn.raw).unwrap();
    assert!(message.header("In-Reply-To").is_none());
    assert!(message.header("References").is_none());
}
