//! The real `smtp2gmail serve` binary as a child process in gmail queue mode against the fake
//! Google: for tests that stop and restart the server on its spool, read its log, run the `queue`
//! commands beside it, or need it reachable from another program (Postfix).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;
use super::fake_google::{self, FakeGoogle};

/// A config file in `dir` for queue mode against `google`, the spool in `dir/spool`, with fast
/// retries; `queue` and `gmail` are more lines for those tables.
pub fn queue_mode_config(google: &FakeGoogle, dir: &Path, queue: &str, gmail: &str) -> PathBuf {
    let token = fake_google::write_json(
        dir,
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = dir.join("smtp2gmail.toml");
    let text = format!(
        "[http]\nlisten = \"\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[relay]\nmode = \"gmail\"\n\
         [queue]\ndir = {:?}\nretry_min = \"50ms\"\nretry_max = \"200ms\"\nmax_send_rate = 1000.0\n\
         {queue}\n[gmail]\napi_base = {:?}\ncredentials = {:?}\n{gmail}\n",
        dir.join("spool").display().to_string(),
        google.api_base(),
        token.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    config
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

/// A running server.
pub struct Served {
    child: Child,
    /// Its SMTP listener.
    pub addr: SocketAddr,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `smtp2gmail serve --config CONFIG` and waits for its listening line.
    pub async fn start(config: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let listening = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return rest.split([',', ' ']).next().map(str::to_string);
                }
            }
            None
        })
        .await
        .expect("the server starts")
        .unwrap_or_else(|| panic!("no listening line: {:?}", log.lock().unwrap()));
        let addr = listening.parse().unwrap();
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            }
        });
        Served {
            child,
            addr,
            config: config.to_path_buf(),
            log,
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}: {:#?}", self.log()))
    }

    /// The base URL of its HTTP endpoints (`[http] listen` must be set), from its startup line.
    pub async fn http(&self) -> String {
        let line = self.wait_for_log("HTTP endpoints on ").await;
        let rest = line.split("HTTP endpoints on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// Runs `smtp2gmail queue ARGS` beside the server; returns its success and output.
    pub async fn queue_command(&self, args: &[&str]) -> (bool, String) {
        queue_command(&self.config, args).await
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
        assert!(sent.unwrap().success());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the server stops")
            .unwrap();
        assert!(status.success(), "{status}: {:#?}", self.log());
    }

    /// SIGKILL: the server dies wherever it is.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}
