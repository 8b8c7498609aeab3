//! The durable queue: the server answers 250 only once a message is on disk, and delivers it in
//! the background with retries — the promise Postfix makes.
//!
//! [`Queue`] is the delivery target the SMTP session sees in queue mode: it applies everything
//! that can refuse a message before 250 (account routing, the recipient and From rules — the same
//! code as synchronous delivery), stores the message with fsync ([`spool`]) and hands it to the
//! [`schedule::Scheduler`], which delivers through the same Gmail code with its own retry schedule.
//! A 250 from the queue means: on disk, and delivered at least once unless an operator deletes it.

pub mod control;
pub mod courier;
pub mod entry;
pub mod postgres;
pub mod schedule;
pub mod shared;
pub mod split;
pub mod spool;
pub mod store;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{QueueBackend, QueueConfig};
use crate::message::headers::Headers;
use crate::message::{Envelope, HEAD_LIMIT, Message};
use crate::relay::{Deliver, DeliveryError, Gmail, Receipt};
use crate::tasks::Tasks;
use entry::{Entry, Place};
use spool::Spool;
use store::Store;

/// The accepting half of the queue.
pub struct Queue {
    store: Arc<dyn Store>,
    gmail: Arc<Gmail>,
    scheduled: mpsc::UnboundedSender<Entry>,
    /// Holds the transactions of messages an MTA split.
    split: split::Intake,
}

impl Queue {
    /// A queue storing into `store`, announcing new entries to the scheduler and holding the
    /// transactions of split messages through `split`.
    pub fn new(
        store: Arc<dyn Store>,
        gmail: Arc<Gmail>,
        scheduled: mpsc::UnboundedSender<Entry>,
        split: split::Intake,
    ) -> Self {
        Queue {
            store,
            gmail,
            scheduled,
            split,
        }
    }
}

#[async_trait::async_trait]
impl Deliver for Queue {
    fn size_limit(&self, max_recipients: usize) -> Option<u64> {
        self.gmail.size_limit(max_recipients)
    }

    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let head = message.head(HEAD_LIMIT).await.map_err(|err| {
            DeliveryError::local(format!("cannot read the message, try again later: {err}"))
        })?;
        // The headers are read once, here, for both the split check and the decision.
        let headers = Headers::read(&head);
        let decide = |for_envelope: &Envelope| {
            let decision = self
                .gmail
                .decide_head(for_envelope, &head, &headers, message.len())?;
            Ok::<_, DeliveryError>(Entry::decided(envelope, message.len(), decision))
        };
        if let Some(part) = self.split.recognise(envelope, &head, &headers) {
            // Refused for what would refuse the merged message; decided again once merged.
            let entry = decide(&part.completed(envelope))?;
            return self.split.hold(part, envelope, message, entry).await;
        }
        // Policy first: a message Gmail mode would refuse is refused now, while the client
        // listens. The decision is stored with the message and delivery follows it.
        let entry = decide(envelope)?;
        if let Err(err) = self.store.put(Place::Queue, &entry, message).await {
            tracing::error!(id = %envelope.id, %err, store = %self.store.describe(), "cannot queue the message");
            return Err(DeliveryError::local(
                "cannot queue the message, try again later",
            ));
        }
        // The scheduler only stops at shutdown; the entry is on disk and resumes at the next start.
        let _ = self.scheduled.send(entry);
        Ok(Receipt {
            id: envelope.id.to_string(),
            queued: true,
        })
    }
}

/// A queue ready to run: the acceptor for the SMTP sessions, the scheduler and the splitter to
/// spawn, and the lock that keeps a second server off the same spool.
pub struct Started {
    /// The delivery target for the SMTP sessions.
    pub acceptor: Arc<Queue>,
    /// The background deliveries; run it until shutdown.
    pub scheduler: Deliveries,
    /// Merges the held transactions of split messages; run it until shutdown.
    pub splitter: split::Splitter,
    /// The queue's storage (for readiness).
    pub store: Arc<dyn Store>,
    /// Where bodies should be spilled while they arrive, so that storing them is a hard link.
    pub spill_dir: Option<std::path::PathBuf>,
    /// The spool's lock, held for as long as the server runs.
    pub lock: Option<std::fs::File>,
}

/// The background deliveries of the queue, by where it is stored.
pub enum Deliveries {
    /// The one server that owns a spool schedules everything in memory.
    Spool(schedule::Scheduler),
    /// One replica of several sharing a database claims messages under leases.
    Shared(shared::SharedScheduler),
}

impl Deliveries {
    /// Runs until `shutdown`, then waits up to `grace` for deliveries in flight.
    pub async fn run(self, shutdown: CancellationToken, grace: std::time::Duration) {
        match self {
            Deliveries::Spool(scheduler) => scheduler.run(shutdown, grace).await,
            Deliveries::Shared(scheduler) => scheduler.run(shutdown, grace).await,
        }
    }
}

/// Why the queue cannot start. The message is for the operator and names the spool.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool directory cannot be created or opened.
    #[error("queue.dir: {0}")]
    Open(#[source] std::io::Error),
    /// Taking the spool's lock failed.
    #[error("cannot lock the spool {}: {source}", dir.display())]
    Lock {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another server holds the lock.
    #[error("another smtp2gmail server is using the spool {}", dir.display())]
    InUse {
        /// The spool directory.
        dir: std::path::PathBuf,
    },
    /// `queue.url` cannot be used.
    #[error("queue.url: {0}")]
    Url(crate::config::UrlError),
    /// The database cannot be used (unreachable, refused, missing a permission); the message
    /// names the server and the fix.
    #[error("the queue's database: {0}")]
    Database(#[from] postgres::DatabaseError),
    /// Cleaning up after a crash failed.
    #[error("cannot recover the spool {}: {source}", dir.display())]
    Recover {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StartError {
    /// A temporary failure (the database unreachable or down) rather than a setting to fix.
    pub fn is_outage(&self) -> bool {
        matches!(self, StartError::Database(err) if err.is_outage())
    }
}

/// Builds the queue's parts on the configured backend: the spool (opened, locked, recovered
/// after a crash) or the database shared by replicas (connected, migrated, listening). The
/// storage's own background work (the database's connections and listener) runs as `storage`;
/// closing it closes the storage, which the server does once nothing uses the queue any more.
pub async fn start(
    config: &QueueConfig,
    gmail: Arc<Gmail>,
    storage: &Tasks,
) -> Result<Started, StartError> {
    match config.backend {
        QueueBackend::Spool => start_spool(config, gmail).await,
        QueueBackend::Postgres => start_shared(config, gmail, storage).await,
    }
}

/// Opens the queue's storage for the `queue` commands: the spool (`None` when nothing was ever
/// queued there) or the database.
pub async fn open_for_commands(config: &QueueConfig) -> Result<Option<Box<dyn Store>>, StartError> {
    match config.backend {
        QueueBackend::Spool => {
            if !config.dir.join("queue").is_dir() {
                return Ok(None);
            }
            let spool = Spool::open(&config.dir).map_err(StartError::Open)?;
            Ok(Some(Box::new(spool)))
        }
        QueueBackend::Postgres => Ok(Some(Box::new(
            open_database(config, Tasks::default()).await?,
        ))),
    }
}

/// Connects to `queue.url` and brings the schema up to date; the connections run as `tasks`.
async fn open_database(
    config: &QueueConfig,
    tasks: Tasks,
) -> Result<postgres::PgStore, StartError> {
    let url = config
        .database_url()
        .map_err(StartError::Url)?
        .ok_or(StartError::Url(crate::config::UrlError::Missing))?;
    let (database, migrated) =
        postgres::Database::open_with_tasks(url, postgres::DEFAULT_POOL_SIZE, tasks).await?;
    tracing::debug!(?migrated, "queue database schema");
    Ok(postgres::PgStore::new(database, config.lease_time))
}

/// One replica of several on the queue in PostgreSQL. The acceptor's announcements are not
/// needed: a committed message wakes every replica through the database (`NOTIFY`).
async fn start_shared(
    config: &QueueConfig,
    gmail: Arc<Gmail>,
    storage: &Tasks,
) -> Result<Started, StartError> {
    let store = Arc::new(open_database(config, storage.clone()).await?);
    store.listen().await?;
    let shared: Arc<dyn shared::SharedStore> = store.clone();
    let store: Arc<dyn Store> = store;
    let (scheduled, _) = mpsc::unbounded_channel();
    // The transactions of a split message may reach different replicas, and the splitter groups
    // them in one process's memory: with replicas each transaction is queued on its own (as with
    // `split_window = "0s"`) until holding is shared too (docs/queue.md).
    if !config.split_window.is_zero() {
        tracing::info!(
            "queue.split_window does not apply to the PostgreSQL queue yet: split transactions are queued on their own"
        );
    }
    let unsplit = QueueConfig {
        split_window: std::time::Duration::ZERO,
        ..config.clone()
    };
    let routing: Arc<dyn split::Routing> = gmail.clone();
    let (intake, splitter) = split::build(&store, &unsplit, routing, scheduled.clone());
    let limits = shared::SharedLimits {
        max_send_rate: config.max_send_rate,
        max_sends: gmail
            .router()
            .accounts()
            .map(|account| (account.name.clone(), account.max_sends))
            .collect(),
    };
    let scheduler = shared::SharedScheduler::new(shared, gmail.clone(), config.clone(), limits);
    Ok(Started {
        acceptor: Arc::new(Queue::new(store.clone(), gmail, scheduled, intake)),
        splitter,
        spill_dir: None,
        store,
        scheduler: Deliveries::Shared(scheduler),
        lock: None,
    })
}

/// The one server on a spool.
async fn start_spool(config: &QueueConfig, gmail: Arc<Gmail>) -> Result<Started, StartError> {
    let dir = || config.dir.clone();
    let spool = Spool::open(&config.dir).map_err(StartError::Open)?;
    let lock = spool::try_lock(spool.root())
        .map_err(|source| StartError::Lock { dir: dir(), source })?
        .ok_or_else(|| StartError::InUse { dir: dir() })?;
    let removed = spool
        .recover()
        .map_err(|source| StartError::Recover { dir: dir(), source })?;
    if removed > 0 {
        tracing::info!(
            removed,
            "removed message bodies whose acceptance never completed (no 250 was sent)"
        );
    }
    let store: Arc<dyn Store> = Arc::new(spool);
    let (scheduled, incoming) = mpsc::unbounded_channel();
    let routing: Arc<dyn split::Routing> = gmail.clone();
    let (intake, splitter) = split::build(&store, config, routing, scheduled.clone());
    Ok(Started {
        acceptor: Arc::new(Queue::new(store.clone(), gmail.clone(), scheduled, intake)),
        splitter,
        spill_dir: store.spill_dir(),
        store: store.clone(),
        scheduler: Deliveries::Spool(
            schedule::Scheduler::new(store, gmail, config.clone(), incoming).await,
        ),
        lock: Some(lock),
    })
}

/// An envelope from app@example.com to someone@example.org received at `received_at`, for the
/// queue's tests.
#[cfg(test)]
fn test_envelope(received_at: std::time::SystemTime) -> Envelope {
    use crate::message::{Address, MessageId};
    Envelope {
        id: MessageId::generate(),
        mail_from: Some(Address::new("app@example.com")),
        rcpt_to: vec![Address::new("someone@example.org")],
        remote: ([127, 0, 0, 1], 40000).into(),
        helo: "client.example".into(),
        auth_user: None,
        received_at,
    }
}
