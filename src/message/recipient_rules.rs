//! What a received message needs before a mail API (Gmail's or Microsoft Graph's) gets it,
//! decided without I/O. One set of rules for both providers.
//!
//! Neither API has an envelope: both deliver to the addresses in the To, Cc and Bcc headers and
//! nowhere else. Gmail silently replaces a From that is not the account or a verified send-as
//! alias; Exchange refuses it (`ErrorSendAsDenied`). SMTP clients assume the opposite (Django
//! writes bcc recipients into `RCPT TO` only). So [`prepare_for_api`] makes the headers say what
//! the envelope says — envelope recipients missing from the headers are added as Bcc — and applies
//! the operator's policy to recipients that are only in the headers and to the From address.
//!
//! The result is a list of [`Piece`]s, new bytes and ranges of the original, so a 35 MB message is
//! uploaded without being copied. Apart from the edits listed in [`Prepared`], every byte is the
//! one received.

use std::collections::HashSet;

use bytes::Bytes;

pub use super::header_edits::Piece;
use super::header_edits::{add_bcc, rewrite_from, splice};
use super::headers::{AddressField, Headers};
use super::mailbox::mailbox_key;
use super::{Address, Envelope};

/// Lists of addresses in a refusal are cut at about this many bytes: the text ends up in an SMTP
/// reply line, which must stay under 512 octets.
const LIST_BUDGET: usize = 200;

pub use crate::config::{FromPolicy, HeaderOnlyRecipients};

/// Which API a message goes to: the rules are the same, the settings named in refusals are not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Provider {
    /// The Gmail API (`[gmail]`).
    #[default]
    Gmail,
    /// Microsoft Graph or Exchange Online (`[microsoft]`).
    Microsoft,
}

impl Provider {
    /// The configuration table whose keys change the outcome.
    pub fn table(self) -> &'static str {
        match self {
            Provider::Gmail => "gmail",
            Provider::Microsoft => "microsoft",
        }
    }

    /// The service's name in replies and logs.
    pub fn service(self) -> &'static str {
        match self {
            Provider::Gmail => "Gmail",
            Provider::Microsoft => "Microsoft 365",
        }
    }
}

/// The operator's choices for the rules, one per way the mail APIs differ from SMTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendPolicy {
    /// The API the rules prepare for (names the settings in refusals).
    pub provider: Provider,
    /// Recipients that appear in To/Cc/Bcc but not in `RCPT TO`.
    pub header_only_recipients: HeaderOnlyRecipients,
    /// The From addresses Gmail keeps (the account and its verified aliases). Empty means unknown,
    /// and then From is not checked: guessing would refuse or rewrite valid mail.
    pub send_as: Vec<String>,
    /// From addresses outside `send_as`.
    pub from_policy: FromPolicy,
}

/// Why a message is refused. The text is the reply to the client, so it names the addresses
/// involved and the setting that changes the outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// To/Cc/Bcc name addresses (or entries that are not addresses) outside the envelope.
    #[error(
        "header recipients not in the envelope: {} (set {}.header_only_recipients = \"allow\" \
         to send anyway)",
        list(.addresses),
        .provider.table()
    )]
    HeaderOnlyRecipients {
        /// The API (names the setting).
        provider: Provider,
        /// The addresses, normalized, or the raw text of unreadable entries.
        addresses: Vec<String>,
    },
    /// The From address is not one Gmail would keep.
    #[error(
        "From {} is not a send-as address of the account ({}); add it to {table}.send_as or set \
         {table}.from_policy = \"rewrite\"",
        list(std::slice::from_ref(.from)),
        list(.send_as),
        table = .provider.table()
    )]
    UnknownFrom {
        /// The API (names the settings).
        provider: Provider,
        /// The offending From address.
        from: String,
        /// The configured send-as addresses.
        send_as: Vec<String>,
    },
    /// With the Bcc field (and From rewrite) added, the upload is over the API's limit
    /// ([`check_upload_size`](super::gmail_size::check_upload_size)).
    #[error(
        "message too large for {service}: {received} bytes received, {upload} with the headers \
         added for {service} (Bcc for envelope-only recipients); {service} accepts at most {limit}",
        service = .provider.service()
    )]
    TooLarge {
        /// The API.
        provider: Provider,
        /// The most it takes, in bytes.
        limit: u64,
        /// The size of the upload.
        upload: u64,
        /// The size of the message as received.
        received: u64,
    },
}

/// The message as Gmail should get it, and what was changed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The upload, in order: received bytes with the new bytes between them.
    pub pieces: Vec<Piece>,
    /// Envelope recipients that no header named, now in a Bcc field.
    pub added_bcc: Vec<Address>,
    /// The From address when it is not in `send_as` and was kept or rewritten, so the caller can
    /// warn (once per address) that Gmail will not show it.
    pub unknown_from: Option<String>,
    /// Whether that From was replaced by the first `send_as` address.
    pub from_rewritten: bool,
}

impl Prepared {
    /// The size of the upload in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// True when there is nothing to upload (an empty message with no recipient to add).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the upload is exactly the received bytes, so the caller may send them as they are.
    pub fn is_unchanged(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Original(_)))
    }

    /// The upload as chunks for a streaming request body; ranges of `raw` share its memory.
    pub fn to_chunks(&self, raw: Bytes) -> Vec<Bytes> {
        super::header_edits::to_chunks(&self.pieces, &raw)
    }

    /// The upload in one buffer: for tests and small messages.
    pub fn to_vec(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for piece in &self.pieces {
            match piece {
                Piece::Original(range) => out.extend_from_slice(&raw[range.clone()]),
                written => out.extend(written.written().unwrap_or_default()),
            }
        }
        out
    }
}

/// Applies the rules to one message: the upload, or why the message must be refused.
///
/// Header-only recipients are checked before From, so a message with both problems is refused for
/// the one that concerns who receives it. A message without any From (or with an empty one) passes
/// the From check: Gmail then uses the account's address, which is what such a client expects.
pub fn prepare_for_api(
    policy: &SendPolicy,
    envelope: &Envelope,
    raw: &[u8],
) -> Result<Prepared, PolicyViolation> {
    prepare_with_headers(policy, envelope, raw, &Headers::read(raw))
}

/// [`prepare_for_api`] for a caller that has already read the headers of `raw` (the relay reads
/// them once, to route the message, and reuses them here).
pub fn prepare_with_headers(
    policy: &SendPolicy,
    envelope: &Envelope,
    raw: &[u8],
    headers: &Headers,
) -> Result<Prepared, PolicyViolation> {
    if policy.header_only_recipients == HeaderOnlyRecipients::Reject {
        let outside = header_only_recipients(headers, &envelope.rcpt_to);
        if !outside.is_empty() {
            return Err(PolicyViolation::HeaderOnlyRecipients {
                provider: policy.provider,
                addresses: outside,
            });
        }
    }

    let mut edits = Vec::new();
    let mut unknown_from = None;
    let mut from_rewritten = false;
    if let Some((from, fields)) = find_unknown_from(&policy.send_as, headers) {
        match policy.from_policy {
            FromPolicy::Reject => {
                return Err(PolicyViolation::UnknownFrom {
                    provider: policy.provider,
                    from,
                    send_as: policy.send_as.clone(),
                });
            }
            FromPolicy::Keep => {}
            FromPolicy::Rewrite => {
                rewrite_from(&mut edits, raw, headers, &fields, policy.send_as[0].trim());
                from_rewritten = true;
            }
        }
        unknown_from = Some(from);
    }

    let added_bcc = missing_recipients(headers, &envelope.rcpt_to);
    if !added_bcc.is_empty() {
        edits.push(add_bcc(raw, headers, &added_bcc));
    }
    Ok(Prepared {
        pieces: splice(edits, raw.len()),
        added_bcc,
        unknown_from,
        from_rewritten,
    })
}

/// Header entries outside the envelope, in header order, each once. Unreadable entries count:
/// nobody can tell whom Gmail would make of them.
fn header_only_recipients(headers: &Headers, rcpt_to: &[Address]) -> Vec<String> {
    let envelope: HashSet<String> = rcpt_to.iter().map(Address::mailbox_key).collect();
    let mut seen = HashSet::new();
    headers
        .recipient_fields()
        .flat_map(|field| {
            let outside = field.addresses.iter().filter(|a| !envelope.contains(*a));
            outside.chain(&field.unparsed)
        })
        .filter(|entry| seen.insert(entry.as_str()))
        .cloned()
        .collect()
}

/// Envelope recipients that no To/Cc/Bcc address names, in envelope order, each once.
fn missing_recipients(headers: &Headers, rcpt_to: &[Address]) -> Vec<Address> {
    let mut named = headers.recipients();
    rcpt_to
        .iter()
        .filter(|a| named.insert(a.mailbox_key()))
        .cloned()
        .collect()
}

/// The first From entry Gmail would replace, and every From field holding such an entry; `None`
/// when `send_as` is empty (nothing to compare with) or every entry is allowed.
fn find_unknown_from<'h>(
    send_as: &[String],
    headers: &'h Headers,
) -> Option<(String, Vec<&'h AddressField>)> {
    let allowed: HashSet<String> = send_as.iter().map(|a| mailbox_key(a)).collect();
    if allowed.is_empty() {
        return None;
    }
    let unknown_entry = |field: &AddressField| {
        let outside = field.addresses.iter().find(|a| !allowed.contains(*a));
        outside.or(field.unparsed.first()).cloned()
    };
    let fields: Vec<&AddressField> = headers
        .from
        .iter()
        .filter(|field| unknown_entry(field).is_some())
        .collect();
    let first = unknown_entry(fields.first()?)?;
    Some((first, fields))
}

/// A list for a refusal text: control characters (a decoded header may contain CR LF) replaced so
/// the reply stays one line, long entries cut, and the tail summarised past [`LIST_BUDGET`].
fn list(items: &[String]) -> String {
    const ENTRY_MAX: usize = 100;
    let mut out = String::new();
    for (shown, item) in items.iter().enumerate() {
        let mut entry: String = item
            .chars()
            .take(ENTRY_MAX)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if item.chars().nth(ENTRY_MAX).is_some() {
            entry.push_str("...");
        }
        if !out.is_empty() && out.len() + entry.len() > LIST_BUDGET {
            out.push_str(&format!(" and {} more", items.len() - shown));
            break;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&entry);
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::message::MessageId;

    fn envelope(rcpt_to: &[&str]) -> Envelope {
        Envelope {
            id: MessageId::generate(),
            mail_from: Some(Address::new("app@example.com")),
            rcpt_to: rcpt_to.iter().map(|a| Address::new(*a)).collect(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            helo: "client".to_owned(),
            auth_user: None,
            received_at: SystemTime::now(),
        }
    }

    fn policy(send_as: &[&str], from_policy: FromPolicy) -> SendPolicy {
        SendPolicy {
            send_as: send_as.iter().map(|a| a.to_string()).collect(),
            from_policy,
            ..SendPolicy::default()
        }
    }

    /// The upload for `raw` under `policy`, checked for consistency between its three forms.
    fn prepare(policy: &SendPolicy, rcpt_to: &[&str], raw: &[u8]) -> (Prepared, Vec<u8>) {
        let prepared = prepare_for_api(policy, &envelope(rcpt_to), raw).unwrap();
        let out = prepared.to_vec(raw);
        assert_eq!(prepared.len(), out.len());
        assert_eq!(
            prepared.to_chunks(Bytes::copy_from_slice(raw)).concat(),
            out
        );
        (prepared, out)
    }

    fn refusal(policy: &SendPolicy, rcpt_to: &[&str], raw: &[u8]) -> PolicyViolation {
        prepare_for_api(policy, &envelope(rcpt_to), raw).unwrap_err()
    }

    fn assert_unchanged(policy: &SendPolicy, rcpt_to: &[&str], raw: &[u8]) {
        let (prepared, out) = prepare(policy, rcpt_to, raw);
        assert!(prepared.is_unchanged() && prepared.added_bcc.is_empty());
        assert_eq!(out, raw);
    }

    const DJANGO: &[u8] = b"From: app@example.com\r\nTo: a@x.org\r\nCc: b@x.org\r\n\
        Subject: hi\r\n\r\nbody\r\n";

    #[test]
    fn envelope_only_recipients_become_a_bcc_field_in_front() {
        let rcpt = ["a@x.org", "b@x.org", "c@x.org"];
        let (prepared, out) = prepare(&SendPolicy::default(), &rcpt, DJANGO);
        let added = b"Bcc: c@x.org\r\n";
        assert_eq!(&out[..added.len()], added);
        assert_eq!(&out[added.len()..], DJANGO, "the rest is byte-identical");
        assert_eq!(prepared.added_bcc, [Address::new("c@x.org")]);
        assert_eq!(prepared.pieces[1], Piece::Original(0..DJANGO.len()));
    }

    /// Transactions of one split message decided apart, then merged from their decisions: the
    /// same upload as deciding the union of their envelopes at once, whichever transaction
    /// added a Bcc first, with a Bcc field to extend or without one.
    #[test]
    fn merged_decisions_upload_what_the_union_would() {
        let with_bcc = b"To: a@x.org, b@x.org\r\nBcc: x@y.org\r\nSubject: s\r\n\r\nbody\r\n";
        let policy = SendPolicy {
            from_policy: FromPolicy::Rewrite,
            send_as: vec!["me@gmail.com".into()],
            // As the queue decides a transaction: as if every header recipient were named.
            header_only_recipients: HeaderOnlyRecipients::Allow,
            ..SendPolicy::default()
        };
        for raw in [DJANGO, &with_bcc[..]] {
            for parts in [
                vec![vec!["a@x.org", "c@x.org"], vec!["b@x.org", "d@x.org"]],
                vec![vec!["a@x.org"], vec!["b@x.org", "d@x.org", "C@x.org"]],
                vec![vec!["a@x.org"], vec!["b@x.org"]],
            ] {
                let decided: Vec<Prepared> = parts
                    .iter()
                    .map(|rcpt| prepare(&policy, rcpt, raw).0)
                    .collect();
                let uploads: Vec<&[Piece]> = decided.iter().map(|p| p.pieces.as_slice()).collect();
                let merged = Prepared {
                    pieces: super::super::header_edits::merge_bcc(&uploads),
                    ..decided[0].clone()
                };
                let union: Vec<&str> = parts.concat();
                let (_, expected) = prepare(&policy, &union, raw);
                assert_eq!(
                    String::from_utf8_lossy(&merged.to_vec(raw)),
                    String::from_utf8_lossy(&expected),
                    "{parts:?}"
                );
            }
        }
    }

    #[test]
    fn nothing_is_added_when_the_headers_name_every_recipient() {
        assert_unchanged(&SendPolicy::default(), &["a@x.org", "b@x.org"], DJANGO);
        let names = b"To: \"Bob\" <Bob@Example.COM>, =?utf-8?q?J=C3=B6rg?= <jorg@x.org>\r\n\
            Cc: \"eve@x.org\" <c@x.org>, (eve@x.org) d@x.org, =?utf-8?q?eve=40x.org?= <e@x.org>\r\n\r\n";
        let rcpt = [
            "bob@example.com",
            "Jorg@X.org",
            "c@x.org",
            "d@x.org",
            "e@x.org",
        ];
        assert_unchanged(&SendPolicy::default(), &rcpt, names);
        let group = b"To: team: a@x.org, b@x.org;\r\nCc: folded@x.org,\r\n  c@x.org\r\n\r\n";
        let rcpt = ["a@x.org", "b@x.org", "c@x.org", "folded@x.org"];
        assert_unchanged(&SendPolicy::default(), &rcpt, group);
    }

    #[test]
    fn undisclosed_recipients_are_all_added() {
        let raw = b"To: undisclosed-recipients:;\r\n\r\nbody";
        let (_, out) = prepare(&SendPolicy::default(), &["a@x.org", "b@x.org"], raw);
        assert_eq!(out, [&b"Bcc: a@x.org, b@x.org\r\n"[..], raw].concat());
    }

    #[test]
    fn header_only_recipients_are_refused_unless_allowed() {
        let raw = b"To: a@x.org, Eve <EVE@x.org>, bob\r\nCc: a@x.org\r\n\r\n";
        let refused = refusal(&SendPolicy::default(), &["a@x.org"], raw);
        assert_eq!(
            refused,
            PolicyViolation::HeaderOnlyRecipients {
                provider: Provider::Gmail,
                addresses: vec!["eve@x.org".into(), "bob".into()]
            }
        );
        assert_eq!(
            refused.to_string(),
            "header recipients not in the envelope: eve@x.org, bob \
             (set gmail.header_only_recipients = \"allow\" to send anyway)"
        );

        let allow = SendPolicy {
            header_only_recipients: HeaderOnlyRecipients::Allow,
            ..SendPolicy::default()
        };
        let (_, out) = prepare(&allow, &["a@x.org", "z@x.org"], raw);
        assert_eq!(out, [&b"Bcc: z@x.org\r\n"[..], raw].concat());
    }

    const OTHER_FROM: &[u8] = b"From: \"Shop\" <Noreply@Shop.example>\r\nTo: a@x.org\r\n\r\nbody";

    #[test]
    fn an_unknown_from_is_kept_and_reported() {
        let keep = policy(&["me@gmail.com"], FromPolicy::Keep);
        let (prepared, out) = prepare(&keep, &["a@x.org"], OTHER_FROM);
        assert_eq!(out, OTHER_FROM);
        assert_eq!(
            prepared.unknown_from.as_deref(),
            Some("noreply@shop.example")
        );
        assert!(!prepared.from_rewritten);
    }

    #[test]
    fn an_unknown_from_can_be_refused() {
        let reject = policy(&["me@gmail.com", "alias@x.org"], FromPolicy::Reject);
        let refused = refusal(&reject, &["a@x.org"], OTHER_FROM);
        assert_eq!(
            refused.to_string(),
            "From noreply@shop.example is not a send-as address of the account (me@gmail.com, \
             alias@x.org); add it to gmail.send_as or set gmail.from_policy = \"rewrite\""
        );
        // Header-only recipients are the first concern.
        let refused = refusal(&reject, &["b@x.org"], OTHER_FROM);
        assert!(matches!(
            refused,
            PolicyViolation::HeaderOnlyRecipients { .. }
        ));
    }

    #[test]
    fn an_unknown_from_can_be_rewritten() {
        let rewrite = policy(&["Me@Gmail.com", "alias@x.org"], FromPolicy::Rewrite);
        let (prepared, out) = prepare(&rewrite, &["a@x.org", "c@x.org"], OTHER_FROM);
        let expected = b"Bcc: c@x.org\r\nFrom: \"Shop\" <Me@Gmail.com>\r\n\
            Reply-To: \"Shop\" <Noreply@Shop.example>\r\nTo: a@x.org\r\n\r\nbody";
        assert_eq!(out, expected);
        assert!(prepared.from_rewritten);
        assert_eq!(
            prepared.unknown_from.as_deref(),
            Some("noreply@shop.example")
        );
    }

    #[test]
    fn from_is_not_checked_without_send_as_nor_when_allowed_or_absent() {
        let reject = |send_as: &[&str]| policy(send_as, FromPolicy::Reject);
        let (prepared, _) = prepare(&reject(&[]), &["a@x.org"], OTHER_FROM);
        assert_eq!(prepared.unknown_from, None);
        assert_unchanged(&reject(&["noreply@shop.EXAMPLE"]), &["a@x.org"], OTHER_FROM);
        assert_unchanged(
            &reject(&["me@gmail.com"]),
            &["a@x.org"],
            b"To: a@x.org\r\n\r\n",
        );
        assert_unchanged(
            &reject(&["me@gmail.com"]),
            &["a@x.org"],
            b"From:\r\nTo: a@x.org\r\n",
        );
        let unreadable = refusal(&reject(&["me@gmail.com"]), &["a@x.org"], b"From: me\r\n");
        assert!(matches!(unreadable, PolicyViolation::UnknownFrom { from, .. } if from == "me"));
    }

    #[test]
    fn a_huge_body_is_neither_read_nor_copied() {
        let mut raw = b"From: app@example.com\r\nTo: a@x.org\r\n\r\n".to_vec();
        let lines = b"To: body@x.org\r\nBcc: body@x.org\r\nFrom: body@x.org\r\n";
        while raw.len() < 35 * 1024 * 1024 {
            raw.extend_from_slice(lines);
        }
        let raw = Bytes::from(raw);
        assert_eq!(
            Headers::read(&raw).end,
            36,
            "the reader stops at the empty line"
        );
        let strict = policy(&["app@example.com"], FromPolicy::Reject);
        let prepared = prepare_for_api(&strict, &envelope(&["a@x.org", "c@x.org"]), &raw)
            .expect("body lines are no header recipients");
        let chunks = prepared.to_chunks(raw.clone());
        assert_eq!(chunks.len(), 2);
        assert_eq!(&chunks[0][..], b"Bcc: c@x.org\r\n");
        assert_eq!(
            chunks[1].as_ptr(),
            raw.as_ptr(),
            "the original is not copied"
        );
        assert_eq!(prepared.len(), raw.len() + chunks[0].len());
    }

    #[test]
    fn refusal_texts_stay_one_short_line() {
        let many: Vec<String> = (0..50).map(|i| format!("someone{i}@example.com")).collect();
        let text = list(&many);
        assert!(
            text.len() < LIST_BUDGET + 40 && text.ends_with(" and 41 more"),
            "{text}"
        );
        let hostile = list(&["a\r\nRSET\r\n".to_owned(), "x".repeat(500)]);
        assert!(
            !hostile.contains(['\r', '\n']) && hostile.len() < 120,
            "{hostile}"
        );
    }
}
