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
//!   message through the Gmail relay to the recipients given, and only to them;
//! - the rest of Mailpit's API: [`chaos`] (SMTP failures on demand), [`tags`] and [`tags_api`],
//!   [`send`] (messages posted as JSON, injected through the delivery target), [`webhook`] (each
//!   captured message's summary POSTed), [`retention`] (`inbox.max_age`);
//! - [`auto_release`]: the staging stage after the capture that queues a copy for the
//!   recipients [`rules`] release (`release_matching`, never `release_blocked`).

pub mod api;
pub mod auto_release;
pub mod body;
pub mod budget;
pub mod capture;
pub mod chaos;
pub mod events;
pub mod guard;
pub mod id;
pub mod index;
pub mod mailpit;
pub mod mime;
pub mod release;
pub mod request;
pub mod retention;
pub mod rules;
pub mod search;
pub mod send;
pub mod store;
pub mod tags;
pub mod tags_api;
pub mod web;
pub mod webhook;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelayMode};
use crate::message::{Envelope, Message};
use crate::relay::Deliver;
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
    /// Mailpit's chaos triggers (`inbox.chaos`).
    chaos: chaos::Chaos,
    /// The messages' tags.
    tags: tags::Tags,
    /// `inbox.webhook_url`: where captured messages are told of.
    webhook: Option<webhook::Webhook>,
    /// The delivery target that captures into this inbox (the relay wrapped by
    /// [`capture::Capture`]): where `POST /api/v1/send` hands its messages, as an SMTP session
    /// would. Weak: the target holds the inbox.
    injector: OnceLock<Weak<dyn Deliver>>,
    /// `inbox.max_age`: older messages are deleted by [`retention`].
    max_age: Option<std::time::Duration>,
    /// `smtp.max_message_size`, which bounds what the send API takes too.
    max_message_size: u64,
    /// Console mode: the backlog that captures after the 250; requests wait for it to catch up.
    captures: OnceLock<Arc<crate::relay::backlog::Progress>>,
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
        let plus = config.inbox.tags_plus_addresses;
        let tags = match config.relay.mode {
            RelayMode::File => tags::Tags::dir(&config.file.dir, &store.index(), plus)?,
            _ => tags::Tags::memory(plus),
        };
        let webhook = webhook::Webhook::from_config(&config.inbox, shutdown.clone())
            .map_err(io::Error::other)?;
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
            chaos: chaos::Chaos::new(config.inbox.chaos),
            tags,
            webhook,
            injector: OnceLock::new(),
            max_age: config.inbox_max_age(),
            max_message_size: config.smtp.max_message_size,
            captures: OnceLock::new(),
        }))
    }

    /// `inner` (the console or file relay) wrapped so that what it delivers is captured here.
    pub fn capturing(self: &Arc<Self>, inner: Arc<dyn Deliver>) -> Arc<dyn Deliver> {
        Arc::new(capture::Capture::new(inner, self.clone()))
    }

    /// Where `POST /api/v1/send` injects its messages: the whole delivery target SMTP sessions
    /// use (the capture, and any stage around it such as auto-release), so that a posted message
    /// goes the way one received over SMTP goes. The first target given wins; the assembly gives
    /// the outermost one, after the stages are built.
    pub fn injects_into(&self, target: &Arc<dyn Deliver>) {
        let _ = self.injector.set(Arc::downgrade(target));
    }

    /// The delivery target messages are injected into, while the server runs.
    pub fn injector(&self) -> Option<Arc<dyn Deliver>> {
        self.injector.get().and_then(Weak::upgrade)
    }

    /// File mode: reads the summaries of the messages already in the directory, newest first;
    /// the server runs it in the background, on its task tracker.
    pub fn loading(&self) -> impl Future<Output = ()> + Send + 'static {
        self.store.clone().load_all()
    }

    /// Deletes messages older than `inbox.max_age` until shutdown (ends at once without it); the
    /// server runs it on its task tracker.
    pub fn sweeping(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        retention::run(self.clone())
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
                let tags = self.tags.of(&captured.entry);
                if let Some(webhook) = &self.webhook {
                    webhook.offer(&mailpit::ListItem::new(&captured.entry, tags.clone()));
                }
                self.events.new_message(&captured.entry, tags);
                self.tags.forget(&captured.evicted);
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
        self.tags.forget(&gone);
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

/// The SMTP sessions ask the inbox's chaos triggers whether a step fails on purpose.
impl crate::smtp::faults::Faults for Inbox {
    fn failure(&self, step: crate::smtp::faults::SessionStep) -> Option<u16> {
        self.chaos.fires(step)
    }
}
