//! Reading the header fields that decide who receives a message (To, Cc, Bcc) and whom it claims
//! to be from (From), with their byte positions, so the Gmail rules can edit the raw bytes in place.
//!
//! Only the header section is parsed. A message can be 35 MB and its body may well contain lines
//! that look like headers (a forwarded message, a mail log); neither the cost nor the meaning of
//! the body may leak into recipient decisions.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use mail_parser::{Addr, Address, Header, HeaderName, HeaderValue, MessageParser};

use super::mailbox::mailbox_key;

/// How lines end in a message, so that lines we add look like the lines around them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LineEnding {
    /// `\r\n`, what RFC 5322 and SMTP require; also assumed when the message has no line at all.
    #[default]
    Crlf,
    /// A bare `\n`: clients that hand over Unix text. Mixing in CRLF would make the message worse.
    Lf,
}

impl LineEnding {
    /// Detected from the first line (only that line is read), which is a header line in any
    /// message that has headers.
    pub fn detect(raw: &[u8]) -> LineEnding {
        match raw.iter().position(|&b| b == b'\n') {
            Some(i) if i == 0 || raw[i - 1] != b'\r' => LineEnding::Lf,
            _ => LineEnding::Crlf,
        }
    }

    /// The bytes of one line ending.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Crlf => b"\r\n",
            LineEnding::Lf => b"\n",
        }
    }
}

/// One To, Cc, Bcc or From field as it appears in the raw message.
///
/// An entry that names no usable mailbox (`To: bob`, `To: <bob>`, a name without address) is kept
/// in [`unparsed`](Self::unparsed) instead of being dropped: the rules treat it as an address they
/// cannot vouch for (a header recipient outside the envelope, an unknown From), because Gmail's
/// reading of it is unknown and silently ignoring it could send mail somewhere unexpected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressField {
    /// The whole field, from its name through its line ending, folded lines included.
    pub range: Range<usize>,
    /// The value: from just after the colon through the line ending.
    pub value: Range<usize>,
    /// The mailboxes named, [as mailbox keys](mailbox_key), groups expanded, in order.
    pub addresses: Vec<String>,
    /// Entries that name no mailbox with an `@`, as text for error messages.
    pub unparsed: Vec<String>,
}

impl AddressField {
    /// The field parsed from `header`; `end` is the end of the header section, which the parser
    /// may have been given one byte more of.
    fn from_header(header: &Header<'_>, end: usize) -> AddressField {
        let field_end = (header.offset_end as usize).min(end);
        let mut field = AddressField {
            range: header.offset_field as usize..field_end,
            value: header.offset_start as usize..field_end,
            addresses: Vec::new(),
            unparsed: Vec::new(),
        };
        match &header.value {
            HeaderValue::Address(Address::List(list)) => list.iter().for_each(|a| field.push(a)),
            // An empty group (`undisclosed-recipients:;`) names nobody, which is what it means.
            HeaderValue::Address(Address::Group(groups)) => groups
                .iter()
                .flat_map(|group| &group.addresses)
                .for_each(|a| field.push(a)),
            HeaderValue::Empty => {}
            // Not produced for address fields by the default parser; if a later version does, the
            // field is still not ignored.
            _ => field.unparsed.push("(unreadable address field)".to_owned()),
        }
        field
    }

    fn push(&mut self, addr: &Addr<'_>) {
        let address = addr.address.as_deref().map(str::trim).unwrap_or_default();
        if address.contains('@') {
            self.addresses.push(mailbox_key(address));
        } else {
            let name = addr.name.as_deref().map(str::trim).unwrap_or_default();
            let text = [address, name].into_iter().find(|t| !t.is_empty());
            self.unparsed.push(text.unwrap_or("<>").to_owned());
        }
    }

    /// How many entries the field names, readable or not.
    pub fn entry_count(&self) -> usize {
        self.addresses.len() + self.unparsed.len()
    }

    /// Where the value ends before its line ending: where text appended to the value belongs.
    pub fn value_end(&self, raw: &[u8]) -> usize {
        let value = &raw[self.value.clone()];
        let without_lf = value.strip_suffix(b"\n").unwrap_or(value);
        let without_eol = without_lf.strip_suffix(b"\r").unwrap_or(without_lf);
        self.value.start + without_eol.len()
    }

    /// True when the value is only whitespace (`Bcc:` as some clients write it).
    pub fn is_blank(&self, raw: &[u8]) -> bool {
        raw[self.value.clone()].iter().all(u8::is_ascii_whitespace)
    }

    /// True when the field ends with a line ending, i.e. it is not the last bytes of a message
    /// that stops in the middle of its header section.
    pub fn ends_line(&self, raw: &[u8]) -> bool {
        raw[..self.range.end].ends_with(b"\n")
    }
}

/// What the Gmail rules need to know about a message's header section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every `To` field, in order (RFC 5322 allows one, clients sometimes write more).
    pub to: Vec<AddressField>,
    /// Every `Cc` field.
    pub cc: Vec<AddressField>,
    /// Every `Bcc` field.
    pub bcc: Vec<AddressField>,
    /// Every `From` field.
    pub from: Vec<AddressField>,
    /// Whether a `Reply-To` field exists, which a From rewrite must then leave alone.
    pub has_reply_to: bool,
    /// The first `Message-ID` field's id as written, brackets included (`<inv42@example.com>`);
    /// `None` without one, or when it could not be written back as one (see [`written_id`]).
    /// Read in the same pass as the addresses: the queue records it for every message.
    pub message_id: Option<String>,
    /// Whether any header field was found. Without one, the bytes are body text, and a field added
    /// in front needs an empty line after it so that the text does not become header lines.
    pub has_fields: bool,
    /// Where the header section ends: at the empty line before the body, or the end of the message.
    pub end: usize,
    /// The message's line ending.
    pub line_ending: LineEnding,
}

impl Headers {
    /// Reads the header section of `raw`. Never panics: any bytes give some answer, broken
    /// address entries end up in [`AddressField::unparsed`].
    pub fn read(raw: &[u8]) -> Headers {
        let end = header_end(raw);
        let mut headers = Headers {
            end,
            line_ending: LineEnding::detect(raw),
            ..Headers::default()
        };
        // `parse_headers` sees only the header section, so it cannot wander into the body.
        let section = &raw[..end];
        // mail-parser 0.11 drops the last word of a field that ends the input without a line
        // ending (`To: a@x` at the very end of a body-less message); give it one.
        let section: Cow<'_, [u8]> = match section.last() {
            Some(b'\n') | None => Cow::Borrowed(section),
            Some(_) => Cow::Owned([section, b"\n"].concat()),
        };
        let Some(message) = MessageParser::new().parse_headers(&section) else {
            return headers;
        };
        headers.has_fields = !message.headers().is_empty();
        let mut message_id_seen = false;
        for header in message.headers() {
            let fields = match header.name {
                HeaderName::MessageId if !message_id_seen => {
                    message_id_seen = true;
                    let value = header.offset_start as usize..(header.offset_end as usize).min(end);
                    headers.message_id = section.get(value).and_then(written_id);
                    continue;
                }
                HeaderName::To => &mut headers.to,
                HeaderName::Cc => &mut headers.cc,
                HeaderName::Bcc => &mut headers.bcc,
                HeaderName::From => &mut headers.from,
                HeaderName::ReplyTo => {
                    headers.has_reply_to = true;
                    continue;
                }
                _ => continue,
            };
            fields.push(AddressField::from_header(header, end));
        }
        headers
    }

    /// The To, Cc and Bcc fields: every field Gmail delivers to.
    pub fn recipient_fields(&self) -> impl Iterator<Item = &AddressField> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }

    /// The normalized addresses of all recipient fields.
    pub fn recipients(&self) -> HashSet<String> {
        self.recipient_fields()
            .flat_map(|field| field.addresses.iter().cloned())
            .collect()
    }
}

/// A header section with a CR that is not part of a CRLF.
///
/// Readers disagree on what such a CR is: ours (and mail-parser) reads `X-A: 1\rBcc: b@x` as
/// one field, Python's email package and possibly Gmail as two, so a Bcc the recipient rules
/// never saw would be delivered. RFC 5322 forbids a CR outside CRLF, no client writes one, and
/// every byte of a message goes to Gmail as received, so such a message is refused rather than
/// repaired (see docs/design.md). A bare LF is different: every reader takes it for a line ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bare CR in the header section (a CR must be followed by LF)")]
pub struct BareCr;

/// The one rule for line endings in a header section, applied wherever a message is taken
/// (the end of DATA, release from the inbox): a CR must be followed by LF. With it, splitting the
/// section on LF (as [`header_end`], [`Headers::read`] and every other header reader here do)
/// finds the lines any reader finds. `raw` may be the head of a longer message: a CR that is its
/// last byte hides nothing in it, and is not refused.
pub fn check_line_endings(raw: &[u8]) -> Result<(), BareCr> {
    let section = &raw[..header_end(raw)];
    let bare = memchr::memchr_iter(b'\r', section)
        .any(|at| section.get(at + 1).is_some_and(|&next| next != b'\n'));
    match bare {
        true => Err(BareCr),
        false => Ok(()),
    }
}

/// Where the header section ends: the start of the first empty line (`\r\n` or `\n` alone), or the
/// end of the message when there is none (a message may have no body).
pub fn header_end(raw: &[u8]) -> usize {
    let mut line_start = 0;
    loop {
        let rest = &raw[line_start..];
        if rest.is_empty() || rest.starts_with(b"\n") || rest.starts_with(b"\r\n") {
            return line_start;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => line_start += i + 1,
            None => return raw.len(),
        }
    }
}

/// The header section split into fields, each with its folded continuation lines (and its line
/// ending, when it has one). `section` ends where [`header_end`] says.
pub fn header_fields(section: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < section.len() {
        let line_end = section[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(section.len(), |i| at + i + 1);
        let next_folds = section
            .get(line_end)
            .is_some_and(|&b| b == b' ' || b == b'\t');
        if !next_folds {
            fields.push(&section[start..line_end]);
            start = line_end;
        }
        at = line_end;
    }
    fields
}

/// A `Message-ID` field's value as it is written between its angle brackets: the id with them,
/// e.g. `<inv42@example.com>`. `None` when what is there could not be written back as one (no
/// brackets, white space or control characters inside, absurdly long): it reports the id, it
/// decides nothing.
fn written_id(value: &[u8]) -> Option<String> {
    let value = String::from_utf8_lossy(value);
    let value = value.trim();
    let id = value.strip_prefix('<')?.strip_suffix('>')?;
    let usable = !id.is_empty()
        && id.len() <= 250
        && !id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'));
    usable.then(|| format!("<{id}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_id(head: &[u8]) -> Option<String> {
        Headers::read(head).message_id
    }

    fn addresses(fields: &[AddressField]) -> Vec<&str> {
        let all = fields.iter().flat_map(|f| &f.addresses);
        all.map(String::as_str).collect()
    }

    #[test]
    fn the_message_id_is_read_with_its_brackets_or_not_at_all() {
        let head = b"From: a@x\r\nmessage-id:\r\n <inv42@example.com>\r\n\r\nMessage-ID: <b@x>\r\n";
        assert_eq!(message_id(head).as_deref(), Some("<inv42@example.com>"));
        assert_eq!(
            message_id(b"Message-ID: <a b@x>\r\n\r\n"),
            None,
            "white space"
        );
        assert_eq!(message_id(b"Message-ID: a@x\r\n\r\n"), None, "no brackets");
        assert_eq!(
            message_id(b"To: a@x\r\n\r\nMessage-ID: <a@x>\r\n"),
            None,
            "in the body"
        );
    }

    #[test]
    fn the_header_section_ends_at_the_first_empty_line() {
        assert_eq!(header_end(b"To: a@x\r\n\r\nbody\r\n\r\n"), 9);
        assert_eq!(header_end(b"To: a@x\n\nbody"), 8);
        assert_eq!(header_end(b"To: a@x\r\nSubject: s"), 19, "no body");
        assert_eq!(header_end(b"\r\nbody"), 0, "no headers");
        assert_eq!(header_end(b""), 0);
        // A line of blanks is a folded continuation, not the end of the headers.
        assert_eq!(header_end(b"To: a@x\r\n \r\nCc: b@x\r\n\r\n"), 21);
    }

    #[test]
    fn a_cr_in_the_header_section_must_start_a_crlf() {
        for raw in [
            &b"X-A: 1\rBcc: smuggled@evil.example\r\n\r\nbody"[..],
            b"X-A: 1\r\rBcc: b@x\r\n\r\n",
            b"X-A: 1\r\n\r\r\nBcc: b@x\r\n\r\n",
            b"To: a@x\r\n\rBcc: b@x\n\n",
            b"\rBcc: b@x\r\n",
        ] {
            assert_eq!(check_line_endings(raw), Err(BareCr), "{raw:?}");
        }
        for raw in [
            &b"To: a@x\r\nSubject: s\r\n\r\nbody\rwith a CR\r\n"[..],
            b"To: a@x\nSubject: s\n\nbody",
            b"To: a@x\r\n\r\n\r",
            b"To: a@x\r",
            b"",
        ] {
            assert_eq!(check_line_endings(raw), Ok(()), "{raw:?}");
        }
    }

    #[test]
    fn fields_keep_their_folded_lines() {
        let section = b"A: 1\r\n 2\r\nB: 3\r\n";
        assert_eq!(
            header_fields(section),
            [&b"A: 1\r\n 2\r\n"[..], b"B: 3\r\n"]
        );
        assert_eq!(header_fields(b"A: 1"), [&b"A: 1"[..]]);
    }

    #[test]
    fn line_endings_come_from_the_first_line() {
        assert_eq!(LineEnding::detect(b"To: a\r\n\r\n"), LineEnding::Crlf);
        assert_eq!(LineEnding::detect(b"To: a\n\nx\r\n"), LineEnding::Lf);
        assert_eq!(LineEnding::detect(b"\n"), LineEnding::Lf);
        assert_eq!(LineEnding::detect(b""), LineEnding::Crlf);
    }

    #[test]
    fn fields_are_found_with_their_ranges() {
        let raw = b"Subject: s\r\nTo: a@x,\r\n\tB <b@x>\r\nFrom: f@x\r\n\r\nbody";
        let headers = Headers::read(raw);
        assert_eq!(addresses(&headers.to), ["a@x", "b@x"]);
        let to = &headers.to[0];
        assert_eq!(&raw[to.range.clone()], b"To: a@x,\r\n\tB <b@x>\r\n");
        assert_eq!(&raw[to.value.clone()], b" a@x,\r\n\tB <b@x>\r\n");
        assert_eq!(
            &raw[to.value.start..to.value_end(raw)],
            b" a@x,\r\n\tB <b@x>"
        );
        assert!(to.ends_line(raw) && !to.is_blank(raw));
        assert_eq!(&raw[headers.from[0].range.clone()], b"From: f@x\r\n");
        assert_eq!(headers.end, raw.len() - 6);
        assert!(headers.has_fields && !headers.has_reply_to);
    }

    #[test]
    fn addresses_lose_names_comments_and_case() {
        let raw = "To: \"Bob\" <Bob@Example.COM>, carol@x (Carol C), =?utf-8?q?J=C3=B6rg?= <j@x>\r\n\
                   Cc: Jörg <Jörg@Bücher.DE>\r\n\r\n";
        let headers = Headers::read(raw.as_bytes());
        assert_eq!(
            addresses(&headers.to),
            ["bob@example.com", "carol@x", "j@x"]
        );
        assert_eq!(addresses(&headers.cc), ["jörg@bücher.de"]);
    }

    #[test]
    fn groups_are_expanded_and_empty_groups_name_nobody() {
        let raw = b"To: team: a@x, B <b@x>;, c@x\r\nCc: undisclosed-recipients:;\r\n\r\n";
        let headers = Headers::read(raw);
        assert_eq!(addresses(&headers.to), ["a@x", "b@x", "c@x"]);
        assert_eq!(headers.cc.len(), 1);
        assert_eq!(headers.cc[0].entry_count(), 0);
    }

    #[test]
    fn every_occurrence_counts() {
        let raw = b"To: a@x\r\nBcc: b@x\r\nTo: c@x\r\nBcc: d@x\r\nReply-To: r@x\r\n\r\n";
        let headers = Headers::read(raw);
        assert_eq!(headers.to.len(), 2);
        assert_eq!(addresses(&headers.bcc), ["b@x", "d@x"]);
        let recipients = headers.recipients();
        assert_eq!(recipients.len(), 4);
        assert!(recipients.contains("d@x"));
        assert!(headers.has_reply_to);
    }

    #[test]
    fn entries_without_an_address_are_kept_as_unparsed() {
        let raw = b"To: bob, <carol>, ok@x\r\nFrom: Just A Name\r\nCc:\r\n\r\n";
        let headers = Headers::read(raw);
        assert_eq!(headers.to[0].addresses, ["ok@x"]);
        assert_eq!(headers.to[0].unparsed, ["bob", "carol"]);
        assert_eq!(headers.from[0].unparsed, ["Just A Name"]);
        assert!(headers.cc[0].is_blank(raw) && headers.cc[0].entry_count() == 0);
    }

    #[test]
    fn bare_lf_messages_are_read_alike() {
        let raw = b"To: a@x,\n b@x\nBcc: c@x\n\nTo: body@x\n";
        let headers = Headers::read(raw);
        assert_eq!(headers.line_ending, LineEnding::Lf);
        assert_eq!(addresses(&headers.to), ["a@x", "b@x"]);
        assert_eq!(&raw[headers.bcc[0].range.clone()], b"Bcc: c@x\n");
        assert_eq!(headers.bcc[0].value_end(raw), 22);
    }

    #[test]
    fn the_body_is_never_read() {
        let mut raw = b"To: a@x\r\n\r\n".to_vec();
        raw.extend_from_slice(b"To: body@x\r\nBcc: body@x\r\nFrom: body@x\r\n\r\n");
        let headers = Headers::read(&raw);
        assert_eq!(addresses(&headers.to), ["a@x"]);
        assert!(headers.bcc.is_empty() && headers.from.is_empty());
    }

    #[test]
    fn messages_without_fields() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"\r\nTo: body@x\r\n",
            b"just text\r\nmore\r\n",
        ] {
            let headers = Headers::read(raw);
            assert!(!headers.has_fields, "{raw:?}");
            assert!(headers.to.is_empty());
        }
        let raw = b"Subject: s\r\nFrom: f@x, g@x";
        let unterminated = Headers::read(raw);
        assert_eq!(unterminated.from[0].addresses, ["f@x", "g@x"]);
        assert_eq!(unterminated.from[0].range, 12..raw.len());
        assert!(!unterminated.from[0].ends_line(raw));
    }

    #[test]
    fn no_input_makes_it_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"To:Cc:Bcc:From: <>\"()\\,;@=?q?b?\r\n\t\xff\xc3a";
        for _ in 0..5000 {
            let len = rng.usize(0..80);
            let raw: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let headers = Headers::read(&raw);
            for field in headers.recipient_fields().chain(&headers.from) {
                assert!(field.range.end <= headers.end && field.value_end(&raw) <= field.range.end);
            }
        }
    }
}
