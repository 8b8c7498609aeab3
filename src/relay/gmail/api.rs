//! The Gmail API call that sends a message, and the classification of every answer Google gives.
//!
//! Only the upload endpoint is used (`/upload/gmail/v1/users/{user}/messages/send?uploadType=media`
//! with `Content-Type: message/rfc822`): it takes the raw bytes up to 35 MB, while the JSON endpoint
//! with a base64 `raw` field fails with 413 at a few MB. Errors are classified by HTTP status and
//! `errors[0].reason`, never by message text, except for the "Retry after <time>" hint.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::upload::Upload;
use crate::relay::Cause;

/// Seconds of request timeout granted per mebibyte of message, on top of [`BASE_TIMEOUT`]: a 35 MB
/// upload over a slow uplink must not be cut off, a hung small request must not wait forever.
const SECONDS_PER_MIB: u64 = 2;
const BASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Gmail API as one pooled HTTP client and a base URL.
#[derive(Debug, Clone)]
pub struct GmailApi {
    http: reqwest::Client,
    base: String,
    /// The timeout of a request with an empty body; larger uploads get more.
    base_timeout: Duration,
}

/// What Gmail says about a message it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Sent {
    /// Gmail's message id (not the Message-ID header).
    pub id: String,
    /// Gmail's thread id.
    #[serde(rename = "threadId", default)]
    pub thread_id: Option<String>,
}

/// Why a send failed, in the terms the relay acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// 401: the access token was not accepted; refresh it once and try once more.
    #[error("Gmail rejected the access token: {0}")]
    Unauthorized(String),
    /// Worth trying again later: rate limits, Google-side errors, timeouts, network trouble.
    #[error("{reason}")]
    Temporary {
        /// What happened.
        reason: String,
        /// When Google said to come back, if it did.
        retry_after: Option<Duration>,
        /// Rate limit, outage, or a failed precondition.
        cause: Cause,
    },
    /// The message itself is unacceptable; retrying cannot help.
    #[error("{reason}")]
    Permanent {
        /// The HTTP status.
        status: u16,
        /// Google's explanation.
        reason: String,
    },
    /// 403 `accessNotConfigured` because user credentials of another project's OAuth client
    /// (gcloud's own) name no quota project: the fix is the quota project, not enabling the API.
    #[error("{reason}")]
    NoQuotaProject {
        /// Google's explanation.
        reason: String,
    },
    /// The account or the Cloud project is set up wrongly; a person must fix it.
    #[error("{reason}")]
    Configuration {
        /// Google's explanation.
        reason: String,
        /// What to change.
        fix: String,
        /// True when the problem is the user's mailbox (no Gmail for that user), not the
        /// credentials or the project.
        mailbox: bool,
    },
}

/// Google's JSON error envelope.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
}

impl GmailApi {
    /// The API at `base` (e.g. `https://gmail.googleapis.com`), over a shared HTTP client.
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        GmailApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            base_timeout: BASE_TIMEOUT,
        }
    }

    /// Uploads one message, billed to `quota_project` when the credentials name one.
    pub async fn send(
        &self,
        user_id: &str,
        access_token: &str,
        quota_project: Option<&str>,
        upload: &Upload,
    ) -> Result<Sent, SendError> {
        let len = upload.len();
        let url = self.send_url(user_id)?;
        let timeout =
            self.base_timeout + Duration::from_secs(SECONDS_PER_MIB * len.div_ceil(1 << 20));
        let mut request = self.http.post(url);
        if let Some(project) = quota_project {
            request = request.header("x-goog-user-project", project);
        }
        let response = request
            .bearer_auth(access_token)
            .header(reqwest::header::CONTENT_TYPE, "message/rfc822")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(timeout)
            .body(upload.body())
            .send()
            .await;
        let Answer {
            status,
            retry_after,
            body,
        } = Answer::read("Gmail API", response).await?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|err| SendError::Temporary {
                reason: format!("Gmail answered 200 with an unreadable body ({err}); the message may have been sent"),
                retry_after: None,
                cause: Cause::Outage,
            });
        }
        Err(classify(status, &body, retry_after))
    }

    /// The same API with another base timeout (tests of hung requests use a short one).
    pub fn with_timeout(mut self, base_timeout: Duration) -> Self {
        self.base_timeout = base_timeout;
        self
    }

    fn send_url(&self, user_id: &str) -> Result<url::Url, SendError> {
        let mut url = url::Url::parse(&self.base).map_err(|err| SendError::Configuration {
            reason: format!("gmail.api_base {:?} is not a URL: {err}", self.base),
            fix: "correct gmail.api_base in the configuration".to_string(),
            mailbox: false,
        })?;
        url.path_segments_mut()
            .map_err(|()| SendError::Configuration {
                reason: format!("gmail.api_base {:?} cannot be a base URL", self.base),
                fix: "correct gmail.api_base in the configuration".to_string(),
                mailbox: false,
            })?
            .pop_if_empty()
            .extend([
                "upload", "gmail", "v1", "users", user_id, "messages", "send",
            ]);
        url.set_query(Some("uploadType=media"));
        Ok(url)
    }
}

/// What an API answered: status, `Retry-After` and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: bytes::Bytes,
}

impl Answer {
    /// Reads the answer to a request to `service`; no answer is a temporary failure.
    pub(crate) async fn read(
        service: &str,
        response: reqwest::Result<reqwest::Response>,
    ) -> Result<Answer, SendError> {
        let response = response.map_err(|err| transport_error(service, &err))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after_header);
        let body = response
            .bytes()
            .await
            .map_err(|err| transport_error(service, &err))?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// A request to `service` that got no answer: temporary.
pub(crate) fn transport_error(service: &str, err: &reqwest::Error) -> SendError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    // reqwest errors name the URL, which carries no secret (the token is in a header).
    SendError::Temporary {
        reason: format!("{service} {what}: {err}"),
        retry_after: None,
        cause: Cause::Outage,
    }
}

/// Classifies a non-200 answer from the send endpoint (shared/google.md, "Errors and quotas").
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> SendError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let reason = detail
        .errors
        .first()
        .map(|e| e.reason.as_str())
        .unwrap_or_default();
    let message = if detail.message.is_empty() {
        format!("HTTP {status}")
    } else {
        detail.message.clone()
    };
    let said = format!(
        "Gmail API {status} {}: {message}",
        if reason.is_empty() {
            &detail.status
        } else {
            reason
        }
    );
    // "User-rate limit exceeded. Retry after 2025-06-27T09:00:00.000Z (Mail sending)"
    let retry_after = retry_after.or_else(|| retry_after_in_message(&message));
    let temporary = |cause| SendError::Temporary {
        reason: said.clone(),
        retry_after,
        cause,
    };
    let configuration = |fix: &str| SendError::Configuration {
        reason: said.clone(),
        fix: fix.to_string(),
        mailbox: false,
    };
    match (status, reason) {
        (401, _) => SendError::Unauthorized(said),
        (
            403,
            "userRateLimitExceeded" | "rateLimitExceeded" | "dailyLimitExceeded" | "quotaExceeded",
        ) => temporary(Cause::RateLimit),
        (429, _) => temporary(Cause::RateLimit),
        // The one answer told apart by its text: both are `failedPrecondition`, but only one is
        // a mailbox that does not exist (shared/google.md).
        (400, "failedPrecondition") if message.contains("Mail service not enabled") => {
            SendError::Configuration {
                reason: said,
                fix: "the sending user has no Gmail mailbox: turn Gmail on for that user (Admin \
                      console: Apps > Google Workspace > Gmail > Service status) or send as a \
                      user who has Gmail; the mail is held until then"
                    .to_string(),
                mailbox: true,
            }
        }
        (400, "failedPrecondition") => temporary(Cause::Precondition),
        (403, "accessNotConfigured") if needs_quota_project(&message) => {
            SendError::NoQuotaProject { reason: said }
        }
        (403, "accessNotConfigured") => configuration(
            "enable the Gmail API for the Google Cloud project of this OAuth client \
             (console.cloud.google.com/apis/library/gmail.googleapis.com)",
        ),
        (403, "insufficientPermissions") => {
            configuration("the token lacks the gmail.send scope: run `smtp2gmail authorize` again")
        }
        (403 | 404, _) => configuration(
            "check the account's user_id, its domain policy or delegation, and gmail.api_base",
        ),
        (408 | 500..=599, _) => temporary(Cause::Outage),
        _ => SendError::Permanent {
            status,
            reason: said,
        },
    }
}

/// Google answers a missing quota project with the same reason and status as a disabled API
/// (`accessNotConfigured`, `PERMISSION_DENIED`); only the message tells them apart: "... The
/// gmail.googleapis.com API requires a quota project, which is not set by default. ...".
fn needs_quota_project(message: &str) -> bool {
    message.contains("requires a quota project")
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn parse_retry_after_header(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate_parse(value)?;
    at.duration_since(SystemTime::now()).ok()
}

fn httpdate_parse(value: &str) -> Option<SystemTime> {
    let format = time::format_description::well_known::Rfc2822;
    time::OffsetDateTime::parse(value.trim(), &format)
        .ok()
        .map(SystemTime::from)
}

/// The RFC 3339 time after "Retry after " in Google's message, as a duration from now.
fn retry_after_in_message(message: &str) -> Option<Duration> {
    let rest = &message[message.find("Retry after ")? + "Retry after ".len()..];
    let stamp = rest.split_whitespace().next()?;
    let at =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    // A time already past (clock skew) says nothing: the caller backs off as usual instead of
    // retrying at once, in a loop.
    SystemTime::from(at).duration_since(SystemTime::now()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google_error(code: u16, reason: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": message, "status": "X",
            "errors": [{"domain": "global", "reason": reason, "message": message}]}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn catalogue() {
        let class = |status, reason| classify(status, &google_error(status, reason, "m"), None);
        assert!(matches!(
            class(400, "invalidArgument"),
            SendError::Permanent { status: 400, .. }
        ));
        assert!(matches!(
            class(400, "failedPrecondition"),
            SendError::Temporary {
                cause: Cause::Precondition,
                ..
            }
        ));
        let not_enabled = google_error(400, "failedPrecondition", "Mail service not enabled");
        assert!(matches!(
            classify(400, &not_enabled, None),
            SendError::Configuration { mailbox: true, .. }
        ));
        assert!(matches!(
            class(413, ""),
            SendError::Permanent { status: 413, .. }
        ));
        assert!(matches!(
            class(401, "authError"),
            SendError::Unauthorized(_)
        ));
        assert!(matches!(
            class(403, "rateLimitExceeded"),
            SendError::Temporary {
                cause: Cause::RateLimit,
                ..
            }
        ));
        assert!(matches!(
            class(403, "dailyLimitExceeded"),
            SendError::Temporary {
                cause: Cause::RateLimit,
                ..
            }
        ));
        assert!(matches!(
            class(429, "rateLimitExceeded"),
            SendError::Temporary {
                cause: Cause::RateLimit,
                ..
            }
        ));
        assert!(matches!(
            class(503, "backendError"),
            SendError::Temporary {
                cause: Cause::Outage,
                ..
            }
        ));
        assert!(matches!(class(500, ""), SendError::Temporary { .. }));
        let SendError::Configuration { fix, .. } = class(403, "accessNotConfigured") else {
            panic!()
        };
        assert!(fix.contains("enable the Gmail API"));
        let adc = "Your application is authenticating by using local Application Default \
            Credentials. The gmail.googleapis.com API requires a quota project, which is not set by \
            default. To learn how to set your quota project, see \
            https://cloud.google.com/docs/authentication/adc-troubleshooting/user-creds .";
        let body = google_error(403, "accessNotConfigured", adc);
        assert!(matches!(
            classify(403, &body, None),
            SendError::NoQuotaProject { .. }
        ));
        let SendError::Configuration { fix, .. } = class(403, "insufficientPermissions") else {
            panic!()
        };
        assert!(fix.contains("authorize"));
        assert!(matches!(
            class(403, "forbidden"),
            SendError::Configuration { .. }
        ));
    }

    #[test]
    fn unreadable_error_bodies_still_classify() {
        assert!(matches!(
            classify(502, b"<html>bad gateway</html>", None),
            SendError::Temporary { .. }
        ));
        assert!(matches!(
            classify(400, b"", None),
            SendError::Permanent { .. }
        ));
    }

    #[test]
    fn retry_after_from_header_and_message() {
        assert_eq!(
            parse_retry_after_header("120"),
            Some(Duration::from_secs(120))
        );
        let body = retry_after_body(time::Duration::hours(3));
        let SendError::Temporary {
            retry_after: Some(wait),
            ..
        } = classify(429, &body, None)
        else {
            panic!()
        };
        assert!(wait > Duration::from_secs(2 * 3600) && wait <= Duration::from_secs(3 * 3600));
    }

    /// Google's 429 for the mailbox's sending limit, naming a time `from_now` away.
    fn retry_after_body(from_now: time::Duration) -> Vec<u8> {
        let stamp = (time::OffsetDateTime::now_utc() + from_now)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        google_error(
            429,
            "rateLimitExceeded",
            &format!("User-rate limit exceeded. Retry after {stamp} (Mail sending)"),
        )
    }

    #[test]
    fn retry_after_in_the_past_means_ordinary_backoff() {
        let body = retry_after_body(-time::Duration::minutes(5));
        assert!(matches!(
            classify(429, &body, None),
            SendError::Temporary {
                retry_after: None,
                cause: Cause::RateLimit,
                ..
            }
        ));
    }

    #[test]
    fn upload_url() {
        let api = GmailApi::new(reqwest::Client::new(), "http://127.0.0.1:9/base/");
        assert_eq!(
            api.send_url("me").unwrap().as_str(),
            "http://127.0.0.1:9/base/upload/gmail/v1/users/me/messages/send?uploadType=media"
        );
        assert!(
            api.send_url("a b@example.com")
                .unwrap()
                .as_str()
                .contains("/users/a%20b@example.com/")
        );
    }
}
