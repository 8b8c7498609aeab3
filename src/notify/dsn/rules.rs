//! Which failed messages get a delivery status notification at all.
//!
//! RFC 5321 §6.1 asks for a notification for every message given up, except where the reverse
//! path is null: that is the one rule that keeps notifications from looping, and every DSN this
//! server queues itself has the null sender. Two more rules keep notifications from going where
//! nobody reads them or where they could start a loop through other systems: reports (any
//! `multipart/report`, a DSN above all) and mail that says it was sent by a program
//! (`Auto-Submitted` other than `no`, RFC 3834). `Precedence` is not a rule: see
//! docs/design.md, "Which failures get a DSN".

use std::fmt;

use mail_parser::{MessageParser, MimeHeaders};

use crate::message::headers::{header_end, header_fields};

/// Why a failed message gets no DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoDsn {
    /// The envelope sender is `<>`: the message is itself a notification (RFC 5321 §6.1).
    NullSender,
    /// The message is a report (`multipart/report`): a DSN, a read receipt, an abuse report.
    Report {
        /// Its `report-type`, lowercased (`delivery-status` for a DSN).
        report_type: String,
    },
    /// The message says a program sent it (`Auto-Submitted`, RFC 3834).
    AutoSubmitted {
        /// The field's keyword, lowercased (`auto-generated`, `auto-replied`, …).
        value: String,
    },
}

impl fmt::Display for NoDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoDsn::NullSender => f.write_str("its sender is <> (it is a notification itself)"),
            NoDsn::Report { report_type } => {
                write!(
                    f,
                    "it is a report (multipart/report; report-type={report_type})"
                )
            }
            NoDsn::AutoSubmitted { value } => write!(f, "it is auto-submitted ({value})"),
        }
    }
}

/// Whether a message that failed for good (or is delayed) gets a DSN: `Ok(())` when it does,
/// else why not, for the log line. `mail_from` is the envelope sender (`None` for `<>`); `head`
/// is the message's header section (the whole message may be given, the body is not read).
pub fn deserves_dsn(mail_from: Option<&str>, head: &[u8]) -> Result<(), NoDsn> {
    if mail_from.is_none_or(|sender| sender.trim().is_empty()) {
        return Err(NoDsn::NullSender);
    }
    let section = &head[..header_end(head)];
    if let Some(report_type) = report_type(section) {
        return Err(NoDsn::Report { report_type });
    }
    if let Some(value) = auto_submitted(section) {
        return Err(NoDsn::AutoSubmitted { value });
    }
    Ok(())
}

/// The `report-type` of a `multipart/report` message (empty when it names none).
fn report_type(section: &[u8]) -> Option<String> {
    let parsed = MessageParser::new().parse_headers(section)?;
    let content_type = parsed.content_type()?;
    let report = content_type.c_type.eq_ignore_ascii_case("multipart")
        && content_type
            .c_subtype
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"));
    report.then(|| {
        let attributes = content_type.attributes().unwrap_or_default();
        attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case("report-type"))
            .map(|a| a.value.to_ascii_lowercase())
            .unwrap_or_default()
    })
}

/// The keyword of the first `Auto-Submitted` field whose keyword is not `no` (RFC 3834 §5: `no`
/// or absent means a person sent it). A field with no keyword says nothing and is passed over.
fn auto_submitted(section: &[u8]) -> Option<String> {
    header_fields(section).into_iter().find_map(|field| {
        let text = String::from_utf8_lossy(field);
        let (name, value) = text.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("auto-submitted") {
            return None;
        }
        // `auto-generated; comment`, `auto-replied (vacation)`: the keyword comes first.
        let keyword = value
            .split([';', '('])
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<String>()
            .to_ascii_lowercase();
        (!keyword.is_empty() && keyword != "no").then_some(keyword)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSON: &[u8] =
        b"From: a@x\r\nTo: b@y\r\nSubject: hi\r\n\r\nAuto-Submitted: auto-generated\r\n";

    #[test]
    fn a_person_s_message_deserves_one() {
        assert_eq!(deserves_dsn(Some("a@x"), PERSON), Ok(()));
        let said_no = b"Auto-Submitted: No (a person)\r\nPrecedence: bulk\r\n\r\n";
        assert_eq!(deserves_dsn(Some("a@x"), said_no), Ok(()), "no, and bulk");
        let list = b"Precedence: list\r\nList-Id: <l.example.org>\r\n\r\n";
        assert_eq!(
            deserves_dsn(Some("l-bounces@x"), list),
            Ok(()),
            "lists want bounces"
        );
        let empty = b"Auto-Submitted:\r\n\r\n";
        assert_eq!(
            deserves_dsn(Some("a@x"), empty),
            Ok(()),
            "an empty field says nothing"
        );
    }

    #[test]
    fn the_null_sender_never_gets_one() {
        assert_eq!(deserves_dsn(None, PERSON), Err(NoDsn::NullSender));
        assert_eq!(deserves_dsn(Some(""), PERSON), Err(NoDsn::NullSender));
    }

    #[test]
    fn reports_get_none() {
        let dsn = b"Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"b\"\r\n\r\n--b\r\n";
        let why = deserves_dsn(Some("a@x"), dsn).unwrap_err();
        assert_eq!(
            why,
            NoDsn::Report {
                report_type: "delivery-status".into()
            }
        );
        assert_eq!(
            why.to_string(),
            "it is a report (multipart/report; report-type=delivery-status)"
        );
        let mdn = b"content-type: Multipart/Report; Report-Type=\"disposition-notification\";\r\n\
\tboundary=x\r\n\r\n";
        assert!(matches!(
            deserves_dsn(Some("a@x"), mdn),
            Err(NoDsn::Report { report_type }) if report_type == "disposition-notification"
        ));
    }

    #[test]
    fn auto_submitted_mail_gets_none() {
        for (head, keyword) in [
            (
                &b"Auto-Submitted: auto-generated\r\n\r\n"[..],
                "auto-generated",
            ),
            (
                b"AUTO-SUBMITTED: Auto-Replied (vacation)\r\n\r\n",
                "auto-replied",
            ),
            (
                b"Auto-Submitted: auto-notified; owner-email=\"a@x\"\r\n\r\n",
                "auto-notified",
            ),
            (
                b"Subject: s\r\nAuto-Submitted:\r\n auto-generated\r\n\r\n",
                "auto-generated",
            ),
        ] {
            assert_eq!(
                deserves_dsn(Some("a@x"), head),
                Err(NoDsn::AutoSubmitted {
                    value: keyword.into()
                }),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn only_the_header_section_counts() {
        let body =
            b"Subject: s\r\n\r\nContent-Type: multipart/report; report-type=delivery-status\r\n";
        assert_eq!(deserves_dsn(Some("a@x"), body), Ok(()));
    }
}
