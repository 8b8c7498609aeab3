//! Delivery status notifications (RFC 3464): the message that tells a sender their mail was not
//! delivered (or not yet), composed from plain data so that the queue can build one wherever a
//! message is given up or waits too long.
//!
//! The result is a `multipart/report; report-type=delivery-status` message (RFC 6522) in three
//! parts, as Postfix writes them: a text for people (what happened, Google's answer, what the
//! operator can do), the machine-readable `message/delivery-status` (Reporting-MTA,
//! Arrival-Date, and per recipient Final-Recipient, Action, Status and Diagnostic-Code), and the
//! original header section (`text/rfc822-headers`; the body is not sent back). It carries
//! `Auto-Submitted: auto-replied`, a Subject people know from Postfix, and In-Reply-To and
//! References to the original Message-ID so that mail clients thread it.
//!
//! Nothing that came from outside (Google's answer, the original subject, addresses) can start a
//! header field of its own: values are made one line, cut and folded (module `text`); the MIME
//! boundary is checked against every part. [`deserves_dsn`] decides whether a message gets one.

mod rules;
mod text;

use std::time::SystemTime;

use mail_parser::MessageParser;

pub use rules::{NoDsn, deserves_dsn};

use crate::message::Envelope;
use crate::message::date::rfc5322_date;
use crate::message::headers::{header_end, header_fields};
use crate::status::Status;

/// The Subject of a DSN reporting a failure, as Postfix writes it: what people search for.
pub const FAILED_SUBJECT: &str = "Undelivered Mail Returned to Sender";
/// The Subject of a delay warning, as Postfix writes it.
pub const DELAYED_SUBJECT: &str = "Delayed Mail (still being retried)";
/// The `diagnostic-type` for Google's answers (RFC 3464 §2.3.6: `smtp` is for SMTP replies;
/// others are `X-` names, as Postfix's `X-Postfix`).
pub const GMAIL_DIAGNOSTIC_TYPE: &str = "X-Gmail-API";
/// The `diagnostic-type` for Microsoft Graph's (and Exchange Online's) answers.
pub const GRAPH_DIAGNOSTIC_TYPE: &str = "X-Microsoft-Graph";
/// The display name of the DSN's From, as Postfix's.
const SENDER_NAME: &str = "Mail Delivery System";
/// Width of the text for people.
const TEXT_WIDTH: usize = 72;

/// What a DSN says about one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up: the message will not reach this recipient.
    Failed,
    /// Not delivered yet and still being retried (a delay warning).
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// The outcome for one envelope recipient of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// The envelope recipient (RCPT TO), as accepted.
    pub address: String,
    /// Given up, or still being retried.
    pub action: Action,
    /// The enhanced status code (RFC 3463), e.g. 5.7.1, or 4.4.7 for a message that expired.
    pub status: Status,
    /// The answer of the remote side (Google's error message), when there was one.
    pub diagnostic: Option<String>,
    /// When the last attempt ended, when there was one.
    pub last_attempt: Option<SystemTime>,
}

/// Everything a DSN is composed from.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The original envelope: its queue id, sender, and arrival time (`received_at`).
    pub original: &'a Envelope,
    /// The original message's header section; the whole message may be given, only the header
    /// section is read and returned.
    pub original_head: &'a [u8],
    /// The outcome per recipient; at least one.
    pub recipients: &'a [RecipientOutcome],
    /// For people: what went wrong and what the operator can do about it (paragraphs separated
    /// by empty lines; wrapped here).
    pub explanation: &'a str,
    /// The name of this server (`smtp.hostname`): `Reporting-MTA` and the DSN's Message-ID.
    pub reporting_host: &'a str,
    /// The `diagnostic-type` of the recipients' diagnostics, e.g. [`GMAIL_DIAGNOSTIC_TYPE`].
    pub diagnostic_type: &'a str,
    /// The address the DSN is sent from: the address of the account it goes out through (Gmail
    /// replaces any From that is not the account or one of its verified aliases).
    pub from: &'a str,
    /// Who receives the DSN: the original sender, and or instead the configured addresses.
    pub to: &'a [String],
    /// With delayed recipients: when the queue gives up (`Will-Retry-Until`).
    pub will_retry_until: Option<SystemTime>,
    /// Now: the DSN's `Date`.
    pub now: SystemTime,
}

/// A composed DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// The whole message, CRLF line endings, ready to be queued with the null sender.
    pub raw: Vec<u8>,
    /// Its Message-ID, with the angle brackets.
    pub message_id: String,
}

/// Why a DSN could not be composed. Neither happens with what the queue stores; they guard the
/// header fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// Nobody to send it to, or no recipient to report on.
    #[error("a DSN needs a recipient to report on and an address to send it to")]
    Empty,
    /// An address cannot stand in a header field (it holds white space, a control character,
    /// `<`, `>`, `,` or `;`).
    #[error("{address:?} cannot be written in a header field")]
    Address {
        /// The address, as Debug shows it (control characters escaped).
        address: String,
    },
}

/// True for an address a DSN can be sent to or from: one that stands in a header field as
/// `<address>` (an `@`, no white space, control characters, `<`, `>`, `,` or `;`).
pub fn address_fits_header(address: &str) -> bool {
    text::header_safe(address)
}

/// Composes the DSN `report` describes.
pub fn compose(report: &Report<'_>) -> Result<Dsn, DsnError> {
    if report.recipients.is_empty() || report.to.is_empty() {
        return Err(DsnError::Empty);
    }
    for address in report.to.iter().map(String::as_str).chain([report.from]) {
        if !address_fits_header(address) {
            return Err(DsnError::Address {
                address: address.to_string(),
            });
        }
    }
    let host = text::host_name(report.reporting_host);
    let original = Original::read(report.original_head);
    let parts = [
        human_part(report, &original, host),
        status_part(report, host),
        original.headers_part(),
    ];
    let boundary = boundary_for(&parts);
    let message_id = format!(
        "<{}.{:08x}.dsn@{host}>",
        report.original.id,
        fastrand::u32(..)
    );
    let delayed_only = report
        .recipients
        .iter()
        .all(|r| r.action == Action::Delayed);
    let subject = if delayed_only {
        DELAYED_SUBJECT
    } else {
        FAILED_SUBJECT
    };
    let to: Vec<String> = report.to.iter().map(|a| format!("<{a}>,")).collect();
    let mut out = String::new();
    out += &text::field("From", &format!("{SENDER_NAME} <{}>", report.from));
    out += &text::field("To", to.join(" ").trim_end_matches(','));
    out += &text::field("Subject", subject);
    out += &text::field("Date", &rfc5322_date(report.now));
    out += &text::field("Message-ID", &message_id);
    if let Some(id) = &original.message_id {
        out += &text::field("In-Reply-To", id);
        out += &text::field("References", id);
    }
    out += "Auto-Submitted: auto-replied\r\n";
    out += "MIME-Version: 1.0\r\n";
    out += &format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n"
    );
    out += "\r\nThis is a MIME-encapsulated message.\r\n";
    let mut raw = out.into_bytes();
    for part in &parts {
        raw.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        raw.extend_from_slice(part);
    }
    raw.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(Dsn { raw, message_id })
}

/// What the DSN takes from the original message.
struct Original {
    /// Its Message-ID with angle brackets, when it has a usable one.
    message_id: Option<String>,
    /// Its Subject, decoded, one line.
    subject: Option<String>,
    /// Its header section with CRLF line endings, without Bcc fields.
    headers: Vec<u8>,
}

impl Original {
    fn read(head: &[u8]) -> Original {
        let section = &head[..header_end(head)];
        let parsed = MessageParser::new().parse_headers(section);
        let message_id = parsed
            .as_ref()
            .and_then(|m| m.message_id())
            .filter(|id| {
                // An id that could not stand in a field as it is (spaces, brackets, controls,
                // absurd length) is left out rather than repaired.
                !id.is_empty()
                    && id.len() <= 250
                    && !id
                        .chars()
                        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'))
            })
            .map(|id| format!("<{id}>"));
        let subject = parsed
            .as_ref()
            .and_then(|m| m.subject())
            .map(|s| text::one_line(s, 200));
        Original {
            message_id,
            subject,
            headers: returned_headers(section),
        }
    }

    /// The original header section as the third part: `text/rfc822-headers`, or RFC 6533's
    /// `message/global-headers` when it holds UTF-8 (an SMTPUTF8 message).
    fn headers_part(&self) -> Vec<u8> {
        let content_type = match self.headers.is_ascii() {
            true => "Content-Type: text/rfc822-headers\r\n",
            false => "Content-Type: message/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n",
        };
        let mut part = b"Content-Description: Undelivered Message Headers\r\n".to_vec();
        part.extend_from_slice(content_type.as_bytes());
        part.extend_from_slice(b"\r\n");
        part.extend_from_slice(&self.headers);
        part
    }
}

/// The fields of `section`, each line ending made CRLF (a lone CR or LF counts as one), without
/// `Bcc` and `Resent-Bcc`: the queue's copy carries the Bcc the Gmail rules synthesised from
/// the envelope, which the sender did not write and a copy to a postmaster must not show.
fn returned_headers(section: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(section.len() + 64);
    for field in header_fields(section) {
        let name = field.split(|&b| b == b':').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name);
        let name = name.trim();
        if name.eq_ignore_ascii_case("bcc") || name.eq_ignore_ascii_case("resent-bcc") {
            continue;
        }
        let text = field.strip_suffix(b"\n").unwrap_or(field);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n");
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            for (j, piece) in line.split(|&b| b == b'\r').enumerate() {
                if j > 0 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(piece);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The first part: what a person reads.
fn human_part(report: &Report<'_>, original: &Original, host: &str) -> Vec<u8> {
    let envelope = report.original;
    let delayed_only = report
        .recipients
        .iter()
        .all(|r| r.action == Action::Delayed);
    let mut body = format!("This is the mail system at host {host} (smtp2gmail).\n\n");
    if delayed_only {
        body += "####################################################################\n\
                 # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n\
                 ####################################################################\n\n";
        body += "Your message has not been delivered yet to the recipients below. ";
        match report.will_retry_until {
            Some(until) => {
                body += &format!("It will be retried until {}.", rfc5322_date(until));
            }
            None => body += "It is still being retried.",
        }
    } else {
        body += "I'm sorry to have to tell you that your message could not be delivered to \
                 one or more recipients. It will not be retried.";
    }
    body += &format!(
        "\n\nIt was accepted on {} from {} with queue id {}.\n\n",
        rfc5322_date(envelope.received_at),
        text::one_line(&envelope.sender_display(), 320),
        envelope.id,
    );
    if let Some(subject) = &original.subject {
        body += &format!("    Subject: {subject}\n");
    }
    if let Some(id) = &original.message_id {
        body += &format!("    Message-ID: {id}\n");
    }
    body += "\n";
    body += report.explanation.trim();
    body += "\n\n";
    for recipient in report.recipients {
        let answer = recipient
            .diagnostic
            .as_deref()
            .map(|d| text::one_line(d, text::MAX_VALUE))
            .unwrap_or_else(|| "(no answer from the remote side)".to_string());
        body += &format!(
            "<{}>: {} {}: {answer}\n\n",
            text::one_line(&recipient.address, 320),
            recipient.action.as_str(),
            recipient.status,
        );
    }
    body += "The headers of your message are attached; its body is not.\n";
    let text = text::wrap(&body, TEXT_WIDTH);
    let encoding = if text.is_ascii() { "7bit" } else { "8bit" };
    format!(
        "Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: {encoding}\r\n\r\n{text}"
    )
    .into_bytes()
}

/// The second part: `message/delivery-status`, one block per message, one per recipient.
fn status_part(report: &Report<'_>, host: &str) -> Vec<u8> {
    let mut out = String::from(
        "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n",
    );
    out += &text::field("Reporting-MTA", &format!("dns; {host}"));
    out += &text::field("X-Smtp2gmail-Queue-ID", &report.original.id.to_string());
    out += &text::field("Arrival-Date", &rfc5322_date(report.original.received_at));
    let diagnostic_type =
        text::ascii(&text::one_line(report.diagnostic_type, 40)).replace(' ', "-");
    for recipient in report.recipients {
        out += "\r\n";
        out += &text::field("Final-Recipient", &text::typed_address(&recipient.address));
        out += &text::field("Action", recipient.action.as_str());
        out += &text::field("Status", &recipient.status.to_string());
        if let Some(diagnostic) = &recipient.diagnostic {
            let diagnostic = text::ascii(&text::one_line(diagnostic, text::MAX_VALUE));
            out += &text::field(
                "Diagnostic-Code",
                &format!("{diagnostic_type}; {diagnostic}"),
            );
        }
        if let Some(at) = recipient.last_attempt {
            out += &text::field("Last-Attempt-Date", &rfc5322_date(at));
        }
        if let (Action::Delayed, Some(until)) = (recipient.action, report.will_retry_until) {
            out += &text::field("Will-Retry-Until", &rfc5322_date(until));
        }
    }
    out.into_bytes()
}

/// A boundary that no part contains, so that no part can end early (the original headers are
/// outside text; a field could hold `--` and anything after it).
fn boundary_for(parts: &[Vec<u8>]) -> String {
    loop {
        let boundary = format!("=_dsn_{:016x}", fastrand::u64(..));
        let needle = boundary.as_bytes();
        let clash = parts
            .iter()
            .any(|part| part.windows(needle.len()).any(|w| w == needle));
        if !clash {
            return boundary;
        }
    }
}

#[cfg(test)]
mod tests;
