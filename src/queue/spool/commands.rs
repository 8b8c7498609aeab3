//! How the `queue` commands steer a spool safely, with or without a running server.
//!
//! A running server holds an exclusive lock on `<spool>/server.lock` and is then the only writer
//! of queue records: the commands leave a request file in `<spool>/control/`, the scheduler carries
//! it out within a second ([`super::super::control::POLL`]) and writes the answer beside it.
//! Without a server, a command takes the lock itself (so no server can start meanwhile) and
//! changes the files directly, with the same functions.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::Spool;
use crate::config::QueueConfig;
use crate::queue::control::ControlError;
use crate::queue::record::Request;
use crate::queue::schedule::{MemoryState, Pickup, carry_out};
use crate::safeio;

/// How long a command waits for the running server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The lock that says "a server owns this spool".
pub fn try_lock(root: &Path) -> io::Result<Option<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("server.lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

fn control_dir(root: &Path) -> PathBuf {
    root.join("control")
}

/// Carries out a command: directly under the lock when no server runs (with the scheduler core's
/// functions over a state of its own: nothing is held in memory without a server), else by
/// request to the running server's core.
pub async fn steer(
    spool: &Spool,
    config: &QueueConfig,
    request: Request,
) -> Result<String, ControlError> {
    match try_lock(spool.root()) {
        Ok(Some(_lock)) => {
            let store = std::sync::Arc::new(spool.clone());
            let idle = tokio::sync::mpsc::unbounded_channel().1;
            let mut state = MemoryState::new(store, config, idle);
            let now = SystemTime::now();
            let none = std::collections::HashSet::new();
            carry_out(&mut state, &none, &request, Pickup::NextStart, now).await
        }
        Ok(None) => {
            let root = spool.root().to_path_buf();
            let asked = tokio::task::spawn_blocking(move || {
                let name = submit(&root, &request)?;
                await_answer(&root, &name, ANSWER_TIMEOUT)
            })
            .await
            .map_err(io::Error::other)
            .and_then(|answer| answer);
            match asked {
                Ok(answer) => answer.map_err(ControlError::Answered),
                Err(err) => Err(ControlError::Unreachable(format!(
                    "the running server did not answer: {err}"
                ))),
            }
        }
        Err(err) => Err(ControlError::Unreachable(format!(
            "cannot lock the spool: {err}"
        ))),
    }
}

/// Leaves a request for the running server; returns its name.
pub(super) fn submit(root: &Path, request: &Request) -> io::Result<String> {
    let dir = control_dir(root);
    std::fs::create_dir_all(&dir)?;
    let name = format!(
        "{}-{:08x}",
        humantime::format_rfc3339_nanos(SystemTime::now()),
        fastrand::u32(..)
    )
    .replace([':', '.'], "-");
    let bytes = serde_json::to_vec(request).map_err(io::Error::other)?;
    safeio::write_atomically(&dir.join(format!("{name}.request")), &bytes)?;
    Ok(name)
}

/// Waits for the server's answer to a request (polling: the command is a short-lived process).
fn await_answer(root: &Path, name: &str, timeout: Duration) -> io::Result<Result<String, String>> {
    let path = control_dir(root).join(format!("{name}.answer"));
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let _ = std::fs::remove_file(&path);
                return serde_json::from_slice(&bytes).map_err(io::Error::other);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(control_dir(root).join(format!("{name}.request")));
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server did not answer",
                ));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Requests waiting for the server, oldest first (names sort by time).
pub(super) fn pending(root: &Path) -> Vec<(String, Request)> {
    let Ok(items) = std::fs::read_dir(control_dir(root)) else {
        return Vec::new();
    };
    let mut requests: Vec<(String, Request)> = items
        .filter_map(|item| {
            let path = item.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".request")?
                .to_string();
            let request = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let _ = std::fs::remove_file(&path);
            Some((name, request?))
        })
        .collect();
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    requests
}

/// Answers a request (the wire format is the text of the outcome).
pub(super) fn answer(root: &Path, name: &str, answer: Result<String, String>) {
    let path = control_dir(root).join(format!("{name}.answer"));
    let written = serde_json::to_vec(&answer)
        .map_err(io::Error::other)
        .and_then(|bytes| safeio::write_atomically(&path, &bytes));
    if let Err(err) = written {
        tracing::warn!(%err, "cannot answer a queue command");
    }
}
