//! Metrics, registered in one place. Code records events through the small functions here and never
//! touches the exporter; `/metrics` renders the registry in the Prometheus text format.
//!
//! Label values are bounded: outcomes and reasons are fixed words, accounts are the configured
//! account names. Addresses never become labels (they are unbounded and personal).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric of the process.
struct Metrics {
    registry: Registry,
    connections_open: Gauge,
    connections: Counter,
    connections_rejected: Family<Labels, Counter>,
    messages_received: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    delivery_seconds: Family<Labels, Histogram>,
    queue_depth: Family<Labels, Gauge>,
    queue_oldest_seconds: Family<Labels, Gauge>,
    dead_letters: Gauge,
    queue_store_up: Gauge,
    token_refreshes: Family<Labels, Counter>,
    auth_failures: Counter,
    sessions_dropped: Family<Labels, Counter>,
    webhook_events: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 10 ms to about 80 s: Gmail answers in 0.1-0.3 s, a 35 MB upload takes tens of seconds.
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
    ])
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("smtp2gmail");
        let m = Metrics {
            registry: Registry::default(),
            connections_open: Gauge::default(),
            connections: Counter::default(),
            connections_rejected: Family::default(),
            messages_received: Family::default(),
            deliveries: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            queue_oldest_seconds: Family::default(),
            dead_letters: Gauge::default(),
            queue_store_up: Gauge::default(),
            token_refreshes: Family::default(),
            auth_failures: Counter::default(),
            sessions_dropped: Family::default(),
            webhook_events: Family::default(),
        };
        registry.register("smtp_connections_open", "SMTP connections open now", m.connections_open.clone());
        registry.register("smtp_connections", "SMTP connections accepted", m.connections.clone());
        registry.register(
            "smtp_connections_rejected",
            "SMTP connections refused at once, by reason",
            m.connections_rejected.clone(),
        );
        registry.register(
            "messages_received",
            "Messages at the end of DATA, by outcome (accepted, temporary, permanent, too_large)",
            m.messages_received.clone(),
        );
        registry.register(
            "deliveries",
            "Gmail delivery attempts by account and outcome (sent, temporary, permanent, credentials)",
            m.deliveries.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "Duration of Gmail delivery attempts, by account",
            m.delivery_seconds.clone(),
        );
        registry.register("queue_depth", "Messages waiting in the queue, by account", m.queue_depth.clone());
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued message, by account",
            m.queue_oldest_seconds.clone(),
        );
        registry.register("queue_dead_letters", "Messages in the dead letters", m.dead_letters.clone());
        registry.register(
            "queue_store_up",
            "1 while the queue's storage (the spool, the shared database) takes mail, else 0",
            m.queue_store_up.clone(),
        );
        registry.register(
            "token_refreshes",
            "Access token requests by account and outcome (ok, temporary, credentials, unknown_user)",
            m.token_refreshes.clone(),
        );
        registry.register("smtp_auth_failures", "Failed SMTP AUTH attempts", m.auth_failures.clone());
        registry.register(
            "smtp_sessions_dropped",
            "SMTP sessions the server closed because of the client, by reason (not_smtp, too_many_errors, auth_failures)",
            m.sessions_dropped.clone(),
        );
        registry.register(
            "webhook_events",
            "Events for [[notify.webhooks]] by type and outcome (sent, failed after every attempt, dropped while a receiver's queue was full)",
            m.webhook_events.clone(),
        );
        Metrics { registry, ..m }
    })
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A connection was accepted and a session started.
pub fn connection_opened() {
    metrics().connections.inc();
    metrics().connections_open.inc();
}

/// A session ended.
pub fn connection_closed() {
    metrics().connections_open.dec();
}

/// A connection was refused at once (`max_connections`, per-IP cap).
pub fn connection_rejected(reason: &'static str) {
    metrics()
        .connections_rejected
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
}

/// A message reached the end of DATA with this outcome.
pub fn message_received(outcome: &'static str) {
    metrics()
        .messages_received
        .get_or_create(&labels(&[("outcome", outcome)]))
        .inc();
}

/// A Gmail delivery attempt ended.
pub fn delivery(account: &str, outcome: &'static str, took: Duration) {
    let m = metrics();
    m.deliveries
        .get_or_create(&labels(&[("account", account), ("outcome", outcome)]))
        .inc();
    m.delivery_seconds
        .get_or_create(&labels(&[("account", account)]))
        .observe(took.as_secs_f64());
}

/// An access token request ended.
pub fn token_refresh(account: &str, outcome: &'static str) {
    metrics()
        .token_refreshes
        .get_or_create(&labels(&[("account", account), ("outcome", outcome)]))
        .inc();
}

/// The queue's size and age for one account, as the scheduler sees it now.
pub fn queue_state(account: &str, depth: usize, oldest: Duration) {
    let m = metrics();
    let account = labels(&[("account", account)]);
    m.queue_depth.get_or_create(&account).set(depth as i64);
    m.queue_oldest_seconds
        .get_or_create(&account)
        .set(oldest.as_secs() as i64);
}

/// How many dead letters there are.
pub fn dead_letters(count: usize) {
    metrics().dead_letters.set(count as i64);
}

/// Whether the queue's storage takes mail now.
pub fn queue_store_up(up: bool) {
    metrics().queue_store_up.set(i64::from(up));
}

/// A failed SMTP AUTH attempt.
pub fn auth_failure() {
    metrics().auth_failures.inc();
}

/// The server closed a session because of what the client sent: a line that is not SMTP (an HTTP
/// request a web page made a browser send), too many errors, too many failed AUTH attempts.
pub fn session_dropped(reason: &'static str) {
    metrics()
        .sessions_dropped
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
}

/// An event for a webhook was sent, given up after its attempts, or dropped (the receiver's
/// queue was full, or the server was stopping).
pub fn webhook_event(kind: &'static str, outcome: &'static str) {
    metrics()
        .webhook_events
        .get_or_create(&labels(&[("type", kind), ("outcome", outcome)]))
        .inc();
}

/// Everything, in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &metrics().registry);
    out
}
