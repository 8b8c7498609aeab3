//! Console-mode rendering of a message for a person reading a terminal.
//!
//! The summary answers what a developer checks when their application sends mail: who it went to,
//! what the headers say once decoded, what the recipient would read, and what is attached. Anything
//! else is one `format = "raw"` away, so the summary never tries to be complete.

use std::time::{Duration, SystemTime};

use mail_parser::{Addr, Address, Group, HeaderName, HeaderValue, Message, MessageParser};
use mail_parser::{MessagePart, MimeHeaders};

use super::file::rfc3339;
use crate::message::Envelope;

/// Width of the separator lines; fits the classic 80-column terminal.
const RULE_WIDTH: usize = 78;

/// Labels are padded to this many columns so values line up.
const LABEL_WIDTH: usize = 16;

/// The most of one text body shown, in bytes: a person reads a terminal, and a 5 MB body
/// printed whole scrolls everything else away (and cost more than the parse). The rest is
/// counted; `format = "raw"` and the inbox show the message whole.
const SHOWN_TEXT: usize = 256 * 1024;

/// The headers shown, in this order.
const HEADERS: [(&str, HeaderName<'static>); 7] = [
    ("From", HeaderName::From),
    ("To", HeaderName::To),
    ("Cc", HeaderName::Cc),
    ("Bcc", HeaderName::Bcc),
    ("Subject", HeaderName::Subject),
    ("Date", HeaderName::Date),
    ("Message-ID", HeaderName::MessageId),
];

/// A readable block: envelope, main headers, decoded text body, attachment list.
///
/// Works on any bytes at all (empty, binary, broken MIME): the client's message was already
/// accepted, so the developer must see at least the envelope rather than a panic.
pub fn render(envelope: &Envelope, raw: &[u8]) -> String {
    let mut out = rule(&format!("message {}", envelope.id));
    push_envelope(&mut out, envelope, raw.len());
    out.push('\n');
    match MessageParser::default().parse(raw) {
        Some(message) => {
            push_headers(&mut out, &message);
            push_body(&mut out, &message);
            push_attachments(&mut out, &message);
        }
        None if raw.is_empty() => out.push_str("(empty message)\n"),
        None => {
            // Still worth showing: a hand-typed test message without headers is the usual cause.
            out.push_str("(no headers could be parsed; the content follows as received)\n\n");
            push_text(&mut out, &String::from_utf8_lossy(raw));
        }
    }
    out.push_str(&rule(&format!("end of message {}", envelope.id)));
    out
}

/// The exact received bytes between two marker lines naming the message.
pub fn raw_block(envelope: &Envelope, raw: &[u8]) -> Vec<u8> {
    let mut out = format!("=== message {} ({} bytes) ===\n", envelope.id, raw.len()).into_bytes();
    out.extend_from_slice(raw);
    if !raw.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("=== end {} ===\n", envelope.id).as_bytes());
    out
}

/// A separator line carrying `title`, so the start and end of each message stand out in a
/// scrolling terminal and can be searched for.
fn rule(title: &str) -> String {
    let head = format!("── {title} ");
    let fill = RULE_WIDTH.saturating_sub(head.chars().count());
    format!("{head}{}\n", "─".repeat(fill))
}

/// What the SMTP dialogue said, which is what really decides delivery, whatever the headers claim.
fn push_envelope(out: &mut String, envelope: &Envelope, size: usize) {
    let recipients = envelope.rcpt_to.iter().map(ToString::to_string);
    push_field(out, "Envelope-From", [envelope.sender_display().into()]);
    push_field(out, "Envelope-To", recipients);
    let client = format!("{} (HELO {})", envelope.remote, envelope.helo);
    push_field(out, "Client", [client]);
    push_field(out, "Auth-User", envelope.auth_user.iter().cloned());
    push_field(out, "Received-At", [whole_seconds(envelope.received_at)]);
    push_field(out, "Size", [format!("{size} bytes")]);
}

/// The time in RFC 3339 without the nanoseconds, which are noise to someone reading a terminal.
fn whole_seconds(at: SystemTime) -> String {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let fraction = Duration::new(0, since_epoch.subsec_nanos());
    rfc3339(at.checked_sub(fraction).unwrap_or(at))
}

/// One labelled field; several values go on lines of their own under the first, so long
/// recipient lists stay readable. No values, no line.
fn push_field(out: &mut String, label: &str, values: impl IntoIterator<Item = String>) {
    let mut label = format!("{label}:");
    for value in values {
        out.push_str(&format!("{label:<LABEL_WIDTH$}{}\n", one_line(&value)));
        label.clear();
    }
}

fn push_headers(out: &mut String, message: &Message<'_>) {
    let before = out.len();
    for (label, name) in &HEADERS {
        push_field(out, label, header_values(message, name));
    }
    if out.len() == before {
        out.push_str("(no From, To, Cc, Bcc, Subject, Date or Message-ID header)\n");
    }
}

/// Every occurrence of header `name`, decoded: the display names and encoded words a mail client
/// would show. Headers the parser could not make sense of are shown as written, because a
/// malformed header is exactly what the developer needs to see.
fn header_values(message: &Message<'_>, name: &HeaderName<'_>) -> Vec<String> {
    // Date and Message-ID have nothing to decode; as written they keep their angle brackets and
    // time zone comments, which a re-formatted value would lose.
    let verbatim = matches!(name, HeaderName::Date | HeaderName::MessageId);
    let mut values = Vec::new();
    for header in message.headers().iter().filter(|h| h.name == *name) {
        match header.value() {
            HeaderValue::Address(address) => values.extend(addresses(address)),
            HeaderValue::Text(text) if !verbatim => values.push(text.to_string()),
            _ => {
                let start = header.offset_start as usize;
                let written = message.raw_message().get(start..header.offset_end as usize);
                let written = String::from_utf8_lossy(written.unwrap_or_default());
                if !written.trim().is_empty() {
                    values.push(written.into_owned());
                }
            }
        }
    }
    values
}

/// An address header as mailboxes; a named group stays on one line, like `team: a@x, b@x;`.
fn addresses(address: &Address<'_>) -> Vec<String> {
    match address {
        Address::List(list) => list.iter().filter_map(mailbox).collect(),
        Address::Group(groups) => groups.iter().flat_map(group).collect(),
    }
}

fn group(group: &Group<'_>) -> Vec<String> {
    let members = group.addresses.iter().filter_map(mailbox);
    match group.name.as_deref() {
        Some(name) => vec![format!(
            "{name}: {};",
            members.collect::<Vec<_>>().join(", ")
        )],
        None => members.collect(),
    }
}

fn mailbox(addr: &Addr<'_>) -> Option<String> {
    match (addr.name(), addr.address()) {
        (Some(name), Some(address)) => Some(format!("{name} <{address}>")),
        (Some(only), None) | (None, Some(only)) => Some(only.to_string()),
        (None, None) => None,
    }
}

/// The text a recipient would read. The parser lists, in order, the parts a mail client would
/// display, and falls back to HTML parts when there is no plain-text alternative.
fn push_body(out: &mut String, message: &Message<'_>) {
    let mut shown = false;
    for (pos, part) in message.text_bodies().enumerate() {
        // Inline images are listed among the body parts too; they have no text and are
        // reported with the attachments instead.
        let Some(text) = message
            .body_text(pos)
            .filter(|text| !text.trim().is_empty())
        else {
            continue;
        };
        out.push('\n');
        if part.is_text_html() {
            out.push_str("(converted from HTML)\n");
        }
        let cut = text.floor_char_boundary(SHOWN_TEXT);
        push_text(out, &text[..cut]);
        if cut < text.len() {
            let left = text.len() - cut;
            out.push_str(&format!(
                "(… {left} more bytes of text not shown: format = \"raw\" and the inbox show all)\n"
            ));
        }
        shown = true;
    }
    if !shown {
        out.push_str("\n(no text body)\n");
    }
}

fn push_attachments(out: &mut String, message: &Message<'_>) {
    let listed: Vec<String> = message.attachments().map(describe_attachment).collect();
    if !listed.is_empty() {
        out.push('\n');
        push_field(out, "Attachments", listed);
    }
}

/// `name (type/subtype, size bytes)`, the size being the decoded one a recipient would save.
fn describe_attachment(part: &MessagePart<'_>) -> String {
    // A forwarded message rarely has a file name; its subject is what identifies it.
    let name = part
        .attachment_name()
        .or_else(|| part.message().and_then(Message::subject));
    let name = name.unwrap_or("(unnamed)");
    format!("{name} ({}, {} bytes)", content_type(part), part.len())
}

fn content_type(part: &MessagePart<'_>) -> String {
    match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(subtype) => format!("{}/{subtype}", ct.ctype()).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
        // The MIME defaults (RFC 2045 and RFC 2046) for parts that declare no type.
        None if part.is_message() => "message/rfc822".to_string(),
        None if part.is_text() => "text/plain".to_string(),
        None => "application/octet-stream".to_string(),
    }
}

/// Appends body text with its line structure, ending in exactly one newline.
fn push_text(out: &mut String, text: &str) {
    out.push_str(printable(text, true).trim_end_matches('\n'));
    out.push('\n');
}

/// A header value on a single line, whatever folding or embedded newlines it had.
fn one_line(text: &str) -> String {
    printable(text, false)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text with control characters made visible (as `\u{1b}`), so a message cannot move the
/// cursor, change colours or retitle the developer's terminal. Body text keeps its newlines and
/// tabs, and loses the carriage returns of CRLF line ends.
///
/// The text between control characters is copied in runs: char by char, a 5 MB body took
/// longer than parsing the whole message.
fn printable(text: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = first_control(rest) {
        out.push_str(&rest[..at]);
        let c = rest[at..]
            .chars()
            .next()
            .expect("a control character starts at a char boundary");
        match c {
            '\n' | '\t' if multiline => out.push(c),
            '\r' if multiline => {}
            '\r' | '\n' | '\t' => out.push(' '),
            c => out.extend(c.escape_unicode()),
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// Where the first control character of `text` starts: what `char::is_control` says, i.e. C0,
/// DEL, and C1 (U+0080 – U+009F, in UTF-8 the lead byte 0xC2 and a second byte up to 0x9F).
fn first_control(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&i| match bytes[i] {
        b if b < 0x20 || b == 0x7f => true,
        0xc2 => matches!(bytes.get(i + 1), Some(0x80..=0x9f)),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::message::{Address as Mailbox, MessageId};

    fn envelope(from: Option<&str>, to: &[&str]) -> Envelope {
        Envelope {
            id: MessageId::generate(),
            mail_from: from.map(Mailbox::new),
            rcpt_to: to.iter().copied().map(Mailbox::new).collect(),
            remote: SocketAddr::from(([127, 0, 0, 1], 50123)),
            helo: "client.example".to_string(),
            auth_user: None,
            received_at: SystemTime::now(),
        }
    }

    /// Renders `raw`, checking the separator lines that frame every message.
    fn render_framed(env: &Envelope, raw: &[u8]) -> String {
        let out = render(env, raw);
        let (first, last) = (out.lines().next(), out.lines().last());
        let head = format!("── message {} ─", env.id);
        assert!(first.is_some_and(|l| l.starts_with(&head) && l.chars().count() == RULE_WIDTH));
        let tail = format!("── end of message {} ─", env.id);
        assert!(last.is_some_and(|l| l.starts_with(&tail)), "{out}");
        out
    }

    fn render_one(raw: &[u8]) -> String {
        render_framed(
            &envelope(Some("app@example.com"), &["dev@example.com"]),
            raw,
        )
    }

    /// A one-value field as `render` lays it out.
    fn field(label: &str, value: &str) -> String {
        format!("{:<LABEL_WIDTH$}{value}\n", format!("{label}:"))
    }

    #[track_caller]
    fn assert_shows(out: &str, wanted: &[&str]) {
        for wanted in wanted {
            assert!(out.contains(wanted), "{wanted:?} missing from:\n{out}");
        }
    }

    #[track_caller]
    fn assert_hides(out: &str, unwanted: &[&str]) {
        for unwanted in unwanted {
            assert!(!out.contains(unwanted), "{unwanted:?} present in:\n{out}");
        }
    }

    #[test]
    fn plain_text_is_decoded() {
        let raw = b"From: =?UTF-8?Q?Ren=C3=A9e?= <renee@example.com>\r\n\
            To: Bob <bob@example.com>\r\nSubject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n\
            Date: Tue, 1 Jul 2003 10:52:37 +0200\r\nMessage-ID: <abc@example.com>\r\n\
            MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n\
            Gr=C3=BC=C3=9Fe, caf=C3=A9 =E2=82=AC\r\nsecond line\r\n";
        let out = render_one(raw);
        let size = format!("{} bytes", raw.len());
        assert_shows(
            &out,
            &[
                &field("From", "Renée <renee@example.com>"),
                &field("To", "Bob <bob@example.com>"),
                &field("Subject", "Grüße aus Köln"),
                &field("Date", "Tue, 1 Jul 2003 10:52:37 +0200"),
                &field("Message-ID", "<abc@example.com>"),
                &field("Size", &size),
                "\nGrüße, café €\nsecond line\n",
            ],
        );
        assert_hides(&out, &["\r", "(no text body)", "Attachments:"]);
    }

    #[test]
    fn alternative_shows_the_text_part() {
        let out = render_one(
            b"From: a@example.com\r\nSubject: alt\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
            --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain version\r\n\
            --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html <b>version</b></p>\r\n\
            --b1--\r\n",
        );
        assert_shows(&out, &["\nplain version\n"]);
        assert_hides(&out, &["html", "HTML", "Attachments:"]);
    }

    #[test]
    fn html_only_is_converted_and_says_so() {
        let out = render_one(
            b"From: a@example.com\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n\
            <html><body><p>Hello <b>world</b></p></body></html>\r\n",
        );
        assert_shows(&out, &["\n(converted from HTML)\n", "Hello world"]);
        assert_hides(&out, &["<b>"]);
    }

    #[test]
    fn attachments_are_listed_with_name_type_and_size() {
        let out = render_one(
            b"From: a@example.com\r\nSubject: report\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n\
            --mix\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
            --mix\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
            Content-Disposition: attachment; filename=\"report.pdf\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgZmFrZSBwZGYK\r\n\
            --mix\r\nContent-Type: message/rfc822\r\n\r\nSubject: fwd\r\n\r\nbody\r\n\
            --mix--\r\n",
        );
        let listed = format!(
            "Attachments:    report.pdf (application/pdf, 18 bytes)\n{:LABEL_WIDTH$}{}\n",
            "", "fwd (message/rfc822, 20 bytes)"
        );
        assert_shows(&out, &["\nSee attached.\n", &listed]);
    }

    #[test]
    fn headers_only_says_there_is_no_body() {
        let out = render_one(b"From: a@example.com\r\nSubject: nothing\r\n\r\n");
        assert_shows(&out, &["\n(no text body)\n"]);
    }

    #[test]
    fn empty_message_still_shows_the_envelope() {
        let out = render_one(b"");
        assert_shows(
            &out,
            &[
                &field("Envelope-To", "dev@example.com"),
                &field("Size", "0 bytes"),
                "(empty message)",
            ],
        );
        let received = out.lines().find(|l| l.starts_with("Received-At:"));
        assert!(
            received.is_some_and(|l| l.ends_with('Z') && !l.contains('.')),
            "{out}"
        );
    }

    #[test]
    fn binary_garbage_renders_without_control_characters() {
        let mut raw: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        raw.extend_from_slice(b"\xff\xfe\x1b]0;pwned\x07 \xc3\x28");
        let out = render_one(&raw);
        let stray = out
            .chars()
            .find(|&c| c.is_control() && c != '\n' && c != '\t');
        assert_eq!(stray, None, "{out}");
    }

    /// A body longer than a terminal can use is cut, on a character boundary, and says how
    /// much is left out.
    #[test]
    fn a_huge_text_body_is_cut_and_counted() {
        let body = "é".repeat(SHOWN_TEXT); // twice SHOWN_TEXT bytes
        let out = render_one(format!("Subject: big\r\n\r\n{body}").as_bytes());
        let shown = out.matches('é').count();
        assert_eq!(shown, SHOWN_TEXT / 2, "{}", &out[..200]);
        let note = format!("(… {SHOWN_TEXT} more bytes of text not shown");
        assert!(out.contains(&note), "{}", &out[out.len() - 300..]);
    }

    /// The run-copying `printable` says exactly what the char-by-char rule says.
    #[test]
    fn printable_matches_the_rule_char_by_char() {
        let by_char = |text: &str, multiline: bool| -> String {
            let mut out = String::new();
            for c in text.chars() {
                match c {
                    '\n' | '\t' if multiline => out.push(c),
                    '\r' if multiline => {}
                    '\r' | '\n' | '\t' => out.push(' '),
                    c if c.is_control() => out.extend(c.escape_unicode()),
                    c => out.push(c),
                }
            }
            out
        };
        let pieces = [
            "a", "é", "\u{80}", "\u{9f}", "\u{a0}", "\u{85}", "\r\n", "\t", "\x1b", "\x7f", "€",
            "\0",
        ];
        for seed in 0..500u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let text: String = (0..rng.usize(0..40))
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            for multiline in [true, false] {
                assert_eq!(
                    printable(&text, multiline),
                    by_char(&text, multiline),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn hostile_and_huge_headers_stay_on_one_line() {
        let long = "x".repeat(100_000);
        let raw = format!(
            "Subject: a\x1b[31mred\r\n {long}\r\nBcc: Hidden <hidden@example.com>\r\n\r\nhi\r\n"
        );
        let out = render_one(raw.as_bytes());
        assert_shows(
            &out,
            &[
                &field("Subject", &format!("a\\u{{1b}}[31mred {long}")),
                &field("Bcc", "Hidden <hidden@example.com>"),
            ],
        );
    }

    #[test]
    fn null_sender_and_every_recipient_are_shown() {
        let to = ["one@example.com", "two@example.com", "three@example.com"];
        let out = render_framed(&envelope(None, &to), b"Subject: bounce\r\n\r\nfailed\r\n");
        let indent = " ".repeat(LABEL_WIDTH);
        let listed = format!(
            "Envelope-To:    one@example.com\n{indent}two@example.com\n{indent}three@example.com\n"
        );
        assert_shows(&out, &["Envelope-From:  <>\n", &listed]);
    }

    #[test]
    fn random_mime_fragments_never_panic() {
        const PIECES: [&[u8]; 10] = [
            b"Content-Type: multipart/mixed; boundary=b\r\n",
            b"--b\r\n",
            b"--b--\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Type: text/html; charset=x-unknown\r\n",
            b"Subject: =?utf-8?b?////?= =?\r\n",
            b"\r\n",
            b"=C3=\xff<p>&amp;&#xFFFFFF;\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let raw: Vec<u8> = (0..rng.usize(0..24))
                .flat_map(|_| PIECES[rng.usize(..PIECES.len())].iter().copied())
                .collect();
            render_one(&raw);
        }
    }
}
