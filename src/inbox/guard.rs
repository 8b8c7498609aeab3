//! What keeps the inbox to its owner. Captured mail may hold password-reset links, and release
//! sends mail through the Gmail account, so:
//!
//! - **DNS rebinding**: the `Host` header must be an IP literal, `localhost` (or a name under
//!   `.localhost`), or one of `inbox.allowed_hosts`. A page on `evil.example` whose name later
//!   resolves to 127.0.0.1 sends `Host: evil.example` and is refused.
//! - **Cross-site requests**: a request with an `Origin` must come from the inbox's own origin
//!   (this also covers the WebSocket, which browsers open to any origin); a request with a body
//!   must be `application/json`, which a form cannot send and a script on another site can only
//!   send after a CORS preflight that is never granted. The one `GET` that changes something
//!   (Mailpit's: opening a message marks it read) is refused to other sites' pages, which send
//!   no `Origin` on `GET` but say where they come from in `Sec-Fetch-Site` ([`from_another_site`]).
//! - **Other sites' reads**: a `GET` another site's page makes (`<img>`, a no-cors `fetch`)
//!   carries no `Origin` but `Sec-Fetch-Site: cross-site` (or `same-site`), and is refused
//!   unless it follows a link; every answer says `Cross-Origin-Resource-Policy: same-origin`.
//! - **Other machines**: when the inbox can be reached from the network, or `inbox.auth_required`
//!   asks for it (see [`Config::inbox_needs_auth`]), every request needs HTTP Basic credentials of
//!   one of `[[smtp.users]]`; the server refuses to start without users. Without it a loopback
//!   inbox answers whoever can connect to loopback: every local user, a proxy on the machine.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::Inbox;
use crate::config::Config;
use crate::smtp::auth::Users;

/// Verified `Authorization` values kept at most; past this the cache starts again (each check
/// costs an argon2 hash, tens of milliseconds).
const VERIFIED_CACHE: usize = 256;

/// The request checks of one inbox.
pub struct Guard {
    allowed_hosts: Vec<String>,
    auth: Option<Auth>,
}

struct Auth {
    users: Users,
    verified: Mutex<HashSet<String>>,
}

/// Why the inbox's guard cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The users whose passwords protect the inbox cannot be loaded.
    #[error("smtp.users: {0}")]
    Users(#[from] crate::smtp::auth::AuthError),
}

impl Guard {
    /// The checks the configuration asks for.
    pub fn from_config(config: &Config) -> Result<Guard, GuardError> {
        let auth = match config.inbox_needs_auth() {
            false => None,
            true => Some(Auth {
                users: Users::new(&config.smtp.users)?,
                verified: Mutex::default(),
            }),
        };
        Ok(Guard {
            allowed_hosts: config
                .inbox
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            auth,
        })
    }

    /// Whether requests need a password.
    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed_hosts.contains(&name)
    }

    async fn authenticated(&self, headers: &HeaderMap, peer: IpAddr) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if auth.verified().contains(value) {
            return true;
        }
        let Some((name, password)) = basic_credentials(value) else {
            return false;
        };
        if auth.users.verify(peer, &name, password).await.is_none() {
            return false;
        }
        let mut verified = auth.verified();
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(value.to_string());
        true
    }
}

impl Auth {
    fn verified(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `host`, `host:port`, `[v6]:port` → the lowercase name or address without port or brackets.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// The user and password of an `Authorization: Basic …` value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a request made with `scheme` to
/// `host` (the `Host` header): the same scheme, host and port, a missing port being the
/// scheme's default. `null` (sandboxed frames, files) is never the inbox.
fn same_origin(origin: &str, scheme: &str, host: &str) -> bool {
    let (Ok(origin), Ok(inbox)) = (
        url::Url::parse(origin),
        url::Url::parse(&format!("{scheme}://{}", host.trim())),
    ) else {
        return false;
    };
    // The parser lowercases schemes and names and drops default ports on both sides alike.
    origin.scheme() == inbox.scheme()
        && origin.host().is_some()
        && origin.host() == inbox.host()
        && origin.port_or_known_default() == inbox.port_or_known_default()
}

/// The scheme the browser used: `http` (the inbox speaks no TLS), or what a TLS proxy in front
/// says in `X-Forwarded-Proto`. A page cannot make a browser send that header to another origin
/// (it is not CORS-safelisted: a preflight, never granted).
fn request_scheme(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "https")
        .unwrap_or_else(|| "http".to_string())
}

/// A request a page on another site made the browser send (an `<img>`, a no-cors `fetch`
/// through some loopback name), rather than a link followed to the inbox. Such requests carry no
/// `Origin` on `GET`.
fn loaded_by_another_site(headers: &HeaderMap) -> bool {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let followed_link =
        value("sec-fetch-mode") == "navigate" && value("sec-fetch-dest") == "document";
    from_another_site(headers) && !followed_link
}

/// Whether a browser says the request comes from a page that is not the inbox's: `Sec-Fetch-Site`
/// other than `same-origin` or `none` (typed in, a bookmark). An `<img src>` on another site
/// sends `cross-site` and no `Origin`; another port of localhost is `same-site`, another origin
/// all the same. Clients other than browsers (curl, Mailpit's client libraries) send no
/// `Sec-Fetch-Site`, and are not from another site.
pub fn from_another_site(headers: &HeaderMap) -> bool {
    headers.get("sec-fetch-site").is_some_and(|site| {
        let site = site.to_str().unwrap_or_default().trim();
        !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none")
    })
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// The middleware in front of every inbox route.
pub async fn check(
    State(inbox): State<Arc<Inbox>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let guard = &inbox.guard;
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !guard.host_allowed(&host) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "the inbox does not answer to the host name {:?}: use localhost or 127.0.0.1, \
                 or add the name to inbox.allowed_hosts",
                host_name(&host)
            ),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !same_origin(
            origin.to_str().unwrap_or_default(),
            &request_scheme(headers),
            &host,
        )
    {
        return refuse(StatusCode::FORBIDDEN, "cross-origin requests are refused");
    }
    if loaded_by_another_site(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "requests from other sites are refused",
        );
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && has_body(headers) && !is_json(headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request bodies must be JSON (Content-Type: application/json)",
        );
    }
    if !guard.authenticated(headers, peer.ip()).await {
        let mut response = refuse(StatusCode::UNAUTHORIZED, "authentication required");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"smtp2gmail inbox\", charset=\"UTF-8\""),
        );
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Mail is for the inbox's own page: no other origin may embed an answer (an image, a
    // script), which could leak its size or, without site isolation, its bytes.
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str]) -> Guard {
        Guard {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            auth: None,
        }
    }

    #[test]
    fn host_names() {
        let g = guard(&["inbox.test"]);
        for ok in [
            "127.0.0.1:9925",
            "localhost:9925",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:9925",
            "10.1.2.3",
            "inbox.test:80",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:9925",
            "",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let same = |origin, host| same_origin(origin, "http", host);
        assert!(same("http://127.0.0.1:9925", "127.0.0.1:9925"));
        assert!(same("http://localhost", "localhost:80"));
        assert!(same("http://localhost:80", "localhost"));
        assert!(same("http://LocalHost:9925", "localhost:9925"));
        assert!(same("http://[::1]:9925", "[::1]:9925"));
        assert!(!same("http://evil.example", "127.0.0.1:9925"));
        assert!(!same("http://127.0.0.1:8000", "127.0.0.1:9925"));
        assert!(!same("null", "127.0.0.1:9925"));
        // The scheme counts: another server's https page is another origin, port or not.
        assert!(!same("https://127.0.0.1:9925", "127.0.0.1:9925"));
        assert!(!same("https://localhost", "localhost"));
        assert!(!same("https://localhost:443", "localhost:443"));
        // Behind a TLS proxy that says so.
        assert!(same_origin("https://inbox.test", "https", "inbox.test"));
        assert!(!same_origin("http://inbox.test", "https", "inbox.test"));
    }

    #[test]
    fn the_scheme_is_http_unless_a_proxy_says_https() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_scheme(&headers), "http");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS, http"));
        assert_eq!(request_scheme(&headers), "https");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        assert_eq!(request_scheme(&headers), "http");
    }

    #[test]
    fn other_sites_by_fetch_metadata() {
        let site = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert("sec-fetch-site", HeaderValue::from_str(value).unwrap());
            }
            from_another_site(&headers)
        };
        assert!(site(Some("cross-site")) && site(Some("same-site")) && site(Some("bogus")));
        assert!(!site(None) && !site(Some("same-origin")) && !site(Some("none")));
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("app:pa:ss")
        );
        assert_eq!(
            basic_credentials(&value),
            Some(("app".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }
}
