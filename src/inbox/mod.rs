//! The development inbox: captured mail shown in a web page and through an API compatible with
//! Mailpit's API v1, in console and file modes, with release through Gmail.
//!
//! ```text
//! relay (console/file) ─▶ capture::Capture ─▶ Store (memory ring | file.dir) ─▶ Events (WebSocket)
//!                                                  ▲
//!   http.listen ─▶ guard (Host, Origin, JSON, auth) ─▶ api (Mailpit v1) · web (page, /view) · release
//! ```
//!
//! - [`store`]: the messages and their [`index`], read within the memory [`budget`]; [`mime`]:
//!   what is shown of one (parsed with mail-parser on the blocking pool); [`search`]: Mailpit's
//!   search language;
//! - [`api`] and [`mailpit`]: the endpoints and their JSON; [`web`]: the page and its assets,
//!   built into the binary; [`events`]: the live updates;
//! - [`guard`]: what keeps other web pages and other hosts out; [`release`]: sending a captured
//!   message through the Gmail relay to the recipients given, and only to them.

pub mod api;
pub mod body;
pub mod budget;
pub mod capture;
pub mod events;
pub mod guard;
pub mod id;
pub mod index;
pub mod mailpit;
pub mod mime;
pub mod release;
pub mod request;
pub mod search;
pub mod store;
pub mod web;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelayMode};
use crate::message::{Envelope, Message};
use budget::Charge;
use id::InboxId;
use index::Entry;
use mime::View;
use store::Store;

/// How many parsed messages are kept for the next request about them (the page asks for a
/// message, then its HTML, its headers…); a 35 MiB message is then parsed once, not four times.
const VIEW_CACHE: usize = 4;
/// …and how many bytes of text and HTML they may hold together: the cache is outside the
/// budget, so it has a bound of its own. A view larger than this is not kept.
const VIEW_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The inbox: its store, its events, its release target and its request guard.
pub struct Inbox {
    store: Arc<Store>,
    events: events::Events,
    release: release::Release,
    guard: guard::Guard,
    started: Instant,
    accepted: AtomicU64,
    accepted_bytes: AtomicU64,
    deleted: AtomicU64,
    views: Mutex<Vec<(InboxId, Arc<View>)>>,
    /// Console mode: the backlog that captures after the 250; requests wait for it to catch up.
    captures: std::sync::OnceLock<Arc<crate::relay::backlog::Progress>>,
}

impl Inbox {
    /// The inbox the configuration asks for (call only when [`Config::inbox_active`]), with
    /// the release target and request guard already built.
    pub fn new(
        config: &Config,
        release: release::Release,
        guard: guard::Guard,
        shutdown: CancellationToken,
    ) -> io::Result<Arc<Inbox>> {
        let budget = budget::Budget::new(config.smtp.max_message_size);
        let store = match config.relay.mode {
            RelayMode::File => Store::dir(&config.file.dir, budget)?,
            _ => Store::memory(config.inbox.max_messages, budget)?,
        };
        Ok(Arc::new(Inbox {
            store: Arc::new(store),
            events: events::Events::new(shutdown),
            release,
            guard,
            started: Instant::now(),
            accepted: AtomicU64::new(0),
            accepted_bytes: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            views: Mutex::default(),
            captures: std::sync::OnceLock::new(),
        }))
    }

    /// File mode: reads the summaries of the messages already in the directory, newest first;
    /// the server runs it in the background, on its task tracker.
    pub fn loading(&self) -> impl Future<Output = ()> + Send + 'static {
        self.store.clone().load_all()
    }

    /// Ends, after shutdown, when every live-update listener has been closed; the server tracks it.
    pub fn closing(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let inbox = self.clone();
        async move { inbox.events.closed().await }
    }

    /// Where messages are kept ("memory" or the directory), for the startup line.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Takes a message the relay has just printed or filed. Never fails the delivery: a message
    /// the inbox cannot keep is logged and still delivered.
    pub async fn capture(&self, envelope: &Envelope, message: &Message) {
        match self.store.capture(envelope, message).await {
            Ok(captured) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.accepted_bytes
                    .fetch_add(message.len(), Ordering::Relaxed);
                self.events.new_message(&captured.entry);
                for id in &captured.evicted {
                    self.events.deleted(id);
                }
                self.send_stats();
            }
            Err(err) => {
                tracing::warn!(id = %envelope.id, %err, "the inbox cannot keep this message")
            }
        }
    }

    fn send_stats(&self) {
        let index = self.store.index();
        self.events.stats(index.len(), index.unread());
    }

    /// The id a request names: an id in the inbox, or `latest`.
    pub fn resolve(&self, id: &str) -> Option<InboxId> {
        let index = self.store.index();
        match id {
            "latest" => index.newest().map(|e| e.id.clone()),
            id => index.get(id).map(|e| e.id.clone()),
        }
    }

    /// The entry `id` with its summary loaded.
    pub async fn entry(&self, id: &InboxId) -> Option<Entry> {
        self.store.ensure_loaded(vec![id.clone()]).await;
        self.store.index().get(id).cloned()
    }

    /// The parsed view of message `id`, from the cache or parsed now on the blocking pool,
    /// with a charge of the message's size to hold until the answer made from it is sent.
    pub async fn view(&self, id: &InboxId) -> io::Result<Option<(Arc<View>, Charge)>> {
        let cached = self.cached_views().iter().find(|(k, _)| k == id).cloned();
        if let Some((_, view)) = cached {
            let size = self.store.index().get(id).map_or(0, |e| e.size);
            return Ok(Some((view, self.store.charge(size).await)));
        }
        let Some(loaded) = self.store.load(id).await? else {
            return Ok(None);
        };
        let (raw, charge) = loaded.into_parts();
        let view = tokio::task::spawn_blocking(move || Arc::new(mime::view(&raw)))
            .await
            .map_err(io::Error::other)?;
        let mut cache = self.cached_views();
        cache.retain(|(k, _)| k != id);
        cache.push((id.clone(), view.clone()));
        let mut bytes: usize = cache.iter().map(|(_, v)| v.bytes()).sum();
        while cache.len() > VIEW_CACHE || bytes > VIEW_CACHE_BYTES {
            bytes -= cache.remove(0).1.bytes();
        }
        Ok(Some((view, charge)))
    }

    fn cached_views(&self) -> std::sync::MutexGuard<'_, Vec<(InboxId, Arc<View>)>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes messages, telling the listeners.
    pub async fn delete(&self, ids: Vec<InboxId>) -> io::Result<()> {
        let all = !ids.is_empty() && ids.len() == self.store.index().len();
        let gone = self.store.delete(ids).await?;
        self.deleted.fetch_add(gone.len() as u64, Ordering::Relaxed);
        self.cached_views()
            .retain(|(k, _)| !gone.iter().any(|g| g == k));
        if all && self.store.index().is_empty() {
            self.events.truncated();
        } else {
            for id in &gone {
                self.events.deleted(id);
            }
        }
        self.send_stats();
        Ok(())
    }

    /// Every id in the inbox, newest first.
    pub fn all_ids(&self) -> Vec<InboxId> {
        self.store
            .index()
            .newest_first()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Marks messages read or unread, telling the listeners.
    pub async fn set_read(&self, ids: &[InboxId], read: bool) {
        for id in self.store.set_read(ids, read).await {
            self.events.updated(&id, read);
        }
        self.send_stats();
    }
}

impl Inbox {
    /// Every inbox route, behind the guard, ready to merge into the HTTP server's router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::routes()
            .merge(web::routes())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                capture::caught_up,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard::check,
            ))
            .with_state(self.clone())
    }

    /// Captures arrive through `backlog` after the 250: every request first waits until what
    /// was accepted before it is captured, so mail is in the inbox once its sender has its 250.
    pub fn captures_through(&self, backlog: Arc<crate::relay::backlog::Progress>) {
        let _ = self.captures.set(backlog);
    }

    /// Whether the inbox asks for a password (it is reachable from the network).
    pub fn requires_auth(&self) -> bool {
        self.guard.requires_auth()
    }
}
