//! The real binary, started with a config in a directory, and the addresses it logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use super::WAIT;

/// A running `smtp2gmail serve`, killed on drop.
pub struct Running {
    child: Child,
    /// The first SMTP listener.
    pub smtp: SocketAddr,
    /// `http://ADDR/`, from the "HTTP endpoints on" line.
    pub http: String,
    /// The first log line ("… listening on …").
    pub startup: String,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `serve --config config.toml` in `dir` and waits for both startup lines.
    pub fn start(dir: &Path) -> Running {
        Self::start_with_env(dir, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
            .args(["serve", "--config", "config.toml"])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
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
            startup: String::new(),
            lines,
        };
        let first = running.wait_for("listening on ");
        running.smtp = word_after(&first, "listening on ")
            .trim_end_matches(',')
            .parse()
            .unwrap();
        running.startup = first;
        let http = running.wait_for("HTTP endpoints on ");
        running.http = word_after(&http, "HTTP endpoints on ").to_string();
        running
    }

    /// The next log line containing `text` (panics after the wait bound).
    pub fn wait_for(&mut self, text: &str) -> String {
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

    /// The server's process id (to read its `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The full URL of `path` on the HTTP listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http.trim_end_matches('/'))
    }

    /// `host:port` of the HTTP listener.
    pub fn http_authority(&self) -> String {
        self.http
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// GET `path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.url(path)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
