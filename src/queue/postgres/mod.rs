//! The foundations of the queue on PostgreSQL, shared by every replica of a deployment: the
//! connection pool ([`connect`]), the schema and its migrations ([`schema`]), the failures in the
//! operator's terms ([`error`]), and the claim and lease statements ([`lease`]); on top of them
//! the queue's storage itself, [`PgStore`] ([`store`]: the message records; [`chunks`]: their
//! bytes; [`claims`]: what replicas share; [`groups`]: the held transactions of split messages,
//! grouped for every replica; [`listener`]: waking on new mail).
//!
//! The queue's storage on top of these keeps the spool's promises (docs/queue.md): the bytes and
//! the envelope are in a committed transaction before 250; one replica sends a message at a time,
//! under a lease that expires when that replica dies; limits are rows every replica updates.

pub mod chunks;
pub mod claims;
pub mod connect;
pub mod error;
pub mod groups;
pub mod lease;
pub mod listener;
pub mod schema;
pub mod store;

use deadpool_postgres::Pool;

pub use error::{DatabaseError, Step, Target};
pub use schema::Migrated;
pub use store::PgStore;

use crate::config::DatabaseUrl;
use crate::tasks::Tasks;

/// The PostgreSQL schema holding every table of the queue.
pub const SCHEMA: &str = "smtp2gmail";

/// The `LISTEN`/`NOTIFY` channel on which a replica that queued a message wakes the others (the
/// payload is the message's mailbox), so new mail is picked up at once rather than by polling.
pub const NEW_MAIL_CHANNEL: &str = "smtp2gmail_new_mail";

/// Pooled connections used by the queue's statements; `LISTEN` needs a session of its own,
/// and `queue` commands a couple: a small pool, since every replica holds one.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// The queue's database: a pool of connections to the URL of `[queue] url`.
pub struct Database {
    pool: Pool,
    url: DatabaseUrl,
    target: Target,
    /// The last outage seen (for `/readyz`), cleared by the next connection that works.
    outage: std::sync::Mutex<Option<String>>,
    /// Where the connections' drivers and the new-mail listener run; closing them closes every
    /// session.
    tasks: Tasks,
}

impl Database {
    /// A pool for `url` holding at most `pool_size` connections. Nothing is opened yet; see
    /// [`Database::open`]. Its tasks are nobody's to close (a `queue` command, a test).
    pub fn new(url: DatabaseUrl, pool_size: usize) -> Database {
        Database::with_tasks(url, pool_size, Tasks::default())
    }

    /// [`Database::new`] whose connections' drivers and listener run as `tasks`: the server
    /// waits for them at shutdown, and closing them ends every session.
    pub fn with_tasks(url: DatabaseUrl, pool_size: usize, tasks: Tasks) -> Database {
        let pool = connect::pool(&url, pool_size, &tasks);
        let target = Target::of(&url);
        Database {
            pool,
            url,
            target,
            outage: std::sync::Mutex::default(),
            tasks,
        }
    }

    /// Connects (so that a bad URL, password or database fails now, naming the fix) and brings
    /// the schema up to date: what a replica does at start.
    pub async fn open(
        url: DatabaseUrl,
        pool_size: usize,
    ) -> Result<(Database, Migrated), DatabaseError> {
        Database::open_with_tasks(url, pool_size, Tasks::default()).await
    }

    /// [`Database::open`] with its tasks run as `tasks` (see [`Database::with_tasks`]).
    pub async fn open_with_tasks(
        url: DatabaseUrl,
        pool_size: usize,
        tasks: Tasks,
    ) -> Result<(Database, Migrated), DatabaseError> {
        let database = Database::with_tasks(url, pool_size, tasks);
        connect::check(&database.pool, &database.target).await?;
        let migrated = database.migrate().await?;
        Ok((database, migrated))
    }

    /// Creates or migrates the schema ([`schema::migrate`]).
    pub async fn migrate(&self) -> Result<Migrated, DatabaseError> {
        let mut client = self.client().await?;
        schema::migrate(&mut client, &self.target).await
    }

    /// A pooled connection. The pool checks a connection before handing it out, so getting one
    /// means the server answers: it ends a noted outage.
    pub async fn client(&self) -> Result<deadpool_postgres::Client, DatabaseError> {
        let client = connect::client(&self.pool, &self.target).await;
        match &client {
            Ok(_) => *crate::locks::lock(&self.outage) = None,
            Err(err) => self.note(err),
        }
        client
    }

    /// Remembers `err` when it is an outage (unreachable, read-only, shutting down), for
    /// [`Database::outage`].
    pub fn note(&self, err: &DatabaseError) {
        if err.is_outage() {
            *crate::locks::lock(&self.outage) = Some(err.to_string());
        }
    }

    /// The outage seen last, until a connection works again.
    pub fn outage(&self) -> Option<String> {
        crate::locks::lock(&self.outage).clone()
    }

    /// A session of its own listening on [`NEW_MAIL_CHANNEL`] ([`connect::listen`]).
    pub async fn listen_for_new_mail(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
        ),
        DatabaseError,
    > {
        connect::listen(&self.url, &self.target, NEW_MAIL_CHANNEL, &self.tasks).await
    }

    /// Where the database's background work runs (the listener's keeper too).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The URL (its [`DatabaseUrl::redacted`] form is the one to log).
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The server, role and database, for messages.
    pub fn target(&self) -> &Target {
        &self.target
    }
}
