//! A server in gmail mode against the fake Google, synchronous or queued, for behaviour that must
//! hold in both modes: lettre as the client, the relay (with the spool and scheduler in queue
//! mode), the HTTP readiness endpoint, and the `queue` commands of the real binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp2gmail::config::{GmailConfig, QueueConfig, SmtpConfig};
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::{Deliver, Gmail, http_client};
use tokio_util::sync::CancellationToken;

use super::fake_gmail::gmail_config;
use super::fake_google::FakeGoogle;
use super::{TestServer, WAIT, assert_code, test_config};

/// How accepted mail reaches Gmail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 250 after Gmail's 200.
    Sync,
    /// 250 once on disk; the scheduler delivers (retry_min 20 ms, retry_max the default hour, so
    /// a paused account would hold its mail far longer than any test waits).
    Queue,
}

/// The server, its fake Google and its directory.
pub struct Bridge {
    pub google: FakeGoogle,
    pub dir: tempfile::TempDir,
    pub server: TestServer,
    pub gmail: Arc<Gmail>,
    /// `http://127.0.0.1:PORT/readyz`.
    readyz: String,
    shutdown: CancellationToken,
    /// In queue mode: the running queue (its handle holds the spool's lock).
    _queue: Option<smtp2gmail::queue::QueueHandle>,
}

impl Bridge {
    /// Starts with the fake's `[gmail]` (a token.json), changed by `adjust` (which may write
    /// files into the directory and configure the fake).
    pub async fn start(
        mode: Mode,
        adjust: impl FnOnce(&FakeGoogle, &Path, &mut GmailConfig),
    ) -> Bridge {
        let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
        let mut config = gmail_config(&google, dir.path());
        adjust(&google, dir.path(), &mut config);
        let once = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        let gmail = Arc::new(
            Gmail::from_config(&config, http_client().unwrap())
                .unwrap()
                .with_retry(once),
        );
        let shutdown = CancellationToken::new();
        // The queue's handle holds the spool's lock for as long as the bridge runs.
        let (target, smtp, queue): (Arc<dyn Deliver>, SmtpConfig, _) = match mode {
            Mode::Sync => (gmail.clone(), test_config(), None),
            Mode::Queue => {
                let config = QueueConfig {
                    dir: dir.path().join("spool"),
                    retry_min: Duration::from_millis(20),
                    max_send_rate: 1000.0,
                    ..QueueConfig::default()
                };
                let tasks = tokio_util::task::TaskTracker::new();
                let started = smtp2gmail::queue::start(
                    &config,
                    gmail.clone(),
                    &tasks,
                    &shutdown,
                    Duration::ZERO,
                )
                .await
                .unwrap();
                let smtp = SmtpConfig {
                    spill_dir: started.spill_dir.clone(),
                    ..test_config()
                };
                (started.acceptor.clone(), smtp, Some(started))
            }
        };
        let spool = queue.as_ref().map(|started| started.store.clone());
        let server = TestServer::with_target(smtp, target).await;
        let readiness = Arc::new(smtp2gmail::http::Readiness {
            accounts: gmail.router().accounts().cloned().collect(),
            queue: spool,
            shutdown: shutdown.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let readyz = format!("http://{}/readyz", listener.local_addr().unwrap());
        tokio::spawn(smtp2gmail::http::serve(
            listener,
            readiness,
            None,
            shutdown.clone(),
        ));
        Bridge {
            google,
            dir,
            server,
            gmail,
            readyz,
            shutdown,
            _queue: queue,
        }
    }

    /// The SIZE the server advertises in its EHLO reply.
    pub async fn advertised_size(&self) -> usize {
        let mut client = self.server.client().await;
        let ehlo = client.cmd("EHLO client.test").await;
        assert_code(&ehlo, 250);
        ehlo.lines()
            .find_map(|line| line.strip_prefix("250-SIZE "))
            .and_then(|size| size.trim().parse().ok())
            .unwrap_or_else(|| panic!("no SIZE in {ehlo}"))
    }

    /// Sends `bytes` with lettre from `from` to `rcpts` (lettre adds the CRLF before the dot).
    pub async fn send(
        &self,
        from: &str,
        rcpts: &[String],
        bytes: &[u8],
    ) -> Result<Response, SmtpError> {
        let envelope = Envelope::new(
            Some(from.parse().unwrap()),
            rcpts.iter().map(|r| r.parse().unwrap()).collect(),
        )
        .unwrap();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(self.server.addr.port())
            .timeout(Some(WAIT))
            .build();
        transport.send_raw(&envelope, bytes).await
    }

    /// The readiness endpoint's status and body.
    pub async fn readiness(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(&self.readyz).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The message files in the spool's `places` (`queue`, `dead`); none outside queue mode.
    pub fn spooled(&self, places: &[&str]) -> Vec<PathBuf> {
        places
            .iter()
            .filter_map(|place| std::fs::read_dir(self.spool().join(place)).ok())
            .flatten()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "msg"))
            .collect()
    }

    /// Waits until `place` holds `count` messages (the scheduler works in the background).
    pub async fn until_spooled(&self, place: &str, count: usize) {
        let waited = tokio::time::timeout(WAIT, async {
            while self.spooled(&[place]).len() != count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(
            waited.await.is_ok(),
            "{place}: {:?}",
            self.spooled(&[place])
        );
    }

    /// Runs `smtp2gmail queue ARGS` on this spool; its success and output.
    pub async fn queue_command(&self, args: &[&str]) -> (bool, String) {
        queue_command(&self.spool(), args).await
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.stop().await;
    }
}

/// Runs `smtp2gmail queue ARGS` on the spool `spool` (through a config file beside it naming
/// only `[queue] dir`); its success and output.
pub async fn queue_command(spool: &Path, args: &[&str]) -> (bool, String) {
    let config = spool.with_extension("toml");
    std::fs::write(
        &config,
        format!("[queue]\ndir = {:?}\n", spool.display().to_string()),
    )
    .unwrap();
    super::served::queue_command(&config, args).await
}

/// The text of a refusal with reply `code`, or a failed assertion naming what came instead.
#[track_caller]
pub fn refused_with(sent: Result<Response, SmtpError>, code: &str) -> String {
    let error = match sent {
        Ok(response) => panic!("accepted, expected {code}: {response:?}"),
        Err(error) => error,
    };
    let text = error.to_string();
    let status = error.status().map(|status| status.to_string());
    assert_eq!(status.as_deref(), Some(code), "{text}");
    text
}
