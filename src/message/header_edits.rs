//! How the Gmail rules' decisions become bytes: a Bcc addition and a From rewrite, each an edit
//! of the raw message at a position the header reader found, spliced into [`Piece`]s.
//!
//! Edits insert or replace a few bytes inside header fields and never re-serialise anything:
//! whatever the rules do not mean to change stays exactly as the client sent it, folding, encoding
//! and DKIM-signed fields included.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::Address;
use super::headers::{AddressField, Headers};
use super::mailbox::mailbox_key;

/// Added lines are folded before they would pass this many octets (RFC 5322's recommendation; the
/// hard limit of 998 is then never near).
const FOLD_AT: usize = 78;

/// One part of the bytes to upload. Stored in queue records (the decision made at accept), so it
/// serialises readably: `{"add": "…"}`, `{"keep": {"start": 0, "end": 812}}` and
/// `{"bcc": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// Bytes the rules wrote (a rewritten address, a Reply-To field).
    #[serde(rename = "add", with = "text_or_bytes")]
    New(Vec<u8>),
    /// A range of the received message, sent without copying.
    #[serde(rename = "keep")]
    Original(Range<usize>),
    /// Envelope recipients added to the Bcc field.
    #[serde(rename = "bcc")]
    Bcc(AddedBcc),
}

impl Piece {
    /// Its size in the upload.
    pub fn len(&self) -> usize {
        match self {
            Piece::New(bytes) => bytes.len(),
            Piece::Original(range) => range.len(),
            Piece::Bcc(bcc) => bcc.to_bytes().len(),
        }
    }

    /// True for a piece that adds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes a piece the rules wrote adds; `None` for a range of the received message.
    pub fn written(&self) -> Option<Vec<u8>> {
        match self {
            Piece::New(bytes) => Some(bytes.clone()),
            Piece::Bcc(bcc) => Some(bcc.to_bytes()),
            Piece::Original(_) => None,
        }
    }
}

/// The envelope recipients a decision adds to the Bcc field, kept as a list of addresses rather
/// than bytes: a message an MTA split into transactions is decided once per transaction, and
/// the merged message's Bcc is the union of the transactions' lists ([`merge_bcc`]) — not a
/// second reading of the headers under a configuration that may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedBcc {
    /// Written before the first address: `Bcc: ` for a new field, or what extends the client's.
    pub lead: String,
    /// The column the first address starts at, for folding.
    pub column: usize,
    /// The message's line ending.
    pub eol: String,
    /// The addresses, as the envelope spelled them, each once.
    pub addresses: Vec<String>,
    /// Written after the last address (a new field's line end).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tail: String,
}

impl AddedBcc {
    /// The bytes it adds.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.lead.as_bytes().to_vec();
        let addresses: Vec<&str> = self.addresses.iter().map(String::as_str).collect();
        fold_list(&mut bytes, self.column, &addresses, self.eol.as_bytes());
        bytes.extend_from_slice(self.tail.as_bytes());
        bytes
    }
}

/// The upload of one message decided several times over the same bytes (the transactions of a
/// message an MTA split, each decided at accept): the first decision's pieces, with a Bcc that
/// names every address any of the decisions added, each once, in order. The rules edit the same
/// bytes the same way, so only the Bcc lists differ.
pub fn merge_bcc(decisions: &[&[Piece]]) -> Vec<Piece> {
    let Some((first, _)) = decisions.split_first() else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    let mut addresses = Vec::new();
    // Where the first Bcc addition stands in the received bytes, and what it looks like.
    let mut model: Option<(usize, AddedBcc)> = None;
    for pieces in decisions {
        let mut offset = 0;
        for piece in pieces.iter() {
            match piece {
                Piece::Original(range) => offset = range.end,
                Piece::Bcc(bcc) => {
                    model.get_or_insert_with(|| (offset, bcc.clone()));
                    let new = bcc.addresses.iter().filter(|a| seen.insert(mailbox_key(a)));
                    addresses.extend(new.cloned());
                }
                Piece::New(_) => {}
            }
        }
    }
    let mut merged = first.to_vec();
    let Some((offset, mut bcc)) = model else {
        return merged;
    };
    bcc.addresses = addresses;
    if let Some(Piece::Bcc(own)) = merged.iter_mut().find(|p| matches!(p, Piece::Bcc(_))) {
        own.addresses = bcc.addresses;
        return merged;
    }
    // The first decision added nobody: the addition goes where another decision put it.
    let at = merged.iter().position(|piece| {
        matches!(piece, Piece::Original(range) if range.start < offset && offset <= range.end)
    });
    match at {
        None => merged.insert(0, Piece::Bcc(bcc)),
        Some(i) => {
            let Piece::Original(range) = merged[i].clone() else {
                unreachable!()
            };
            let rest = (offset < range.end).then_some(Piece::Original(offset..range.end));
            merged[i] = Piece::Original(range.start..offset);
            merged.insert(i + 1, Piece::Bcc(bcc));
            if let Some(rest) = rest {
                merged.insert(i + 2, rest);
            }
        }
    }
    merged
}

/// `pieces` of `raw` as chunks for a streaming request body; ranges of `raw` share its memory.
pub fn to_chunks(pieces: &[Piece], raw: &bytes::Bytes) -> Vec<bytes::Bytes> {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Original(range) => raw.slice(range.clone()),
            written => bytes::Bytes::from(written.written().unwrap_or_default()),
        })
        .collect()
}

/// Added bytes as a string when they are UTF-8 (always, but for a Reply-To copying a raw 8-bit
/// From), else as the list of bytes: readable in `queue show`, lossless either way.
mod text_or_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Repr::Text(text.to_string()),
            Err(_) => Repr::Bytes(bytes.to_vec()),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Repr::deserialize(deserializer)? {
            Repr::Text(text) => text.into_bytes(),
            Repr::Bytes(bytes) => bytes,
        })
    }
}

/// Replace `range` of the original with `insert` (written bytes, or a Bcc addition); an empty
/// range inserts.
pub(super) struct Edit {
    range: Range<usize>,
    insert: Piece,
}

/// The original with the edits applied, as pieces. Edits never overlap: each touches a different
/// field, or a different place in the same one.
pub(super) fn splice(mut edits: Vec<Edit>, len: usize) -> Vec<Piece> {
    // Stable, so two insertions at one position keep the order they were made in.
    edits.sort_by_key(|edit| edit.range.start);
    let mut pieces = Vec::with_capacity(2 * edits.len() + 1);
    let mut at = 0;
    for edit in edits {
        debug_assert!(edit.range.start >= at, "overlapping edits");
        if edit.range.start > at {
            pieces.push(Piece::Original(at..edit.range.start));
        }
        pieces.push(edit.insert);
        at = edit.range.end;
    }
    if at < len {
        pieces.push(Piece::Original(at..len));
    }
    pieces
}

/// Replaces the address of each given From field with `send_as`, and adds a Reply-To holding the
/// original From value unless the message has one.
///
/// The display name stays byte for byte as the client wrote it (encoded words, quotes, comments):
/// only the address is replaced. A field with several entries cannot keep "the" display name and
/// becomes just the address. The Reply-To copies the original value verbatim, so no display name
/// is ever re-encoded; it is added only when that value holds a readable address.
pub(super) fn rewrite_from(
    edits: &mut Vec<Edit>,
    raw: &[u8],
    headers: &Headers,
    fields: &[&AddressField],
    send_as: &str,
) {
    for field in fields {
        let value_end = field.value_end(raw);
        let value = field.value.start..value_end;
        let span = (field.entry_count() == 1)
            .then(|| address_span(&raw[value.clone()]))
            .flatten();
        edits.push(match span {
            Some(span) => Edit {
                range: value.start + span.start..value.start + span.end,
                insert: Piece::New(send_as.as_bytes().to_vec()),
            },
            None => Edit {
                range: value,
                insert: Piece::New(format!(" {send_as}").into_bytes()),
            },
        });
    }
    if headers.has_reply_to {
        return;
    }
    if let Some(field) = fields.iter().find(|f| !f.addresses.is_empty()) {
        let eol = headers.line_ending.as_bytes();
        let mut line = Vec::new();
        if !field.ends_line(raw) {
            line.extend_from_slice(eol);
        }
        line.extend_from_slice(b"Reply-To:");
        line.extend_from_slice(&raw[field.value.start..field.value_end(raw)]);
        line.extend_from_slice(eol);
        edits.push(Edit {
            range: field.range.end..field.range.end,
            insert: Piece::New(line),
        });
    }
}

/// Where the address is in the value of a one-mailbox field: inside the angle brackets, or, for a
/// bare `addr-spec`, everything that is neither a comment nor surrounding whitespace. Quotes and
/// comments are tracked so that a `<` inside a display name or comment is not taken for the address.
fn address_span(value: &[u8]) -> Option<Range<usize>> {
    let (mut quoted, mut escaped, mut depth) = (false, false, 0usize);
    let mut content: Option<Range<usize>> = None;
    for (i, &b) in value.iter().enumerate() {
        let in_comment = depth > 0;
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted || in_comment => escaped = true,
            b'"' if !in_comment => quoted = !quoted,
            _ if quoted => {}
            b'(' => depth += 1,
            b')' if in_comment => depth -= 1,
            b'<' if !in_comment => {
                let len = value[i + 1..].iter().position(|&c| c == b'>')?;
                return Some(i + 1..i + 1 + len);
            }
            _ => {}
        }
        if !in_comment && depth == 0 && !b.is_ascii_whitespace() {
            content = Some(content.map_or(i, |c| c.start)..i + 1);
        }
    }
    content
}

/// The Bcc addition: appended to the first existing Bcc field, or a new field in front.
///
/// RFC 5322 allows one Bcc field, and which of two Gmail would honour is not documented, so an
/// existing field is extended rather than joined by a second one: one field, and the client's
/// addresses in it stay first, untouched. Without a Bcc field the new one goes in front of the
/// message, where inserting cannot disturb any other field.
pub(super) fn add_bcc(raw: &[u8], headers: &Headers, added: &[Address]) -> Edit {
    let eol = String::from_utf8_lossy(headers.line_ending.as_bytes()).into_owned();
    let addresses = added.iter().map(|a| a.as_str().to_string()).collect();
    let Some(field) = headers.bcc.first() else {
        let mut tail = eol.clone();
        // Bytes without any header field are body text: an empty line keeps them that way.
        if !headers.has_fields && headers.end > 0 {
            tail.push_str(&eol);
        }
        let bcc = AddedBcc {
            lead: "Bcc: ".into(),
            column: "Bcc: ".len(),
            eol,
            addresses,
            tail,
        };
        return Edit {
            range: 0..0,
            insert: Piece::Bcc(bcc),
        };
    };
    let at = field.value_end(raw);
    let (lead, column) = if field.is_blank(raw) {
        let spaced = raw[..at].ends_with(b" ") || raw[..at].ends_with(b"\t");
        let lead = if spaced { "" } else { " " };
        (lead.to_string(), "Bcc: ".len())
    } else {
        // A new line for our addresses: the length of the client's last line is not ours to judge.
        (format!(",{eol} "), 1)
    };
    let bcc = AddedBcc {
        lead,
        column,
        eol,
        addresses,
        tail: String::new(),
    };
    Edit {
        range: at..at,
        insert: Piece::Bcc(bcc),
    }
}

/// Writes `addresses` separated by commas, folding after a comma when the next address would take
/// the line past [`FOLD_AT`]; `column` is where the first address starts. Addresses are written
/// as the client gave them in `RCPT TO`, non-ASCII (SMTPUTF8) included.
fn fold_list(out: &mut Vec<u8>, mut column: usize, addresses: &[&str], eol: &[u8]) {
    for (i, address) in addresses.iter().enumerate() {
        if i > 0 {
            if column + ", ".len() + address.len() > FOLD_AT {
                out.push(b',');
                out.extend_from_slice(eol);
                out.push(b' ');
                column = 1;
            } else {
                out.extend_from_slice(b", ");
                column += 2;
            }
        }
        out.extend_from_slice(address.as_bytes());
        column += address.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::recipient_rules::Prepared;

    /// `raw` with `edits` applied, through the same code the upload uses.
    fn apply(raw: &[u8], edits: Vec<Edit>) -> Vec<u8> {
        let prepared = Prepared {
            pieces: splice(edits, raw.len()),
            added_bcc: Vec::new(),
            unknown_from: None,
            from_rewritten: false,
        };
        prepared.to_vec(raw)
    }

    fn with_bcc(raw: &[u8], added: &[&str]) -> Vec<u8> {
        let added: Vec<Address> = added.iter().map(|a| Address::new(*a)).collect();
        apply(raw, vec![add_bcc(raw, &Headers::read(raw), &added)])
    }

    /// `raw` with every From field rewritten to `send_as`.
    fn rewritten(raw: &[u8], send_as: &str) -> Vec<u8> {
        let headers = Headers::read(raw);
        let fields: Vec<&AddressField> = headers.from.iter().collect();
        let mut edits = Vec::new();
        rewrite_from(&mut edits, raw, &headers, &fields, send_as);
        apply(raw, edits)
    }

    #[test]
    fn an_existing_bcc_field_is_extended_not_duplicated() {
        let raw = b"To: a@x.org\r\nBcc: B <b@x.org>\r\nSubject: s\r\n\r\nbody";
        let out = with_bcc(raw, &["c@x.org"]);
        let expected = b"To: a@x.org\r\nBcc: B <b@x.org>,\r\n c@x.org\r\nSubject: s\r\n\r\nbody";
        assert_eq!(out, expected);
        assert_eq!(Headers::read(&out).bcc.len(), 1);

        let blank = b"To: a@x.org\r\nBcc:\r\n\r\n";
        assert_eq!(
            with_bcc(blank, &["c@x.org"]),
            b"To: a@x.org\r\nBcc: c@x.org\r\n\r\n"
        );
        let only_group = b"Bcc: hidden:;\nTo: a@x.org\n\n";
        assert_eq!(
            with_bcc(only_group, &["c@x.org"]),
            b"Bcc: hidden:;,\n c@x.org\nTo: a@x.org\n\n"
        );
    }

    #[test]
    fn long_bcc_lists_are_folded_and_read_back_whole() {
        let added: Vec<String> = (0..40).map(|i| format!("rcpt{i}@example.com")).collect();
        let added: Vec<&str> = added.iter().map(String::as_str).collect();
        for raw in [
            &b"Subject: s\r\n\r\n"[..],
            b"Bcc: first@example.com\r\n\r\n",
        ] {
            let out = with_bcc(raw, &added);
            let lines = out.split(|&b| b == b'\n');
            assert!(lines.clone().all(|line| line.len() <= FOLD_AT + "\r".len()));
            assert!(lines.clone().count() > 10);
            let headers = Headers::read(&out);
            let bcc = headers.recipients();
            assert!(added.iter().all(|a| bcc.contains(*a)));
            assert_eq!(headers.bcc.len(), 1);
        }
    }

    #[test]
    fn bare_lf_messages_get_bare_lf_lines() {
        let raw = b"To: a@x.org\nSubject: s\n\nbody\n";
        let out = with_bcc(raw, &["c@x.org", "d@x.org"]);
        assert_eq!(out, [&b"Bcc: c@x.org, d@x.org\n"[..], raw].concat());
    }

    #[test]
    fn without_fields_the_bytes_stay_body() {
        let added = ["a@x.org", "jörg@bücher.de"];
        let out = with_bcc(b"", &added);
        assert_eq!(out, "Bcc: a@x.org, jörg@bücher.de\r\n".as_bytes());
        assert_eq!(
            with_bcc(b"hello\r\n", &added[..1]),
            b"Bcc: a@x.org\r\n\r\nhello\r\n"
        );
        // Already separated by an empty line: nothing more is needed.
        assert_eq!(
            with_bcc(b"\nhello\n", &added[..1]),
            b"Bcc: a@x.org\n\nhello\n"
        );
    }

    #[test]
    fn a_rewritten_from_keeps_the_name_and_replies_go_to_the_original() {
        let raw = b"From: \"Shop\" <Noreply@Shop.example>\r\nTo: a@x.org\r\n\r\nbody";
        let expected = b"From: \"Shop\" <Me@Gmail.com>\r\n\
            Reply-To: \"Shop\" <Noreply@Shop.example>\r\nTo: a@x.org\r\n\r\nbody";
        assert_eq!(rewritten(raw, "Me@Gmail.com"), expected);

        let encoded = b"From: =?utf-8?q?J=C3=B6rg?= <j@x.org>\nTo: a@x.org\n\n";
        let expected = b"From: =?utf-8?q?J=C3=B6rg?= <me@gmail.com>\n\
            Reply-To: =?utf-8?q?J=C3=B6rg?= <j@x.org>\nTo: a@x.org\n\n";
        assert_eq!(rewritten(encoded, "me@gmail.com"), expected);

        let folded = b"From: Alice\r\n <alice@y.org>\r\n\r\n";
        let expected =
            b"From: Alice\r\n <me@gmail.com>\r\nReply-To: Alice\r\n <alice@y.org>\r\n\r\n";
        assert_eq!(rewritten(folded, "me@gmail.com"), expected);
    }

    #[test]
    fn an_existing_reply_to_is_left_alone() {
        let raw = b"Reply-To: r@x.org\r\nFrom: f@x.org (F <f>)\r\nTo: a@x.org\r\n\r\n";
        let expected = b"Reply-To: r@x.org\r\nFrom: me@gmail.com (F <f>)\r\nTo: a@x.org\r\n\r\n";
        assert_eq!(rewritten(raw, "me@gmail.com"), expected);
    }

    #[test]
    fn a_from_with_several_entries_becomes_just_the_address() {
        let raw = b"To: a@x.org\r\nFrom: A <a@y.org>, b@y.org";
        let expected = b"To: a@x.org\r\nFrom: me@gmail.com\r\nReply-To: A <a@y.org>, b@y.org\r\n";
        assert_eq!(rewritten(raw, "me@gmail.com"), expected);
        // Nothing readable to reply to: no Reply-To.
        let unreadable = b"From: Just A Name\r\n\r\n";
        assert_eq!(
            rewritten(unreadable, "me@gmail.com"),
            b"From: me@gmail.com\r\n\r\n"
        );
    }

    #[test]
    fn edits_and_originals_alternate_in_order() {
        let edit = |range: Range<usize>, bytes: &[u8]| Edit {
            range,
            insert: Piece::New(bytes.to_vec()),
        };
        let pieces = splice(
            vec![edit(4..5, b"X"), edit(0..0, b"<"), edit(9..9, b">")],
            9,
        );
        assert_eq!(
            pieces,
            [
                Piece::New(b"<".to_vec()),
                Piece::Original(0..4),
                Piece::New(b"X".to_vec()),
                Piece::Original(5..9),
                Piece::New(b">".to_vec()),
            ]
        );
        assert_eq!(splice(Vec::new(), 0), []);
    }

    #[test]
    fn the_address_span_skips_quotes_and_comments() {
        fn span(value: &str) -> Option<&str> {
            address_span(value.as_bytes()).map(|r| &value[r])
        }
        assert_eq!(span(" \"a <b>\" <c@x>\r\n"), Some("c@x"));
        assert_eq!(span(" (a <b>) c@x (d)"), Some("c@x"));
        assert_eq!(span(" \"q\\\" <\"@x"), Some("\"q\\\" <\"@x"));
        assert_eq!(span(" <c@x"), None);
        assert_eq!(span(" (only a comment)"), None);
    }

    #[test]
    fn pieces_survive_a_queue_record_byte_for_byte() {
        let pieces = vec![
            Piece::New(b"Bcc: a@x.org\r\n".to_vec()),
            Piece::Original(0..812),
            Piece::New(vec![b'R', 0xe9, b'\r', b'\n']),
        ];
        let json = serde_json::to_string(&pieces).unwrap();
        assert!(json.contains(r#"{"add":"Bcc: a@x.org\r\n"}"#), "{json}");
        assert!(json.contains(r#"{"keep":{"start":0,"end":812}}"#), "{json}");
        assert_eq!(serde_json::from_str::<Vec<Piece>>(&json).unwrap(), pieces);
    }

    #[test]
    fn an_added_bcc_is_stored_as_its_addresses() {
        let raw = b"To: a@x.org\r\n\r\nbody";
        let added = [Address::new("b@x.org")];
        let edit = add_bcc(raw, &Headers::read(raw), &added);
        let json = serde_json::to_string(&edit.insert).unwrap();
        assert!(json.contains(r#""addresses":["b@x.org"]"#), "{json}");
        let stored: Piece = serde_json::from_str(&json).unwrap();
        assert_eq!(stored.written().unwrap(), b"Bcc: b@x.org\r\n");
    }
}
