//! The web inbox: one page with its script and style, built into the binary (no Node, no build
//! step), and Mailpit's `/view/{ID}.html` and `/view/{ID}.txt`, which the page shows a message's
//! HTML through.
//!
//! Message HTML is hostile: it is served with a Content-Security-Policy whose `sandbox`
//! directive gives it an opaque origin and no scripts even when opened on its own, and the page
//! shows it in an `<iframe sandbox>` as well. Remote content (images, fonts, style sheets) is
//! blocked by the policy unless the page asks with `images=1`; inline parts (`cid:`) are served
//! by the API. With `embed=1` links open in a new tab with `noopener`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::api::{ApiError, find};
use super::mime::View;
use super::{Inbox, budget};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/favicon.svg");

/// The page's routes (state: the inbox).
pub fn routes() -> Router<Arc<Inbox>> {
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/assets/app.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/assets/favicon.svg", get(|| asset("image/svg+xml", ICON)))
        .route("/view/{file}", get(view))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The inbox's origin as CSP sources, with and without TLS (a proxy may add it), for the
/// policies: a sandboxed document has an opaque origin, so `'self'` would not name the inbox
/// there. The host has passed the guard.
fn sources(headers: &HeaderMap, schemes: [&str; 2]) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    schemes.map(|scheme| format!("{scheme}://{host}")).join(" ")
}

async fn index(headers: HeaderMap) -> Response {
    let ws = sources(&headers, ["ws", "wss"]);
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {ws}; frame-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let mut response =
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response();
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
        .headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /view/{ID}.html` (`?embed=1`, `?images=1`) and `GET /view/{ID}.txt`.
async fn view(
    State(inbox): State<Arc<Inbox>>,
    Path(file): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (id, html) = match (file.strip_suffix(".html"), file.strip_suffix(".txt")) {
        (Some(id), _) => (id, true),
        (None, Some(id)) => (id, false),
        _ => return Err(ApiError::not_found()),
    };
    let entry = find(&inbox, id).await?;
    let (view, charge) = inbox
        .view(&entry.id)
        .await
        .map_err(ApiError::storage)?
        .ok_or_else(ApiError::not_found)?;
    if !html {
        let text = view.text.clone();
        let response = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text);
        return Ok(budget::hold(response.into_response(), charge).await);
    }
    if view.html.is_empty() {
        return Err(ApiError::not_found());
    }
    let flag = |name: &str| params.get(name).map(String::as_str) == Some("1");
    let (embed, remote) = (flag("embed"), flag("images"));
    let base = format!("/api/v1/message/{}/part/", entry.id);
    let body = tokio::task::spawn_blocking(move || render(&view, &base, embed))
        .await
        .unwrap_or_default();
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let origin = sources(&headers, ["http", "https"]);
    if let Ok(value) = HeaderValue::from_str(&message_policy(&origin, remote)) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    Ok(budget::hold(response, charge).await)
}

/// The policy of a message's HTML: sandboxed (no scripts, no forms, an opaque origin; links may
/// open a tab that is not sandboxed), and nothing loaded from elsewhere unless `remote`. `origin`
/// is the inbox's, as CSP sources.
pub fn message_policy(origin: &str, remote: bool) -> String {
    let (images, styles, fonts) = match remote {
        true => ("* data:", "* 'unsafe-inline'", "* data:"),
        false => ("data:", "'unsafe-inline'", "data:"),
    };
    format!(
        "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; \
         img-src {origin} {images}; style-src {styles}; font-src {fonts}; \
         form-action 'none'; base-uri 'none'; frame-ancestors {origin}"
    )
}

/// The HTML to serve: inline parts pointed at the API; with `embed`, every link opens a new tab
/// without access to this one.
fn render(view: &View, part_base: &str, embed: bool) -> String {
    let mut html = view.html.clone();
    for part in view.inline.iter().chain(&view.attachments) {
        if part.content_id.is_empty() {
            continue;
        }
        let url = format!("{part_base}{}", part.part_id);
        html = replace_ignoring_case(&html, &format!("cid:{}", part.content_id), &url);
    }
    if embed {
        html = open_links_in_new_tabs(&html);
    }
    html
}

fn replace_ignoring_case(haystack: &str, needle: &str, with: &str) -> String {
    let lower = haystack.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(haystack.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(&needle) {
        out.push_str(&haystack[at..at + found]);
        out.push_str(with);
        at += found + needle.len();
    }
    out.push_str(&haystack[at..]);
    out
}

/// Adds `target` and `rel` right after the tag name of every `<a` and `<area`: HTML parsers
/// keep the first of two equal attributes, so the message's own `target`/`rel` cannot undo it.
fn open_links_in_new_tabs(html: &str) -> String {
    const ADDED: &str = " target=\"_blank\" rel=\"noopener noreferrer\"";
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut out = String::with_capacity(html.len() + 64);
    let mut at = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find('<') {
        let tag = search + found + 1;
        search = tag;
        let name_len = ["area", "a"]
            .into_iter()
            .find(|name| {
                lower[tag..].starts_with(name)
                    && bytes
                        .get(tag + name.len())
                        .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
            })
            .map(str::len);
        if let Some(len) = name_len {
            out.push_str(&html[at..tag + len]);
            out.push_str(ADDED);
            at = tag + len;
        }
    }
    out.push_str(&html[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::mime::Attachment;

    #[test]
    fn links_open_in_new_tabs_whatever_they_say() {
        let html = "<p><A HREF=x target=_self>a</A><abbr>b</abbr><area href=y><a\nhref=z></p>";
        let out = open_links_in_new_tabs(html);
        assert_eq!(
            out,
            "<p><A target=\"_blank\" rel=\"noopener noreferrer\" HREF=x target=_self>a</A>\
             <abbr>b</abbr><area target=\"_blank\" rel=\"noopener noreferrer\" href=y>\
             <a target=\"_blank\" rel=\"noopener noreferrer\"\nhref=z></p>"
        );
        assert_eq!(open_links_in_new_tabs("x < y <a"), "x < y <a");
    }

    #[test]
    fn inline_parts_point_at_the_api() {
        let view = View {
            html: "<img src=\"CID:Logo@x\"><img src=\"cid:other\">".into(),
            inline: vec![Attachment {
                part_id: "3".into(),
                file_name: String::new(),
                content_type: "image/png".into(),
                content_id: "logo@x".into(),
                size: 1,
            }],
            ..View::default()
        };
        let out = render(&view, "/api/v1/message/m/part/", false);
        assert_eq!(
            out,
            "<img src=\"/api/v1/message/m/part/3\"><img src=\"cid:other\">"
        );
    }

    #[test]
    fn remote_content_is_blocked_unless_asked_for() {
        let blocked = message_policy("http://127.0.0.1:9925", false);
        assert!(blocked.starts_with("sandbox allow-popups allow-popups-to-escape-sandbox;"));
        assert!(blocked.contains("img-src http://127.0.0.1:9925 data:;"));
        assert!(!blocked.contains("allow-scripts") && !blocked.contains("allow-same-origin"));
        assert!(message_policy("http://h", true).contains("img-src http://h * data:"));
    }
}
