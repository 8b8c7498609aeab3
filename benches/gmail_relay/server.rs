//! The server under measurement: the real binary as a child process, its address and its CPU time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The server binary running as a child process.
pub struct Server {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Warning and error lines of its log (the rest is read and dropped).
    pub problems: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `smtp2gmail serve --config CONFIG` and reads its address from the first log line.
    pub async fn start(binary: &Path, config: &Path) -> anyhow::Result<Server> {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("server exited at once")?;
        let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("no log line from the server within 10 s")??
            .unwrap_or_default();
        let Some(addr) = listening_address(&first) else {
            let mut rest = String::new();
            while let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await
            {
                rest.push_str(&line);
                rest.push('\n');
            }
            bail!("the server did not say where it listens:\n{first}\n{rest}");
        };
        // Keep reading, or the server blocks once the pipe is full.
        let problems = Arc::new(Mutex::new(Vec::new()));
        let kept = problems.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("WARN") || line.contains("ERROR") {
                    kept.lock().unwrap().push(line);
                }
            }
        });
        Ok(Server {
            child,
            pid,
            addr,
            problems,
        })
    }

    /// utime + stime of the server so far, in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The fields after the command name, which is in parentheses and may contain spaces:
        // state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unreadable /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            Ok(fields.get(n - 3).context("short /proc/PID/stat")?.parse()?)
        };
        Ok(field(14)? + field(15)?)
    }

    /// Nanoseconds on CPU of each live thread of the server (first field of
    /// `/proc/PID/task/TID/schedstat`): a finer cross-check of [`Server::cpu_ticks`].
    pub fn thread_cpu_ns(&self) -> anyhow::Result<HashMap<u32, u64>> {
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid))? {
            let entry = entry?;
            let Ok(tid) = entry.file_name().to_string_lossy().parse() else {
                continue;
            };
            // A thread may end between the listing and the read.
            let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            let ns = text.split_whitespace().next().unwrap_or("0").parse()?;
            threads.insert(tid, ns);
        }
        Ok(threads)
    }

    /// A sample of the server's CPU time so far.
    pub fn cpu(&self) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            ticks: self.cpu_ticks()?,
            threads: self.thread_cpu_ns()?,
        })
    }

    /// A `/proc/PID/status` field in kB (KiB).
    pub fn status_kb(&self, name: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("no {name} in /proc/PID/status"))?;
        Ok(line.trim().trim_end_matches("kB").trim().parse()?)
    }

    /// SIGTERM, then waits for the graceful shutdown (SIGKILL after 40 s); reports log problems.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(self.pid.to_string())
            .status()?;
        ensure!(status.success(), "kill {} failed", self.pid);
        let exit = match tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await {
            Ok(exit) => exit?,
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within 40 s of SIGTERM; killed");
            }
        };
        let problems = self.problems.lock().unwrap();
        if !problems.is_empty() {
            println!("server log: {} warning/error lines:", problems.len());
            for line in problems.iter().take(5) {
                println!("  {line}");
            }
        }
        ensure!(exit.success(), "the server exited with {exit}");
        Ok(())
    }
}

/// The server's CPU time at one moment.
pub struct Cpu {
    pub ticks: u64,
    pub threads: HashMap<u32, u64>,
}

impl Cpu {
    /// (clock ticks, nanoseconds) used since `before`. The nanoseconds miss threads that ended
    /// in between; the ticks do not.
    pub fn since(&self, before: &Cpu) -> (u64, u64) {
        let ns = self
            .threads
            .iter()
            .map(|(tid, ns)| ns - before.threads.get(tid).copied().unwrap_or(0))
            .sum();
        (self.ticks - before.ticks, ns)
    }
}

/// The first address in "... listening on ADDR[, ADDR] (...)".
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    rest.split([' ', ',']).next()?.parse().ok()
}

/// `getconf CLK_TCK`, or 100 (and false) if it cannot be run.
pub fn clock_ticks() -> (u64, bool) {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .map_or((100, false), |ticks| (ticks, true))
}
