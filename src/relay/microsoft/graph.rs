//! Microsoft Graph's `sendMail` with the MIME bytes, and the classification of every answer
//! Graph gives (microsoft.md, "Errors").
//!
//! `POST {graph_base}/v1.0/users/{mailbox}/sendMail` (an app's token; `/v1.0/me/sendMail` with a
//! user's own), `Content-Type: text/plain`, the body the base64 of the message. Graph answers 202 with no body and no message id: the receipt's id is
//! the `client-request-id` we send (Graph echoes it, and Microsoft support finds a request by it).
//! Errors are read by `error.code`, never by the message, except "maximum request length", which
//! has no code of its own.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::relay::Cause;
use crate::relay::gmail::api::{Answer, SendError, Sent};
use crate::relay::gmail::upload::Upload;

const BASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds of request timeout per mebibyte, as for Gmail's uploads.
const SECONDS_PER_MIB: u64 = 2;

/// Graph's sendMail over the shared HTTP client.
#[derive(Debug, Clone)]
pub struct GraphApi {
    http: reqwest::Client,
    base: String,
    base_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The size of the request Graph gets for a message of `len` bytes: its base64.
pub fn request_len(len: u64) -> u64 {
    len.div_ceil(3) * 4
}

/// The largest message whose request fits in `request_limit` bytes.
pub fn largest_message(request_limit: u64) -> u64 {
    request_limit / 4 * 3
}

impl GraphApi {
    /// Graph at `base` (e.g. `https://graph.microsoft.com`).
    pub fn new(http: reqwest::Client, base: &str) -> GraphApi {
        GraphApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            base_timeout: BASE_TIMEOUT,
        }
    }

    /// The same API with another base timeout (tests of hung requests).
    pub fn with_timeout(mut self, base_timeout: Duration) -> Self {
        self.base_timeout = base_timeout;
        self
    }

    /// Sends `upload` through `mailbox` with the app's `access_token`, or with `None` through
    /// the signed-in user's own mailbox (`/me`, a delegated token).
    pub async fn send_mail(
        &self,
        mailbox: Option<&str>,
        access_token: &str,
        upload: &Upload,
    ) -> Result<Sent, SendError> {
        let bytes = upload.to_vec().await.map_err(|err| SendError::Temporary {
            reason: format!("cannot read the message: {err}"),
            retry_after: None,
            cause: Cause::Outage,
        })?;
        let body = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url = self.send_url(mailbox)?;
        let request_id = guid();
        let timeout = self.base_timeout
            + Duration::from_secs(SECONDS_PER_MIB * (body.len() as u64).div_ceil(1 << 20));
        let response = self
            .http
            .post(url)
            .bearer_auth(access_token)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .header("client-request-id", &request_id)
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let Answer {
            status,
            retry_after,
            body,
        } = Answer::read("Microsoft Graph", response).await?;
        if (200..300).contains(&status) {
            // 202 and nothing else: accepted for sending, not yet sent; no id to report but ours.
            return Ok(Sent {
                id: request_id,
                thread_id: None,
            });
        }
        Err(classify(status, &body, retry_after))
    }

    fn send_url(&self, mailbox: Option<&str>) -> Result<url::Url, SendError> {
        let broken = || SendError::Configuration {
            reason: format!("microsoft.graph_base {:?} is not a base URL", self.base),
            fix: "correct microsoft.graph_base in the configuration".to_string(),
            mailbox: false,
        };
        let mut url = url::Url::parse(&self.base).map_err(|_| broken())?;
        let user = match mailbox {
            Some(mailbox) => vec!["users", mailbox],
            None => vec!["me"],
        };
        url.path_segments_mut()
            .map_err(|()| broken())?
            .pop_if_empty()
            .push("v1.0")
            .extend(user)
            .push("sendMail");
        Ok(url)
    }
}

/// A random GUID for `client-request-id` (its uniqueness matters, not its secrecy).
pub(crate) fn guid() -> String {
    let (a, b, c, d) = (
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..),
        fastrand::u64(..),
    );
    format!(
        "{a:08x}-{b:04x}-4{:03x}-{:04x}-{:012x}",
        c & 0x0fff,
        (d >> 48) as u16 & 0x3fff | 0x8000,
        d & 0xffff_ffff_ffff
    )
}

/// Classifies a non-2xx answer of sendMail.
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> SendError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let code = detail.code.as_str();
    let said = format!(
        "Microsoft Graph {status} {}: {}",
        if code.is_empty() { "(no code)" } else { code },
        if detail.message.is_empty() {
            format!("HTTP {status}")
        } else {
            detail.message.clone()
        }
    );
    let mailbox_fix = |fix: &str| SendError::Configuration {
        reason: said.clone(),
        fix: fix.to_string(),
        mailbox: true,
    };
    let temporary = |cause| SendError::Temporary {
        reason: said.clone(),
        retry_after,
        cause,
    };
    let too_big = detail.message.contains("maximum request length");
    match (status, code) {
        (401, _) => SendError::Unauthorized(said),
        (_, "ErrorSendAsDenied") => SendError::Permanent {
            status: 403,
            reason: format!(
                "{said} (the mailbox may not send as this From: grant it Send As in Exchange, or \
                 add the address to microsoft.send_as with from_policy = \"reject\" to refuse such \
                 mail at DATA)"
            ),
        },
        (_, "ErrorAccessDenied" | "NoPermissionsInAccessToken" | "AccessDenied") => mailbox_fix(
            "the app may not send through this mailbox: grant the application permission Mail.Send \
             with admin consent, and if access is scoped (RBAC for Applications or an application \
             access policy) add the mailbox to the app's scope; changes take up to an hour; held \
             mail is retried on SIGHUP",
        ),
        (_, "ErrorInvalidUser" | "ResourceNotFound") => mailbox_fix(
            "no such mailbox in the tenant: check the mailbox setting (or the envelope sender when \
             mailbox is empty) and the tenant",
        ),
        (_, "MailboxNotEnabledForRESTAPI") => mailbox_fix(
            "the mailbox has no Exchange Online licence (or is a guest or on-premises mailbox): \
             assign an Exchange Online licence or send through a licensed or shared mailbox",
        ),
        (_, "ErrorQuotaExceeded") => mailbox_fix(
            "the sending mailbox is full (MIME sends are saved in Sent Items): free space or raise \
             its quota",
        ),
        (413, _) | (400, _) if too_big || status == 413 => SendError::Permanent {
            status: 413,
            reason: format!(
                "{said}; lower microsoft.graph_request_limit so that messages this large take the \
                 large_messages path"
            ),
        },
        (_, "ErrorMessageSizeExceeded") => SendError::Permanent {
            status: 413,
            reason: format!("{said} (above the mailbox's send size limit)"),
        },
        (429, _) => temporary(Cause::RateLimit),
        (500..=599, _) => temporary(Cause::Outage),
        _ => SendError::Permanent {
            status,
            reason: said,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": message,
            "innerError": {"request-id": "x", "date": "2026-12-07T00:00:00"}}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn answers_are_classified_by_code() {
        let throttled = classify(
            429,
            &error("ApplicationThrottled", "over its MailboxConcurrency limit."),
            Some(Duration::from_secs(7)),
        );
        assert!(matches!(
            throttled,
            SendError::Temporary { retry_after: Some(d), cause: Cause::RateLimit, .. } if d.as_secs() == 7
        ));
        let denied = classify(403, &error("ErrorSendAsDenied", "x"), None);
        assert!(matches!(denied, SendError::Permanent { status: 403, .. }));
        let access = classify(403, &error("ErrorAccessDenied", "Access is denied."), None);
        assert!(matches!(
            access,
            SendError::Configuration { mailbox: true, .. }
        ));
        let big = classify(
            400,
            &error("", "The maximum request length supported is 4MB."),
            None,
        );
        assert!(matches!(big, SendError::Permanent { status: 413, .. }));
        assert!(matches!(
            classify(503, b"", None),
            SendError::Temporary { .. }
        ));
        assert!(matches!(
            classify(401, b"", None),
            SendError::Unauthorized(_)
        ));
    }

    #[test]
    fn sizes_follow_base64() {
        assert_eq!(request_len(3), 4);
        assert_eq!(request_len(4), 8);
        assert_eq!(request_len(largest_message(4_000_000)), 4_000_000);
    }
}
