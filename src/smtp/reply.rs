//! SMTP replies: a code, an enhanced status code (RFC 2034/3463) and text.

use std::borrow::Cow;

use crate::relay::{DeliveryError, Receipt};
use crate::status::Status;

/// One SMTP reply. Text with `\n` in it becomes a multi-line reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code; omitted only for the greeting and multi-line EHLO/HELP bodies.
    pub status: Option<Status>,
    /// Human-readable text, one line per `\n`-separated part.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, status: Status, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status: None,
            text: text.into(),
        }
    }

    /// Appends the wire form (CRLF line endings, `-` continuation) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            // Writing into a Vec cannot fail.
            let _ = match self.status {
                Some(status) => write!(out, "{}{sep}{status} {line}\r\n", self.code),
                None => write!(out, "{}{sep}{line}\r\n", self.code),
            };
        }
    }

    /// The reply after the end of DATA/BDAT LAST, from the delivery outcome: the one place where
    /// the relay's temporary/permanent classification turns into an SMTP code.
    pub fn from_delivery(outcome: &Result<Receipt, DeliveryError>) -> Self {
        match outcome {
            Ok(receipt) if receipt.queued => {
                Reply::new(250, Status::OK, format!("queued as {}", receipt.id))
            }
            Ok(receipt) => Reply::new(250, Status::OK, format!("OK {}", receipt.id)),
            Err(err @ (DeliveryError::Temporary { .. } | DeliveryError::Credentials { .. })) => {
                Reply::new(451, err.status(), one_line(&err.to_string()))
            }
            Err(err @ DeliveryError::Permanent { status, .. }) => {
                // RFC 5321: 550 for policy and for a mailbox that does not exist ("mailbox
                // unavailable / not allowed"), 552 for size ("exceeded storage allocation"), 554
                // otherwise.
                let code = match (status.1, status.2) {
                    (7 | 1, _) => 550,
                    (3, 4) => 552,
                    _ => 554,
                };
                Reply::new(code, *status, one_line(&err.to_string()))
            }
        }
    }
}

/// Reply text must not break the framing: fold any line breaks a reason might contain.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(
            wire(&Reply::new(250, Status::SENDER_OK, "OK")),
            "250 2.1.0 OK\r\n"
        );
        assert_eq!(
            wire(&Reply::plain(250, "a\nb\nc")),
            "250-a\r\n250-b\r\n250 c\r\n"
        );
    }

    #[test]
    fn delivery_outcomes_map_to_codes() {
        let ok = Reply::from_delivery(&Ok(Receipt::new("abc")));
        assert_eq!(wire(&ok), "250 2.0.0 OK abc\r\n");
        let temp = Reply::from_delivery(&Err(DeliveryError::local("disk\r\nfull")));
        assert_eq!(wire(&temp), "451 4.3.0 disk full\r\n");
        let policy = Reply::from_delivery(&Err(DeliveryError::Permanent {
            status: Status::POLICY,
            reason: "no".into(),
        }));
        assert_eq!(policy.code, 550);
        let bad = Reply::from_delivery(&Err(DeliveryError::Permanent {
            status: Status::BAD_MESSAGE,
            reason: "no".into(),
        }));
        assert_eq!(bad.code, 554);
        let big = Reply::from_delivery(&Err(DeliveryError::Permanent {
            status: Status::TOO_BIG,
            reason: "too large".into(),
        }));
        assert_eq!(wire(&big), "552 5.3.4 too large\r\n");
        let unknown_user = Reply::from_delivery(&Err(DeliveryError::Permanent {
            status: Status::NO_SUCH_MAILBOX,
            reason: "no such user".into(),
        }));
        assert_eq!(unknown_user.code, 550);
    }
}
