//! The record of one queued message, and where it is: what every queue store keeps, whatever
//! its format (files in the spool, rows in PostgreSQL).

use std::io;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::split::SplitRecord;
use crate::message::{Address, Envelope, MessageId};
use crate::relay::gmail::{Decision, Route};

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Waiting for delivery.
    Queue,
    /// Given up: a permanent failure or too old. Kept until retried or deleted.
    Dead,
    /// One transaction of a message an MTA split into several, waiting for the others
    /// (see [`super::split`]).
    Held,
}

/// One delivery attempt, for `queue show` and the operator reading a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// What happened, without secrets.
    pub outcome: String,
}

/// The metadata record of one queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The queue id (also the file names).
    pub id: String,
    /// The reverse path; `None` for `<>`.
    pub mail_from: Option<String>,
    /// The envelope recipients.
    pub rcpt_to: Vec<String>,
    /// The client that sent it.
    pub remote: String,
    /// Its HELO/EHLO name.
    pub helo: String,
    /// Its SMTP AUTH identity.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// When the server accepted it.
    #[serde(with = "humantime_serde")]
    pub received_at: SystemTime,
    /// Size of the message in bytes (the start of its `.msg`).
    pub size: u64,
    /// The Gmail account chosen at accept time.
    pub account: String,
    /// The user the account sends as when that is each message's sender (a service account
    /// impersonating the sender), lowercased; `None` when the account is one mailbox. Gmail's
    /// limits (rate, concurrency, daily sending limit) belong to that mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Failed attempts that count towards the backoff: not those that met a paused account,
    /// so mail held for a credentials problem goes out at once when it is fixed.
    #[serde(default)]
    pub failures: u32,
    /// When the next attempt is due.
    #[serde(with = "humantime_serde")]
    pub next_attempt: SystemTime,
    /// The last failure, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why it is a dead letter, if it is one.
    #[serde(default)]
    pub dead_reason: Option<String>,
    /// Why it waits although it is due: its last attempt met an account paused for its
    /// credentials, or a mailbox held until someone fixes it. Held mail has no due time (it goes
    /// out the moment the hold lifts), so `queue list` shows this instead of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub history: Vec<Attempt>,
    /// For a held transaction of a split message, or a message merged from several: which
    /// message, and what the merge did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitRecord>,
    /// What was decided for the message when it was accepted (with `account` and `mailbox`):
    /// delivery sends exactly this. `None` only in records written before the decision was
    /// stored; such a message is routed at its first delivery after the upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
}

impl Entry {
    /// A fresh entry for a message accepted now.
    pub fn new(envelope: &Envelope, size: u64, account: &str) -> Entry {
        Entry {
            id: envelope.id.to_string(),
            mail_from: envelope.mail_from.as_ref().map(|a| a.to_string()),
            rcpt_to: envelope.rcpt_to.iter().map(|a| a.to_string()).collect(),
            remote: envelope.remote.to_string(),
            helo: envelope.helo.clone(),
            auth_user: envelope.auth_user.clone(),
            received_at: envelope.received_at,
            size,
            account: account.to_string(),
            mailbox: None,
            attempts: 0,
            failures: 0,
            next_attempt: envelope.received_at,
            last_error: None,
            dead_reason: None,
            held: None,
            history: Vec::new(),
            split: None,
            route: None,
        }
    }

    /// The same entry for the mailbox of `user` (see [`Entry::mailbox`]).
    pub fn with_mailbox(mut self, user: Option<&str>) -> Entry {
        self.mailbox = user.map(crate::message::mailbox::mailbox_key);
        self
    }

    /// A fresh entry for a message accepted now, with what was decided for it.
    pub fn decided(envelope: &Envelope, size: u64, decision: Decision) -> Entry {
        Entry {
            mailbox: decision.mailbox,
            route: Some(decision.route),
            ..Entry::new(envelope, size, &decision.account)
        }
    }

    /// The same entry under a new decision (a merged message: the union of its parts' envelopes
    /// gets its own Bcc).
    pub fn redecided(self, decision: Decision) -> Entry {
        Entry {
            account: decision.account,
            mailbox: decision.mailbox,
            route: Some(decision.route),
            ..self
        }
    }

    /// The envelope again, for delivery.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            id: MessageId::from_stored(&self.id),
            mail_from: self.mail_from.as_deref().map(Address::new),
            rcpt_to: self.rcpt_to.iter().map(Address::new).collect(),
            remote: self
                .remote
                .parse()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            helo: self.helo.clone(),
            auth_user: self.auth_user.clone(),
            received_at: self.received_at,
        }
    }

    /// Records the outcome of an attempt that ended `at`.
    pub fn record(&mut self, at: SystemTime, outcome: String) {
        self.attempts += 1;
        self.history.push(Attempt {
            at,
            outcome: outcome.clone(),
        });
        self.last_error = Some(outcome);
        self.held = None;
    }
}

/// The readable entries of a place, and the ids whose records could not be read (with why).
pub type Listing = (Vec<Entry>, Vec<(String, io::Error)>);

/// True for a queue id: the server's own ids are lowercase hex, and nothing else may reach a path.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
