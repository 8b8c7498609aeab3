//! The events the operator's webhooks receive, and their JSON: one stable schema, in the shape
//! Standard Webhooks recommends (`type`, `timestamp`, `data`).
//!
//! The schema is documented in docs/operations.md ("Webhooks"). Fields are only ever added:
//! none is renamed, removed or changes its type, and every field documented is always present
//! (`null` when it does not apply), so receivers can rely on it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, Serializer};

use crate::status::Status;

/// The kinds of event: the `type` of the JSON and the names `[[notify.webhooks]] events` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A queued message was given up and became a dead letter.
    DeadLetter,
    /// A message is still queued after `notify.delay_warning`.
    Delayed,
    /// An attempt failed temporarily; the message will be retried.
    Deferred,
    /// Gmail accepted a queued message.
    Delivered,
    /// An account (or one mailbox of it) was held for its credentials, or resumed.
    Credentials,
}

impl EventKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [EventKind; 5] = [
        EventKind::DeadLetter,
        EventKind::Delayed,
        EventKind::Deferred,
        EventKind::Delivered,
        EventKind::Credentials,
    ];

    /// The name, as in the JSON and the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeadLetter => "dead_letter",
            EventKind::Delayed => "delayed",
            EventKind::Deferred => "deferred",
            EventKind::Delivered => "delivered",
            EventKind::Credentials => "credentials",
        }
    }
}

/// Something the operator may want to hear about, and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it happened (the JSON's `timestamp`; not when it is sent).
    pub at: SystemTime,
    /// What happened.
    pub detail: Detail,
}

/// What happened, with the data of its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    /// A queued message became a dead letter (a permanent answer, `queue.max_age`, …).
    DeadLetter(MessageEvent),
    /// A message is still queued after `notify.delay_warning`.
    Delayed(MessageEvent),
    /// An attempt failed temporarily (with the reason and the next attempt).
    Deferred(MessageEvent),
    /// Gmail accepted a queued message (with Gmail's id).
    Delivered(MessageEvent),
    /// An account or one mailbox was held for its credentials, or resumed.
    Credentials(CredentialsEvent),
}

/// The data of an event about one queued message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageEvent {
    /// The queue id (`smtp2gmail queue show ID`).
    pub queue_id: String,
    /// The message's `Message-ID` header, with its angle brackets, when it has one.
    pub message_id: Option<String>,
    /// The configured account the message is sent through.
    pub account: String,
    /// The Gmail mailbox, when the account sends as each message's sender (a service account).
    pub mailbox: Option<String>,
    /// The envelope sender; `null` for `<>`.
    pub sender: Option<String>,
    /// The envelope recipients.
    pub recipients: Vec<String>,
    /// The enhanced status code (RFC 3463) of the outcome, e.g. `5.7.1`.
    #[serde(serialize_with = "status_text")]
    pub status: Option<Status>,
    /// Why, in words: Google's answer or the queue's reason; no secrets, no message content.
    pub reason: Option<String>,
    /// When the server accepted the message.
    #[serde(serialize_with = "timestamp")]
    pub received_at: SystemTime,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (deferred and delayed messages).
    #[serde(serialize_with = "optional_timestamp")]
    pub next_attempt: Option<SystemTime>,
    /// Gmail's id for the sent message (delivered).
    pub gmail_id: Option<String>,
}

/// The data of a `credentials` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CredentialsEvent {
    /// The configured account.
    pub account: String,
    /// The one mailbox held or resumed, when it is not the whole account (a service account
    /// whose delegation fails for one user).
    pub mailbox: Option<String>,
    /// Held or resumed.
    pub state: CredentialsState,
    /// Why it was held, and what fixes it; `null` when resumed.
    pub reason: Option<String>,
}

/// Whether mail of an account goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsState {
    /// Its mail waits: the credentials failed and a person must act.
    Held,
    /// Its mail goes out again.
    Resumed,
}

impl Event {
    /// An event that happens now.
    pub fn now(detail: Detail) -> Event {
        Event {
            at: SystemTime::now(),
            detail,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self.detail {
            Detail::DeadLetter(_) => EventKind::DeadLetter,
            Detail::Delayed(_) => EventKind::Delayed,
            Detail::Deferred(_) => EventKind::Deferred,
            Detail::Delivered(_) => EventKind::Delivered,
            Detail::Credentials(_) => EventKind::Credentials,
        }
    }

    /// The JSON body webhooks receive: `{"type": …, "timestamp": …, "data": {…}}`, minified
    /// (the signature covers these exact bytes).
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Data<'a> {
            Message(&'a MessageEvent),
            Credentials(&'a CredentialsEvent),
        }
        #[derive(Serialize)]
        struct Payload<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(serialize_with = "timestamp")]
            timestamp: SystemTime,
            data: Data<'a>,
        }
        let data = match &self.detail {
            Detail::DeadLetter(m)
            | Detail::Delayed(m)
            | Detail::Deferred(m)
            | Detail::Delivered(m) => Data::Message(m),
            Detail::Credentials(c) => Data::Credentials(c),
        };
        let payload = Payload {
            kind: self.kind().as_str(),
            timestamp: self.at,
            data,
        };
        // Plain structs of strings and numbers: serialising cannot fail.
        serde_json::to_vec(&payload).expect("event JSON")
    }
}

/// A time as RFC 3339 in UTC with milliseconds, e.g. `2026-05-04T10:15:30.123Z`.
fn timestamp<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

fn optional_timestamp<S: Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => timestamp(at, s),
        None => s.serialize_none(),
    }
}

fn status_text<S: Serializer>(status: &Option<Status>, s: S) -> Result<S::Ok, S::Error> {
    match status {
        Some(status) => s.collect_str(status),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::notify::signature::SigningKey;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123)
    }

    /// The dead letter of the examples: the docs' and the schema test's.
    fn dead_letter(reason: &str, received_at: SystemTime) -> Event {
        Event {
            at: at(1_777_889_730),
            detail: Detail::DeadLetter(MessageEvent {
                queue_id: "019de0a1b2c3d4e5f6".into(),
                message_id: Some("<inv42@example.com>".into()),
                account: "default".into(),
                mailbox: None,
                sender: Some("app@example.com".into()),
                recipients: vec!["bob@example.org".into()],
                status: Some(Status(5, 7, 1)),
                reason: Some(reason.into()),
                received_at,
                attempts: 1,
                next_attempt: None,
                gmail_id: None,
            }),
        }
    }

    #[test]
    fn a_dead_letter_has_the_documented_schema() {
        let event = dead_letter("Gmail: Invalid To header", at(1_777_888_800));
        let body: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "dead_letter",
                "timestamp": "2026-05-04T10:15:30.123Z",
                "data": {
                    "queue_id": "019de0a1b2c3d4e5f6",
                    "message_id": "<inv42@example.com>",
                    "account": "default",
                    "mailbox": null,
                    "sender": "app@example.com",
                    "recipients": ["bob@example.org"],
                    "status": "5.7.1",
                    "reason": "Gmail: Invalid To header",
                    "received_at": "2026-05-04T10:00:00.123Z",
                    "attempts": 1,
                    "next_attempt": null,
                    "gmail_id": null
                }
            })
        );
        assert!(
            event
                .to_json()
                .starts_with(br#"{"type":"dead_letter","timestamp":"#),
            "type first, minified"
        );
    }

    #[test]
    fn a_credentials_event_names_the_account_and_state() {
        let event = Event {
            at: at(1_777_889_730),
            detail: Detail::Credentials(CredentialsEvent {
                account: "support".into(),
                mailbox: None,
                state: CredentialsState::Held,
                reason: Some("invalid_grant: run smtp2gmail authorize".into()),
            }),
        };
        let body: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(body["type"], "credentials");
        assert_eq!(
            body["data"],
            json!({
                "account": "support",
                "mailbox": null,
                "state": "held",
                "reason": "invalid_grant: run smtp2gmail authorize"
            })
        );
    }

    /// The request shown in docs/operations.md is what this code sends for that event, and its
    /// signature is right for the secret the page gives.
    #[test]
    fn the_documented_request_is_what_is_sent() {
        let page = include_str!("../../docs/operations.md");
        let header = |name: &str| {
            let start = page.find(&format!("\n{name}: ")).unwrap() + name.len() + 3;
            page[start..].lines().next().unwrap()
        };
        let body = page
            .lines()
            .find(|l| l.starts_with(r#"{"type":"dead_letter""#))
            .unwrap();
        let event = dead_letter(
            "Gmail refused the message: Invalid To header",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_888_800),
        );
        assert_eq!(String::from_utf8(event.to_json()).unwrap(), body);
        let key = SigningKey::parse("whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
        let timestamp = header("webhook-timestamp").parse().unwrap();
        assert_eq!(
            key.sign(header("webhook-id"), timestamp, body.as_bytes()),
            header("webhook-signature")
        );
    }

    #[test]
    fn kinds_are_named_alike_everywhere() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}
