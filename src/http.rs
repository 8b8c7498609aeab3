//! The operator's HTTP endpoints: `/healthz` (alive), `/readyz` (able to do its job) and
//! `/metrics` (Prometheus text format); in console and file modes the inbox's routes are served
//! beside them (see [`crate::inbox`]).
//!
//! Readiness means: the SMTP listeners are up (this server only starts after they are bound, and
//! turns unready when shutdown begins), the queue can store mail (a writable spool, a reachable database), and no account's
//! credentials need attention. A 503 says which account and why, with the fix, so a load balancer
//! stops sending mail that would only be held and the operator's probe shows what to do.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::google::CredentialState;
use crate::queue::store::Store;
use crate::relay::gmail::accounts::{Account, Attention};

/// What readiness looks at.
pub struct Readiness {
    /// The Gmail accounts (none outside gmail mode).
    pub accounts: Vec<Arc<Account>>,
    /// The queue's storage, in queue mode.
    pub queue: Option<Arc<dyn Store>>,
    /// Fires when shutdown begins.
    pub shutdown: CancellationToken,
}

impl Readiness {
    /// Every reason not to be ready, as JSON objects.
    fn problems(&self) -> Vec<serde_json::Value> {
        let mut problems = Vec::new();
        if self.shutdown.is_cancelled() {
            problems.push(json!({"problem": "shutting down"}));
        }
        if let Some(problem) = self.queue.as_ref().and_then(|store| store.problem()) {
            problems.push(json!({ "problem": problem }));
        }
        for account in &self.accounts {
            if let CredentialState::NeedsAttention { since, error } = account.tokens.state() {
                problems.push(json!({
                    "account": account.name,
                    "problem": error.problem(),
                    "since": humantime::format_rfc3339_seconds(since).to_string(),
                    "fix": error.fix(),
                }));
            }
            for (mailbox, problem) in account.attention() {
                // One impersonated user without Gmail is that user's problem: it is reported
                // (warnings), but the server stays ready for every other sender.
                if mailbox.is_none() {
                    problems.push(attention_json(account, None, &problem));
                }
            }
        }
        problems
    }

    /// Problems of single mailboxes: reported, but not a reason to be unready.
    fn warnings(&self) -> Vec<serde_json::Value> {
        self.accounts
            .iter()
            .flat_map(|account| {
                account
                    .attention()
                    .into_iter()
                    .filter_map(|(mailbox, problem)| {
                        mailbox.map(|m| attention_json(account, Some(&m), &problem))
                    })
            })
            .collect()
    }
}

fn attention_json(
    account: &Account,
    mailbox: Option<&str>,
    problem: &Attention,
) -> serde_json::Value {
    json!({
        "account": account.name,
        "mailbox": mailbox,
        "problem": problem.reason,
        "since": humantime::format_rfc3339_seconds(problem.since).to_string(),
        "fix": problem.fix,
    })
}

/// Serves the endpoints, and `inbox`'s routes beside them, until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    inbox: Option<Router>,
    shutdown: CancellationToken,
) {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(readiness);
    if let Some(inbox) = inbox {
        app = app.merge(inbox);
    }
    // The inbox's password check slows down addresses that keep failing: it needs the peer.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(err) = served {
        tracing::error!(%err, "the HTTP endpoints failed");
    }
}

impl Readiness {
    /// What `/readyz` answers: `{"ready": …}`, with the problems that make it false and the
    /// warnings that do not.
    pub fn report(&self) -> serde_json::Value {
        let problems = self.problems();
        let warnings = self.warnings();
        let mut body = json!({"ready": problems.is_empty()});
        if !problems.is_empty() {
            body["problems"] = problems.into();
        }
        if !warnings.is_empty() {
            body["warnings"] = warnings.into();
        }
        body
    }
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> Response {
    let body = readiness.report();
    let status = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        crate::telemetry::render(),
    )
        .into_response()
}
