//! The web inbox: one page with its script and style, built into the binary (no Node, no build
//! step), and Mailpit's `/view/{ID}.html` and `/view/{ID}.txt`, which the page shows a message's
//! HTML through.
//!
//! Message HTML is hostile: it is served with a Content-Security-Policy whose `sandbox`
//! directive gives it an opaque origin and no scripts even when opened on its own, and the page
//! shows it in an `<iframe sandbox>` as well. Remote content (images, fonts, style sheets) is
//! blocked by the policy unless the page asks with `images=1`; resource hints (`<link
//! rel=preconnect>`, `dns-prefetch`, …), which no policy governs, are disabled in the HTML, and
//! so is `<meta http-equiv>` (a refresh would navigate the frame anywhere). Inline parts
//! (`cid:`) become `data:` URLs. With `embed=1` links open in a new tab with `noopener`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::api::{ApiError, find};
use super::mime::{self, View};
use super::{Inbox, budget};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
/// Tags and the chaos mark: their own file, loaded before `app.js`.
const TAGS_SCRIPT: &str = include_str!("assets/tags.js");
/// The release dialog's remembered address and the auto-release rule: loaded before `app.js`.
const RELEASE_SCRIPT: &str = include_str!("assets/release.js");
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
            "/assets/tags.js",
            get(|| asset("text/javascript; charset=utf-8", TAGS_SCRIPT)),
        )
        .route(
            "/assets/release.js",
            get(|| asset("text/javascript; charset=utf-8", RELEASE_SCRIPT)),
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
    let body = tokio::task::spawn_blocking(move || render(&view, embed, remote))
        .await
        .unwrap_or_default();
    let headers_out = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::HeaderName::from_static("x-dns-prefetch-control"),
            "off",
        ),
    ];
    let mut response = (headers_out, body).into_response();
    let origin = sources(&headers, ["http", "https"]);
    if let Ok(value) = HeaderValue::from_str(&message_policy(&origin, remote)) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    Ok(budget::hold(response, charge).await)
}

/// The policy of a message's HTML: sandboxed (no scripts, no forms, an opaque origin; links may
/// open a tab that is not sandboxed), and nothing loaded from elsewhere unless `remote` — not
/// even from the inbox, whose answers are not for other origins: inline parts are `data:` URLs.
/// `origin` is the inbox's, as CSP sources (the one page that may frame it).
pub fn message_policy(origin: &str, remote: bool) -> String {
    let (images, styles, fonts) = match remote {
        true => ("* data:", "* 'unsafe-inline'", "* data:"),
        false => ("data:", "'unsafe-inline'", "data:"),
    };
    format!(
        "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; \
         img-src {images}; style-src {styles}; font-src {fonts}; \
         form-action 'none'; base-uri 'none'; frame-ancestors {origin}"
    )
}

/// The HTML to serve: `cid:` references replaced by the parts' `data:` URLs, `<meta>` (and,
/// unless `remote`, `<link>`) disabled; with `embed`, every link opens a new tab without access
/// to this one. Each step is one pass over the HTML.
fn render(view: &View, embed: bool, remote: bool) -> String {
    let mut html = inline_parts(&view.html, &view.cid_urls);
    // `http-equiv` first: the message's own (a refresh) is then ignored.
    html = add_attributes(&html, &["meta"], " http-equiv=\"x-disabled\" content=\"\"");
    if !remote {
        // `rel` first: the message's (preconnect, dns-prefetch, prefetch, preload,
        // stylesheet…) is ignored, and the browser fetches nothing for the element.
        html = add_attributes(&html, &["link"], " rel=\"x-disabled\"");
    }
    if embed {
        html = add_attributes(&html, &["area", "a"], LINK_TARGET);
    }
    html
}

/// What every link gets with `embed=1`.
const LINK_TARGET: &str = " target=\"_blank\" rel=\"noopener noreferrer\"";

/// `html` with each `cid:ID` whose ID is in `urls` (by its ASCII lowercase) replaced by its URL.
fn inline_parts(html: &str, urls: &std::collections::HashMap<String, String>) -> String {
    if urls.is_empty() {
        return html.to_string();
    }
    let mut out = String::with_capacity(html.len());
    let mut at = 0;
    for (start, cid) in mime::cid_references(html) {
        if let Some(url) = urls.get(&cid.to_ascii_lowercase()) {
            out.push_str(&html[at..start]);
            out.push_str(url);
            at = start + "cid:".len() + cid.len();
        }
    }
    out.push_str(&html[at..]);
    out
}

/// Adds `attributes` right after the tag name of every element named one of `names`: HTML
/// parsers keep the first of two equal attributes, so the message's own cannot undo them.
fn add_attributes(html: &str, names: &[&str], attributes: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut out = String::with_capacity(html.len() + 64);
    let mut at = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find('<') {
        let tag = search + found + 1;
        search = tag;
        let name_len = names
            .iter()
            .copied()
            .find(|name| {
                lower[tag..].starts_with(name)
                    && bytes
                        .get(tag + name.len())
                        .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
            })
            .map(str::len);
        if let Some(len) = name_len {
            out.push_str(&html[at..tag + len]);
            out.push_str(attributes);
            at = tag + len;
        }
    }
    out.push_str(&html[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_open_in_new_tabs_whatever_they_say() {
        let html = "<p><A HREF=x target=_self>a</A><abbr>b</abbr><area href=y><a\nhref=z></p>";
        let out = add_attributes(html, &["area", "a"], LINK_TARGET);
        assert_eq!(
            out,
            "<p><A target=\"_blank\" rel=\"noopener noreferrer\" HREF=x target=_self>a</A>\
             <abbr>b</abbr><area target=\"_blank\" rel=\"noopener noreferrer\" href=y>\
             <a target=\"_blank\" rel=\"noopener noreferrer\"\nhref=z></p>"
        );
        assert_eq!(
            add_attributes("x < y <a", &["area", "a"], LINK_TARGET),
            "x < y <a"
        );
    }

    #[test]
    fn inline_parts_become_data_urls() {
        let view = View {
            html: "<img src=\"CID:Logo@x\"><img src=\"cid:other\"><p style='background:url(cid:logo@x)'>"
                .into(),
            cid_urls: [("logo@x".to_string(), "data:image/png;base64,AA==".to_string())].into(),
            ..View::default()
        };
        let out = render(&view, false, true);
        assert_eq!(
            out,
            "<img src=\"data:image/png;base64,AA==\"><img src=\"cid:other\">\
             <p style='background:url(data:image/png;base64,AA==)'>"
        );
    }

    #[test]
    fn html_that_fetches_outside_the_policy_is_disabled() {
        let html = "<head><LINK rel=preconnect href=https://t.example/p>\
                    <link\trel=dns-prefetch href=//t.example><link rel=prefetch href=https://t.example>\
                    <meta http-equiv=refresh content=\"0;url=https://t.example\"><linkage>";
        let view = View {
            html: html.into(),
            ..View::default()
        };
        let blocked = render(&view, false, false);
        assert_eq!(
            blocked,
            "<head><LINK rel=\"x-disabled\" rel=preconnect href=https://t.example/p>\
             <link rel=\"x-disabled\"\trel=dns-prefetch href=//t.example>\
             <link rel=\"x-disabled\" rel=prefetch href=https://t.example>\
             <meta http-equiv=\"x-disabled\" content=\"\" http-equiv=refresh \
             content=\"0;url=https://t.example\"><linkage>"
        );
        // Remote content asked for: style sheets may load, a refresh still may not.
        let remote = render(&view, false, true);
        assert!(
            remote.contains("<LINK rel=preconnect")
                && remote.contains("<meta http-equiv=\"x-disabled\"")
        );
    }

    #[test]
    fn many_inline_parts_are_replaced_in_one_pass() {
        // 100,000 parts and references: a scan of the HTML per part (as before) would take
        // 10^10 steps; one pass takes a blink.
        let parts = 100_000;
        let html: String = (0..parts).map(|n| format!("<img src=cid:p{n}>")).collect();
        let cid_urls = (0..parts)
            .map(|n| (format!("p{n}"), format!("data:,{n}")))
            .collect();
        let view = View {
            html,
            cid_urls,
            ..View::default()
        };
        let out = render(&view, false, false);
        assert!(out.starts_with("<img src=data:,0><img src=data:,1>"));
        assert!(out.ends_with("<img src=data:,99999>"));
    }

    #[test]
    fn remote_content_is_blocked_unless_asked_for() {
        let blocked = message_policy("http://127.0.0.1:9925", false);
        assert!(blocked.starts_with("sandbox allow-popups allow-popups-to-escape-sandbox;"));
        assert!(blocked.contains("img-src data:;"));
        assert!(!blocked.contains("allow-scripts") && !blocked.contains("allow-same-origin"));
        assert!(message_policy("http://h", true).contains("img-src * data:"));
    }
}
