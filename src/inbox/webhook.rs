//! The webhook on new mail (`inbox.webhook_url`, Mailpit's `--webhook-url`): each captured
//! message's summary — the list item of `GET /api/v1/messages`, as Mailpit sends it — is POSTed
//! as JSON, signed as the queue's webhooks are when `inbox.webhook_secret` is set (Standard
//! Webhooks; `webhook-id` is `msg_<id>`, so a receiver can tell a message it has seen).
//!
//! Capture never waits for it: summaries go through a bounded channel to one sender task, which
//! sends at most [`PER_SECOND`] requests a second, each once, with a time limit. When the
//! receiver is slower than the mail, the channel fills and further summaries are dropped, counted
//! (`smtp2gmail_webhook_events{type="inbox.new",outcome="dropped"}`) and logged once per
//! episode. (Mailpit sends at most one a second and silently skips the rest.) Logs name the
//! receiver by its origin only (a URL path often holds a token); no body is logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::mailpit::ListItem;
use crate::config::InboxConfig;
use crate::notify::signature::{KeyError, SigningKey, webhook_headers};

/// Requests per second at most.
pub const PER_SECOND: u32 = 5;
/// Summaries waiting at most; more are dropped.
const CAPACITY: usize = 1000;
/// One request's time limit, answer included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The metric's event type.
const KIND: &str = "inbox.new";

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `inbox.webhook_url` is not an http(s) URL.
    #[error("inbox.webhook_url is not an http:// or https:// URL")]
    Url,
    /// `inbox.webhook_secret` is unusable.
    #[error("inbox.webhook_secret {0}")]
    Secret(#[from] KeyError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client of the inbox webhook: {0}")]
    Client(#[from] reqwest::Error),
}

/// The sending side: [`Webhook::offer`] never waits.
pub struct Webhook {
    summaries: mpsc::Sender<(String, Bytes)>,
    /// Summaries dropped since the channel was last found full.
    dropping: AtomicU64,
    label: String,
}

impl Webhook {
    /// The webhook `inbox.webhook_url` asks for (`None` without one), its sender running until
    /// `shutdown`.
    pub fn from_config(
        config: &InboxConfig,
        shutdown: CancellationToken,
    ) -> Result<Option<Webhook>, WebhookError> {
        let url = config.webhook_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        let url = Url::parse(url).map_err(|_| WebhookError::Url)?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(WebhookError::Url);
        }
        let secret = config.webhook_secret.trim();
        let key = match secret.is_empty() {
            true => None,
            false => Some(SigningKey::from_config(secret)?),
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            // A redirect would send the summary somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let label = format!("inbox webhook ({})", url.origin().ascii_serialization());
        let (summaries, receiver) = mpsc::channel(CAPACITY);
        let sender = Sender {
            url,
            key,
            http,
            label: label.clone(),
        };
        tokio::spawn(sender.run(receiver, shutdown));
        Ok(Some(Webhook {
            summaries,
            dropping: AtomicU64::new(0),
            label,
        }))
    }

    /// Queues `item` for sending; drops it (counted, logged once per episode) when the queue is
    /// full.
    pub fn offer(&self, item: &ListItem) {
        let Ok(json) = serde_json::to_vec(item) else {
            return;
        };
        let id = format!("msg_{}", item.id());
        match self.summaries.try_send((id, Bytes::from(json))) {
            Ok(()) => {
                let dropped = self.dropping.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::info!(webhook = %self.label, dropped, "the inbox webhook takes summaries again");
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.dropping.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        webhook = %self.label,
                        capacity = CAPACITY,
                        "the inbox webhook's queue is full (the receiver is slow or down): \
                         summaries of new mail are dropped until it catches up"
                    );
                }
                crate::telemetry::webhook_event(KIND, "dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                crate::telemetry::webhook_event(KIND, "dropped")
            }
        }
    }
}

/// Sends the summaries, paced.
struct Sender {
    url: Url,
    key: Option<SigningKey>,
    http: reqwest::Client,
    label: String,
}

impl Sender {
    async fn run(
        self,
        mut summaries: mpsc::Receiver<(String, Bytes)>,
        shutdown: CancellationToken,
    ) {
        let mut pace = tokio::time::interval(Duration::from_secs(1) / PER_SECOND);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (id, body) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                next = summaries.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = pace.tick() => {}
            }
            let outcome = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                outcome = self.post(&id, body) => outcome,
            };
            match outcome {
                Ok(()) => crate::telemetry::webhook_event(KIND, "sent"),
                Err(reason) => {
                    crate::telemetry::webhook_event(KIND, "failed");
                    tracing::warn!(webhook = %self.label, event = %id, "inbox webhook not delivered: {reason}");
                }
            }
        }
    }

    async fn post(&self, id: &str, body: Bytes) -> Result<(), String> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("smtp2gmail/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in webhook_headers(self.key.as_ref(), id, &body) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|err| {
            match err.is_timeout() {
                true => format!("no answer within {TIMEOUT:?}"),
                // Without the URL, which may hold a token.
                false => err.without_url().to_string(),
            }
        })?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(format!("answered {status}")),
        }
    }
}
