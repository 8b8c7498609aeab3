//! Real local HTTP receivers for webhook events (axum on 127.0.0.1:0), and the independent check
//! of their signatures (tests/notify/verify_webhooks.py, Python's standard library).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{WAIT, python};

/// An obviously fake secret: 32 bytes of 0x2a.
pub const SECRET: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// What a receiver got: the headers that matter and the exact body.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// An HTTP receiver that answers with the statuses it is given, then 200.
pub struct Receiver {
    pub url: url::Url,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub count: watch::Receiver<usize>,
}

#[derive(Clone)]
struct ReceiverState {
    answers: Arc<Mutex<VecDeque<StatusCode>>>,
    received: Arc<Mutex<Vec<Received>>>,
    count: Arc<watch::Sender<usize>>,
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.received.lock().unwrap().push(Received {
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    state.count.send_modify(|n| *n += 1);
    let next = state.answers.lock().unwrap().pop_front();
    next.unwrap_or(StatusCode::OK)
}

/// A receiver at `http://127.0.0.1:PORT/hooks/secret-token` answering `answers`, then 200.
pub async fn receiver(answers: &[u16]) -> Receiver {
    let received = Arc::new(Mutex::new(Vec::new()));
    let (count, count_rx) = watch::channel(0);
    let state = ReceiverState {
        answers: Arc::new(Mutex::new(
            answers
                .iter()
                .map(|&s| StatusCode::from_u16(s).unwrap())
                .collect(),
        )),
        received: received.clone(),
        count: Arc::new(count),
    };
    let app = Router::new()
        .route("/hooks/secret-token", post(receive))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{address}/hooks/secret-token")
            .parse()
            .unwrap(),
        received,
        count: count_rx,
    }
}

impl Receiver {
    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The events received so far (their JSON bodies), in order.
    pub fn events(&self) -> Vec<Value> {
        self.requests().iter().map(Received::json).collect()
    }

    /// Waits until an event for which `wanted` holds has arrived; returns it.
    pub async fn wait_for_event(
        &self,
        what: &str,
        mut wanted: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut count = self.count.clone();
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(event) = self.events().into_iter().find(&mut wanted) {
                    return event;
                }
                count.changed().await.unwrap();
            }
        });
        match waited.await {
            Ok(event) => event,
            Err(_) => panic!("no {what} event; got {:#?}", self.events()),
        }
    }
}

/// A receiver that accepts connections and never answers; counts them and keeps them open.
pub async fn silent_receiver() -> (SocketAddr, watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (count, count_rx) = watch::channel(0);
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
            count.send_modify(|n| *n += 1);
        }
    });
    (address, count_rx)
}

/// Runs the independent verifier over `requests` signed with [`SECRET`]; returns how many it
/// verified (it fails the test at the first that does not verify).
pub fn python_verifies(requests: &[Received]) -> u64 {
    let requests: Vec<Value> = requests
        .iter()
        .map(|r| {
            let header = |name: &str| r.headers[name].to_str().unwrap().to_string();
            json!({
                "headers": {
                    "webhook-id": header("webhook-id"),
                    "webhook-timestamp": header("webhook-timestamp"),
                    "webhook-signature": header("webhook-signature"),
                },
                "body": r.body,
            })
        })
        .collect();
    let input = json!({"secret": SECRET, "requests": requests}).to_string();
    let output = python::run_script("notify/verify_webhooks.py", input.as_bytes());
    let result: Value = serde_json::from_slice(&output).unwrap();
    result["verified"].as_u64().unwrap()
}
