//! The endpoints of Mailpit's API v1 that the inbox supports, with Mailpit's paths, parameters,
//! JSON and status codes: errors are `400` (`404` for an unknown message) with a plain-text
//! reason, successes that return nothing say `ok`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

use super::body::Loaded;
use super::id::InboxId;
use super::index::Entry;
use super::mailpit::{ListItem, Message, MessageList};
use super::request::{json_body, message_ids};
use super::search::{Candidate, Query as Search};
use super::{Inbox, budget, chaos, events, guard, mime, release, send, tags_api};

/// Mailpit's default page size.
const DEFAULT_LIMIT: usize = 50;

/// The API's routes (state: the inbox).
pub fn routes() -> Router<Arc<Inbox>> {
    Router::new()
        .route("/api/v1/messages", get(list).put(set_read).delete(delete))
        .route("/api/v1/search", get(search).delete(delete_search))
        .route("/api/v1/message/{id}", get(message))
        .route("/api/v1/message/{id}/headers", get(headers))
        .route("/api/v1/message/{id}/raw", get(raw))
        .route("/api/v1/message/{id}/part/{part}", get(part))
        .route("/api/v1/message/{id}/release", post(release::release))
        .route("/api/v1/info", get(info))
        .route("/api/v1/webui", get(webui))
        .route("/api/v1/tags", get(tags_api::list).put(tags_api::set))
        .route(
            "/api/v1/tags/{tag}",
            put(tags_api::rename).delete(tags_api::delete),
        )
        .route("/api/v1/chaos", get(chaos::get).put(chaos::put))
        .route("/api/v1/send", post(send::send))
        .route("/api/events", get(events::upgrade))
}

/// An error answer: a status and a plain-text reason.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// `400` with `reason`.
    pub fn bad(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, reason.into())
    }

    /// `404`, as Mailpit words it.
    pub fn not_found() -> ApiError {
        ApiError(StatusCode::NOT_FOUND, "not found".into())
    }

    /// A storage failure: logged here, answered without the details (an OS error names paths
    /// and users of the machine, which the client has no business knowing).
    pub fn storage(err: std::io::Error) -> ApiError {
        tracing::error!(%err, "inbox storage failed");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read or change the inbox; the server's log says why".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

type Params = Query<HashMap<String, String>>;

fn number(params: &HashMap<String, String>, name: &str, default: usize) -> usize {
    params
        .get(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The answer of a success without content: `ok`, as Mailpit.
pub fn ok() -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], "ok").into_response()
}

/// The message `id` (or `latest`), or 404.
pub async fn find(inbox: &Inbox, id: &str) -> Result<Entry, ApiError> {
    let id = inbox.resolve(id).ok_or_else(ApiError::not_found)?;
    inbox.entry(&id).await.ok_or_else(ApiError::not_found)
}

async fn page(inbox: &Inbox, ids: Vec<InboxId>) -> Vec<ListItem> {
    inbox.store.ensure_loaded(ids.clone()).await;
    let tags = inbox.tags.snapshot();
    let index = inbox.store.index();
    ids.iter()
        .filter_map(|id| index.get(id))
        .map(|entry| ListItem::new(entry, tags.of(entry)))
        .collect()
}

/// Every tag in use, sorted, for the lists' `tags`.
async fn all_tags(inbox: &Inbox) -> Vec<String> {
    tags_api::counts(inbox).await.into_keys().collect()
}

/// `GET /api/v1/messages?start=&limit=`
async fn list(State(inbox): State<Arc<Inbox>>, Query(params): Params) -> Response {
    let start = number(&params, "start", 0);
    let limit = number(&params, "limit", DEFAULT_LIMIT);
    let (total, unread, ids) = {
        let index = inbox.store.index();
        let ids = index.newest_first().skip(start).take(limit);
        let ids: Vec<InboxId> = ids.map(|e| e.id.clone()).collect();
        (index.len(), index.unread(), ids)
    };
    let messages = page(&inbox, ids).await;
    axum::Json(MessageList {
        total,
        unread,
        count: messages.len(),
        messages_count: total,
        messages_unread: unread,
        start,
        tags: all_tags(&inbox).await,
        messages,
    })
    .into_response()
}

/// The messages matching `text`, newest first.
async fn matching(inbox: &Inbox, text: &str) -> Result<Vec<Entry>, ApiError> {
    let query = Search::parse(text);
    if query.is_empty() {
        return Err(ApiError::bad("Error: no search query"));
    }
    let tags = inbox.tags.snapshot();
    Ok(inbox
        .store
        .scan(move |entry, raw| {
            let empty = mime::Summary::default();
            let entry_tags = tags.of(entry);
            let candidate = Candidate {
                summary: entry.summary.as_deref().unwrap_or(&empty),
                read: entry.read,
                size: entry.size,
                received: entry.received_ms.div_euclid(1000),
                tags: &entry_tags,
            };
            // Without the bytes, a term that needs the body leaves the answer open.
            let mut undecided = false;
            let holds = query.matches(&candidate, &mut || match raw {
                Some(raw) => mime::search_text(raw),
                None => {
                    undecided = true;
                    String::new()
                }
            });
            (!undecided).then_some(holds)
        })
        .await)
}

/// `GET /api/v1/search?query=&start=&limit=`
async fn search(
    State(inbox): State<Arc<Inbox>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let text = params.get("query").map(String::as_str).unwrap_or_default();
    let found = matching(&inbox, text).await?;
    let start = number(&params, "start", 0);
    let limit = number(&params, "limit", DEFAULT_LIMIT);
    let ids: Vec<InboxId> = found
        .iter()
        .skip(start)
        .take(limit)
        .map(|e| e.id.clone())
        .collect();
    let messages = page(&inbox, ids).await;
    let (total, unread) = {
        let index = inbox.store.index();
        (index.len(), index.unread())
    };
    Ok(axum::Json(MessageList {
        total,
        unread,
        count: messages.len(),
        messages_count: found.len(),
        messages_unread: found.iter().filter(|e| !e.read).count(),
        start,
        tags: all_tags(&inbox).await,
        messages,
    })
    .into_response())
}

/// `DELETE /api/v1/search?query=`
async fn delete_search(
    State(inbox): State<Arc<Inbox>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let text = params.get("query").map(String::as_str).unwrap_or_default();
    let found = matching(&inbox, text).await?;
    let ids = found.into_iter().map(|e| e.id).collect();
    inbox.delete(ids).await.map_err(ApiError::storage)?;
    Ok(ok())
}

/// The body of `DELETE /api/v1/messages` (keys in lowercase: see [`json_body`]).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Ids {
    ids: Option<Vec<String>>,
}

/// `DELETE /api/v1/messages` with `{"IDs": […]}`; no body, `{}` or no IDs mean all, as in
/// Mailpit.
async fn delete(State(inbox): State<Arc<Inbox>>, body: Bytes) -> Result<Response, ApiError> {
    let request: Ids = json_body(&body)?;
    let ids = message_ids(request.ids.as_deref().unwrap_or_default())?;
    let ids = match ids.is_empty() {
        true => inbox.all_ids(),
        false => ids,
    };
    inbox.delete(ids).await.map_err(ApiError::storage)?;
    Ok(ok())
}

/// The body of `PUT /api/v1/messages` (keys in lowercase: see [`json_body`]).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReadState {
    read: bool,
    ids: Option<Vec<String>>,
    search: Option<String>,
}

/// `PUT /api/v1/messages` with `{"Read": bool, "IDs": […]}` or `{"Read": bool, "Search": "…"}`;
/// neither means every message.
async fn set_read(State(inbox): State<Arc<Inbox>>, body: Bytes) -> Result<Response, ApiError> {
    let request: ReadState = json_body(&body)?;
    let ids = message_ids(request.ids.as_deref().unwrap_or_default())?;
    let search = request.search.unwrap_or_default();
    if !ids.is_empty() && !search.trim().is_empty() {
        return Err(ApiError::bad(
            "You may specify either IDs or a search query, not both",
        ));
    }
    let ids: Vec<InboxId> = if !ids.is_empty() {
        ids
    } else if !search.trim().is_empty() {
        let found = matching(&inbox, &search).await?;
        found.into_iter().map(|e| e.id).collect()
    } else {
        inbox.all_ids()
    };
    inbox.set_read(&ids, request.read).await;
    Ok(ok())
}

/// `GET /api/v1/message/{id}`: the message, which is then marked read — so not for another
/// site's page (an `<img src>` would mark it read), which could not read the answer anyway.
async fn message(
    State(inbox): State<Arc<Inbox>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if guard::from_another_site(&headers) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "opening a message marks it read, which a page of another site may not do".into(),
        ));
    }
    let entry = find(&inbox, &id).await?;
    let (view, charge) = inbox
        .view(&entry.id)
        .await
        .map_err(ApiError::storage)?
        .ok_or_else(ApiError::not_found)?;
    let summary = entry.summary.clone().unwrap_or_default();
    let tags = inbox.tags.of(&entry);
    let body = axum::Json(Message::new(&entry, &summary, tags, &view)).into_response();
    inbox.set_read(std::slice::from_ref(&entry.id), true).await;
    Ok(budget::hold(body, charge).await)
}

/// The raw bytes of message `id`, read within the budget, or 404.
pub async fn raw_bytes(inbox: &Inbox, id: &str) -> Result<(Entry, Loaded), ApiError> {
    let entry = find(inbox, id).await?;
    let raw = inbox
        .store
        .load(&entry.id)
        .await
        .map_err(ApiError::storage)?;
    Ok((entry, raw.ok_or_else(ApiError::not_found)?))
}

/// `GET /api/v1/message/{id}/headers`
async fn headers(
    State(inbox): State<Arc<Inbox>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, raw) = raw_bytes(&inbox, &id).await?;
    let (raw, charge) = raw.into_parts();
    let headers = tokio::task::spawn_blocking(move || mime::headers(&raw))
        .await
        .unwrap_or_default();
    Ok(budget::hold(axum::Json(headers).into_response(), charge).await)
}

/// `GET /api/v1/message/{id}/raw`; `?dl=1` offers it as `<id>.eml`.
async fn raw(
    State(inbox): State<Arc<Inbox>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let entry = find(&inbox, &id).await?;
    let (len, chunks) = inbox
        .store
        .stream(&entry.id)
        .await
        .map_err(ApiError::storage)?
        .ok_or_else(ApiError::not_found)?;
    let headers = [
        (
            header::CONTENT_TYPE,
            "text/plain; charset=utf-8".to_string(),
        ),
        (header::CONTENT_LENGTH, len.to_string()),
    ];
    let mut response = (headers, axum::body::Body::from_stream(chunks)).into_response();
    if params.get("dl").map(String::as_str) == Some("1") {
        let disposition = format!("attachment; filename=\"{}.eml\"", ascii_name(&entry.id));
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// Types a browser would run or render as a page: always downloaded, never shown (as Mailpit).
/// Every `…+xml` type is too (SVG and XHTML run scripts, and any XML may name an XSLT style
/// sheet that makes a page of it).
const ACTIVE_TYPES: &[&str] = &["text/html", "text/xml", "application/xml", "text/xsl"];

/// Whether a part of `content_type` must be downloaded rather than shown: an active type, or
/// one that is not a plain `type/subtype` (a browser reads `text/plain,text/html` as HTML).
fn is_active(content_type: &str) -> bool {
    !mime::is_plain_type(content_type)
        || ACTIVE_TYPES.contains(&content_type)
        || content_type.ends_with("+xml")
}

/// `GET /api/v1/message/{id}/part/{part}`: one attachment or inline part, decoded.
async fn part(
    State(inbox): State<Arc<Inbox>>,
    Path((id, part_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, raw) = raw_bytes(&inbox, &id).await?;
    let (raw, charge) = raw.into_parts();
    let part = tokio::task::spawn_blocking(move || mime::part(&raw, &part_id))
        .await
        .ok()
        .flatten()
        .ok_or_else(ApiError::not_found)?;
    let (content_type, disposition) = match is_active(&part.content_type) {
        true => ("application/octet-stream".to_string(), "attachment"),
        false => (part.content_type, "inline"),
    };
    let disposition = content_disposition(disposition, &part.file_name);
    let len = part.bytes.len().to_string();
    let mut response = budget::body(part.bytes.into(), charge).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_LENGTH, len),
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_DISPOSITION, disposition),
        // Whatever the type claims, nothing in it runs with the inbox's origin.
        (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// The name as plain ASCII for `filename=`, with quotes and backslashes gone.
fn ascii_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect()
}

/// `inline; filename="report.pdf"; filename*=UTF-8''r%C3%A9port.pdf` (RFC 6266).
fn content_disposition(kind: &str, name: &str) -> String {
    if name.is_empty() {
        return kind.to_string();
    }
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!(
        "{kind}; filename=\"{}\"; filename*=UTF-8''{encoded}",
        ascii_name(name)
    )
}

/// `GET /api/v1/info`
async fn info(State(inbox): State<Arc<Inbox>>) -> Response {
    let (total, unread) = {
        let index = inbox.store.index();
        (index.len(), index.unread())
    };
    axum::Json(json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "LatestVersion": "",
        "Database": inbox.store.location(),
        "DatabaseSize": 0,
        "Messages": total,
        "Unread": unread,
        "Tags": tags_api::counts(&inbox).await,
        "RuntimeStats": {
            "Memory": resident_bytes(),
            "MessagesDeleted": inbox.deleted.load(Ordering::Relaxed),
            "SMTPAccepted": inbox.accepted.load(Ordering::Relaxed),
            "SMTPAcceptedSize": inbox.accepted_bytes.load(Ordering::Relaxed),
            "SMTPIgnored": 0,
            "SMTPRejected": 0,
            "Uptime": inbox.started.elapsed().as_secs(),
        },
    }))
    .into_response()
}

/// The process's resident memory in bytes (Linux), else 0.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// `GET /api/v1/webui`: what the page needs to know; `ReleaseHelp` (how to turn release on, when
/// it is off) and `AutoRelease` (`[inbox] release_matching`, empty when off) are ours.
/// `BlockedRecipients` is `release_blocked` as one regular expression, as Mailpit gives it.
async fn webui(State(inbox): State<Arc<Inbox>>) -> Response {
    let relay = &inbox.release;
    axum::Json(json!({
        "Label": "smtp2gmail",
        "MessageRelay": {
            "Enabled": relay.enabled(),
            "SMTPServer": relay.description(),
            "AllowedRecipients": "",
            "BlockedRecipients": relay.rules().blocked_pattern(),
            "DefaultReleaseTo": "",
            "ReturnPath": "",
            "OverrideFrom": "",
            "PreserveMessageIDs": false,
        },
        "ReleaseHelp": relay.help(),
        "AutoRelease": relay.rules().matching_pattern(),
        "SpamAssassin": false,
        "ChaosEnabled": inbox.chaos.enabled(),
        "DuplicatesIgnored": false,
        "HideDeleteAllButton": false,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_safe_header_values() {
        assert_eq!(
            content_disposition("inline", "ré\"port.pdf"),
            "inline; filename=\"r__port.pdf\"; filename*=UTF-8''r%C3%A9%22port.pdf"
        );
        assert_eq!(content_disposition("attachment", ""), "attachment");
        assert!(HeaderValue::from_str(&content_disposition("inline", "a\r\nb")).is_ok());
    }

    #[test]
    fn parts_a_browser_could_run_are_downloaded() {
        for active in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "application/rss+xml",
            "application/vnd.example+xml",
            "text/xml",
            "application/xml",
            "text/xsl",
            "text/plain,text/html",
            "text/html;charset=utf-8",
            "",
        ] {
            assert!(is_active(active), "{active}");
        }
        for shown in [
            "image/png",
            "application/pdf",
            "text/plain",
            "application/xml-dtd",
        ] {
            assert!(!is_active(shown), "{shown}");
        }
    }
}
