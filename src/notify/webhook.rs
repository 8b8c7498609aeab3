//! Sending events to the operator's webhooks, signed per Standard Webhooks, without ever holding
//! up mail.
//!
//! [`Notifier::event`] is synchronous and never waits: it serialises the event once and offers it
//! to each endpoint that wants its kind through a bounded channel. One worker per endpoint sends
//! its events in order, each with a per-request timeout and a bounded number of attempts with
//! the project's backoff, then logs it as given up. A receiver that is slow or down fills its
//! channel; further events for it are dropped, counted (`smtp2gmail_webhook_events{outcome=
//! "dropped"}`) and logged once per episode, so memory stays bounded whatever the receiver does.
//!
//! Logs name an endpoint by its number and origin (`webhook 1 (https://hooks.example.com)`):
//! webhook URLs often carry a token in their path, and the signing secret is never logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use super::event::{Event, EventKind};
use super::signature::{KeyError, SigningKey, webhook_headers};
use crate::config::{NotifyConfig, WebhookConfig};

/// How events are delivered. [`WebhookDelivery::default`] is what the server uses; tests
/// shorten it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Events waiting per endpoint; more are dropped (and counted) until the receiver catches up.
    pub capacity: usize,
    /// One request's time limit, answer included (Standard Webhooks suggests receivers get 15 to
    /// 30 seconds).
    pub timeout: Duration,
    /// Attempts per event, the first included.
    pub attempts: u32,
    /// The wait after the first failed attempt, doubled after each further one (±20 %).
    pub retry_min: Duration,
    /// The longest wait between attempts, also for a receiver's `Retry-After`.
    pub retry_max: Duration,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        // 5 attempts over about a minute of backoff (5 s, 10 s, 20 s, 40 s, as the start of the
        // spec's schedule): a receiver restarting is waited for; one that is down for longer
        // is the operator's to see in the log and the metric, not the queue's to buffer.
        WebhookDelivery {
            capacity: 1000,
            timeout: Duration::from_secs(15),
            attempts: 5,
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// What became of the events offered, over all endpoints (one event sent to two endpoints counts
/// twice). Read through [`Notifier::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Answered 2xx.
    pub sent: u64,
    /// Given up: every attempt failed, or the receiver answered 410 Gone.
    pub failed: u64,
    /// Never attempted: the endpoint's channel was full, or the server was stopping.
    pub dropped: u64,
    /// Requests made.
    pub attempts: u64,
}

/// One configured webhook: where events go, which ones, and the key they are signed with.
#[derive(Clone)]
pub struct Endpoint {
    url: Url,
    events: Vec<EventKind>,
    key: SigningKey,
    /// For logs: its number and origin, never the path (it may hold a token) nor the secret.
    label: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The label, not the URL: its path may hold a token.
        f.debug_struct("Endpoint")
            .field("label", &self.label)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Why the notifier cannot start. Config loading reports the webhook problems, with the file and
/// line; these are for a secret that changed (`env:`, `file:`) since.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// The HTTP client could not be built (the TLS setup failed).
    #[error("cannot build the HTTP client for webhooks: {0}")]
    HttpClient(reqwest::Error),
    /// The URL is not an http(s) URL.
    #[error("notify.webhooks[{index}].url is not an http:// or https:// URL")]
    Url {
        /// The 1-based number of the webhook.
        index: usize,
    },
    /// The secret is unusable.
    #[error("notify.webhooks[{index}].secret {source}")]
    Secret {
        /// The 1-based number of the webhook.
        index: usize,
        /// Why.
        source: KeyError,
    },
}

impl Endpoint {
    /// An endpoint; `number` (1-based) names it in logs with the URL's origin.
    pub fn new(number: usize, url: Url, events: Vec<EventKind>, key: SigningKey) -> Endpoint {
        let label = format!("webhook {number} ({})", url.origin().ascii_serialization());
        Endpoint {
            url,
            events,
            key,
            label,
        }
    }

    /// The endpoint `[[notify.webhooks]]` entry `number` (1-based) describes, its secret read
    /// now.
    pub fn from_config(number: usize, config: &WebhookConfig) -> Result<Endpoint, NotifierError> {
        let url = config
            .parsed_url()
            .ok_or(NotifierError::Url { index: number })?;
        let key =
            SigningKey::from_config(&config.secret).map_err(|source| NotifierError::Secret {
                index: number,
                source,
            })?;
        Ok(Endpoint::new(number, url, config.events.clone(), key))
    }
}

/// One event on its way to one endpoint.
#[derive(Debug, Clone)]
struct Job {
    /// The `webhook-id`: the same for every attempt and every endpoint, so receivers can
    /// deduplicate.
    id: Arc<str>,
    kind: EventKind,
    /// The JSON, shared by every endpoint.
    body: Bytes,
}

/// The sending side of one endpoint's channel.
#[derive(Debug)]
struct Outbox {
    label: String,
    events: Vec<EventKind>,
    jobs: mpsc::Sender<Job>,
    /// Events dropped since the channel was last found full: the warning is logged when this
    /// leaves zero, the all-clear when an event is taken again.
    dropping: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    outboxes: Vec<Outbox>,
    stats: watch::Sender<WebhookStats>,
}

/// The handle the queue emits events through. Cheap to clone; without webhooks
/// ([`Notifier::off`]) every call does nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

impl Notifier {
    /// A notifier without webhooks.
    pub fn off() -> Notifier {
        Notifier::default()
    }

    /// The notifier of `[notify]`: its webhooks (secrets read now) with the default delivery,
    /// workers on `tasks` until `shutdown`; [`Notifier::off`] when there are none.
    pub fn from_config(
        config: &NotifyConfig,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Notifier, NotifierError> {
        let endpoints = config
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, webhook)| Endpoint::from_config(i + 1, webhook))
            .collect::<Result<Vec<_>, _>>()?;
        Notifier::start(endpoints, WebhookDelivery::default(), tasks, shutdown)
    }

    /// Starts one worker per endpoint on `tasks` (an error only if the HTTP client cannot be
    /// built); they stop when `shutdown` is cancelled (events not yet sent are then dropped and
    /// counted: a stopping server does not wait on receivers).
    pub fn start(
        endpoints: Vec<Endpoint>,
        delivery: WebhookDelivery,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Notifier, NotifierError> {
        if endpoints.is_empty() {
            return Ok(Notifier::off());
        }
        let stats = watch::Sender::new(WebhookStats::default());
        let http = reqwest::Client::builder()
            .timeout(delivery.timeout)
            .connect_timeout(delivery.timeout)
            // Standard Webhooks: a redirect is a failure (the URL should be updated), and
            // following one would send the signed event somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(NotifierError::HttpClient)?;
        let capacity = delivery.capacity.max(1);
        let mut outboxes = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let (sender, receiver) = mpsc::channel(capacity);
            outboxes.push(Outbox {
                label: endpoint.label.clone(),
                events: endpoint.events.clone(),
                jobs: sender,
                dropping: AtomicU64::new(0),
            });
            let worker = Worker {
                endpoint,
                http: http.clone(),
                delivery: delivery.clone(),
                stats: stats.clone(),
            };
            tasks.spawn(worker.run(receiver, shutdown.clone()));
        }
        Ok(Notifier {
            inner: Some(Arc::new(Inner { outboxes, stats })),
        })
    }

    /// True when an endpoint wants events of `kind` (so that the caller need not build one
    /// nobody receives).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.outboxes.iter().any(|o| o.events.contains(&kind)))
    }

    /// Offers `event` to every endpoint that wants its kind. Never blocks and never fails: an
    /// event an endpoint has no room for is dropped and counted.
    pub fn event(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        let kind = event.kind();
        let mut wanted = inner.outboxes.iter().filter(|o| o.events.contains(&kind));
        let Some(first) = wanted.next() else {
            return;
        };
        let job = Job {
            id: new_event_id().into(),
            kind,
            body: Bytes::from(event.to_json()),
        };
        for outbox in std::iter::once(first).chain(wanted) {
            outbox.offer(job.clone(), &inner.stats);
        }
    }

    /// What became of the events so far; `changed()`/`wait_for` on it wait for more.
    pub fn stats(&self) -> watch::Receiver<WebhookStats> {
        match &self.inner {
            Some(inner) => inner.stats.subscribe(),
            None => watch::channel(WebhookStats::default()).1,
        }
    }
}

impl Outbox {
    fn offer(&self, job: Job, stats: &watch::Sender<WebhookStats>) {
        let kind = job.kind;
        match self.jobs.try_send(job) {
            Ok(()) => {
                let dropped = self.dropping.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::info!(
                        webhook = %self.label,
                        dropped,
                        "webhook takes events again; events were dropped while its queue was full"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.dropping.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        webhook = %self.label,
                        capacity = self.jobs.max_capacity(),
                        "webhook queue full (the receiver is slow or down): new events for it are \
                         dropped until it catches up"
                    );
                }
                dropped(stats, kind, 1);
            }
            // The worker stopped: the server is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => dropped(stats, kind, 1),
        }
    }
}

/// Counts `count` events of `kind` dropped.
fn dropped(stats: &watch::Sender<WebhookStats>, kind: EventKind, count: u64) {
    for _ in 0..count {
        crate::telemetry::webhook_event(kind.as_str(), "dropped");
    }
    stats.send_modify(|s| s.dropped += count);
}

/// A fresh `webhook-id`: time-ordered and random like queue ids, and without a `.` (the spec
/// forbids one: the id is followed by a `.` in what is signed).
fn new_event_id() -> String {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("evt_{millis:011x}{:016x}", fastrand::u64(..))
}

/// Why one attempt failed.
enum AttemptError {
    /// 410 Gone: the receiver wants no more events (Standard Webhooks); not retried.
    Gone,
    /// Anything else: retried, after the receiver's `Retry-After` if it gave one.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Sends one endpoint's events, one at a time, in order.
struct Worker {
    endpoint: Endpoint,
    http: reqwest::Client,
    delivery: WebhookDelivery,
    stats: watch::Sender<WebhookStats>,
}

impl Worker {
    async fn run(self, mut jobs: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        loop {
            let job = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    dropped(&self.stats, job.kind, 1);
                    break;
                }
                outcome = self.deliver(&job) => self.record(&job, outcome),
            }
        }
        jobs.close();
        let mut left = 0;
        while let Ok(job) = jobs.try_recv() {
            dropped(&self.stats, job.kind, 1);
            left += 1;
        }
        if left > 0 {
            tracing::warn!(
                webhook = %self.endpoint.label,
                left,
                "stopping: webhook events not sent"
            );
        }
    }

    /// Sends `job` until it is answered 2xx or the attempts are spent: `Ok(attempts)` or the
    /// attempts made and the last reason.
    async fn deliver(&self, job: &Job) -> Result<u32, (u32, String)> {
        let mut last = String::new();
        for attempt in 1..=self.delivery.attempts.max(1) {
            self.stats.send_modify(|s| s.attempts += 1);
            match self.attempt(job).await {
                Ok(()) => return Ok(attempt),
                Err(AttemptError::Gone) => {
                    return Err((
                        attempt,
                        "answered 410 Gone (it wants no more events)".into(),
                    ));
                }
                Err(AttemptError::Retry {
                    reason,
                    retry_after,
                }) => {
                    tracing::debug!(
                        webhook = %self.endpoint.label,
                        event = %job.id,
                        attempt,
                        "webhook attempt failed: {reason}"
                    );
                    last = reason;
                    if attempt < self.delivery.attempts {
                        let backoff = crate::backoff::with_jitter(
                            self.delivery.retry_min,
                            self.delivery.retry_max,
                            attempt,
                        );
                        let wait = retry_after.map_or(backoff, |w| w.min(self.delivery.retry_max));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err((self.delivery.attempts, last))
    }

    /// One signed POST.
    async fn attempt(&self, job: &Job) -> Result<(), AttemptError> {
        let mut request = self
            .http
            .post(self.endpoint.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("smtp2gmail/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in webhook_headers(Some(&self.endpoint.key), &job.id, &job.body) {
            request = request.header(name, value);
        }
        let response =
            request
                .body(job.body.clone())
                .send()
                .await
                .map_err(|err| AttemptError::Retry {
                    reason: self.describe(err),
                    retry_after: None,
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::GONE {
            return Err(AttemptError::Gone);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(AttemptError::Retry {
            reason: format!("answered {status}"),
            retry_after,
        })
    }

    /// A failed request in words, without its URL (which may hold a token).
    fn describe(&self, err: reqwest::Error) -> String {
        if err.is_timeout() {
            return format!("no answer within {:?}", self.delivery.timeout);
        }
        let err = err.without_url();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    }

    fn record(&self, job: &Job, outcome: Result<u32, (u32, String)>) {
        let kind = job.kind.as_str();
        match outcome {
            Ok(attempts) => {
                crate::telemetry::webhook_event(kind, "sent");
                self.stats.send_modify(|s| s.sent += 1);
                tracing::debug!(
                    webhook = %self.endpoint.label,
                    event = %job.id,
                    r#type = kind,
                    attempts,
                    "webhook event sent"
                );
            }
            Err((attempts, reason)) => {
                crate::telemetry::webhook_event(kind, "failed");
                self.stats.send_modify(|s| s.failed += 1);
                tracing::warn!(
                    webhook = %self.endpoint.label,
                    event = %job.id,
                    r#type = kind,
                    attempts,
                    "webhook event not delivered, given up: {reason}"
                );
            }
        }
    }
}
