//! The JSON shapes of Mailpit's API v1 (its OpenAPI spec, `server/ui/api/v1/swagger.json`), so
//! that Mailpit's clients read our answers unchanged: the field names, their case, empty arrays
//! rather than `null`, RFC 3339 times.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::index::Entry;
use super::mime::{Attachment, Mailbox, Summary, View};

/// A time as Mailpit writes it (RFC 3339, UTC, milliseconds).
pub fn rfc3339_ms(ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(&Rfc3339).unwrap_or_default()
}

/// One message in a list (`MessageSummary`), also the `Data` of a `new` event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListItem {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "MessageID")]
    message_id: String,
    read: bool,
    from: Option<Mailbox>,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    reply_to: Vec<Mailbox>,
    subject: String,
    created: String,
    username: String,
    tags: Vec<String>,
    size: u64,
    attachments: usize,
    snippet: String,
}

impl ListItem {
    /// The message's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The list item of an entry with its tags; an entry whose summary is not loaded shows what
    /// the index knows.
    pub fn new(entry: &Entry, tags: Vec<String>) -> ListItem {
        let empty = Summary::default();
        let s = entry.summary.as_deref().unwrap_or(&empty);
        ListItem {
            id: entry.id.to_string(),
            message_id: s.message_id.clone(),
            read: entry.read,
            from: s.from.clone(),
            to: s.to.clone(),
            cc: s.cc.clone(),
            bcc: s.bcc.clone(),
            reply_to: s.reply_to.clone(),
            subject: s.subject.clone(),
            created: rfc3339_ms(entry.received_ms),
            username: String::new(),
            tags,
            size: entry.size,
            attachments: s.attachments,
            snippet: s.snippet.clone(),
        }
    }
}

/// `GET /api/v1/messages` and `/api/v1/search` (`MessagesSummary`).
#[derive(Debug, Serialize)]
pub struct MessageList {
    /// Messages in the inbox.
    pub total: usize,
    /// Unread messages in the inbox.
    pub unread: usize,
    /// Messages on this page (undocumented by Mailpit since 2023, still sent).
    pub count: usize,
    /// Messages matching the query (all of them for a plain list).
    pub messages_count: usize,
    /// Unread messages matching the query.
    pub messages_unread: usize,
    /// The offset of this page.
    pub start: usize,
    /// Every tag in use, sorted.
    pub tags: Vec<String>,
    /// This page, newest first.
    pub messages: Vec<ListItem>,
}

/// `GET /api/v1/message/{ID}` (`Message`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Message {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "MessageID")]
    message_id: String,
    from: Option<Mailbox>,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    reply_to: Vec<Mailbox>,
    return_path: String,
    subject: String,
    list_unsubscribe: ListUnsubscribe,
    date: String,
    tags: Vec<String>,
    username: String,
    text: String,
    #[serde(rename = "HTML")]
    html: String,
    size: u64,
    inline: Vec<Attachment>,
    attachments: Vec<Attachment>,
}

/// Mailpit's List-Unsubscribe summary; always empty here (no checks are run).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListUnsubscribe {
    header: String,
    links: Vec<String>,
    errors: String,
    header_post: String,
}

impl Message {
    /// The full message: the index's summary, its tags and the parsed view.
    pub fn new(entry: &Entry, summary: &Summary, tags: Vec<String>, view: &View) -> Message {
        let date = summary
            .date
            .map_or(entry.received_ms, |s| s.saturating_mul(1000));
        Message {
            id: entry.id.to_string(),
            message_id: summary.message_id.clone(),
            from: summary.from.clone(),
            to: summary.to.clone(),
            cc: summary.cc.clone(),
            bcc: summary.bcc.clone(),
            reply_to: summary.reply_to.clone(),
            return_path: summary.return_path.clone(),
            subject: summary.subject.clone(),
            list_unsubscribe: ListUnsubscribe::default(),
            date: rfc3339_ms(date),
            tags,
            username: String::new(),
            text: view.text.clone(),
            html: view.html.clone(),
            size: entry.size,
            inline: view.inline.clone(),
            attachments: view.attachments.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(1_796_119_200_123), "2026-12-01T10:00:00.123Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn list_items_use_mailpit_names_and_empty_arrays() {
        let entry = Entry {
            id: crate::inbox::id::InboxId::parse("abc").unwrap(),
            received_ms: 0,
            size: 42,
            read: true,
            summary: None,
        };
        let json = serde_json::to_value(ListItem::new(&entry, Vec::new())).unwrap();
        for key in [
            "ID",
            "MessageID",
            "Read",
            "From",
            "To",
            "Cc",
            "Bcc",
            "ReplyTo",
            "Subject",
            "Created",
            "Tags",
            "Size",
            "Attachments",
            "Snippet",
        ] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
        assert_eq!(json["To"], serde_json::json!([]));
        assert_eq!(json["From"], serde_json::Value::Null);
        assert_eq!(json["Size"], 42);
    }
}
