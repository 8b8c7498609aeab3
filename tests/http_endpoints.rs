//! The operator's endpoints over real HTTP against the real binary: readiness turns 503 when Google
//! refuses the credentials and back to 200 after a new token file, and the metrics move as
//! messages flow.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::fake_google::{self, FakeGoogle};
use common::{WAIT, assert_code};

/// The server and the addresses from its log.
struct Running {
    child: Child,
    smtp: SocketAddr,
    http: String,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(dir: &std::path::Path) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
            .args(["serve", "--config", "config.toml"])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let mut running = Running {
            child,
            smtp: "0.0.0.0:0".parse().unwrap(),
            http: String::new(),
            lines,
        };
        let first = running.wait_for("listening on ");
        running.smtp = first
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let http = running.wait_for("HTTP endpoints on ");
        running.http = http
            .split("HTTP endpoints on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        running
    }

    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {text:?}"),
            }
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.http.trim_end_matches('/')))
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn send(&self) -> String {
        common::send_simple(self.smtp).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line that starts with `series`, or 0 when it is absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A gmail-mode config using token.json in `dir`, with the HTTP endpoints on a free port.
fn gmail_config(google: &FakeGoogle, dir: &std::path::Path) {
    fake_google::write_json(
        dir,
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [relay]\nmode = \"gmail\"\ndelivery = \"sync\"\n[gmail]\ncredentials = \"token.json\"\napi_base = \"{}\"\n",
        google.api_base()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_verified_at_start_not_with_the_first_message() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    gmail_config(&google, dir.path());
    let mut server = Running::start(dir.path());
    server.wait_for("credentials verified");
    assert_eq!(google.token_requests(), 1);
    assert_eq!(server.get("/readyz").await.0, 200);
    drop(server);

    // The refresh token died while the server was down (revoked, or the 7-day Testing expiry).
    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    let mut server = Running::start(dir.path());
    let line = server.wait_for("credentials need attention");
    assert!(line.contains("invalid_grant"), "{line}");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("smtp2gmail authorize"), "{body}");
    assert!(
        google.uploads().is_empty(),
        "no mail was needed to find out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_credentials_and_metrics_follow_the_mail() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let token = dir.path().join("token.json");
    gmail_config(&google, dir.path());
    let mut server = Running::start(dir.path());

    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(server.get("/readyz").await.0, 200);
    assert_code(&server.send().await, 250);

    // Google stops accepting the refresh token (revoked, or the 7-day Testing expiry).
    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    google.revoke_access_tokens();
    assert_code(&server.send().await, 451);
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = &problem["problems"][0];
    assert_eq!(first["account"], "default");
    assert!(
        first["problem"].as_str().unwrap().contains("invalid_grant"),
        "{body}"
    );
    assert!(
        first["fix"]
            .as_str()
            .unwrap()
            .contains("smtp2gmail authorize"),
        "{body}"
    );
    assert!(first["since"].as_str().unwrap().ends_with('Z'), "{body}");

    // `authorize` writes a new token file; the server picks it up without a restart.
    fake_google::write_token_atomically(&token, &fake_google::authorized_token(&google));
    server.wait_for("credentials for account default reloaded");
    assert_code(&server.send().await, 250);
    assert_eq!(server.get("/readyz").await.0, 200);

    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_messages_received_total{outcome=\"accepted\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_messages_received_total{outcome=\"temporary\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_deliveries_total{account=\"default\",outcome=\"sent\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_deliveries_total{account=\"default\",outcome=\"credentials\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "smtp2gmail_token_refreshes_total{account=\"default\",outcome=\"credentials\"}"
        ) >= 1.0
    );
    assert_eq!(metric(&metrics, "smtp2gmail_smtp_connections_total"), 3.0);
    assert!(
        metrics.contains("smtp2gmail_delivery_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("alice@example.com"),
        "addresses are never labels"
    );
}
