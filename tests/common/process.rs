//! The binary harness: the real `smtp2gmail serve` as a child process (which runs the same server
//! assembly as the in-process harness), for the tests that stop and restart it on its spool,
//! kill it, signal it, read its log, measure its memory, or need it reachable from another
//! program (Postfix, other replicas). Its addresses come from its startup lines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use smtp2gmail::config::Config;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::WAIT;
use super::serving::{Serving, write_config};

/// A running `smtp2gmail serve`, killed if dropped while running.
pub struct ServerProcess {
    child: Child,
    /// The first SMTP listener.
    pub smtp: SocketAddr,
    /// `http://ADDR/` from the "HTTP endpoints on" line, when they are on.
    http: Option<String>,
    /// The first log line ("… listening on …").
    pub startup: String,
    config_file: PathBuf,
    spool: PathBuf,
    log: Log,
}

impl ServerProcess {
    /// Starts `serve --config config.toml` in `dir`.
    pub async fn in_dir(dir: &Path) -> ServerProcess {
        Self::start(&dir.join("config.toml")).await
    }

    /// Writes `config` to `dir/smtp2gmail.toml` and starts the server on it.
    pub async fn with_config(config: &Config, dir: &Path) -> ServerProcess {
        Self::start(&write_config(config, &dir.join("smtp2gmail.toml"))).await
    }

    /// Starts `serve --config CONFIG` in the file's directory (where its relative paths point)
    /// and waits for its startup lines.
    pub async fn start(config_file: &Path) -> ServerProcess {
        let dir = config_file.parent().unwrap().to_path_buf();
        let (config, _) = Config::load(Some(config_file)).expect("a valid configuration");
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
            .args(["serve", "--config"])
            .arg(config_file)
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            // Console mode's mail, for the tests that read what was printed.
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Log::read(child.stderr.take().unwrap());
        let startup = log.wait_for("listening on ").await;
        let smtp = word_after(&startup, "listening on ")
            .trim_end_matches(',')
            .parse()
            .unwrap();
        let http = match config.http.address() {
            Some(_) => {
                let line = log.wait_for("HTTP endpoints on ").await;
                Some(word_after(&line, "HTTP endpoints on ").to_string())
            }
            None => None,
        };
        ServerProcess {
            child,
            smtp,
            http,
            startup,
            config_file: config_file.to_path_buf(),
            spool: dir.join(&config.queue.dir),
            log,
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lines()
    }

    /// The next log line containing `needle`, after the line the previous wait returned (earlier
    /// lines are skipped); fails the test with the whole log after the wait bound.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.log.wait_for(needle).await
    }

    /// The server's process id (to read its `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends the signal `name` (`-HUP`, `-TERM`…) with kill(1).
    pub async fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args([name, &pid]).status().await;
        assert!(sent.unwrap().success());
    }

    /// SIGTERM, and waits for the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal("-TERM").await;
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server stops: {:#?}", self.log()))
            .unwrap()
    }

    /// SIGTERM, and waits for a clean exit (status 0).
    pub async fn stop(self) {
        let log = self.log.clone();
        let status = self.terminate().await;
        assert!(status.success(), "{status}: {:#?}", log.lines());
    }

    /// SIGKILL: the server dies wherever it is.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

impl Serving for ServerProcess {
    fn smtp(&self) -> SocketAddr {
        self.smtp
    }

    fn http(&self) -> Option<String> {
        self.http.clone()
    }

    fn config_file(&self) -> &Path {
        &self.config_file
    }

    fn spool(&self) -> PathBuf {
        self.spool.clone()
    }
}

/// The server's log (stderr) as it arrives, read by a task of its own so the server never blocks
/// on a full pipe.
#[derive(Clone)]
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    /// How many lines have arrived; closed at the end of the log.
    arrived: watch::Receiver<usize>,
    /// Where the next [`Log::wait_for`] starts looking.
    next: Arc<Mutex<usize>>,
}

impl Log {
    fn read(stderr: tokio::process::ChildStderr) -> Log {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (arrive, arrived) = watch::channel(0);
        let kept = lines.clone();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                let mut kept = kept.lock().unwrap();
                kept.push(line);
                arrive.send_replace(kept.len());
            }
        });
        Log {
            lines,
            arrived,
            next: Arc::default(),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The next line containing `needle`; see [`ServerProcess::wait_for_log`].
    async fn wait_for(&self, needle: &str) -> String {
        let mut arrived = self.arrived.clone();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                arrived.borrow_and_update();
                if let Some(line) = self.next_with(needle) {
                    return Some(line);
                }
                if arrived.changed().await.is_err() {
                    // The log ended (the server exited): what arrived last is all there is.
                    return self.next_with(needle);
                }
            }
        });
        match found.await {
            Ok(Some(line)) => line,
            _ => panic!("no log line with {needle:?}: {:#?}", self.lines()),
        }
    }

    fn next_with(&self, needle: &str) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        let mut next = self.next.lock().unwrap();
        let at = lines[*next..]
            .iter()
            .position(|line| line.contains(needle))?;
        *next += at + 1;
        Some(lines[*next - 1].clone())
    }
}

/// The word after `marker` in `line`.
fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no word after {marker:?} in {line}"))
}

/// Exit code, stdout and stderr of one run.
pub struct Run {
    /// The exit code.
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs `smtp2gmail ARGS` in `dir`.
pub async fn smtp2gmail(dir: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
