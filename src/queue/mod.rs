//! The durable queue: the server answers 250 only once a message is stored, and delivers it in
//! the background with retries — the promise Postfix makes.
//!
//! [`Queue`] is the delivery target the SMTP session sees in queue mode: it applies everything
//! that can refuse a message before 250 (account routing, the recipient and From rules — the same
//! code as synchronous delivery), stores the message ([`store`]) and announces it to the
//! scheduler core ([`schedule`]), which delivers through the same Gmail code with its own retry
//! schedule. A 250 from the queue means: stored, and delivered at least once unless an operator
//! deletes it.
//!
//! [`start`] is the one entry point that runs the queue for a configuration: its store (the
//! spool, or the database shared by replicas), the scheduler core over that backend's state, and
//! the splitter, which [`Started::run`] then runs on the server's tasks. The record every store keeps is
//! [`record`], the queue's leaf module.

pub mod control;
pub mod courier;
pub mod notice;
pub mod postgres;
pub mod record;
pub mod schedule;
pub mod shared;
pub mod split;
pub mod spool;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{QueueBackend, QueueConfig};
use crate::message::headers::Headers;
use crate::message::{Envelope, HEAD_LIMIT, Message};
use crate::relay::{Deliver, DeliveryError, Gmail, Receipt};
use control::ControlError;
use notice::Notices;
use record::{Entry, Place, Request};
use schedule::{Pickup, Scheduler};
use shared::{SharedState, SharedStore};
use spool::Spool;
use store::Store;

use crate::tasks::Tasks;

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
            let entry = Entry::decided(envelope, message.len(), decision.into());
            Ok::<_, DeliveryError>(Entry {
                message_id: headers.message_id.clone(),
                ..entry
            })
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

/// The queue of a server, built and not running yet: what the SMTP sessions and the readiness
/// probe need, and its background work, which [`Started::run`] starts once the server has said
/// it is listening (so that what the tasks log comes after the startup lines).
pub struct Started {
    /// The delivery target for the SMTP sessions.
    pub acceptor: Arc<Queue>,
    /// The queue's storage (for readiness).
    pub store: Arc<dyn Store>,
    /// Where bodies should be spilled while they arrive, so that storing them is a hard link.
    pub spill_dir: Option<std::path::PathBuf>,
    deliveries: Deliveries,
    splitter: split::Task,
    lock: Option<std::fs::File>,
}

/// The scheduler core over the backend's state: the two are different types of one core (boxed:
/// each is large, and only one is ever built).
enum Deliveries {
    /// The one server that owns a spool keeps the state in memory.
    Spool(Box<Scheduler>),
    /// One replica of several sharing a database keeps it there.
    Shared(Box<Scheduler<SharedState>>),
}

impl Started {
    /// Runs the scheduler core and the splitter as `tasks` until they close; the core then lets
    /// deliveries in flight finish within `grace`. Returns the spool's lock, to be held until
    /// every task has ended: it keeps a second server off the spool.
    pub fn run(self, tasks: &Tasks, grace: Duration) -> Option<std::fs::File> {
        let shutdown: CancellationToken = tasks.closing().clone();
        match self.deliveries {
            Deliveries::Spool(core) => tasks.spawn(core.run(shutdown.clone(), grace)),
            Deliveries::Shared(core) => tasks.spawn(core.run(shutdown.clone(), grace)),
        };
        tasks.spawn(self.splitter.run(shutdown));
        self.lock
    }
}

/// Why the queue cannot start. The message is for the operator and names the spool or database.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool cannot be taken (opened, locked, recovered).
    #[error(transparent)]
    Spool(#[from] spool::OpenError),
    /// `queue.url` cannot be used.
    #[error("queue.url: {0}")]
    Url(crate::config::UrlError),
    /// The database cannot be used (unreachable, refused, missing a permission); the message
    /// names the server and the fix.
    #[error("the queue's database: {0}")]
    Database(#[from] postgres::DatabaseError),
}

impl StartError {
    /// A temporary failure (the database unreachable or down) rather than a setting to fix.
    pub fn is_outage(&self) -> bool {
        matches!(self, StartError::Database(err) if err.is_outage())
    }
}

/// Builds the queue on the configured backend: the spool (opened, locked, recovered after a
/// crash) or the database shared by replicas (connected, migrated, listening), the scheduler core
/// over that backend's state, telling what `notices` says, and the splitter, whose dead letters
/// the core tells of too. The storage's own background work (the database's connections and
/// listener) runs as `storage`; closing it closes the storage, which the server does once nothing
/// uses the queue any more.
pub async fn start(
    config: &QueueConfig,
    gmail: Arc<Gmail>,
    notices: Notices,
    storage: &Tasks,
) -> Result<Started, StartError> {
    let (scheduled, incoming) = mpsc::unbounded_channel();
    let (given_up, told) = mpsc::unbounded_channel();
    let routing: Arc<dyn split::Routing> = gmail.clone();
    let (store, deliveries, (intake, splitter), lock): (Arc<dyn Store>, _, _, _) =
        match config.backend {
            QueueBackend::Spool => {
                let (spool, lock) = Spool::open_for_server(&config.dir)?;
                let spool = Arc::new(spool);
                let core = Scheduler::new(spool.clone(), gmail.clone(), config.clone(), incoming)
                    .await
                    .with_commands(spool.clone())
                    .with_notices(notices, told);
                let store: Arc<dyn Store> = spool.clone();
                let announce = (scheduled.clone(), given_up);
                let split = split::in_memory(&store, spool, config, routing, announce);
                (store, Deliveries::Spool(Box::new(core)), split, Some(lock))
            }
            QueueBackend::Postgres => {
                let database = Arc::new(open_database(config, storage.clone()).await?);
                database.listen().await?;
                // Announcements are not needed: a committed message wakes every replica (NOTIFY).
                drop(incoming);
                let state = SharedState::new(database.clone() as Arc<dyn SharedStore>);
                let core = Scheduler::over(state, database.clone(), gmail.clone(), config.clone())
                    .with_notices(notices, told);
                // Held transactions are grouped in the database, so that the parts of one
                // message reaching different replicas are merged all the same; a group given up
                // is released in one database transaction, and the replica that committed it
                // hands the dead letter to its core.
                let split = split::shared(database.clone(), config, routing, given_up);
                (database, Deliveries::Shared(Box::new(core)), split, None)
            }
        };
    Ok(Started {
        acceptor: Arc::new(Queue::new(store.clone(), gmail, scheduled, intake)),
        spill_dir: store.spill_dir(),
        store,
        deliveries,
        splitter,
        lock,
    })
}

/// The queue's storage as the `queue` commands use it: its records, and the way a command
/// reaches whoever carries it out.
pub enum Commands {
    /// The spool: through the running server, or directly under its lock.
    Spool(Spool, QueueConfig),
    /// The database: directly, from any host.
    Database(Arc<postgres::PgStore>),
}

impl Commands {
    /// The records.
    pub fn store(&self) -> &dyn Store {
        match self {
            Commands::Spool(spool, _) => spool,
            Commands::Database(database) => &**database,
        }
    }

    /// Carries out a retry or delete: through the running server when its state is in that
    /// server's memory (the spool), directly otherwise, with the scheduler core's functions.
    pub async fn steer(&self, request: Request) -> Result<String, ControlError> {
        match self {
            Commands::Spool(spool, config) => spool::steer(spool, config, request).await,
            Commands::Database(database) => {
                let mut state = SharedState::new(database.clone());
                let (none, now) = (Default::default(), std::time::SystemTime::now());
                schedule::carry_out(&mut state, &none, &request, Pickup::Now, now).await
            }
        }
    }
}

/// Opens the queue's storage for the `queue` commands: the spool (`None` when nothing was ever
/// queued there) or the database.
pub async fn open_for_commands(config: &QueueConfig) -> Result<Option<Commands>, StartError> {
    match config.backend {
        QueueBackend::Spool => {
            let spool = Spool::open_for_commands(&config.dir).map_err(spool::OpenError::Open)?;
            Ok(spool.map(|spool| Commands::Spool(spool, config.clone())))
        }
        QueueBackend::Postgres => Ok(Some(Commands::Database(Arc::new(
            open_database(config, Tasks::default()).await?,
        )))),
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
