//! The in-process harness: the library's server assembly (`smtp2gmail::server::Server`, what
//! `smtp2gmail serve` runs) started in the test's own process on loopback port 0. The tests of
//! the SMTP front end give it a recording delivery target; the others run the whole server as
//! configured — relay, queue with its scheduler and split-message task, HTTP endpoints — with
//! Gmail's in-session retries cut to one attempt.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smtp2gmail::config::{Config, Delivery, GmailConfig, QueueConfig, RelayMode, SmtpConfig};
use smtp2gmail::relay::Deliver;
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::gmail::accounts::Account;
use smtp2gmail::server::{Server, ServerHandle, StartError};

use super::fake_google::FakeGoogle;
use super::serving::{Serving, gmail_mode, write_config};
use super::{Client, Recorder, WAIT};

/// One attempt per delivery: the queue's retries are what the tests look at, and a sync-mode
/// failure should reach the client at once.
const ONE_ATTEMPT: RetryPolicy = RetryPolicy {
    attempts: 1,
    budget: Duration::from_secs(1),
    first_backoff: Duration::from_millis(10),
};

/// Short, so that a Gmail that never answers fails a delivery within a test's wait (uploads get
/// more per MiB, so large messages are not cut off).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// A server running in this process.
pub struct TestServer {
    /// The plain listener (STARTTLS), or the implicit-TLS one when there is no plain listener.
    pub addr: SocketAddr,
    /// The implicit-TLS listener, when `listen_tls` was configured.
    pub tls_addr: Option<SocketAddr>,
    /// Every bound address: `listen`, then `listen_tls`.
    pub addrs: Vec<SocketAddr>,
    /// What a front-end server delivered (empty for a server that runs its configured relay).
    pub recorder: Arc<Recorder>,
    config: Config,
    /// The configuration as a file, for the `queue` commands.
    config_file: PathBuf,
    handle: ServerHandle,
}

/// Defaults as shipped, but on an ephemeral loopback port.
pub fn test_config() -> SmtpConfig {
    SmtpConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..SmtpConfig::default()
    }
}

impl TestServer {
    /// Starts a server with the default limits and a recording target.
    pub async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    /// Starts a server with `config` (its listen addresses are replaced by 127.0.0.1:0).
    pub async fn with_config(config: SmtpConfig) -> Self {
        let recorder = Arc::new(Recorder::default());
        let mut server = Self::with_target(config, recorder.clone()).await;
        server.recorder = recorder;
        server
    }

    /// Starts a server delivering to `target`.
    pub async fn with_target(mut config: SmtpConfig, target: Arc<dyn Deliver>) -> Self {
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let implicit_tls = !config.listen_tls.is_empty();
        if !config.listen.is_empty() || !implicit_tls {
            config.listen = vec![any_port];
        }
        if implicit_tls {
            config.listen_tls = vec![any_port];
        }
        Self::as_configured(config, target).await
    }

    /// Starts a server on exactly the addresses in `config` (use port 0), delivering to `target`;
    /// the HTTP endpoints are off.
    pub async fn as_configured(smtp: SmtpConfig, target: Arc<dyn Deliver>) -> Self {
        let mut config = Config {
            smtp,
            ..Config::default()
        };
        config.http.listen = String::new();
        let server = Server::new(config.clone()).deliver_to(target);
        let handle = server.start().await.expect("the server starts");
        Self::started(config, PathBuf::new(), handle)
    }

    /// Starts the whole server `config` describes. A spool's lock still held is waited for: a
    /// child process another test spawns inherits every descriptor (the lock's too) until its
    /// exec, so a restart in this process can find it taken for a moment.
    pub async fn assembled(config: Config) -> Self {
        // Where there is a queue (gmail and microsoft modes, auto-release), the `queue` commands
        // read this file.
        let config_file = match config.relay.mode.is_provider() || config.releases_automatically() {
            true => write_config(&config, &config.queue.dir.with_extension("toml")),
            false => PathBuf::new(),
        };
        let handle = tokio::time::timeout(WAIT, async {
            loop {
                let server = Server::new(config.clone())
                    .config_file(Some(config_file.clone()))
                    .gmail_retry(ONE_ATTEMPT)
                    .gmail_request_timeout(REQUEST_TIMEOUT);
                match server.start().await {
                    Err(StartError::Queue(smtp2gmail::queue::StartError::Spool(
                        smtp2gmail::queue::spool::OpenError::InUse { .. },
                    ))) => tokio::time::sleep(Duration::from_millis(10)).await,
                    started => return started.expect("the server starts"),
                }
            }
        })
        .await
        .expect("the spool's lock is released");
        Self::started(config, config_file, handle)
    }

    /// Gmail mode against a new fake Google in a new directory, delivering as `delivery`; `adjust`
    /// may change `[gmail]` (and write files into the directory, configure the fake).
    pub async fn gmail(
        delivery: Delivery,
        adjust: impl FnOnce(&FakeGoogle, &Path, &mut GmailConfig),
    ) -> (FakeGoogle, tempfile::TempDir, TestServer) {
        let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
        let mut config = gmail_mode(&google, dir.path(), delivery);
        adjust(&google, dir.path(), &mut config.gmail);
        let server = TestServer::assembled(config).await;
        (google, dir, server)
    }

    /// Gmail queue mode with `gmail` and `queue`.
    pub async fn queued(gmail: &GmailConfig, queue: QueueConfig) -> TestServer {
        let mut config = Config {
            gmail: gmail.clone(),
            queue,
            ..Config::default()
        };
        config.relay.mode = RelayMode::Gmail;
        config.smtp = SmtpConfig {
            shutdown_grace: Duration::from_secs(5),
            ..test_config()
        };
        config.http.listen = "127.0.0.1:0".to_string();
        TestServer::assembled(config).await
    }

    /// A fake Google, a temporary directory, and gmail queue mode with the spool in it
    /// (`serving::queue_config`).
    pub async fn queued_with_defaults() -> (FakeGoogle, tempfile::TempDir, TestServer) {
        TestServer::gmail(Delivery::Queue, |_, _, _| {}).await
    }

    fn started(config: Config, config_file: PathBuf, handle: ServerHandle) -> Self {
        let addrs = handle.smtp_addrs().to_vec();
        let implicit_tls = !config.smtp.listen_tls.is_empty();
        TestServer {
            addr: addrs[0],
            tls_addr: implicit_tls.then(|| *addrs.last().unwrap()),
            addrs,
            recorder: Arc::new(Recorder::default()),
            config,
            config_file,
            handle,
        }
    }

    /// The running server: its accounts, its queue's storage, its readiness, reload.
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// The queue's storage (the spool or the database), for tests that assert through it.
    pub fn store(&self) -> &dyn smtp2gmail::queue::store::Store {
        &**self.handle.queue().expect("a server with a queue")
    }

    /// The Gmail account `name`.
    pub fn account(&self, name: &str) -> Arc<Account> {
        let accounts = self.handle.accounts().iter();
        let account = accounts.clone().find(|account| account.name == name);
        account
            .unwrap_or_else(|| panic!("no account {name}"))
            .clone()
    }

    /// A connected raw client that has read the greeting.
    pub async fn client(&self) -> Client {
        Serving::client(self).await
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.handle.begin_shutdown();
    }

    /// Shuts down and waits until every task the server started has ended. Drop clients with
    /// open transactions first, or this waits for the shutdown grace period.
    pub async fn stop(self) {
        let stopped = tokio::time::timeout(WAIT, self.handle.shutdown())
            .await
            .expect("the server stops");
        assert!(stopped.is_clean(), "tasks left running: {stopped:?}");
    }
}

impl Serving for TestServer {
    fn smtp(&self) -> SocketAddr {
        self.addr
    }

    fn http(&self) -> Option<String> {
        self.handle
            .http_addr()
            .map(|addr| format!("http://{addr}/"))
    }

    fn config_file(&self) -> &Path {
        &self.config_file
    }

    fn spool(&self) -> PathBuf {
        self.config.queue.dir.clone()
    }
}
