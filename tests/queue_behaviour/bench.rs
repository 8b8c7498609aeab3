//! What a behaviour runs against: a [`Backend`], the fake Google, a temporary directory and, on
//! PostgreSQL, a database of the test's own ([`Bench`]); and the waits that look at the queue
//! through its storage interface ([`Waits`]), never at the spool's files.

use std::time::Duration;

use smtp2gmail::config::{Config, Delivery, QueueBackend, QueueConfig};
use smtp2gmail::queue::record::{Entry, Place};
use smtp2gmail::queue::store::Store;
use smtp2gmail::queue::{Commands, open_for_commands};

use crate::common::fake_google::FakeGoogle;
use crate::common::postgres::TestDatabase;
use crate::common::process::ServerProcess;
use crate::common::serving::{gmail_mode, queue_command, queue_config, write_config};
use crate::common::{TestServer, WAIT};

/// Where the queue keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The file spool of one server (`MemoryState` in the core).
    Spool,
    /// A database shared by replicas (`SharedState` in the core), on the test binary's private
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// How many servers share the queue where replicas matter (the transactions of one split
    /// message reaching different servers): a spool belongs to one server; the database is
    /// shared by two replicas here.
    pub fn servers(self) -> usize {
        match self {
            Backend::Spool => 1,
            Backend::Postgres => 2,
        }
    }

    /// When `queue retry --all` run with no server sends the mail (`schedule::Pickup`): the
    /// spool's at the server's next start (its state is the server's memory); the database's
    /// replicas at once, since every replica (and none) reads the same tables.
    pub fn retried_without_a_server(self, count: usize) -> String {
        match self {
            Backend::Spool => format!("{count} messages will be retried at the next start"),
            Backend::Postgres => format!("{count} messages will be retried now"),
        }
    }
}

/// One test's world: the fake Google, a directory (the token file, the spool, the config
/// files) and, on PostgreSQL, the test's own database.
pub struct Bench {
    pub google: FakeGoogle,
    pub dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

impl Bench {
    /// A new world on `backend`.
    pub async fn new(backend: Backend) -> Bench {
        let database = (backend == Backend::Postgres).then(TestDatabase::create);
        Bench {
            google: FakeGoogle::start().await,
            dir: tempfile::tempdir().unwrap(),
            database,
        }
    }

    /// The queue's settings on this backend: the tests' timings (`serving::queue_config`: retries
    /// after 20 ms, at most 100 ms), the spool in `dir/spool` or the test's database with leases
    /// of 5 s (the shortest allowed), so a killed server's messages pass to the next one within
    /// a test's wait.
    pub fn queue(&self) -> QueueConfig {
        let mut queue = queue_config(&self.dir.path().join("spool"));
        if let Some(database) = &self.database {
            queue.backend = QueueBackend::Postgres;
            queue.url = database.url();
            queue.lease_time = Duration::from_secs(5);
        }
        queue
    }

    /// Gmail queue mode against the fake Google on this backend (`serving::gmail_mode`).
    pub fn config(&self) -> Config {
        let mut config = gmail_mode(&self.google, self.dir.path(), Delivery::Queue);
        config.queue = self.queue();
        config
    }

    /// The in-process server on [`Bench::config`].
    pub async fn serve(&self) -> TestServer {
        TestServer::assembled(self.config()).await
    }

    /// The in-process server on [`Bench::config`] changed by `adjust`.
    pub async fn serve_with(&self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = self.config();
        adjust(&mut config);
        TestServer::assembled(config).await
    }

    /// `smtp2gmail serve` on `config`, for what only a process shows (its log, `kill -9`).
    pub async fn process(&self, config: &Config) -> ServerProcess {
        ServerProcess::with_config(config, self.dir.path()).await
    }

    /// The queue's storage as the `queue` commands open it, whether or not a server runs.
    pub async fn store(&self) -> Commands {
        open_for_commands(&self.queue())
            .await
            .expect("the queue's storage opens")
            .expect("something was queued")
    }

    /// Runs `smtp2gmail queue ARGS` as an operator would from wherever the queue is reachable
    /// (for the database, another host): with a configuration that names only the queue (the
    /// spool's directory, or the database), none of the server's files; its success and output.
    pub async fn queue_command(&self, args: &[&str]) -> (bool, String) {
        let config = Config {
            queue: self.queue(),
            ..Config::default()
        };
        let elsewhere = self.dir.path().join("elsewhere.toml");
        queue_command(&write_config(&config, &elsewhere), args).await
    }

    /// The test's database, on PostgreSQL (for what only it can show: leases).
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }
}

/// Waits on a queue's storage: the scheduler works in the background.
#[allow(async_fn_in_trait)] // these tests only, never across threads as a bound
pub trait Waits {
    /// Waits until `place` holds `count` messages.
    async fn until(&self, place: Place, count: usize);

    /// Waits until `count` queued messages have had at least one attempt.
    async fn until_attempted(&self, count: usize);

    /// Waits until the queued message `id` has had at least `attempts` attempts; its record.
    async fn until_attempts(&self, id: &str, attempts: u32) -> Entry;

    /// The one message in `place`.
    async fn only(&self, place: Place) -> Entry;

    /// The ids in `place`, sorted.
    async fn ids(&self, place: Place) -> Vec<String>;
}

impl Waits for dyn Store + '_ {
    async fn until(&self, place: Place, count: usize) {
        let waited = tokio::time::timeout(WAIT, async {
            while self.count(place).await.ok() != Some(count) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        if waited.await.is_err() {
            panic!("{place:?} never held {count}: {:?}", self.ids(place).await);
        }
    }

    async fn until_attempted(&self, count: usize) {
        let attempted = || async {
            let (entries, _) = self.list(Place::Queue).await.unwrap_or_default();
            entries.iter().filter(|entry| entry.attempts >= 1).count()
        };
        let waited = tokio::time::timeout(WAIT, async {
            while attempted().await < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        if waited.await.is_err() {
            panic!(
                "fewer than {count} attempted: {:?}",
                self.list(Place::Queue).await
            );
        }
    }

    async fn until_attempts(&self, id: &str, attempts: u32) -> Entry {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(Some(entry)) = self.read(Place::Queue, id).await
                    && entry.attempts >= attempts
                {
                    return entry;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        match waited.await {
            Ok(entry) => entry,
            Err(_) => panic!(
                "{id}: fewer than {attempts} attempts: {:?}",
                self.read(Place::Queue, id).await
            ),
        }
    }

    async fn only(&self, place: Place) -> Entry {
        let (mut entries, unreadable) = self.list(place).await.unwrap();
        assert!(unreadable.is_empty(), "{unreadable:?}");
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.remove(0)
    }

    async fn ids(&self, place: Place) -> Vec<String> {
        let (entries, _) = self.list(place).await.unwrap_or_default();
        let mut ids: Vec<String> = entries.into_iter().map(|entry| entry.id).collect();
        ids.sort();
        ids
    }
}

/// A backoff of an hour: anything delivered within a test's wait was not backed off, and a
/// message that failed once stays queued for the test's length.
pub fn hour_long_backoff(config: &mut Config) {
    config.queue.retry_min = Duration::from_secs(3600);
    config.queue.retry_max = Duration::from_secs(3600);
}
