//! Failures asked for on purpose: the development inbox's chaos triggers (Mailpit's) answer a
//! step of an SMTP session with an error code, so that a test suite sees its retry handling meet
//! a real `451`. The session asks a [`Faults`] it is given, not the delivery target, so that no
//! stage between the session and the inbox (auto-release, the console backlog, …) has to pass the
//! question on, and a server without an inbox has nothing to ask.

/// The steps of an SMTP session at which a failure can be injected: Mailpit's chaos triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStep {
    /// `MAIL FROM`.
    Sender,
    /// Each `RCPT TO`.
    Recipient,
    /// `AUTH`, once the credentials are given.
    Authentication,
}

/// What decides whether a step of a session fails on purpose.
pub trait Faults: Send + Sync {
    /// The reply code (400–599) to fail `step` with this time, if any.
    fn failure(&self, step: SessionStep) -> Option<u16>;
}
