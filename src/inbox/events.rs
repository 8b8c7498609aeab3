//! Live updates: a WebSocket at `/api/events`, where Mailpit serves its own, with Mailpit's
//! messages (`{"Type": "new", "Data": {…MessageSummary…}}`, `delete`, `update`, `truncate`,
//! `stats`). The web inbox listens there; so can any tool written for Mailpit's.
//!
//! A WebSocket is not covered by the browser's same-origin rules: any page could open one to
//! 127.0.0.1. The request guard refuses foreign `Origin`s before the upgrade (see `guard`).

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Inbox;
use super::index::Entry;
use super::mailpit::ListItem;
use std::sync::Arc;

/// How many events a slow listener may fall behind before it is disconnected (it reconnects
/// and reloads).
const BACKLOG: usize = 1024;
/// How long one event may take to reach a listener before it is disconnected.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sending side, shared by everything that changes the inbox.
pub struct Events {
    sender: broadcast::Sender<Arc<str>>,
    shutdown: CancellationToken,
    /// The listeners' tasks. An upgraded connection leaves the HTTP server's graceful shutdown,
    /// so the server waits for these itself: else it could exit before a page hears the close.
    listeners: TaskTracker,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Notification<T> {
    r#type: &'static str,
    data: T,
}

impl Events {
    /// Events that end when `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Events {
        Events {
            sender: broadcast::channel(BACKLOG).0,
            shutdown,
            listeners: TaskTracker::new(),
        }
    }

    /// The server's shutdown, for the inbox's own background work.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits, once `shutdown` has fired, until every listener has been sent its close frame.
    pub async fn closed(&self) {
        self.shutdown.cancelled().await;
        self.listeners.close();
        self.listeners.wait().await;
    }

    fn send<T: Serialize>(&self, kind: &'static str, data: T) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let notification = Notification { r#type: kind, data };
        if let Ok(text) = serde_json::to_string(&notification) {
            let _ = self.sender.send(text.into());
        }
    }

    /// A message arrived, with its tags.
    pub fn new_message(&self, entry: &Entry, tags: Vec<String>) {
        self.send("new", ListItem::new(entry, tags));
    }

    /// A message was deleted.
    pub fn deleted(&self, id: &str) {
        self.send("delete", json!({ "ID": id }));
    }

    /// Every message was deleted.
    pub fn truncated(&self) {
        self.send("truncate", json!({}));
    }

    /// A message was marked read or unread.
    pub fn updated(&self, id: &str, read: bool) {
        self.send("update", json!({ "ID": id, "Read": read }));
    }

    /// A message's tags were set.
    pub fn tags_updated(&self, id: &str, tags: &[String]) {
        self.send("update", json!({ "ID": id, "Tags": tags }));
    }

    /// A tag was renamed or deleted: listeners reload what they show (Mailpit's `prune`).
    pub fn pruned(&self) {
        self.send("prune", serde_json::Value::Null);
    }

    /// The totals changed.
    pub fn stats(&self, total: usize, unread: usize) {
        self.send(
            "stats",
            json!({ "Total": total, "Unread": unread, "Version": env!("CARGO_PKG_VERSION") }),
        );
    }
}

/// `GET /api/events`: upgrades to a WebSocket that receives every event from now on.
pub async fn upgrade(State(inbox): State<Arc<Inbox>>, ws: WebSocketUpgrade) -> Response {
    let receiver = inbox.events.sender.subscribe();
    let shutdown = inbox.events.shutdown.clone();
    let listeners = inbox.events.listeners.clone();
    ws.on_upgrade(move |socket| listeners.track_future(forward(socket, receiver, shutdown)))
}

async fn forward(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<Arc<str>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Ok(text) => {
                    // A page that stops reading must not hold this task (and its backlog) for ever.
                    let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.as_ref().into())));
                    if !matches!(sent.await, Ok(Ok(()))) {
                        return;
                    }
                }
                // Fell behind: close, so that the page reconnects and reloads its list.
                Err(_) => break,
            },
            incoming = socket.recv() => match incoming {
                // Pings are answered by the library; anything else from the page is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
