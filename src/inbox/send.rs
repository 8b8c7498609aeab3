//! `POST /api/v1/send`: Mailpit's send API. The JSON (`From`, `To`, `Cc`, `Bcc`, `ReplyTo`,
//! `Subject`, `Text`, `HTML`, `Attachments`, `Headers`, `Tags`) becomes an RFC 5322 message —
//! `multipart/alternative` for text and HTML, `multipart/related` around inline parts (those
//! with a `ContentID`), `multipart/mixed` around attachments — with the envelope `From` → `To`,
//! `Cc` and `Bcc`, and is handed to the same delivery target an SMTP session hands its messages
//! to: printed or filed, then captured. The answer is `{"ID": "…"}`, the inbox's id of it.
//!
//! Errors are Mailpit's: `400` with `{"Error": "…"}`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as Part, Mailbox, MultiPart, SinglePart};
use serde::Deserialize;
use serde_json::json;

use super::Inbox;
use super::request::json_body;
use crate::message::{Address, Envelope, Message, MessageId};

/// Header fields the request's `Headers` may not set: the builder writes them (Mailpit's list).
const RESTRICTED: &[&str] = &[
    "to",
    "from",
    "cc",
    "bcc",
    "reply-to",
    "date",
    "subject",
    "content-type",
    "mime-version",
    "x-tags",
];

/// A mailbox of the request: `{"Email": "…", "Name": "…"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Person {
    email: String,
    name: String,
}

/// An attachment: base64 `Content` (a `data:` URL's prefix is ignored), `Filename`, optional
/// `ContentType` and `ContentID` (inline when given).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Attachment {
    content: String,
    filename: String,
    contenttype: String,
    contentid: String,
}

/// The request (keys in lowercase: see [`json_body`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SendRequest {
    from: Person,
    to: Vec<Person>,
    cc: Vec<Person>,
    bcc: Vec<String>,
    replyto: Vec<Person>,
    subject: String,
    text: String,
    html: String,
    attachments: Vec<Attachment>,
    headers: BTreeMap<String, String>,
    tags: Vec<String>,
}

/// A `400` as Mailpit's send API gives it: `{"Error": "…"}`.
fn json_error(reason: impl Into<String>) -> Response {
    let reason = reason.into();
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "Error": reason })),
    )
        .into_response()
}

/// `POST /api/v1/send`. The body may be as large as the largest message in base64 and some
/// more (axum's default limit of 2 MB would refuse most attachments); beyond, `413`.
pub async fn send(State(inbox): State<Arc<Inbox>>, body: Body) -> Response {
    let limit = (inbox.max_message_size / 3 * 4 + 64 * 1024) as usize;
    let body: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            let reason = format!("the request is larger than {limit} bytes");
            let mut response = json_error(reason);
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    let request: SendRequest = match json_body(&body) {
        Ok(request) => request,
        Err(err) => return json_error(err.1),
    };
    let (envelope, raw) = match build(request) {
        Ok(built) => built,
        Err(reason) => return json_error(reason),
    };
    if raw.len() as u64 > inbox.max_message_size {
        let limit = inbox.max_message_size;
        return json_error(format!("message size exceeds fixed limit of {limit} bytes"));
    }
    let Some(target) = inbox.injector() else {
        return json_error("the server is not accepting mail");
    };
    let message = Message::from_bytes(raw);
    match target.deliver(&envelope, &message).await {
        Ok(_) => axum::Json(json!({ "ID": envelope.id.as_str() })).into_response(),
        Err(err) => {
            tracing::warn!(id = %envelope.id, %err, "a message of the send API was not accepted");
            json_error(format!("the message was not accepted: {err}"))
        }
    }
}

fn mailbox(person: &Person, field: &str) -> Result<Mailbox, String> {
    let address = person
        .email
        .trim()
        .parse()
        .map_err(|_| format!("invalid {field} address: {}", person.email))?;
    let name = Some(person.name.trim().to_string()).filter(|n| !n.is_empty());
    Ok(Mailbox::new(name, address))
}

/// The envelope and bytes of the message `request` describes, or why there is none.
fn build(request: SendRequest) -> Result<(Envelope, Vec<u8>), String> {
    let from = mailbox(&request.from, "From")?;
    let id = MessageId::generate();
    let now = SystemTime::now();
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .subject(request.subject.clone())
        .date(now)
        .message_id(Some(format!("<{id}.send@{}>", from.email.domain())));
    let mut recipients = Vec::new();
    for person in &request.to {
        let to = mailbox(person, "To")?;
        recipients.push(to.email.to_string());
        builder = builder.to(to);
    }
    for person in &request.cc {
        let cc = mailbox(person, "Cc")?;
        recipients.push(cc.email.to_string());
        builder = builder.cc(cc);
    }
    for email in &request.bcc {
        let bcc = mailbox(
            &Person {
                email: email.clone(),
                name: String::new(),
            },
            "Bcc",
        )?;
        recipients.push(bcc.email.to_string());
        builder = builder.bcc(bcc);
    }
    for person in &request.replyto {
        builder = builder.reply_to(mailbox(person, "Reply-To")?);
    }
    if recipients.is_empty() {
        return Err("no recipients: give To, Cc or Bcc".into());
    }
    if !request.tags.is_empty() {
        builder = builder.raw_header(header("X-Tags", &request.tags.join(", "))?);
    }
    for (name, value) in &request.headers {
        if RESTRICTED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("cannot overwrite header: \"{name}\""));
        }
        builder = builder.raw_header(header(name, value)?);
    }
    let message = builder
        .multipart(body(&request)?)
        .map_err(|err| format!("error building message: {err}"))?;
    let envelope = Envelope {
        id,
        mail_from: Some(Address::new(from.email.to_string())),
        rcpt_to: recipients.into_iter().map(Address::new).collect(),
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        helo: "api-v1-send".to_string(),
        auth_user: None,
        received_at: now,
    };
    Ok((envelope, message.formatted()))
}

/// One header field of the request; a name or value that would end the field early is refused.
fn header(name: &str, value: &str) -> Result<HeaderValue, String> {
    if value.contains(['\r', '\n']) {
        return Err(format!("header {name:?}: the value has a line break"));
    }
    let name = HeaderName::new_from_ascii(name.to_string())
        .map_err(|_| format!("invalid header name: {name:?}"))?;
    Ok(HeaderValue::new(name, value.to_string()))
}

/// The body: text and HTML (alternatives when both), inline parts beside the HTML, attachments
/// around it all. The multipart is `mixed` even without attachments (lettre builds a message from
/// one multipart), with the text as its only part when that is all there is.
fn body(request: &SendRequest) -> Result<MultiPart, String> {
    let text = SinglePart::plain(request.text.clone());
    let content = match request.html.is_empty() {
        true => MultiPart::mixed().singlepart(text),
        false => {
            let alternative = MultiPart::alternative()
                .singlepart(text)
                .singlepart(SinglePart::html(request.html.clone()));
            MultiPart::mixed().multipart(alternative)
        }
    };
    let mut inline = Vec::new();
    let mut attached = Vec::new();
    for attachment in &request.attachments {
        let part = attachment_part(attachment)?;
        match attachment.contentid.is_empty() {
            true => attached.push(part),
            false => inline.push(part),
        }
    }
    let mut content = match inline.is_empty() {
        true => content,
        false => {
            let related = inline.into_iter().fold(
                MultiPart::related().multipart(content),
                MultiPart::singlepart,
            );
            MultiPart::mixed().multipart(related)
        }
    };
    for part in attached {
        content = content.singlepart(part);
    }
    Ok(content)
}

fn attachment_part(attachment: &Attachment) -> Result<SinglePart, String> {
    // A browser's readAsDataURL() gives `data:image/png;base64,<base64>`: the base64 is last.
    let encoded = attachment.content.rsplit(',').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| {
            format!(
                "error decoding base64 attachment \"{}\": {err}",
                attachment.filename
            )
        })?;
    let content_type = match attachment.contenttype.trim() {
        "" => "application/octet-stream",
        given => given,
    };
    let content_type = ContentType::parse(content_type)
        .map_err(|_| format!("invalid ContentType of \"{}\"", attachment.filename))?;
    let part = match attachment.contentid.is_empty() {
        true => Part::new(attachment.filename.clone()),
        false => {
            Part::new_inline_with_name(attachment.contentid.clone(), attachment.filename.clone())
        }
    };
    Ok(part.body(bytes, content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> SendRequest {
        json_body(json.to_string().as_bytes())
            .map_err(|e| e.1)
            .unwrap()
    }

    #[test]
    fn a_full_request_becomes_one_message() {
        let (envelope, raw) = build(request(json!({
            "From": {"Email": "app@example.com", "Name": "App"},
            "To": [{"Email": "ann@example.org", "Name": "Ann"}],
            "Cc": [{"Email": "cc@example.org"}],
            "Bcc": ["hidden@example.org"],
            "ReplyTo": [{"Email": "help@example.com"}],
            "Subject": "Hello",
            "Text": "plain words",
            "HTML": "<p>rich <img src=\"cid:logo\"></p>",
            "Attachments": [
                {"Content": "aGVsbG8=", "Filename": "a.txt", "ContentType": "text/plain"},
                {"Content": "data:image/png;base64,iVBORw0KGgo=", "Filename": "logo.png", "ContentID": "logo"}
            ],
            "Headers": {"X-Campaign": "spring"},
            "Tags": ["one", "two"]
        })))
        .unwrap();
        let rcpts: Vec<&str> = envelope.rcpt_to.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            rcpts,
            ["ann@example.org", "cc@example.org", "hidden@example.org"]
        );
        assert_eq!(envelope.mail_from.unwrap().as_str(), "app@example.com");
        let text = String::from_utf8(raw).unwrap();
        for needle in [
            "From: App <app@example.com>",
            "To: Ann <ann@example.org>",
            "Reply-To: help@example.com",
            "X-Tags: one, two",
            "X-Campaign: spring",
            "multipart/alternative",
            "multipart/related",
            "Content-ID: <logo>",
            "filename=\"a.txt\"",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        assert!(
            !text.contains("hidden@example.org"),
            "Bcc only in the envelope"
        );
    }

    #[test]
    fn mailpit_errors() {
        let err = |json| build(request(json)).unwrap_err();
        assert_eq!(
            err(json!({"From": {"Email": "not an address"}, "To": [{"Email": "a@example.org"}]})),
            "invalid From address: not an address"
        );
        assert_eq!(
            err(
                json!({"From": {"Email": "a@example.com"}, "To": [{"Email": "a@example.org"}], "Headers": {"subject": "x"}})
            ),
            "cannot overwrite header: \"subject\""
        );
        assert!(err(json!({"From": {"Email": "a@example.com"}, "To": [{"Email": "a@example.org"}], "Headers": {"X-A": "1\r\nBcc: x@example.org"}})).contains("line break"));
        assert!(err(json!({"From": {"Email": "a@example.com"}, "To": [{"Email": "a@example.org"}], "Attachments": [{"Content": "!!", "Filename": "x"}]})).starts_with("error decoding base64 attachment \"x\""));
        assert!(err(json!({"From": {"Email": "a@example.com"}})).starts_with("no recipients"));
    }
}
