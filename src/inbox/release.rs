//! Release: a captured message sent through the Gmail relay to the recipients the developer
//! names, and to nobody else.
//!
//! Gmail delivers to every address in the To, Cc and Bcc fields and ignores the envelope, so
//! the envelope alone cannot restrict who gets a released message. The message is re-addressed
//! instead: every To, Cc and Bcc field (and their Resent- forms) is removed and one `To:` with
//! exactly the given addresses is added, with a new `Message-ID` (Gmail drops a second copy
//! with an id a mailbox has already seen, so a message released twice would vanish) and `Date`.
//! The result is read back with the same header reader the Gmail rules use, and sent only if
//! its recipients are exactly the ones given. Then the usual Gmail path runs — routing by the
//! original envelope sender, the From policy, the sync retry budget — and the answer carries
//! Gmail's id or Google's error. An address `[inbox] release_blocked` names refuses the whole
//! release, as Mailpit refuses a relay-blocked recipient.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Inbox;
use super::api::{ApiError, raw_bytes};
use super::request::json_body;
use super::rules::ReleaseRules;
use crate::config::Config;
use crate::message::date::rfc5322_date;
use crate::message::headers::{Headers, LineEnding, check_line_endings, header_end, header_fields};
use crate::message::mailbox::mailbox_key;
use crate::message::{Address, Envelope, Message, MessageId};
use crate::relay::{Deliver, DeliveryError, Gmail};

/// Fields removed from a released message: everything that names recipients, and the two that
/// must be new.
const REPLACED: &[&str] = &[
    "to",
    "cc",
    "bcc",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "message-id",
    "date",
];
/// Gmail's limit of recipients per message.
const MAX_RECIPIENTS: usize = 100;
/// The answer's header carrying Gmail's id of the sent message.
pub const GMAIL_ID_HEADER: &str = "x-gmail-message-id";

/// Where released mail goes: the Gmail relay, or why there is none; and the addresses it never
/// goes to.
pub struct Release {
    gmail: Result<Arc<Gmail>, String>,
    rules: Arc<ReleaseRules>,
}

impl Release {
    /// Release through `[gmail]` when credentials are configured (a file, inline values, named
    /// accounts or the `GMAIL_API_*` environment); otherwise off, with the way to turn it on.
    /// Credentials that cannot be loaded turn it off with their error (logged), not the server.
    pub fn from_config(config: &Config) -> Release {
        let gmail = &config.gmail;
        if !config.release_credentials_configured() {
            return Release::off(
                "release sends through Gmail and no Gmail credentials are configured: add \
                 [gmail] credentials = \"token.json\" to the config (the file \
                 `smtp2gmail authorize --client-secret client_secret.json` writes), or set \
                 GMAIL_API_CLIENT_ID, GMAIL_API_CLIENT_SECRET and GMAIL_API_REFRESH_TOKEN; \
                 see docs/inbox.md",
            );
        }
        let built = crate::relay::http_client()
            .and_then(|http| Gmail::from_config(gmail, http).map_err(Into::into));
        match built {
            Ok(gmail) => Release::through(Arc::new(gmail)),
            Err(err) => {
                tracing::warn!("release through Gmail is off: {err}");
                Release::off(&format!("the Gmail credentials cannot be used: {err}"))
            }
        }
    }

    /// Release through `gmail`.
    pub fn through(gmail: Arc<Gmail>) -> Release {
        Release {
            gmail: Ok(gmail),
            rules: Arc::default(),
        }
    }

    /// No release; `why` says how to turn it on.
    pub fn off(why: &str) -> Release {
        Release {
            gmail: Err(why.to_string()),
            rules: Arc::default(),
        }
    }

    /// Never sending to what `rules` block (the default blocks nothing).
    pub fn with_rules(self, rules: Arc<ReleaseRules>) -> Release {
        Release { rules, ..self }
    }

    /// The release rules, for the page.
    pub fn rules(&self) -> &ReleaseRules {
        &self.rules
    }

    /// Whether messages can be released.
    pub fn enabled(&self) -> bool {
        self.gmail.is_ok()
    }

    /// What release sends through, for the page.
    pub fn description(&self) -> String {
        match &self.gmail {
            Ok(gmail) => {
                let names: Vec<&str> = gmail.router().accounts().map(|a| a.name.as_str()).collect();
                format!("Gmail API (account {})", names.join(", "))
            }
            Err(_) => String::new(),
        }
    }

    /// How to turn release on; empty when it is on.
    pub fn help(&self) -> String {
        self.gmail.as_ref().err().cloned().unwrap_or_default()
    }
}

/// The body: `{"To": […]}` (keys in lowercase: see [`json_body`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    to: Vec<String>,
}

/// `POST /api/v1/message/{id}/release` with `{"To": ["a@example.com", …]}`. Answers `ok` with
/// Gmail's id in the `X-Gmail-Message-Id` header, or the reason it was not sent.
pub async fn release(
    State(inbox): State<Arc<Inbox>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let gmail = match &inbox.release.gmail {
        Ok(gmail) => gmail.clone(),
        Err(why) => return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, why.clone())),
    };
    let request: Request = json_body(&body)
        .map_err(|err| ApiError::bad(format!("expected {{\"To\": [addresses]}}: {}", err.1)))?;
    let recipients = recipients(&request.to).map_err(ApiError::bad)?;
    refuse_blocked(&request.to, &inbox.release.rules).map_err(ApiError::bad)?;
    let (entry, raw) = raw_bytes(&inbox, &id).await?;
    let released_id = MessageId::generate();
    let readdressed = readdress(&raw, &recipients, &released_id).map_err(ApiError::bad)?;
    let envelope = Envelope {
        id: released_id,
        mail_from: inbox.store.return_path(&entry.id).map(Address::new),
        rcpt_to: recipients.iter().map(Address::new).collect(),
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        helo: "smtp2gmail-release".to_string(),
        auth_user: None,
        received_at: SystemTime::now(),
    };
    match gmail
        .deliver(&envelope, &Message::from_bytes(readdressed))
        .await
    {
        Ok(receipt) => {
            tracing::info!(id = %entry.id, recipients = recipients.len(), gmail_id = %receipt.id, "released through Gmail");
            let mut response = ([("content-type", "text/plain")], "ok").into_response();
            if let Ok(value) = HeaderValue::from_str(&receipt.id) {
                response.headers_mut().insert(GMAIL_ID_HEADER, value);
            }
            Ok(response)
        }
        Err(err) => {
            tracing::warn!(id = %entry.id, %err, "release through Gmail failed");
            let status = match err {
                DeliveryError::Temporary { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            Err(ApiError(status, format!("Gmail did not send it: {err}")))
        }
    }
}

/// The addresses of `to` (`a@example.com` or `Name <a@example.com>`), each once.
fn recipients(to: &[String]) -> Result<Vec<String>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for text in to {
        let address = address_of(text)?;
        if seen.insert(mailbox_key(&address)) {
            out.push(address);
        }
    }
    if out.is_empty() {
        return Err("No valid addresses found".to_string());
    }
    if out.len() > MAX_RECIPIENTS {
        return Err(format!(
            "{} recipients; Gmail takes at most {MAX_RECIPIENTS}",
            out.len()
        ));
    }
    Ok(out)
}

/// The address of `text` (`a@example.com` or `Name <a@example.com>`).
fn address_of(text: &str) -> Result<String, String> {
    let mailbox: lettre::message::Mailbox = text
        .trim()
        .parse()
        .map_err(|_| format!("Invalid email address: {text}"))?;
    Ok(mailbox.email.to_string())
}

/// Refuses the whole release when `rules` block any entry of `to`, in Mailpit's words for a
/// relay-blocked recipient (its `--smtp-relay-blocked-recipients`), naming every blocked entry.
fn refuse_blocked(to: &[String], rules: &ReleaseRules) -> Result<(), String> {
    let blocked: Vec<&str> = to
        .iter()
        .filter(|text| address_of(text).is_ok_and(|address| rules.is_blocked(&address)))
        .map(|text| text.as_str())
        .collect();
    match blocked.len() {
        0 => Ok(()),
        1 => Err(format!(
            "Failed: Address found on blocklist: {}",
            blocked[0]
        )),
        _ => Err(format!(
            "Failed: Addresses found on blocklist: {}",
            blocked.join(", ")
        )),
    }
}

/// `raw` addressed to exactly `recipients`, with a new Message-ID and Date; an error when the
/// result would not say exactly that (which no input is known to cause). Manual release and
/// [`super::auto_release`] both send what this makes.
pub(crate) fn readdress(
    raw: &[u8],
    recipients: &[String],
    id: &MessageId,
) -> Result<Vec<u8>, String> {
    // Stored messages may predate the rule (or be files put in file mode's folder by hand); with
    // it, the LF-split reading below finds the fields every reader finds.
    check_line_endings(raw).map_err(|err| format!("cannot release this message: {err}"))?;
    let eol = LineEnding::detect(raw).as_bytes();
    // Without a header field the bytes are all body (a line without a colon is no field).
    let end = match Headers::read(raw).has_fields {
        true => header_end(raw),
        false => 0,
    };
    let blank_line_needed = end == 0 && !raw.starts_with(b"\n") && !raw.starts_with(b"\r\n");
    let mut out = Vec::with_capacity(raw.len() + 256);
    out.extend_from_slice(b"To: ");
    out.extend_from_slice(
        recipients
            .join(&format!(",{} ", String::from_utf8_lossy(eol)))
            .as_bytes(),
    );
    out.extend_from_slice(eol);
    out.extend_from_slice(format!("Date: {}", rfc5322_date(SystemTime::now())).as_bytes());
    out.extend_from_slice(eol);
    out.extend_from_slice(format!("Message-ID: <{id}.release@smtp2gmail>").as_bytes());
    out.extend_from_slice(eol);
    for field in header_fields(&raw[..end]) {
        let name = field.split(|&b| b == b':').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        if !REPLACED.contains(&name.as_str()) {
            out.extend_from_slice(field);
            if !field.ends_with(b"\n") {
                out.extend_from_slice(eol);
            }
        }
    }
    if blank_line_needed {
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(&raw[end..]);
    let check = Headers::read(&out);
    let unreadable = check.recipient_fields().any(|f| !f.unparsed.is_empty());
    let wanted: HashSet<String> = recipients.iter().map(|r| mailbox_key(r)).collect();
    if unreadable || check.recipients() != wanted {
        return Err("cannot address the message to exactly these recipients".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(raw: &[u8], to: &[&str]) -> String {
        let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
        let id = MessageId::from_stored("0123456789abcdef012");
        String::from_utf8(readdress(raw, &to, &id).unwrap()).unwrap()
    }

    #[test]
    fn only_the_given_recipients_remain() {
        let raw = b"From: app@example.com\r\nTo: alice@example.com,\r\n\tbob@example.com\r\n\
Cc: carol@example.com\r\nBCC: dave@example.com\r\nResent-To: eve@example.com\r\n\
Subject: hi\r\nMessage-ID: <old@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n\
To: body-text@example.com\r\n";
        let out = released(raw, &["qa@example.org", "Dev@Example.org"]);
        let headers = Headers::read(out.as_bytes());
        let mut got: Vec<String> = headers.recipients().into_iter().collect();
        got.sort();
        assert_eq!(got, ["dev@example.org", "qa@example.org"]);
        assert!(out.contains("Subject: hi\r\n") && out.contains("From: app@example.com\r\n"));
        assert!(!out.contains("old@x") && !out.contains("eve@") && !out.contains("2024"));
        assert!(out.contains("Message-ID: <0123456789abcdef012.release@smtp2gmail>\r\n"));
        assert!(
            out.ends_with("\r\n\r\nTo: body-text@example.com\r\n"),
            "the body is untouched"
        );
    }

    #[test]
    fn bare_lf_and_headerless_messages() {
        let out = released(b"To: a@x\nSubject: s\n\nbody\n", &["b@y"]);
        assert!(out.starts_with("To: b@y\nDate: ") && out.ends_with("Subject: s\n\nbody\n"));
        let out = released(b"\r\njust a body", &["b@y"]);
        assert!(out.ends_with(">\r\n\r\njust a body"));
        let out = released(b"no header here", &["b@y"]);
        assert!(out.ends_with(">\r\n\r\nno header here"));
        let out = released(b"", &["b@y"]);
        assert!(Headers::read(out.as_bytes()).recipients().contains("b@y"));
    }

    #[test]
    fn recipients_are_checked() {
        let list = |v: &[&str]| recipients(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            list(&["A <a@x.org>", "a@X.org", "b@y.org"]).unwrap(),
            ["a@x.org", "b@y.org"]
        );
        assert!(list(&[]).unwrap_err().contains("No valid"));
        assert!(list(&["not an address"]).unwrap_err().contains("Invalid"));
        assert!(
            list(&["a@x.org, evil@y.org"]).is_err(),
            "one address per entry"
        );
        let many: Vec<String> = (0..101).map(|i| format!("u{i}@x.org")).collect();
        assert!(recipients(&many).is_err());
    }

    #[test]
    fn blocked_entries_refuse_the_release_in_mailpits_words() {
        let inbox = crate::config::InboxConfig {
            release_blocked: vec!["ceo@x.org".into(), r"@customer\.example$".into()],
            ..Default::default()
        };
        let rules = ReleaseRules::from_config(&inbox).unwrap();
        let to = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(refuse_blocked(&to(&["qa@x.org"]), &rules), Ok(()));
        assert_eq!(
            refuse_blocked(&to(&["qa@x.org", "CEO <Ceo@X.org>"]), &rules),
            Err("Failed: Address found on blocklist: CEO <Ceo@X.org>".to_string())
        );
        assert_eq!(
            refuse_blocked(&to(&["ceo@x.org", "a@customer.example"]), &rules),
            Err("Failed: Addresses found on blocklist: ceo@x.org, a@customer.example".to_string())
        );
    }

    #[test]
    fn a_bare_cr_in_the_header_section_is_refused() {
        let raw = b"To: a@x\r\nX-A: 1\rBcc: smuggled@evil.example\r\n\r\nbody\r\n";
        let id = MessageId::from_stored("0123456789abcdef012");
        let refused = readdress(raw, &["b@y".to_string()], &id).unwrap_err();
        assert!(refused.contains("bare CR"), "{refused}");
    }
}
