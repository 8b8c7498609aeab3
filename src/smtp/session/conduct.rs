//! What a session tolerates before it ends: lines that show the peer is not an SMTP client at
//! all, and a bound on errors and on commands that do nothing.
//!
//! A web page can make a browser send an HTTP request to this port (`fetch(url, {method: "POST",
//! mode: "no-cors", body})`): the request line and header fields are bad commands, and the body
//! that follows can be a whole SMTP dialogue. Answering each bad line and reading on is what let
//! such a page send mail. Like Postfix (`smtpd_forbidden_commands` and its header-line check), a
//! session ends at the first line that is an HTTP request line or looks like a header field, so
//! nothing after it is read. Postfix's `smtpd_hard_error_limit` and `smtpd_junk_command_limit`
//! are the models for the two bounds.

use super::{Flow, Session};
use crate::smtp::reply::Reply;
use crate::status::Status;

/// Commands the server could not take (unknown, bad syntax, too long, not implemented) allowed in
/// one session; the one that reaches it is answered and the session closes with 421. Postfix's
/// default. Commands refused for their order (503) or policy do not count: a pipelining client
/// whose MAIL was refused legitimately earns several.
pub const MAX_ERRORS: u32 = 20;

/// Commands that do nothing (NOOP, RSET, VRFY, HELP) allowed between two accepted messages before
/// each further one counts as an error: a client may not hold a connection for ever with them.
/// Postfix's default; connection pools send one or two per message.
pub const MAX_JUNK_COMMANDS: u32 = 100;

/// HTTP request methods (RFC 9110, with PATCH). None is an SMTP verb, so a line that starts with
/// one is a web request, whoever sent it.
const HTTP_METHODS: &[&str] = &[
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Longest part of a forbidden line that is logged: enough to recognise it, never more of what a
/// client sent.
const SHOWN: usize = 32;

/// Why a command line shows that the peer does not speak SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NotSmtp {
    /// The method, or the field name and its colon, bounded and without control characters: safe
    /// for a log line.
    pub(super) word: String,
}

impl NotSmtp {
    /// The verdict on one command line (its line ending included or not).
    pub(super) fn of(line: &[u8]) -> Option<NotSmtp> {
        let end = line
            .iter()
            .position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(line.len());
        let word = &line[..end];
        let http = HTTP_METHODS
            .iter()
            .any(|method| word.eq_ignore_ascii_case(method.as_bytes()));
        let shown = match (http, field_name(word)) {
            (true, _) => word,
            (false, Some(name)) => name,
            (false, None) => return None,
        };
        let shown = String::from_utf8_lossy(shown);
        let word = shown
            .chars()
            .filter(|c| !c.is_control())
            .take(SHOWN)
            .collect();
        Some(NotSmtp { word })
    }
}

/// The `Name:` a word starts with when it looks like a header field: printable ASCII without
/// spaces, then a colon (RFC 5322's field name, which is what Postfix checks). No SMTP command
/// has a colon in its first word: `MAIL FROM:` has a space first. Only the name is returned, so
/// the value never reaches a log line.
fn field_name(word: &[u8]) -> Option<&[u8]> {
    match word.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 && word[..colon].iter().all(u8::is_ascii_graphic) => {
            Some(&word[..=colon])
        }
        _ => None,
    }
}

/// What a session has done wrong so far.
#[derive(Debug, Default)]
pub(super) struct Strikes {
    errors: u32,
    junk: u32,
}

impl Strikes {
    /// Counts a command the server could not take; true when the session must end.
    fn error(&mut self) -> bool {
        self.errors += 1;
        self.errors >= MAX_ERRORS
    }

    /// Counts a command that does nothing; past the allowance it is an error too.
    fn junk(&mut self) -> bool {
        self.junk += 1;
        self.junk > MAX_JUNK_COMMANDS && self.error()
    }

    /// A message was accepted: the client is doing what it came for, so a long session that
    /// sends many messages, with an occasional bad address, is never cut short.
    pub(super) fn message_accepted(&mut self) {
        *self = Strikes::default();
    }
}

impl Session {
    /// Ends the session at a line that is not SMTP: one reply, a log line and a count, and none
    /// of what follows is read (it may be an SMTP dialogue a web page smuggled in).
    pub(super) fn refuse_not_smtp(&mut self, line: NotSmtp) -> Flow {
        tracing::warn!(
            remote = %self.remote,
            command = ?line.word,
            "not an SMTP client (an HTTP request, or message text sent as commands): closing the connection"
        );
        self.close_for("not_smtp", "this is an SMTP server; closing connection")
    }

    /// Sends `reply` to a command the server could not take, and counts it.
    pub(super) fn bad_command(&mut self, reply: Reply) -> Flow {
        self.conn.reply(&reply);
        match self.strikes.error() {
            true => self.too_many_errors(),
            false => Flow::Continue,
        }
    }

    /// Sends `reply` to a command that does nothing, and counts it.
    pub(super) fn junk_command(&mut self, reply: Reply) -> Flow {
        self.conn.reply(&reply);
        match self.strikes.junk() {
            true => self.too_many_errors(),
            false => Flow::Continue,
        }
    }

    fn too_many_errors(&mut self) -> Flow {
        tracing::warn!(remote = %self.remote, "too many errors: closing the connection");
        self.close_for("too_many_errors", "too many errors, closing connection")
    }

    /// Ends the session with a 421 saying `text`, counted under `reason`; an open transaction
    /// is dropped (nothing of it was accepted).
    fn close_for(&mut self, reason: &'static str, text: &'static str) -> Flow {
        crate::telemetry::session_dropped(reason);
        self.transaction = None;
        self.conn
            .reply(&Reply::new(421, Status::SECURITY_TEMPORARY, text));
        Flow::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(line: &str) -> Option<String> {
        NotSmtp::of(line.as_bytes()).map(|n| n.word)
    }

    #[test]
    fn http_request_lines_are_not_smtp() {
        assert_eq!(word("POST / HTTP/1.1\r\n").as_deref(), Some("POST"));
        assert_eq!(word("GET /x HTTP/1.0\n").as_deref(), Some("GET"));
        assert_eq!(
            word("connect host:443 HTTP/1.1\r\n").as_deref(),
            Some("connect")
        );
        assert_eq!(word("OPTIONS").as_deref(), Some("OPTIONS"));
    }

    #[test]
    fn header_fields_are_not_smtp() {
        assert_eq!(word("Host: 127.0.0.1:2525\r\n").as_deref(), Some("Host:"));
        assert_eq!(
            word("Content-Type:text/plain\r\n").as_deref(),
            Some("Content-Type:")
        );
        assert_eq!(word("Subject: hi\r\n").as_deref(), Some("Subject:"));
        assert_eq!(word("X-A:\r\n").as_deref(), Some("X-A:"));
        let long = format!("{}: x\r\n", "N".repeat(100));
        assert_eq!(word(&long).unwrap().len(), SHOWN);
    }

    #[test]
    fn smtp_commands_are_smtp() {
        for line in [
            "MAIL FROM:<a@example.com>\r\n",
            "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n",
            "EHLO [IPv6:::1]\r\n",
            "EHLO host:25\r\n",
            "AUTH PLAIN AGFwcAByaWdodA==\r\n",
            "DATA\r\n",
            "\r\n",
            ":\r\n",
            " Host: x\r\n",
            "GETTER\r\n",
            "",
        ] {
            assert_eq!(word(line), None, "{line:?}");
        }
    }

    #[test]
    fn errors_are_bounded_and_junk_only_past_its_allowance() {
        let mut strikes = Strikes::default();
        assert!((1..MAX_ERRORS).all(|_| !strikes.error()));
        assert!(strikes.error());
        let mut strikes = Strikes::default();
        assert!((0..MAX_JUNK_COMMANDS + MAX_ERRORS - 1).all(|_| !strikes.junk()));
        assert!(strikes.junk());
        strikes.message_accepted();
        assert!(!strikes.junk() && !strikes.error());
    }
}
