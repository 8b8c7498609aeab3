//! Whether a message still fits an API's upload limit once the recipient rules have added to it:
//! the largest message to advertise as `SIZE`, and the exact check per message before 250. The
//! functions take the limit (Gmail's 35 MB upload, or the largest message Microsoft 365 takes on
//! its configured paths); the `GMAIL_` names are Gmail's.

use super::recipient_rules::{PolicyViolation, Prepared, Provider};

/// Gmail's upload limit for `users.messages.send` (`maxSize` 36,700,160 bytes): what the message
/// must fit in *after* our additions.
pub const GMAIL_UPLOAD_LIMIT: u64 = crate::config::GMAIL_MAX_MESSAGE_SIZE;

/// The longest envelope address the SMTP parser takes (smtp-proto's limit, RFC 5321's 256-octet
/// path). A quoted local part can grow when it is quoted again for Gmail; such a message is still
/// refused per message if it no longer fits.
const ADDRESS_OCTETS: u64 = 256;

/// Room for a From rewrite: the replaced address and a Reply-To copying an ordinary From field.
/// A longer From is still refused per message (see [`check_upload_size`]).
const FROM_REWRITE_ROOM: u64 = 1024;

/// The largest message to accept for Gmail with at most `max_recipients` recipients: Gmail's limit
/// less the longest Bcc field [`prepare_for_api`](super::recipient_rules::prepare_for_api) can add for that many RFC-sized addresses and
/// room for a From rewrite. Advertised as `SIZE`, so that a message that fits it is never refused
/// for size after the client sent it, unless a quoted address or a long From is beyond those
/// bounds.
pub fn largest_message(max_recipients: usize) -> u64 {
    largest_message_within(GMAIL_UPLOAD_LIMIT, max_recipients)
}

/// [`largest_message`] for an upload limit of `limit` bytes.
pub fn largest_message_within(limit: u64, max_recipients: usize) -> u64 {
    // "Bcc: ", or ",<CRLF> " before the first address when a Bcc field is extended; each address
    // with its separator (", " or ",<CRLF> "); the CRLF ending the field and the empty line added
    // to a message without header fields.
    let per_address = ADDRESS_OCTETS + ",\r\n ".len() as u64;
    let bcc = ",\r\n ".len() as u64 + max_recipients as u64 * per_address + 2 * 2;
    limit.saturating_sub(bcc + FROM_REWRITE_ROOM)
}

/// Refuses a message whose upload would be over [`GMAIL_UPLOAD_LIMIT`]. `prepared` was made from
/// the first `head` bytes of a `total`-byte message (the edits are all in the header).
pub fn check_upload_size(
    prepared: &Prepared,
    head: usize,
    total: u64,
) -> Result<(), PolicyViolation> {
    check_upload_within(Provider::Gmail, GMAIL_UPLOAD_LIMIT, prepared, head, total)
}

/// [`check_upload_size`] for `provider`'s limit of `limit` bytes.
pub fn check_upload_within(
    provider: Provider,
    limit: u64,
    prepared: &Prepared,
    head: usize,
    total: u64,
) -> Result<(), PolicyViolation> {
    let upload = total.saturating_sub(head as u64) + prepared.len() as u64;
    if upload <= limit {
        return Ok(());
    }
    Err(PolicyViolation::TooLarge {
        provider,
        limit,
        upload,
        received: total,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::message::recipient_rules::{
        FromPolicy, HeaderOnlyRecipients, SendPolicy, prepare_for_api,
    };
    use crate::message::{Address, Envelope, MessageId};

    fn envelope(rcpt_to: &[String]) -> Envelope {
        Envelope {
            id: MessageId::generate(),
            mail_from: Some(Address::new("app@example.com")),
            rcpt_to: rcpt_to.iter().map(|a| Address::new(a.as_str())).collect(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            helo: "client".to_owned(),
            auth_user: None,
            received_at: SystemTime::now(),
        }
    }

    /// `count` envelope recipients of `octets` each, numbered so they differ.
    fn long_addresses(count: usize, octets: usize) -> Vec<String> {
        let domain = "@example.com";
        (0..count)
            .map(|i| format!("{i:03}{}{domain}", "x".repeat(octets - 3 - domain.len())))
            .collect()
    }

    #[test]
    fn the_largest_message_leaves_room_for_the_longest_bcc_and_a_from_rewrite() {
        let rcpt = long_addresses(100, 256);
        let rewrite = SendPolicy {
            header_only_recipients: HeaderOnlyRecipients::Allow,
            send_as: vec!["relay@example.com".to_string()],
            from_policy: FromPolicy::Rewrite,
            ..SendPolicy::default()
        };
        let largest = largest_message(100);
        assert_eq!(largest, 36_673_128, "as documented in gmail-mode.md");
        let heads: [&[u8]; 3] = [
            b"From: \"Someone with a long name\" <someone.else@example.org>\r\n\r\n",
            b"From: app@example.com\r\nBcc: first@example.com\r\n\r\n",
            b"no header field at all\r\n",
        ];
        for head in heads {
            let prepared = prepare_for_api(&rewrite, &envelope(&rcpt), head).unwrap();
            assert_eq!(prepared.added_bcc.len(), 100);
            check_upload_size(&prepared, head.len(), largest).unwrap();
            let over = check_upload_size(&prepared, head.len(), GMAIL_UPLOAD_LIMIT);
            assert!(matches!(over, Err(PolicyViolation::TooLarge { .. })));
        }
        assert_eq!(largest_message(1_000_000), 0, "no underflow");
    }

    #[test]
    fn addresses_beyond_the_rfc_limit_can_still_make_a_message_too_large() {
        let rcpt = long_addresses(100, 1000);
        let head = b"From: app@example.com\r\n\r\n";
        let prepared = prepare_for_api(&SendPolicy::default(), &envelope(&rcpt), head).unwrap();
        let largest = largest_message(100);
        let refusal = check_upload_size(&prepared, head.len(), largest).unwrap_err();
        let PolicyViolation::TooLarge {
            upload, received, ..
        } = refusal.clone()
        else {
            panic!("{refusal:?}")
        };
        assert_eq!(received, largest);
        assert!(upload > GMAIL_UPLOAD_LIMIT);
        assert!(refusal.to_string().contains("36700160"), "{refusal}");
    }
}
