//! DSNs as another program reads them: each composed DSN is parsed by Python's `email` package
//! (tests/notify/dsn_fields.py), which must find the report, its three parts and every field
//! RFC 3464 and the issue name, and nothing that outside text tried to add.

mod common;

use std::time::{Duration, SystemTime};

use common::python;

use serde_json::Value;
use smtp2gmail::message::{Address, Envelope, MessageId};
use smtp2gmail::notify::dsn::{
    self, Action, DELAYED_SUBJECT, FAILED_SUBJECT, GMAIL_DIAGNOSTIC_TYPE, RecipientOutcome, Report,
};
use smtp2gmail::status::Status;

const ORIGINAL: &[u8] =
    b"From: App <app@example.com>\r\nTo: bob@example.org, carol@example.org\r\n\
Bcc: hidden@example.net\r\nSubject: Invoice 42\r\nMessage-ID: <inv42@example.com>\r\n\
Date: Mon, 04 May 2026 10:00:00 +0000\r\n\r\nThe body, which is not returned.\r\n";

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn envelope() -> Envelope {
    Envelope {
        id: MessageId::from_stored("019de0a1b2c3d4e5f6"),
        mail_from: Some(Address::new("app@example.com")),
        rcpt_to: vec![Address::new("bob@example.org")],
        remote: ([127, 0, 0, 1], 40000).into(),
        helo: "client".into(),
        auth_user: None,
        received_at: at(1_777_888_800),
    }
}

fn outcome(
    address: &str,
    action: Action,
    status: Status,
    diagnostic: Option<&str>,
) -> RecipientOutcome {
    RecipientOutcome {
        address: address.into(),
        action,
        status,
        diagnostic: diagnostic.map(str::to_string),
        last_attempt: Some(at(1_777_889_730)),
    }
}

fn compose(head: &[u8], recipients: &[RecipientOutcome], to: &[&str]) -> Vec<u8> {
    let envelope = envelope();
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    let report = Report {
        original: &envelope,
        original_head: head,
        recipients,
        explanation: "Gmail refused the message permanently.\n\nThe operator can run \
                      `smtp2gmail queue show 019de0a1b2c3d4e5f6`.",
        reporting_host: "relay.example.com",
        diagnostic_type: GMAIL_DIAGNOSTIC_TYPE,
        from: "app@example.com",
        to: &to,
        will_retry_until: Some(at(1_778_320_800)),
        now: at(1_777_889_731),
    };
    dsn::compose(&report).unwrap().raw
}

/// What Python's `email` package reads in `raw`.
fn python_reads(raw: &[u8]) -> Value {
    serde_json::from_slice(&python::run_script("notify/dsn_fields.py", raw)).unwrap()
}

/// What Python reads in the DSN about one failed recipient, sent to `to`.
fn python_reads_failure(
    head: &[u8],
    recipient: &str,
    status: Status,
    diagnostic: &str,
    to: &str,
) -> Value {
    let failed = outcome(recipient, Action::Failed, status, Some(diagnostic));
    python_reads(&compose(head, &[failed], &[to]))
}

/// The values of the fields called `name` (case-insensitively) in a list of [name, value].
fn all<'a>(fields: &'a Value, name: &str) -> Vec<&'a str> {
    fields
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|f| f[1].as_str().unwrap())
        .collect()
}

/// The one value of the field `name`.
fn one<'a>(fields: &'a Value, name: &str) -> &'a str {
    match all(fields, name)[..] {
        [value] => value,
        ref other => panic!("{name}: {other:?} in {fields}"),
    }
}

fn part<'a>(read: &'a Value, content_type: &str) -> &'a Value {
    let parts = read["parts"].as_array().unwrap();
    let found = parts.iter().find(|p| p["content_type"] == content_type);
    found.unwrap_or_else(|| panic!("no {content_type} part in {read}"))
}

#[test]
fn python_reads_a_failure_report_with_every_field() {
    let raw = compose(
        ORIGINAL,
        &[
            outcome(
                "bob@example.org",
                Action::Failed,
                Status(5, 7, 1),
                Some("Invalid To header"),
            ),
            outcome(
                "carol@example.org",
                Action::Failed,
                Status(5, 7, 1),
                Some("Invalid To header"),
            ),
        ],
        &["app@example.com"],
    );
    let read = python_reads(&raw);
    assert_eq!(read["defects"], serde_json::json!([]), "{read}");
    let top = &read["fields"];
    assert_eq!(read["content_type"], "multipart/report");
    assert_eq!(read["report_type"], "delivery-status");
    assert_eq!(one(top, "Subject"), FAILED_SUBJECT);
    assert_eq!(one(top, "From"), "Mail Delivery System <app@example.com>");
    assert_eq!(one(top, "To"), "app@example.com");
    assert_eq!(one(top, "Auto-Submitted"), "auto-replied");
    assert_eq!(one(top, "In-Reply-To"), "<inv42@example.com>");
    assert_eq!(one(top, "References"), "<inv42@example.com>");
    assert_eq!(one(top, "Date"), "Mon, 04 May 2026 10:15:31 +0000");
    let id = one(top, "Message-ID");
    assert!(
        id.starts_with("<019de0a1b2c3d4e5f6.") && id.ends_with(".dsn@relay.example.com>"),
        "{id}"
    );

    let kinds: Vec<&str> = read["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    for part in read["parts"].as_array().unwrap() {
        assert_eq!(part["defects"], serde_json::json!([]), "{part}");
    }

    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(
        blocks.len(),
        3,
        "one per message, one per recipient: {blocks:?}"
    );
    assert_eq!(one(&blocks[0], "Reporting-MTA"), "dns; relay.example.com");
    assert_eq!(
        one(&blocks[0], "Arrival-Date"),
        "Mon, 04 May 2026 10:00:00 +0000"
    );
    for (block, address) in blocks[1..]
        .iter()
        .zip(["bob@example.org", "carol@example.org"])
    {
        assert_eq!(one(block, "Final-Recipient"), format!("rfc822; {address}"));
        assert_eq!(one(block, "Action"), "failed");
        assert_eq!(one(block, "Status"), "5.7.1");
        assert_eq!(
            one(block, "Diagnostic-Code"),
            "X-Gmail-API; Invalid To header"
        );
        assert_eq!(
            one(block, "Last-Attempt-Date"),
            "Mon, 04 May 2026 10:15:30 +0000"
        );
    }

    let returned = part(&read, "text/rfc822-headers");
    let headers = &returned["headers"];
    assert_eq!(one(headers, "Subject"), "Invoice 42");
    assert_eq!(one(headers, "Message-ID"), "<inv42@example.com>");
    assert!(all(headers, "Bcc").is_empty(), "{headers}");
    assert!(!returned["text"].as_str().unwrap().contains("The body"));

    let text = part(&read, "text/plain")["text"].as_str().unwrap();
    for expected in [
        "could not be delivered",
        "Invoice 42",
        "<bob@example.org>: failed 5.7.1: Invalid To header",
        "queue show",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
}

#[test]
fn python_reads_a_delay_warning() {
    let raw = compose(
        ORIGINAL,
        &[outcome(
            "bob@example.org",
            Action::Delayed,
            Status(4, 4, 1),
            None,
        )],
        &["app@example.com"],
    );
    let read = python_reads(&raw);
    assert_eq!(one(&read["fields"], "Subject"), DELAYED_SUBJECT);
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(one(&blocks[1], "Action"), "delayed");
    assert_eq!(one(&blocks[1], "Status"), "4.4.1");
    assert_eq!(
        one(&blocks[1], "Will-Retry-Until"),
        "Sat, 09 May 2026 10:00:00 +0000"
    );
    assert!(all(&blocks[1], "Diagnostic-Code").is_empty());
}

#[test]
fn python_finds_no_field_that_a_diagnostic_or_address_tried_to_add() {
    let read = python_reads_failure(
        ORIGINAL,
        "bob@example.org\r\nAction: delivered",
        Status(5, 1, 1),
        "no such user\r\n\r\nFinal-Recipient: rfc822; evil@x\r\nX-Evil: 1\nStatus: 2.0.0",
        "app@example.com",
    );
    assert!(all(&read["fields"], "X-Evil").is_empty());
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let recipient = &blocks[1];
    assert_eq!(all(recipient, "Final-Recipient").len(), 1);
    assert_eq!(one(recipient, "Action"), "failed");
    assert_eq!(one(recipient, "Status"), "5.1.1");
    assert!(all(recipient, "X-Evil").is_empty());
    assert_eq!(
        one(recipient, "Diagnostic-Code"),
        "X-Gmail-API; no such user Final-Recipient: rfc822; evil@x X-Evil: 1 Status: 2.0.0"
    );
}

#[test]
fn python_reads_long_diagnostics_folded_and_cut() {
    let long = "The daily sending limit of this account was exceeded ".repeat(40);
    let raw = compose(
        ORIGINAL,
        &[outcome(
            "bob@example.org",
            Action::Failed,
            Status(5, 4, 5),
            Some(&long),
        )],
        &["app@example.com"],
    );
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(text.split("\r\n").all(|line| line.len() <= 998));
    let read = python_reads(&raw);
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    let code = one(&blocks[1], "Diagnostic-Code");
    assert!(
        code.starts_with("X-Gmail-API; The daily sending limit"),
        "{code}"
    );
    assert!(code.ends_with("..."), "{code}");
    assert!(code.len() < 1000, "{}", code.len());
}

#[test]
fn python_reads_an_smtputf8_report() {
    let head = "From: Jöran <jöran@bücher.example>\r\nTo: 用户@例子.广告\r\nSubject: Grüße\r\n\
Message-ID: <grüße@bücher.example>\r\n\r\nbody\r\n"
        .as_bytes();
    let read = python_reads_failure(
        head,
        "用户@例子.广告",
        Status(5, 1, 1),
        "Unknown user",
        "jöran@bücher.example",
    );
    assert_eq!(one(&read["fields"], "To"), "jöran@bücher.example");
    let blocks = part(&read, "message/delivery-status")["blocks"]
        .as_array()
        .unwrap();
    assert_eq!(
        one(&blocks[1], "Final-Recipient"),
        "utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.\\x{5E7F}\\x{544A}"
    );
    let headers = &part(&read, "message/global-headers")["headers"];
    assert_eq!(one(headers, "Subject"), "Grüße");
    let text = part(&read, "text/plain")["text"].as_str().unwrap();
    assert!(
        text.contains("<用户@例子.广告>: failed 5.1.1: Unknown user"),
        "{text}"
    );
}
