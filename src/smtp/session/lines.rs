//! What a command line says before and beside smtp-proto's parse: the facts its parse loses, and
//! the reply to a line it cannot parse.

use smtp_proto::Error as ParseError;

use super::super::address;
use super::super::reply::Reply;
use crate::status::Status;

/// What the raw command line says that smtp-proto's parse loses.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LineFacts {
    /// A number longer than any size (smtp-proto would misread it).
    pub(super) oversized_number: bool,
    /// `<postmaster>` was named (smtp-proto reports it like `<>`, as an empty address).
    pub(super) names_postmaster: bool,
    /// The command is BDAT.
    pub(super) bdat: bool,
}

impl LineFacts {
    pub(super) fn of(line: &[u8]) -> LineFacts {
        let verb = line.get(..4).unwrap_or_default();
        let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
        // Most lines are none of these: no copy, no scan.
        if !(is(b"MAIL") || is(b"RCPT") || is(b"BDAT")) {
            return LineFacts::default();
        }
        let text = String::from_utf8_lossy(line);
        // MAIL's address may be all digits; only the parameters after it are sizes.
        let parameters = if is(b"MAIL") {
            text.rsplit_once('>').map_or("", |(_, rest)| rest)
        } else {
            &text
        };
        LineFacts {
            oversized_number: !is(b"RCPT") && address::has_oversized_number(parameters),
            names_postmaster: is(b"RCPT") && text.to_ascii_lowercase().contains("<postmaster>"),
            bdat: is(b"BDAT"),
        }
    }
}

pub(super) fn parse_error_reply(err: ParseError) -> Reply {
    match err {
        ParseError::UnknownCommand => {
            Reply::new(500, Status::INVALID_COMMAND, "command not recognized")
        }
        ParseError::InvalidSenderAddress => {
            Reply::new(501, Status::BAD_SENDER_SYNTAX, "bad sender address syntax")
        }
        ParseError::InvalidRecipientAddress => Reply::new(
            501,
            Status::BAD_RECIPIENT_SYNTAX,
            "bad recipient address syntax",
        ),
        ParseError::SyntaxError { syntax } => {
            Reply::new(501, Status::BAD_PARAMETERS, format!("syntax: {syntax}"))
        }
        ParseError::InvalidParameter { param } => Reply::new(
            501,
            Status::BAD_PARAMETERS,
            format!("invalid value for parameter {param}"),
        ),
        ParseError::UnsupportedParameter { param } => {
            let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
            Reply::new(
                555,
                Status::BAD_PARAMETERS,
                format!("unsupported parameter {param}"),
            )
        }
        _ => Reply::new(500, Status::SYNTAX, "syntax error"),
    }
}
