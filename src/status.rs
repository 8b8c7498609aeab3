//! RFC 3463 enhanced status codes, the one vocabulary shared by SMTP replies and delivery outcomes.
//!
//! A module of its own, beside `smtp` and `relay` rather than inside either: a
//! [`DeliveryError`](crate::relay::DeliveryError) carries the code the client will be told, and the
//! session writes it into a reply, so keeping it in one of them would make the two import each
//! other. Every code the server uses has a name here; code elsewhere uses the names.

use std::fmt;

/// An enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8, pub u16, pub u16);

impl Status {
    /// 2.0.0: the command or the delivery succeeded.
    pub const OK: Status = Status(2, 0, 0);
    /// 2.1.0: the sender is accepted.
    pub const SENDER_OK: Status = Status(2, 1, 0);
    /// 2.1.5: the recipient is accepted.
    pub const RECIPIENT_OK: Status = Status(2, 1, 5);
    /// 2.7.0: authentication succeeded.
    pub const AUTH_OK: Status = Status(2, 7, 0);

    /// 4.3.0: mail system problem (our disk, our configuration).
    pub const SYSTEM_TEMPORARY: Status = Status(4, 3, 0);
    /// 4.3.2: the system is not accepting messages (shutting down).
    pub const NOT_ACCEPTING: Status = Status(4, 3, 2);
    /// 4.4.1: no answer from the next hop (Google unreachable or failing).
    pub const NO_ANSWER: Status = Status(4, 4, 1);
    /// 4.4.2: the connection was dropped (idle timeout).
    pub const CONNECTION_DROPPED: Status = Status(4, 4, 2);
    /// 4.4.5: the next hop is congested (Google's rate limits).
    pub const CONGESTION: Status = Status(4, 4, 5);
    /// 4.4.7: delivery time expired: the message was still undelivered after `queue.max_age`
    /// (the status of its DSN).
    pub const EXPIRED: Status = Status(4, 4, 7);
    /// 4.5.3: too many recipients for one message.
    pub const TOO_MANY_RECIPIENTS: Status = Status(4, 5, 3);
    /// 4.7.0: a security problem that may clear later (too many failed AUTH attempts).
    pub const SECURITY_TEMPORARY: Status = Status(4, 7, 0);
    /// 4.7.0: our own credentials for the next hop failed; a person must act, the mail is kept.
    pub const CREDENTIALS: Status = Status(4, 7, 0);

    /// 5.1.0: the address is refused (an unknown sender of the account's domain).
    pub const BAD_ADDRESS: Status = Status(5, 1, 0);
    /// 5.1.1: the destination mailbox does not exist.
    pub const NO_SUCH_MAILBOX: Status = Status(5, 1, 1);
    /// 5.1.3: the recipient address is not a valid address.
    pub const BAD_RECIPIENT_SYNTAX: Status = Status(5, 1, 3);
    /// 5.1.7: the sender address is not a valid address.
    pub const BAD_SENDER_SYNTAX: Status = Status(5, 1, 7);
    /// 5.3.0: mail system problem that retrying will not fix (a bug of ours).
    pub const SYSTEM_PERMANENT: Status = Status(5, 3, 0);
    /// 5.3.4: message too big for the system.
    pub const TOO_BIG: Status = Status(5, 3, 4);
    /// 5.5.1: invalid command (unknown, or not offered).
    pub const INVALID_COMMAND: Status = Status(5, 5, 1);
    /// 5.5.1: a command out of sequence (RFC 2034 gives it the invalid-command code).
    pub const BAD_SEQUENCE: Status = Status(5, 5, 1);
    /// 5.5.2: syntax error (a line too long, an undecodable command or response).
    pub const SYNTAX: Status = Status(5, 5, 2);
    /// 5.5.4: invalid command arguments or parameters.
    pub const BAD_PARAMETERS: Status = Status(5, 5, 4);
    /// 5.5.6: an AUTH exchange line too long (RFC 4954).
    pub const AUTH_LINE_TOO_LONG: Status = Status(5, 5, 6);
    /// 5.6.0: other or undefined media error (the message itself is unacceptable).
    pub const BAD_MESSAGE: Status = Status(5, 6, 0);
    /// 5.6.7: a non-ASCII address without SMTPUTF8 (RFC 6531).
    pub const NEEDS_SMTPUTF8: Status = Status(5, 6, 7);
    /// 5.7.0: authentication required (RFC 4954).
    pub const AUTH_REQUIRED: Status = Status(5, 7, 0);
    /// 5.7.0: the client cancelled an AUTH exchange (RFC 4954).
    pub const AUTH_CANCELLED: Status = Status(5, 7, 0);
    /// 5.7.1: delivery not authorized, message refused (policy).
    pub const POLICY: Status = Status(5, 7, 1);
    /// 5.7.8: authentication credentials invalid (RFC 4954).
    pub const BAD_CREDENTIALS: Status = Status(5, 7, 8);
    /// 5.7.11: encryption required before authentication (RFC 5248).
    pub const ENCRYPTION_REQUIRED: Status = Status(5, 7, 11);
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}
