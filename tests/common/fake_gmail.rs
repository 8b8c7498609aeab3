//! The fake's Gmail send endpoint:
//! `POST /upload/gmail/v1/users/{user}/messages/send?uploadType=media`.
//!
//! It checks what Google checks (a live access token, the media upload type, `message/rfc822`),
//! records every upload with the recipients Gmail would deliver to — the addresses in the To, Cc
//! and Bcc headers, parsed with mail-parser independently of the code under test — and can be told
//! to fail, to be slow, or to revoke tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::fake_google::{FakeGoogle, SharedState};

/// One message Gmail accepted.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The `userId` in the path.
    pub user: String,
    /// The access token it was sent with.
    pub token: String,
    /// The `x-goog-user-project` header: the project the call is billed to.
    pub quota_project: Option<String>,
    /// The raw bytes as uploaded.
    pub body: Vec<u8>,
    /// Lowercased To, Cc and Bcc addresses: who Gmail would deliver to.
    pub recipients: Vec<String>,
    /// The From address, lowercased.
    pub from: Option<String>,
    /// The id the fake answered with.
    pub id: String,
}

/// What the next sends should suffer.
#[derive(Debug, Clone)]
pub enum SendFault {
    /// This status with Google's JSON error envelope.
    Google {
        status: u16,
        reason: &'static str,
        message: String,
    },
    /// This status with a `Retry-After: seconds` header.
    RetryAfter { status: u16, seconds: u64 },
}

impl SendFault {
    /// A Google error with `reason` and a generic message.
    pub fn google(status: u16, reason: &'static str) -> SendFault {
        SendFault::Google {
            status,
            reason,
            message: format!("fake {reason}"),
        }
    }

    /// A Workspace user without Gmail (or with the service turned off), as Google says it.
    pub fn mail_service_not_enabled() -> SendFault {
        SendFault::Google {
            status: 400,
            reason: "failedPrecondition",
            message: "Mail service not enabled".into(),
        }
    }

    /// The transient "Precondition check failed." that client-library users see on 1-2 % of calls.
    pub fn precondition_check_failed() -> SendFault {
        SendFault::Google {
            status: 400,
            reason: "failedPrecondition",
            message: "Precondition check failed.".into(),
        }
    }

    /// The mailbox's sending limit, with the time in the message as Google writes it (which can be
    /// in the past when the clocks disagree).
    pub fn retry_after_in_message(at: std::time::SystemTime) -> SendFault {
        let stamp = time::OffsetDateTime::from(at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        SendFault::Google {
            status: 429,
            reason: "rateLimitExceeded",
            message: format!("User-rate limit exceeded.  Retry after {stamp} (Mail sending)"),
        }
    }
}

/// Google's per-user quota of the project: `sends` per `window` per mailbox (6,000 units a minute =
/// 60 sends for projects created since May 2026).
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub sends: usize,
    pub window: Duration,
}

/// Gmail's upload limit (`maxSize` of messages.send): larger uploads get 413.
pub const UPLOAD_LIMIT: usize = 36_700_160;

/// The endpoint's configuration and records.
#[derive(Default)]
pub struct GmailEndpoint {
    uploads: Vec<Upload>,
    /// Every send request, whatever was answered.
    requests: usize,
    /// User credentials must name a quota project (as for gcloud's own OAuth client).
    quota_project_required: bool,
    faults: VecDeque<SendFault>,
    latency: Duration,
    /// Requests answered 401 because of their token.
    unauthorized: usize,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    /// The number of uploads, for tests that wait for deliveries.
    count: Option<tokio::sync::watch::Sender<usize>>,
    /// Faults for every upload whose From header is this address, until cleared.
    faults_from: HashMap<String, SendFault>,
    /// The per-user quota, and when each mailbox (access token) sent within its window.
    quota: Option<Quota>,
    recent: HashMap<String, VecDeque<std::time::Instant>>,
    /// Uploads refused for the quota.
    over_quota: usize,
    /// While true, sends wait (in progress) until it is false again.
    held: Option<tokio::sync::watch::Sender<bool>>,
}

impl FakeGoogle {
    /// The Gmail API base URL to configure (`gmail.api_base`).
    pub fn api_base(&self) -> String {
        self.base_url()
    }

    /// Every accepted upload, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state().gmail.uploads.clone()
    }

    /// Waits until at least `n` uploads were accepted (bounded by the harness's wait).
    pub async fn wait_for_uploads(&self, n: usize) {
        let mut count = {
            let mut state = self.state();
            let uploads = state.gmail.uploads.len();
            let sender = state
                .gmail
                .count
                .get_or_insert_with(|| tokio::sync::watch::channel(0).0);
            sender.send_replace(uploads);
            sender.subscribe()
        };
        let waited = tokio::time::timeout(super::WAIT, count.wait_for(|&c| c >= n)).await;
        assert!(
            waited.is_ok(),
            "expected {n} uploads, have {}",
            self.uploads().len()
        );
    }

    /// The next sends get these faults, in order.
    pub fn fail_sends(&self, faults: impl IntoIterator<Item = SendFault>) {
        self.state().gmail.faults.extend(faults);
    }

    /// Every upload from `address` (its From header) gets `fault` until [`clear_faults_from`].
    pub fn fail_sends_from(&self, address: &str, fault: SendFault) {
        let mut state = self.state();
        state
            .gmail
            .faults_from
            .insert(address.to_lowercase(), fault);
    }

    /// Uploads from `address` are accepted again.
    pub fn clear_faults_from(&self, address: &str) {
        self.state()
            .gmail
            .faults_from
            .remove(&address.to_lowercase());
    }

    /// Enforces Google's per-user quota: over it, 429 `rateLimitExceeded`.
    pub fn set_quota(&self, quota: Quota) {
        self.state().gmail.quota = Some(quota);
    }

    /// Uploads refused for the per-user quota.
    pub fn over_quota(&self) -> usize {
        self.state().gmail.over_quota
    }

    /// Every send is answered only after `latency` (Gmail takes 100-300 ms).
    pub fn set_send_latency(&self, latency: Duration) {
        self.state().gmail.latency = latency;
    }

    /// From now on sends stay in progress (counted by [`FakeGoogle::most_concurrent_sends`])
    /// until [`FakeGoogle::release_sends`]: a delivery caught in flight for as long as a test
    /// needs.
    pub fn hold_sends(&self) {
        let mut state = self.state();
        let held = state
            .gmail
            .held
            .get_or_insert_with(|| tokio::sync::watch::channel(false).0);
        held.send_replace(true);
    }

    /// Sends held by [`FakeGoogle::hold_sends`] go on, and new ones are not held.
    pub fn release_sends(&self) {
        if let Some(held) = &self.state().gmail.held {
            held.send_replace(false);
        }
    }

    /// Access tokens issued so far stop working: the next send with one gets 401.
    pub fn revoke_access_tokens(&self) {
        self.state().revoke_access_tokens();
    }

    /// From now on a send with a user's access token and no `x-goog-user-project` header gets
    /// Google's 403 for application-default credentials without a quota project.
    pub fn require_quota_project(&self) {
        self.state().gmail.quota_project_required = true;
    }

    /// How many send requests arrived, accepted or not.
    pub fn send_requests(&self) -> usize {
        self.state().gmail.requests
    }

    /// How many sends were refused for their token.
    pub fn unauthorized_sends(&self) -> usize {
        self.state().gmail.unauthorized
    }

    /// The most sends that were in progress at the same time.
    pub fn most_concurrent_sends(&self) -> usize {
        self.state().gmail.most_in_flight.load(Ordering::SeqCst)
    }
}

fn google_error(status: u16, reason: &str, message: &str) -> Response {
    // The canonical status Google puts beside the code.
    let canonical = match (status, reason) {
        (400, "failedPrecondition") => "FAILED_PRECONDITION",
        (400, _) => "INVALID_ARGUMENT",
        (401, _) => "UNAUTHENTICATED",
        (403, _) => "PERMISSION_DENIED",
        (404, _) => "NOT_FOUND",
        (429, _) => "RESOURCE_EXHAUSTED",
        (503, _) => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let domain = if reason == "rateLimitExceeded" {
        "usageLimits"
    } else {
        "global"
    };
    let body = json!({"error": {"code": status, "message": message, "status": canonical,
        "errors": [{"domain": domain, "reason": reason, "message": message}]}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// Google's answer to user credentials of an OAuth client from another project (gcloud's own,
/// project 764086051850) that name no quota project: the reason and status of a disabled API,
/// told apart only by the message.
fn quota_project_missing() -> Response {
    let message = "Your application is authenticating by using local Application Default \
        Credentials. The gmail.googleapis.com API requires a quota project, which is not set by \
        default. To learn how to set your quota project, see \
        https://cloud.google.com/docs/authentication/adc-troubleshooting/user-creds .";
    let body = json!({"error": {
        "code": 403,
        "message": message,
        "errors": [{"message": message, "domain": "usageLimits", "reason": "accessNotConfigured",
            "extendedHelp": "https://console.developers.google.com"}],
        "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
            "metadata": {"service": "gmail.googleapis.com", "consumer": "projects/764086051850"}}],
    }});
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// Lowercased addresses of the To, Cc and Bcc headers, groups expanded, and the From address.
fn header_addresses(raw: &[u8]) -> (Vec<String>, Option<String>) {
    let Some(message) = mail_parser::MessageParser::default().parse_headers(raw) else {
        return (Vec::new(), None);
    };
    let collect = |address: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        address
            .map(|a| {
                a.iter()
                    .filter_map(|addr| addr.address())
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut recipients = collect(message.to());
    recipients.extend(collect(message.cc()));
    recipients.extend(collect(message.bcc()));
    let from = collect(message.from()).into_iter().next();
    (recipients, from)
}

/// The send handler.
pub async fn send(
    Shared(state): Shared<SharedState>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (fault, latency, in_flight, most, held) = {
        let mut state = state.lock().unwrap();
        let gmail = &mut state.gmail;
        gmail.requests += 1;
        (
            gmail.faults.pop_front(),
            gmail.latency,
            gmail.in_flight.clone(),
            gmail.most_in_flight.clone(),
            gmail.held.as_ref().map(|held| held.subscribe()),
        )
    };
    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    most.fetch_max(now, Ordering::SeqCst);
    if let Some(mut held) = held {
        let _ = held.wait_for(|held| !held).await;
    }
    tokio::time::sleep(latency).await;
    in_flight.fetch_sub(1, Ordering::SeqCst);
    match fault {
        Some(SendFault::Google {
            status,
            reason,
            message,
        }) => return google_error(status, reason, &message),
        Some(SendFault::RetryAfter { status, seconds }) => {
            let headers = [(header::RETRY_AFTER, seconds.to_string())];
            return (StatusCode::from_u16(status).unwrap(), headers, "slow down").into_response();
        }
        None => {}
    }
    if query.get("uploadType").map(String::as_str) != Some("media") {
        return google_error(400, "badRequest", "uploadType=media expected");
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("message/rfc822")
    {
        return google_error(400, "badContent", "Media type not supported");
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut state = state.lock().unwrap();
    if !state.is_valid_access_token(&token) {
        state.gmail.unauthorized += 1;
        return google_error(401, "authError", "Invalid Credentials");
    }
    let quota_project = headers
        .get("x-goog-user-project")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if state.gmail.quota_project_required
        && quota_project.is_none()
        && state.is_user_access_token(&token)
    {
        return quota_project_missing();
    }
    if body.len() > UPLOAD_LIMIT {
        return google_error(413, "uploadTooLarge", "Request Entity Too Large");
    }
    let (recipients, from) = header_addresses(&body);
    let from_fault = from
        .as_ref()
        .and_then(|from| state.gmail.faults_from.get(from).cloned());
    if let Some(SendFault::Google {
        status,
        reason,
        message,
    }) = from_fault
    {
        return google_error(status, reason, &message);
    }
    if over_quota(&mut state.gmail, &token) {
        state.gmail.over_quota += 1;
        return google_error(
            429,
            "rateLimitExceeded",
            "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' \
             of service 'gmail.googleapis.com' for consumer 'project_number:0'.",
        );
    }
    if recipients.is_empty() {
        return google_error(400, "invalidArgument", "Invalid To header");
    }
    let id = format!("fake-gmail-{}", state.gmail.uploads.len() + 1);
    state.gmail.uploads.push(Upload {
        user,
        token,
        quota_project,
        body: body.to_vec(),
        recipients,
        from,
        id: id.clone(),
    });
    let count = state.gmail.uploads.len();
    if let Some(sender) = &state.gmail.count {
        sender.send_replace(count);
    }
    axum::Json(json!({"id": id, "threadId": id, "labelIds": ["SENT"]})).into_response()
}

/// Counts a send against the quota of the mailbox `token` stands for; true when over it.
fn over_quota(gmail: &mut GmailEndpoint, token: &str) -> bool {
    let Some(quota) = gmail.quota else {
        return false;
    };
    let now = std::time::Instant::now();
    let recent = gmail.recent.entry(token.to_string()).or_default();
    while recent.front().is_some_and(|t| now - *t > quota.window) {
        recent.pop_front();
    }
    if recent.len() >= quota.sends {
        return true;
    }
    recent.push_back(now);
    false
}

/// `[gmail]` for the fake: a quickstart token.json written into `dir`.
pub fn gmail_config(google: &FakeGoogle, dir: &std::path::Path) -> smtp2gmail::config::GmailConfig {
    let token = super::fake_google::token_json(&google.token_uri());
    smtp2gmail::config::GmailConfig {
        api_base: google.api_base(),
        credentials: Some(super::fake_google::write_json(dir, "token.json", &token)),
        ..Default::default()
    }
}
