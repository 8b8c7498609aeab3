//! A server in gmail queue mode with its scheduler running, against the fake Google: the harness
//! of the queue's end-to-end tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smtp2gmail::config::{GmailConfig, QueueConfig, SmtpConfig};
use smtp2gmail::queue;
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::{Gmail, http_client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fake_gmail::gmail_config;
use super::fake_google::FakeGoogle;
use super::{TestServer, WAIT, test_config};

pub const MESSAGE: &[u8] =
    b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: queued\r\n\r\nhello\r\n.\r\n";

/// A server in queue mode with its scheduler running.
pub struct Queued {
    pub server: TestServer,
    pub gmail: Arc<Gmail>,
    pub spool: PathBuf,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    queue: queue::QueueHandle,
}

pub fn queue_config(spool: &Path) -> QueueConfig {
    QueueConfig {
        dir: spool.to_path_buf(),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        max_send_rate: 1000.0,
        ..QueueConfig::default()
    }
}

impl Queued {
    /// A fake Google, a temporary directory, and a queue in its `spool` with the test defaults.
    pub async fn with_defaults() -> (FakeGoogle, tempfile::TempDir, Queued) {
        let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
        let queued = Queued::start(
            &gmail_config(&google, dir.path()),
            queue_config(&dir.path().join("spool")),
        )
        .await;
        (google, dir, queued)
    }

    pub async fn start(gmail: &GmailConfig, queue: QueueConfig) -> Queued {
        let no_retries = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        let relay = Arc::new(
            Gmail::from_config(gmail, http_client().unwrap())
                .unwrap()
                .with_retry(no_retries)
                .with_request_timeout(Duration::from_millis(300)),
        );
        // A restart in this process can find the spool's lock still held for a moment: a child
        // process another test spawns inherits every descriptor (the lock's too) until its exec.
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let grace = Duration::from_secs(5);
        let started = tokio::time::timeout(WAIT, async {
            loop {
                match queue::start(&queue, relay.clone(), &tasks, &shutdown, grace).await {
                    Err(queue::StartError::Spool(queue::spool::OpenError::InUse { .. })) => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    started => return started.unwrap(),
                }
            }
        })
        .await
        .expect("the spool's lock is released");
        let smtp = SmtpConfig {
            spill_dir: started.spill_dir.clone(),
            ..test_config()
        };
        let server = TestServer::with_target(smtp, started.acceptor.clone()).await;
        Queued {
            server,
            gmail: relay,
            spool: queue.dir,
            shutdown,
            tasks,
            queue: started,
        }
    }

    pub async fn send(&self, rcpts: &[&str]) -> String {
        let mut client = self.server.client().await;
        client.start_transaction("app@example.com", rcpts).await;
        let reply = client.data(MESSAGE).await;
        assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
        reply
    }

    /// Sends a message from `sender` (envelope and From header) to `rcpts`; the reply to DATA.
    pub async fn send_as(&self, sender: &str, rcpts: &[&str]) -> String {
        let mut client = self.server.client().await;
        client.start_transaction(sender, rcpts).await;
        let message = format!(
            "From: {sender}\r\nTo: {}\r\nSubject: queued\r\n\r\nhello\r\n.\r\n",
            rcpts.join(", ")
        );
        let reply = client.data(message.as_bytes()).await;
        assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
        reply
    }

    /// The messages and records in `place` (temporary files of atomic writes are not counted).
    pub fn files(&self, place: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.spool.join(place))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with(".tmp-"))
            .collect();
        names.sort();
        names
    }

    /// Waits until `place` holds `count` files (the scheduler works in the background).
    pub async fn until_files(&self, place: &str, count: usize) {
        let waited = tokio::time::timeout(WAIT, async {
            while self.files(place).len() != count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(waited.await.is_ok(), "{place}: {:?}", self.files(place));
    }

    /// Waits until `count` queue records show one failed attempt.
    pub async fn until_failed_once(&self, count: usize) {
        let failed_once = || {
            let records = std::fs::read_dir(self.spool.join("queue"))
                .unwrap()
                .filter_map(|e| e.ok());
            // Records only: a temporary file holding the next version is not the record yet.
            records
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .contains("\"attempts\": 1")
                })
                .count()
        };
        let waited = tokio::time::timeout(WAIT, async {
            while failed_once() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(waited.await.is_ok(), "{:?}", self.files("queue"));
    }

    pub async fn stop(self) {
        self.server.stop().await;
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // The queue's tasks have ended: its handle (the spool's lock) may go.
        drop(self.queue);
    }
}

pub fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 2.0.0 queued as "), "{reply}");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}
