//! What the two server harnesses share: the configuration of a gmail-mode server against the fake
//! Google, and the [`Serving`] helpers that work on any running server — the in-process one
//! ([`super::server::TestServer`], the library's `Server` assembly) and the binary
//! ([`super::process::ServerProcess`], `smtp2gmail serve`, which runs the same assembly).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp2gmail::config::{Config, Delivery, QueueConfig, RelayMode};
use tokio::process::Command;

use super::fake_gmail::gmail_config;
use super::fake_google::FakeGoogle;
use super::{Client, WAIT, assert_code};

/// The message [`Serving::send`] sends: from app@example.com to alice@example.com (in To).
pub const MESSAGE: &[u8] =
    b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: queued\r\n\r\nhello\r\n.\r\n";

/// The queue of the tests: the spool in `spool`, fast retries (20 ms, then at most 100 ms), and a
/// send rate no test reaches.
pub fn queue_config(spool: &Path) -> QueueConfig {
    QueueConfig {
        dir: spool.to_path_buf(),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        max_send_rate: 1000.0,
        ..QueueConfig::default()
    }
}

/// Gmail mode against `google` (a token.json written into `dir`), delivering as `delivery` with
/// the spool in `dir/spool` ([`queue_config`]); SMTP and the HTTP endpoints on free loopback
/// ports, and a shutdown grace of 5 s, so that a delivery that hangs cannot hold a test for long.
pub fn gmail_mode(google: &FakeGoogle, dir: &Path, delivery: Delivery) -> Config {
    let mut config = Config {
        gmail: gmail_config(google, dir),
        queue: queue_config(&dir.join("spool")),
        ..Config::default()
    };
    config.relay.mode = RelayMode::Gmail;
    config.relay.delivery = delivery;
    config.smtp.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.smtp.shutdown_grace = Duration::from_secs(5);
    config.http.listen = "127.0.0.1:0".to_string();
    config
}

/// Writes `config` as TOML to `path`: what the binary and the `queue` commands read.
pub fn write_config(config: &Config, path: &Path) -> PathBuf {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
    path.to_path_buf()
}

/// Runs `smtp2gmail --config CONFIG queue ARGS`, as an operator would; returns its success and
/// everything it printed.
pub async fn queue_command(config: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .arg("--config")
        .arg(config)
        .arg("queue")
        .args(args)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Runs `smtp2gmail queue ARGS` on the spool `spool` with no server (through a config file beside
/// it naming only `[queue] dir`); its success and output.
pub async fn queue_command_on_spool(spool: &Path, args: &[&str]) -> (bool, String) {
    let mut config = Config::default();
    config.queue.dir = spool.to_path_buf();
    let file = spool.with_extension("commands.toml");
    queue_command(&write_config(&config, &file), args).await
}

/// The queue id in a `250 2.0.0 queued as ID` reply (which it asserts).
pub fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 2.0.0 queued as "), "{reply}");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
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

/// A running server, in this process or not, and what the tests do with one.
#[allow(async_fn_in_trait)] // used in these tests only, never across threads as a bound
pub trait Serving {
    /// The first SMTP listener.
    fn smtp(&self) -> SocketAddr;

    /// `http://ADDR/` of the HTTP endpoints, when they are on.
    fn http(&self) -> Option<String>;

    /// The configuration file the `queue` commands read (the server's own).
    fn config_file(&self) -> &Path;

    /// The spool directory.
    fn spool(&self) -> PathBuf;

    /// A connected raw client that has read the greeting.
    async fn client(&self) -> Client {
        let (client, greeting) = Client::connect(self.smtp()).await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        client
    }

    /// Sends [`MESSAGE`] from app@example.com to `rcpts`; the reply to DATA.
    async fn send(&self, rcpts: &[&str]) -> String {
        let mut client = self.client().await;
        client.start_transaction("app@example.com", rcpts).await;
        let reply = client.data(MESSAGE).await;
        assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
        reply
    }

    /// Sends a message from `sender` (envelope and From header) to `rcpts`; the reply to DATA.
    async fn send_as(&self, sender: &str, rcpts: &[&str]) -> String {
        let mut client = self.client().await;
        client.start_transaction(sender, rcpts).await;
        let message = format!(
            "From: {sender}\r\nTo: {}\r\nSubject: queued\r\n\r\nhello\r\n.\r\n",
            rcpts.join(", ")
        );
        let reply = client.data(message.as_bytes()).await;
        assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
        reply
    }

    /// Sends `bytes` with lettre from `from` to `rcpts` (lettre adds the CRLF before the dot).
    async fn send_with_lettre(
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
            .port(self.smtp().port())
            .timeout(Some(WAIT))
            .build();
        transport.send_raw(&envelope, bytes).await
    }

    /// The SIZE the server advertises in its EHLO reply.
    async fn advertised_size(&self) -> usize {
        let mut client = self.client().await;
        let ehlo = client.cmd("EHLO client.test").await;
        assert_code(&ehlo, 250);
        ehlo.lines()
            .find_map(|line| line.strip_prefix("250-SIZE "))
            .and_then(|size| size.trim().parse().ok())
            .unwrap_or_else(|| panic!("no SIZE in {ehlo}"))
    }

    /// The full URL of `path` on the HTTP endpoints.
    fn url(&self, path: &str) -> String {
        let base = self.http().expect("the HTTP endpoints are on");
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// `host:port` of the HTTP endpoints.
    fn http_authority(&self) -> String {
        let base = self.http().expect("the HTTP endpoints are on");
        let base = base.trim_start_matches("http://").trim_end_matches('/');
        base.to_string()
    }

    /// GET `path`: status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.url(path)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// `/readyz`: status and body.
    async fn readiness(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.get("/readyz").await;
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Waits (up to the tests' bound) until `/readyz` answers 503 with `needle` in its body: held
    /// mail whose fix readiness names.
    async fn until_unready_naming(&self, needle: &str) {
        let named = tokio::time::timeout(WAIT, async {
            loop {
                let (status, readiness) = self.readiness().await;
                if status == 503 && readiness.to_string().contains(needle) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(named.await.is_ok(), "readiness never named {needle:?}");
    }

    /// The files in the spool's `place` (`queue`, `dead`, `held`: a message and its record
    /// each), sorted; none when the spool has no such place (sync mode). Temporary files of atomic
    /// writes are not counted.
    fn files(&self, place: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.spool().join(place)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with(".tmp-"))
            .collect();
        names.sort();
        names
    }

    /// Waits until `place` holds `count` files (the scheduler works in the background).
    async fn until_files(&self, place: &str, count: usize) {
        let waited = tokio::time::timeout(WAIT, async {
            while self.files(place).len() != count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(waited.await.is_ok(), "{place}: {:?}", self.files(place));
    }

    /// Runs `smtp2gmail queue ARGS` beside the server; returns its success and output.
    async fn queue_command(&self, args: &[&str]) -> (bool, String) {
        queue_command(self.config_file(), args).await
    }
}
