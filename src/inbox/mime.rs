//! What the inbox shows of a message: its summary for the list, its full view (text, HTML,
//! attachments), one part's bytes, its header fields. All read with mail-parser, which never
//! fails: malformed MIME, bad charsets and broken encodings give whatever can be decoded.
//!
//! Everything here is synchronous and CPU-bound on possibly 35 MiB of input: callers run it on
//! the blocking pool, never on the async worker threads.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;

use mail_parser::{Addr, Address, MessageParser, MessagePart, MimeHeaders, PartType};
use serde::Serialize;

/// The longest snippet, in characters (Mailpit's).
pub const SNIPPET_CHARS: usize = 250;
/// The most attachments and inline parts a view lists: a 35 MiB message can hold 800,000
/// parts, and a list of them helps nobody (the summary still counts them all).
pub const MAX_PARTS_SHOWN: usize = 1000;

/// A mailbox as Mailpit's JSON writes it: `{"Name": "…", "Address": "…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mailbox {
    /// The display name, decoded; empty when there is none.
    pub name: String,
    /// The address as written (not lowercased).
    pub address: String,
}

/// What the list and the search need of one message; computed once when it is captured (or, in
/// file mode, loaded), kept in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The Message-ID header without angle brackets.
    pub message_id: String,
    /// The first From mailbox.
    pub from: Option<Mailbox>,
    /// To mailboxes.
    pub to: Vec<Mailbox>,
    /// Cc mailboxes.
    pub cc: Vec<Mailbox>,
    /// Blind copies: the Bcc header's mailboxes and envelope recipients that no header names.
    pub bcc: Vec<Mailbox>,
    /// Reply-To mailboxes.
    pub reply_to: Vec<Mailbox>,
    /// The decoded subject.
    pub subject: String,
    /// The Date header as seconds since the epoch, if it parses.
    pub date: Option<i64>,
    /// How many attachments (inline parts included), as Mailpit counts them in lists.
    pub attachments: usize,
    /// The envelope sender (`MAIL FROM`); empty for the null sender.
    pub return_path: String,
    /// The start of the text body, whitespace collapsed.
    pub snippet: String,
    /// The `X-Tags` header's tags, cleaned as Mailpit cleans them (see [`super::tags`]).
    pub tags: Vec<String>,
}

/// One attachment or inline part, as Mailpit's JSON writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attachment {
    /// The part's position in the message, the `{PartID}` of `/part/{PartID}`.
    #[serde(rename = "PartID")]
    pub part_id: String,
    /// The file name, or empty.
    pub file_name: String,
    /// `type/subtype`.
    pub content_type: String,
    /// The Content-ID without angle brackets, or empty.
    #[serde(rename = "ContentID")]
    pub content_id: String,
    /// The decoded size in bytes.
    pub size: usize,
}

/// The full view of a message (Mailpit's "message summary" minus what the index knows).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The text body (from the HTML when there is no text part).
    pub text: String,
    /// The HTML body, or empty when the message has none.
    pub html: String,
    /// Parts shown inside the HTML (a Content-ID, not marked as attachment).
    pub inline: Vec<Attachment>,
    /// Everything else attached.
    pub attachments: Vec<Attachment>,
    /// The parts the HTML refers to by `cid:` (key: the Content-ID in ASCII lowercase), as
    /// `data:` URLs. The HTML's frame has an opaque origin (sandbox), so it may not load the
    /// inbox's part URLs, which are for the inbox itself (`Cross-Origin-Resource-Policy`).
    pub cid_urls: HashMap<String, String>,
}

impl View {
    /// About how many bytes it holds: its text and HTML.
    pub fn bytes(&self) -> usize {
        let urls: usize = self.cid_urls.values().map(String::len).sum();
        self.text.len() + self.html.len() + urls
    }
}

/// One part's decoded bytes, for download.
#[derive(Debug, Clone)]
pub struct Part {
    /// The decoded content.
    pub bytes: Vec<u8>,
    /// `type/subtype`.
    pub content_type: String,
    /// The file name (or the Content-ID when there is none).
    pub file_name: String,
}

fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    MessageParser::default().parse(raw)
}

/// What the SMTP envelope said about a message (the header fields may say otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Envelope {
    /// `MAIL FROM`; `None` for the null sender.
    pub mail_from: Option<String>,
    /// `RCPT TO`, in order.
    pub rcpt_to: Vec<String>,
}

/// The summary of `raw`. Envelope recipients are added as Bcc when no To/Cc/Bcc field names
/// them (Django's bcc, which only the envelope carries).
pub fn summarize(raw: &[u8], envelope: &Envelope) -> Summary {
    let return_path = envelope.mail_from.clone().unwrap_or_default();
    let envelope_recipients = &envelope.rcpt_to;
    let Some(message) = parse(raw) else {
        return Summary {
            bcc: envelope_only(envelope_recipients, &[]),
            return_path,
            ..Summary::default()
        };
    };
    let to = mailboxes(message.to());
    let cc = mailboxes(message.cc());
    let mut bcc = mailboxes(message.bcc());
    let named: Vec<&Mailbox> = to.iter().chain(&cc).chain(&bcc).collect();
    let extra = envelope_only(envelope_recipients, &named);
    bcc.extend(extra);
    Summary {
        message_id: message.message_id().unwrap_or_default().to_string(),
        from: mailboxes(message.from()).into_iter().next(),
        to,
        cc,
        bcc,
        reply_to: mailboxes(message.reply_to()),
        subject: message.subject().unwrap_or_default().to_string(),
        date: message.date().map(|d| d.to_timestamp()),
        attachments: message.attachment_count(),
        return_path,
        snippet: snippet(&body_text(&message)),
        tags: x_tags(&message),
    }
}

/// The tags of every `X-Tags` field (comma-separated; a sender may give several fields).
fn x_tags(message: &mail_parser::Message<'_>) -> Vec<String> {
    let fields = message
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("x-tags"));
    let values = fields.filter_map(|h| h.value().as_text().map(str::to_string));
    let listed: Vec<String> = values.flat_map(|v| super::tags::split(&v)).collect();
    super::tags::normalized(listed)
}

/// Envelope recipients that no header field names, as mailboxes.
fn envelope_only(recipients: &[String], named: &[&Mailbox]) -> Vec<Mailbox> {
    recipients
        .iter()
        .filter(|r| !named.iter().any(|m| m.address.eq_ignore_ascii_case(r)))
        .map(|r| Mailbox {
            name: String::new(),
            address: r.clone(),
        })
        .collect()
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<Mailbox> {
    let Some(address) = address else {
        return Vec::new();
    };
    let mailbox = |addr: &Addr<'_>| Mailbox {
        name: addr.name().unwrap_or_default().trim().to_string(),
        address: addr.address().unwrap_or_default().trim().to_string(),
    };
    match address {
        Address::List(list) => list.iter().map(mailbox).collect(),
        Address::Group(groups) => groups
            .iter()
            .flat_map(|g| &g.addresses)
            .map(mailbox)
            .collect(),
    }
}

fn body_text<'a>(message: &'a mail_parser::Message<'_>) -> std::borrow::Cow<'a, str> {
    // Borrowed when the part needs no decoding: no copy of a 5 MB text just for its snippet.
    message.body_text(0).unwrap_or_default()
}

/// The first [`SNIPPET_CHARS`] characters of `text` with every run of whitespace made one space.
pub fn snippet(text: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in text.split_whitespace() {
        if count > 0 {
            out.push(' ');
            count += 1;
        }
        for c in word.chars() {
            if count >= SNIPPET_CHARS {
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// The text a plain-word search looks at besides the summary: the text body, lowercased.
pub fn search_text(raw: &[u8]) -> String {
    parse(raw)
        .map(|m| body_text(&m).to_lowercase())
        .unwrap_or_default()
}

/// The full view of `raw`.
pub fn view(raw: &[u8]) -> View {
    let Some(message) = parse(raw) else {
        // Not even a header: show the bytes as text rather than nothing.
        return View {
            text: String::from_utf8_lossy(raw).into_owned(),
            ..View::default()
        };
    };
    let html = message
        .html_bodies()
        .find_map(|part| match &part.body {
            PartType::Html(html) => Some(html.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    let referenced: HashSet<String> = cid_references(&html)
        .map(|(_, cid)| cid.to_ascii_lowercase())
        .collect();
    let mut view = View {
        text: body_text(&message).into_owned(),
        html,
        ..View::default()
    };
    // The attachments' positions, in order: one pass, whatever the number of parts.
    let mut listed = message.attachments.clone();
    listed.sort_unstable();
    listed.dedup();
    for index in listed.into_iter().take(MAX_PARTS_SHOWN) {
        let index = index as usize;
        let Some(part) = message.parts.get(index) else {
            continue;
        };
        let attachment = describe(index, part);
        let cid = attachment.content_id.to_ascii_lowercase();
        if referenced.contains(&cid) && !view.cid_urls.contains_key(&cid) {
            view.cid_urls
                .insert(cid, data_url(&attachment.content_type, part));
        }
        let marked_attachment = part
            .content_disposition()
            .is_some_and(|d| d.is_attachment());
        if !attachment.content_id.is_empty() && !marked_attachment {
            view.inline.push(attachment);
        } else {
            view.attachments.push(attachment);
        }
    }
    view
}

/// Every `cid:` reference in `html`: its byte position (of `cid:`) and the Content-ID, which
/// ends at a quote, a bracket, `<`, `>` or white space. One pass over `html`.
pub fn cid_references(html: &str) -> impl Iterator<Item = (usize, &str)> {
    let bytes = html.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at + 4 <= bytes.len() {
            let start = at;
            at += 1;
            if !bytes[start..start + 4].eq_ignore_ascii_case(b"cid:") {
                continue;
            }
            let id_start = start + 4;
            let len = bytes[id_start..]
                .iter()
                .position(|b| b"\"'()<>".contains(b) || b.is_ascii_whitespace())
                .unwrap_or(bytes.len() - id_start);
            at = id_start + len;
            // The delimiters are ASCII, so both ends are character boundaries.
            return Some((start, &html[id_start..at]));
        }
        None
    })
}

/// `part` as a `data:` URL of type `content_type` (or `application/octet-stream` when the type
/// is not a plain `type/subtype` token, which could end the URL's header early).
fn data_url(content_type: &str, part: &MessagePart<'_>) -> String {
    let content_type = match is_plain_type(content_type) {
        true => content_type,
        false => "application/octet-stream",
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(part.contents());
    format!("data:{content_type};base64,{encoded}")
}

/// Whether `content_type` is a bare `type/subtype` of RFC 6838 name characters: no
/// parameters, no commas, nothing a browser could read as a second type.
pub fn is_plain_type(content_type: &str) -> bool {
    let name = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && b"!#$&-^_.+".contains(&b)))
    };
    content_type
        .split_once('/')
        .is_some_and(|(kind, subtype)| name(kind) && name(subtype))
}

fn describe(index: usize, part: &MessagePart<'_>) -> Attachment {
    Attachment {
        part_id: index.to_string(),
        file_name: file_name(part),
        content_type: content_type(part),
        content_id: part
            .content_id()
            .unwrap_or_default()
            .trim_matches(['<', '>', ' '])
            .to_string(),
        size: part.contents().len(),
    }
}

fn file_name(part: &MessagePart<'_>) -> String {
    let name = part.attachment_name().unwrap_or_default();
    // A name is shown and offered as a download name: no path.
    displayable(name.rsplit(['/', '\\']).next().unwrap_or_default())
}

/// `name` without control characters and without the Unicode controls that reorder text
/// (U+202E makes `invoice\u{202E}fdp.exe` read `invoiceexe.pdf`): what is shown is what the
/// bytes say.
pub fn displayable(name: &str) -> String {
    name.chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn content_type(part: &MessagePart<'_>) -> String {
    match part.content_type() {
        Some(ct) => match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_lowercase(),
            None => ct.ctype().to_lowercase(),
        },
        None if part.is_message() => "message/rfc822".to_string(),
        None if part.is_text() => "text/plain".to_string(),
        None => "application/octet-stream".to_string(),
    }
}

/// The part `part_id` (a position from [`view`]) of `raw`, if there is one.
pub fn part(raw: &[u8], part_id: &str) -> Option<Part> {
    let index: usize = part_id.parse().ok()?;
    let message = parse(raw)?;
    let part = message.parts.get(index)?;
    // Only real leaves: the message itself or a multipart container is no attachment.
    if index == 0 || matches!(part.body, PartType::Multipart(_)) {
        return None;
    }
    let described = describe(index, part);
    let file_name = match described.file_name.is_empty() {
        true => displayable(&described.content_id),
        false => described.file_name,
    };
    Some(Part {
        bytes: part.contents().to_vec(),
        content_type: described.content_type,
        file_name,
    })
}

/// The header fields of `raw` as Mailpit's `/headers` gives them: canonical names in sorted
/// order, each with its values in order, unfolded but not decoded.
pub fn headers(raw: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let end = crate::message::headers::header_end(raw);
    let Some(message) = MessageParser::new().parse_headers(&raw[..end]) else {
        return out;
    };
    for header in message.headers() {
        let start = (header.offset_start as usize).min(end);
        let stop = (header.offset_end as usize).clamp(start, end);
        let value = String::from_utf8_lossy(&raw[start..stop]);
        let unfolded: Vec<&str> = value.lines().map(str::trim).collect();
        out.entry(canonical(header.name()))
            .or_default()
            .push(unfolded.join(" ").trim().to_string());
    }
    out
}

/// `content-TYPE` → `Content-Type`, as Go's `textproto.CanonicalMIMEHeaderKey` writes names.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.extend(if upper {
            c.to_uppercase().collect::<Vec<_>>()
        } else {
            c.to_lowercase().collect::<Vec<_>>()
        });
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests;
