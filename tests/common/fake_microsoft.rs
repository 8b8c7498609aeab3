//! An in-process fake of Microsoft's token endpoint and Graph's sendMail on 127.0.0.1, answering
//! with the shapes and codes of the fact sheet (../shared/microsoft.md): the identity platform's
//! `{"error","error_description":"AADSTSnnnn: …","error_codes":[n]}` and Graph's
//! `{"error":{"code","message","innerError"}}`, including the unkind answers: 202 with no id,
//! 413 above the request limit, 429 with `Retry-After`, `ErrorSendAsDenied` for a From the
//! mailbox may not use, `ErrorAccessDenied` for a mailbox outside the app's access policy, and
//! AADSTS7000222 for an expired secret.
//!
//! Like Exchange, it delivers to the addresses in To, Cc and Bcc (there is no envelope) and
//! removes Bcc from the copies it delivers. A user's sign-in (device code, rotating refresh
//! tokens, `/me/sendMail`) is in [`delegated`].

pub mod delegated;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Form, Path, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;

/// The tenant the fake knows. Values are obviously fake on purpose.
pub const TENANT: &str = "fake-tenant.onmicrosoft.com";
/// The app registration's client id.
pub const CLIENT_ID: &str = "00000000-fake-4000-8000-000000000001";
/// The client secret the fake accepts at first.
pub const CLIENT_SECRET: &str = "fake-m365-client-secret";
/// The secret an operator creates after the first one expired.
pub const NEW_CLIENT_SECRET: &str = "fake-m365-client-secret-2";
/// The scope of Graph tokens.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// The scope of tokens for SMTP AUTH.
pub const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";
/// Graph's request limit ("The maximum request length supported is 4MB").
pub const REQUEST_LIMIT: usize = 4 << 20;

/// What the next sendMail requests suffer instead of 202.
#[derive(Debug, Clone)]
pub enum GraphFault {
    /// 429 `ApplicationThrottled` with `Retry-After: seconds`.
    Throttled(u64),
    /// 503 with `Retry-After: seconds`.
    Unavailable(u64),
}

/// One message Graph accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The mailbox in the path.
    pub mailbox: String,
    /// The MIME bytes, decoded from base64.
    pub mime: Vec<u8>,
    /// Every address Exchange delivers it to (To, Cc, Bcc), lowercased, in header order.
    pub recipients: Vec<String>,
    /// The copy a recipient gets: the MIME without its Bcc field.
    pub delivered_copy: Vec<u8>,
}

#[derive(Default)]
struct State {
    accepted_secrets: Vec<String>,
    expired_secrets: Vec<String>,
    certificate_thumbprint: Option<(String, jsonwebtoken::DecodingKey)>,
    /// Access tokens issued, with their scope.
    issued: Vec<(String, String)>,
    token_requests: usize,
    /// Mailboxes the app may send through; `None` = any (no access policy).
    access_policy: Option<HashSet<String>>,
    /// (mailbox, From) pairs with Send As granted; a mailbox may always send as itself.
    send_as: HashSet<(String, String)>,
    faults: VecDeque<GraphFault>,
    requests: usize,
    accepted: Vec<Accepted>,
    count: Option<tokio::sync::watch::Sender<usize>>,
    /// Signed-in users: device codes, refresh tokens, their access tokens.
    users: delegated::Users,
}

/// The fake's handle; the server task ends with the test's runtime.
pub struct FakeMicrosoft {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn aadsts(status: StatusCode, error: &str, code: u64, text: &str) -> Response {
    let description = format!(
        "AADSTS{code}: {text}\r\nTrace ID: 0000 Correlation ID: 1111 Timestamp: 2026-12-07 00:00:00Z"
    );
    let body = json!({"error": error, "error_description": description, "error_codes": [code],
        "timestamp": "2026-12-07 00:00:00Z", "trace_id": "0000", "correlation_id": "1111"});
    (status, Json(body)).into_response()
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message,
        "innerError": {"request-id": "2222", "date": "2026-12-07T00:00:00"}}});
    (status, Json(body)).into_response()
}

async fn token(
    Shared(state): Shared<Arc<Mutex<State>>>,
    Path(tenant): Path<String>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    state.token_requests += 1;
    if tenant != TENANT {
        let text = format!("Tenant '{tenant}' not found.");
        return aadsts(StatusCode::BAD_REQUEST, "invalid_request", 90002, &text);
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("client_id") != CLIENT_ID {
        let text = "Application was not found in the directory.";
        return aadsts(StatusCode::BAD_REQUEST, "unauthorized_client", 700016, text);
    }
    if let Some(answer) = delegated::grant(&mut state, &form) {
        return answer;
    }
    let scope = field("scope");
    let known = [GRAPH_SCOPE, OUTLOOK_SCOPE];
    if !known.contains(&scope) || field("grant_type") != "client_credentials" {
        return aadsts(StatusCode::BAD_REQUEST, "invalid_scope", 70011, "bad scope");
    }
    let secret = field("client_secret");
    let proven = if !secret.is_empty() {
        if state.expired_secrets.iter().any(|s| s == secret) {
            let text =
                format!("The provided client secret keys for app '{CLIENT_ID}' are expired.");
            return aadsts(StatusCode::UNAUTHORIZED, "invalid_client", 7000222, &text);
        }
        state.accepted_secrets.iter().any(|s| s == secret)
    } else {
        let assertion_type = field("client_assertion_type");
        assertion_type == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            && state.verify_assertion(field("client_assertion"))
    };
    if !proven {
        let text = "Invalid client secret provided.";
        return aadsts(StatusCode::UNAUTHORIZED, "invalid_client", 7000215, text);
    }
    let access_token = format!("fake-graph-token-{}", state.issued.len() + 1);
    state.issued.push((access_token.clone(), scope.to_string()));
    Json(
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
        "access_token": access_token}),
    )
    .into_response()
}

impl State {
    fn is_token(&self, token: &str, scope: &str) -> bool {
        self.issued.iter().any(|(t, s)| t == token && s == scope)
    }

    fn verify_assertion(&self, assertion: &str) -> bool {
        let Some((thumbprint, key)) = &self.certificate_thumbprint else {
            return false;
        };
        let Ok(header) = jsonwebtoken::decode_header(assertion) else {
            return false;
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
        validation.set_audience(&[format!("/{TENANT}/oauth2/v2.0/token")]);
        validation.validate_aud = false;
        validation.set_issuer(&[CLIENT_ID]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, key, &validation);
        let Ok(claims) = claims else { return false };
        let claims = claims.claims;
        header.x5t_s256.as_deref() == Some(thumbprint.as_str())
            && claims["sub"] == CLIENT_ID
            && claims["aud"]
                .as_str()
                .is_some_and(|aud| aud.ends_with(&format!("/{TENANT}/oauth2/v2.0/token")))
            && claims["exp"].as_u64().unwrap_or(0) <= claims["nbf"].as_u64().unwrap_or(0) + 600
            && claims["jti"].is_string()
    }
}

async fn send_mail(
    Shared(state): Shared<Arc<Mutex<State>>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    if !state.is_token(bearer(&headers), GRAPH_SCOPE) {
        return invalid_token();
    }
    deliver(&mut state, &mailbox, &headers, &body)
}

/// The bearer token of a request ("" without one).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// 401 for a token Graph does not take here.
fn invalid_token() -> Response {
    let message = "Access token validation failure. Invalid audience.";
    graph_error(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    )
}

/// What sendMail does once the token is accepted for `mailbox`.
fn deliver(state: &mut State, mailbox: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    if body.len() > REQUEST_LIMIT {
        // What Graph answers above its limit: no code of its own.
        let message = "The maximum request length supported is 4MB.";
        return graph_error(StatusCode::PAYLOAD_TOO_LARGE, "", message);
    }
    match state.faults.pop_front() {
        Some(GraphFault::Throttled(seconds)) => {
            let message = "Application is over its MailboxConcurrency limit.";
            let mut response = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                message,
            );
            response.headers_mut().insert("retry-after", seconds.into());
            return response;
        }
        Some(GraphFault::Unavailable(seconds)) => {
            let mut response = graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "busy",
            );
            response.headers_mut().insert("retry-after", seconds.into());
            return response;
        }
        None => {}
    }
    let mailbox = mailbox.to_ascii_lowercase();
    if let Some(policy) = &state.access_policy
        && !policy.contains(&mailbox)
    {
        let message = "Access is denied. Check credentials and try again.";
        return graph_error(StatusCode::FORBIDDEN, "ErrorAccessDenied", message);
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let Ok(mime) = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| ())
        .and_then(|mime| {
            if content_type == Some("text/plain") {
                Ok(mime)
            } else {
                Err(())
            }
        })
    else {
        let message = "Invalid base64 string for MIME content.";
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalidBase64String",
            message,
        );
    };
    let fields = header_fields(&mime);
    let from = fields
        .iter()
        .find(|(name, _)| name == "from")
        .map(|(_, v)| addresses(v));
    let from = from
        .and_then(|a| a.into_iter().next())
        .unwrap_or_else(|| mailbox.clone());
    if from != mailbox && !state.send_as.contains(&(mailbox.clone(), from.clone())) {
        let message = "The user account which was used to submit this request does not have the \
                       right to send mail on behalf of the specified sending account., Cannot \
                       submit message.";
        return graph_error(StatusCode::FORBIDDEN, "ErrorSendAsDenied", message);
    }
    let recipients: Vec<String> = fields
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "to" | "cc" | "bcc"))
        .flat_map(|(_, value)| addresses(value))
        .collect();
    if recipients.is_empty() {
        let message = "At least one recipient is required, but none were found.";
        return graph_error(StatusCode::BAD_REQUEST, "ErrorInvalidRecipients", message);
    }
    let delivered_copy = without_bcc(&mime);
    state.accepted.push(Accepted {
        mailbox,
        mime,
        recipients,
        delivered_copy,
    });
    let count = state.accepted.len();
    if let Some(sender) = &state.count {
        sender.send_replace(count);
    }
    // Accepted for sending: no body, no id.
    StatusCode::ACCEPTED.into_response()
}

/// The header fields of `mime`, unfolded: (lowercase name, value).
fn header_fields(mime: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(mime);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.to_string()));
        }
    }
    fields
}

/// The addresses of an address list: `<addr>` when present, else the bare entry; lowercased.
fn addresses(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|entry| {
            let entry = entry.trim();
            let address = match (entry.find('<'), entry.rfind('>')) {
                (Some(start), Some(end)) if start < end => &entry[start + 1..end],
                _ => entry,
            };
            (!address.is_empty()).then(|| address.trim().to_ascii_lowercase())
        })
        .collect()
}

/// `mime` without its Bcc field (and its continuation lines), as Exchange delivers it.
fn without_bcc(mime: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(mime);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if !skipping {
                kept.push(line);
            }
            continue;
        }
        skipping = line.to_ascii_lowercase().starts_with("bcc:");
        if !skipping {
            kept.push(line);
        }
    }
    format!("{}\r\n\r\n{body}", kept.join("\r\n")).into_bytes()
}

impl FakeMicrosoft {
    /// Starts the fake on an ephemeral loopback port, accepting [`CLIENT_SECRET`].
    pub async fn start() -> FakeMicrosoft {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            accepted_secrets: vec![CLIENT_SECRET.to_string()],
            ..State::default()
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/users/{mailbox}/sendMail", post(send_mail))
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(delegated::device_code),
            )
            .route("/v1.0/me/sendMail", post(delegated::send_mail_as_user))
            // Above Graph's own limit, so that the fake answers 413 itself.
            .layer(axum::extract::DefaultBodyLimit::max(REQUEST_LIMIT * 4))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeMicrosoft { addr, state }
    }

    /// `http://127.0.0.1:PORT`: both `graph_base` and `login_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The current secret expires (AADSTS7000222); [`NEW_CLIENT_SECRET`] is the one that works.
    pub fn expire_secret(&self) {
        let mut state = self.state();
        let expired =
            std::mem::replace(&mut state.accepted_secrets, vec![NEW_CLIENT_SECRET.into()]);
        state.expired_secrets.extend(expired);
    }

    /// Trusts assertions signed by the key of the certificate whose DER SHA-256 is `thumbprint`
    /// (base64url), verified with `public_key_pem`.
    pub fn trust_certificate(&self, thumbprint: &str, public_key_pem: &[u8]) {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem).unwrap();
        self.state().certificate_thumbprint = Some((thumbprint.to_string(), key));
    }

    /// Restricts the app to these mailboxes (an access policy / RBAC scope).
    pub fn restrict_to(&self, mailboxes: &[&str]) {
        self.state().access_policy = Some(mailboxes.iter().map(|m| m.to_string()).collect());
    }

    /// Grants `mailbox` Send As for `from`.
    pub fn grant_send_as(&self, mailbox: &str, from: &str) {
        self.state().send_as.insert((mailbox.into(), from.into()));
    }

    /// The next sendMail requests get these faults, in order.
    pub fn fail_sends(&self, faults: impl IntoIterator<Item = GraphFault>) {
        self.state().faults.extend(faults);
    }

    /// True when `token` was issued for `scope` (the fake SMTP server checks XOAUTH2 with it).
    pub fn is_token(&self, token: &str, scope: &str) -> bool {
        self.state().is_token(token, scope)
    }

    /// Token requests so far.
    pub fn token_requests(&self) -> usize {
        self.state().token_requests
    }

    /// sendMail requests so far, accepted or not.
    pub fn send_requests(&self) -> usize {
        self.state().requests
    }

    /// What Graph accepted, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.state().accepted.clone()
    }

    /// Waits (up to the tests' bound) until Graph has accepted `n` messages.
    pub async fn wait_for_accepted(&self, n: usize) {
        let mut count = {
            let mut state = self.state();
            let accepted = state.accepted.len();
            let sender = state
                .count
                .get_or_insert_with(|| tokio::sync::watch::channel(0).0);
            sender.send_replace(accepted);
            sender.subscribe()
        };
        let waited = tokio::time::timeout(super::WAIT, count.wait_for(|&c| c >= n)).await;
        assert!(
            waited.is_ok(),
            "expected {n} accepted, have {}",
            self.accepted().len()
        );
    }

    /// A `[microsoft]` table for this fake with the client secret read from `secret_file`,
    /// sending through `mailbox`, quick enough for tests (no per-minute pacing to speak of).
    pub fn config(
        &self,
        secret_file: &std::path::Path,
        mailbox: &str,
    ) -> smtp2gmail::config::MicrosoftConfig {
        std::fs::write(secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        smtp2gmail::config::MicrosoftConfig {
            tenant: Some(TENANT.into()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(format!("file:{}", secret_file.display())),
            mailbox: Some(mailbox.into()),
            graph_base: self.base_url(),
            login_base: self.base_url(),
            max_messages_per_minute: Some(60_000),
            large_messages: smtp2gmail::config::LargeMessages::None,
            ..Default::default()
        }
    }
}
