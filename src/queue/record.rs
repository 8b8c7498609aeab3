//! The queue's records, whatever stores them: the record of one message ([`Entry`]) and where it
//! is ([`Place`]), what a held transaction or a merged message says about splitting
//! ([`SplitRecord`]), the record of a merge ([`Merge`]), the decision stored at accept
//! ([`Decision`], [`Route`]) and the `queue` commands' requests ([`Request`]).
//!
//! This module is the queue's leaf: it imports no other queue module and no relay module, so every
//! part of the queue (the stores, the scheduler core, the splitter, the commands) can depend on it
//! without a cycle. The relay converts its own decision into [`Decision`] at its edge
//! (`relay::gmail`).
//!
//! # The record format
//!
//! Both stores keep the same JSON (the spool in its files, PostgreSQL in `jsonb` columns); it is
//! documented as one thing in docs/queue.md, "Record format". Every record written carries
//! `"version": VERSION`. A record without the field was written before records were versioned
//! (version 1). Reading goes through [`Entry::from_json`] (or [`Merge::from_json`]), which
//! refuses a record of a newer version (a downgrade with mail in the queue: the record is left in
//! place and reported, never half-read) and brings an older one up to date ([`Entry::upgrade`]).

use std::collections::HashSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::message::header_edits::Piece;
use crate::message::{Address, Envelope, MessageId};

/// The version of the record format this build writes (see the module docs).
///
/// - 1: records written before the field existed.
/// - 2: the Bcc a decision adds is a list of addresses (`{"bcc": …}` in `route.upload`), not bytes,
///   so that a merge can take the union of its parts' lists; a held transaction's record says what
///   to do when its message stays incomplete (`split.incomplete`).
/// - 3: what the queue tells about a message: its `message_id` (for events), whether its delay
///   warning went out (`delay_warned`; older records read as "not warned"), and for a DSN the
///   queue made, the message it reports on (`dsn_for`).
pub const VERSION: u32 = 3;

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// Waiting for delivery.
    Queue,
    /// Given up: a permanent failure or too old. Kept until retried or deleted.
    Dead,
    /// One transaction of a message an MTA split into several, waiting for the others.
    Held,
}

impl Place {
    /// Its name in records, paths and columns: `queue`, `dead`, `held`.
    pub fn name(self) -> &'static str {
        match self {
            Place::Queue => "queue",
            Place::Dead => "dead",
            Place::Held => "held",
        }
    }
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

/// The part of a decision delivery needs besides the account: the user a service-account token
/// is minted for, and the upload as pieces of the message (ranges of it, the bytes the rules
/// wrote, and the Bcc list they added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The user a service-account token is minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The upload, covering the whole message.
    pub upload: Vec<Piece>,
}

/// What was decided for a message when it was accepted: which account, which of its mailboxes,
/// and what to upload. Delivery sends exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The configured account that sends it.
    pub account: String,
    /// The user the account sends as when that is each message's sender (a service account
    /// impersonating the sender), lowercased; `None` when the account is one mailbox.
    pub mailbox: Option<String>,
    /// As whom, and what bytes.
    pub route: Route,
}

/// The record of one queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The record format ([`VERSION`] once read; 1 for records written before the field).
    #[serde(default = "first_version")]
    pub version: u32,
    /// The queue id.
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
    /// Size of the message in bytes, exactly as received.
    pub size: u64,
    /// The account chosen at accept time.
    pub account: String,
    /// The user the account sends as when that is each message's sender, lowercased; `None`
    /// when the account is one mailbox. Gmail's limits (rate, concurrency, daily sending limit)
    /// belong to that mailbox.
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
    /// delivery sends exactly this. `None` in records written before the decision was stored
    /// (and for a merge of transactions held by version 1); such a message is routed at its
    /// first delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// The message's `Message-ID` field as accepted, with its angle brackets, for the events
    /// about it; `None` when it has none (and in records older than version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// True once the delay warning (`notify.delay_warning`) about it went out, so that a restart
    /// or another replica does not send a second one. False in records older than version 3.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
    /// For a DSN the queue made: the queue id of the message it reports on. Such a message is
    /// never reported on itself; if it cannot be delivered it is logged and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_for: Option<String>,
}

fn first_version() -> u32 {
    1
}

/// A parse's failure as a record error.
fn parsed<T>(parsed: serde_json::Result<T>) -> Result<T, RecordError> {
    parsed.map_err(|err| RecordError::Unparseable(err.to_string()))
}

/// Why a stored record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a record of any version (cut short, edited by hand).
    #[error("{0}")]
    Unparseable(String),
    /// Written by a newer smtp2gmail: left in place for that version.
    #[error(
        "written by a newer smtp2gmail (record version {found}, this one reads up to {VERSION})"
    )]
    Newer {
        /// The record's version.
        found: u32,
    },
}

impl Entry {
    /// A fresh entry for a message accepted now.
    pub fn new(envelope: &Envelope, size: u64, account: &str) -> Entry {
        Entry {
            version: VERSION,
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
            message_id: None,
            delay_warned: false,
            dsn_for: None,
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

    /// True for one held transaction of a split message (not a message merged from several).
    pub fn is_held_part(&self) -> bool {
        self.split.as_ref().is_some_and(|s| s.parts.is_empty())
    }

    /// A record as stored, of any version up to [`VERSION`], brought up to date.
    pub fn from_json(bytes: &[u8]) -> Result<Entry, RecordError> {
        parsed(serde_json::from_slice::<Entry>(bytes))?.upgrade()
    }

    /// [`Entry::from_json`] for a record already parsed as JSON (a `jsonb` column).
    pub fn from_json_value(value: serde_json::Value) -> Result<Entry, RecordError> {
        parsed(serde_json::from_value::<Entry>(value))?.upgrade()
    }

    /// Brings a record read from the store up to [`VERSION`]:
    /// - version 1: a held transaction's decision is dropped. Its Bcc is bytes, which cannot be
    ///   merged with the other transactions' lists; the merged message is then routed at its
    ///   first delivery, as records written before decisions were stored are. A queued or dead
    ///   message keeps its decision: its bytes are still exactly what to send.
    /// - versions 1 and 2: nothing to change; the fields version 3 added read as absent (no
    ///   Message-ID known, not warned, not a DSN).
    pub fn upgrade(mut self) -> Result<Entry, RecordError> {
        if self.version > VERSION {
            return Err(RecordError::Newer {
                found: self.version,
            });
        }
        if self.version < 2 && self.is_held_part() {
            self.route = None;
        }
        self.version = VERSION;
        Ok(self)
    }
}

/// What to do with a split message still incomplete when `queue.split_window` ends: the
/// account's `header_only_recipients` as it was when its first transaction was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfIncomplete {
    /// Queue it once with the union of the envelopes (Gmail delivers to every header address).
    Send,
    /// Make it a dead letter with the reason.
    Refuse,
}

/// What a queue record says about splitting: for a held transaction, which message it belongs to;
/// for a merged message, what it was merged from and what was missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// The group: a hash of the sender, the AUTH identity and the exact message bytes.
    pub group: String,
    /// The message's Message-ID header.
    pub message_id: String,
    /// How many addresses its To, Cc and Bcc headers name.
    pub header_recipients: usize,
    /// What was decided at accept for the message if it stays incomplete; `None` in records of
    /// version 1 (the account's setting is read when the window ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<IfIncomplete>,
    /// The held transactions merged into this message (their queue ids), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
    /// Header recipients that no transaction named, for a message released incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncovered: Vec<String>,
}

/// One merge of held transactions, recorded before anything of it moves (the merge journal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Merge {
    /// The merged message's record, as it is in the queue or the dead letters; its
    /// `split.parts` lists the transactions merged.
    pub entry: Entry,
    /// True when it was made a dead letter rather than queued.
    pub dead: bool,
    /// Everyone who has (or will get) the message from this merge, normalized.
    pub served: HashSet<String>,
    /// When it was done.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
}

impl Merge {
    /// The transactions merged.
    pub fn parts(&self) -> &[String] {
        self.entry.split.as_ref().map_or(&[], |s| &s.parts)
    }

    /// The group it was made from.
    pub fn group(&self) -> &str {
        self.entry.split.as_ref().map_or("", |s| &s.group)
    }

    /// Where the merged message goes.
    pub fn place(&self) -> Place {
        if self.dead { Place::Dead } else { Place::Queue }
    }

    /// A merge record as stored, its entry brought up to date ([`Entry::upgrade`]).
    pub fn from_json(bytes: &[u8]) -> Result<Merge, RecordError> {
        parsed(serde_json::from_slice::<Merge>(bytes))?.upgrade()
    }

    /// [`Merge::from_json`] for a record already parsed as JSON.
    pub fn from_json_value(value: serde_json::Value) -> Result<Merge, RecordError> {
        parsed(serde_json::from_value::<Merge>(value))?.upgrade()
    }

    fn upgrade(self) -> Result<Merge, RecordError> {
        Ok(Merge {
            entry: self.entry.upgrade()?,
            ..self
        })
    }
}

/// What a `queue` command asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Request {
    /// Deliver now (one message, or every queued and dead one).
    Retry {
        /// The message, or `None` for all.
        #[serde(default, deserialize_with = "queue_id_or_all")]
        id: Option<String>,
    },
    /// Remove a message from the queue or the dead letters.
    Delete {
        /// The message.
        #[serde(deserialize_with = "queue_id")]
        id: String,
    },
}

/// A request's id, read from a request file: a queue id or the request is unreadable, so
/// nothing else ever reaches a spool path (the command checks it before writing the file too).
fn queue_id<'de, D: serde::Deserializer<'de>>(from: D) -> Result<String, D::Error> {
    checked(String::deserialize(from)?)
}

/// [`queue_id`], or none (every message).
fn queue_id_or_all<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(from)?
        .map(checked)
        .transpose()
}

fn checked<E: serde::de::Error>(id: String) -> Result<String, E> {
    match is_valid_id(&id) {
        true => Ok(id),
        false => Err(E::custom("not a queue id")),
    }
}

/// True for a queue id: the server's own ids are lowercase hex, and nothing else may reach a path.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
