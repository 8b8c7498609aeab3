//! How the `queue` commands steer the spool safely, with or without a running server.
//!
//! A running server holds an exclusive lock on `<spool>/server.lock` and is then the only writer
//! of queue records: the commands leave a request file in `<spool>/control/`, the scheduler carries
//! it out within a second and writes the answer beside it. Without a server, a command takes the
//! lock itself (so no server can start meanwhile) and changes the files directly, with the same
//! functions.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::spool::{Entry, Place, Spool};
use crate::safeio;

/// How often a running server looks for requests.
pub const POLL: Duration = Duration::from_secs(1);

/// What a `queue` command asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Request {
    /// Deliver now (one message, or every queued and dead one).
    Retry {
        /// The message, or `None` for all.
        id: Option<String>,
    },
    /// Remove a message from the queue or the dead letters.
    Delete {
        /// The message.
        id: String,
    },
}

/// The lock that says "a server owns this spool".
pub fn try_lock(spool: &Spool) -> io::Result<Option<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.root().join("server.lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

fn control_dir(spool: &Spool) -> PathBuf {
    spool.root().join("control")
}

/// Leaves a request for the running server; returns its name.
pub fn submit(spool: &Spool, request: &Request) -> io::Result<String> {
    let dir = control_dir(spool);
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

/// Waits for the server's answer to a request.
pub fn await_answer(
    spool: &Spool,
    name: &str,
    timeout: Duration,
) -> io::Result<Result<String, String>> {
    let path = control_dir(spool).join(format!("{name}.answer"));
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
                let _ = std::fs::remove_file(control_dir(spool).join(format!("{name}.request")));
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
pub fn pending(spool: &Spool) -> Vec<(String, Request)> {
    let Ok(items) = std::fs::read_dir(control_dir(spool)) else {
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

/// Answers a request.
pub fn answer(spool: &Spool, name: &str, answer: Result<String, String>) {
    let path = control_dir(spool).join(format!("{name}.answer"));
    let written = serde_json::to_vec(&answer)
        .map_err(io::Error::other)
        .and_then(|bytes| safeio::write_atomically(&path, &bytes));
    if let Err(err) = written {
        tracing::warn!(%err, "cannot answer a queue command");
    }
}

/// Makes a message due now: a queued one keeps its history, a dead one moves back to the queue.
/// Returns the updated entry and what was done.
pub async fn retry(spool: &Spool, id: &str, now: SystemTime) -> Result<(Entry, String), String> {
    if let Ok(mut entry) = spool.read(Place::Queue, id) {
        entry.next_attempt = now;
        spool
            .update(Place::Queue, &entry)
            .await
            .map_err(|e| format!("{id}: {e}"))?;
        return Ok((entry, format!("{id}: will be retried now")));
    }
    if spool.read(Place::Held, id).is_ok() {
        return Err(format!(
            "{id}: held until the other transactions of its message arrive (at most \
             queue.split_window); `queue show {id}` says more"
        ));
    }
    let mut entry = spool
        .read(Place::Dead, id)
        .map_err(|_| format!("{id}: no such message"))?;
    entry.dead_reason = None;
    entry.next_attempt = now;
    spool
        .move_to(Place::Dead, Place::Queue, &entry)
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    Ok((
        entry,
        format!("{id}: moved back from the dead letters, will be retried now"),
    ))
}

/// Deletes a message, queued, held or dead.
pub async fn delete(spool: &Spool, id: &str) -> Result<String, String> {
    for place in [Place::Queue, Place::Held, Place::Dead] {
        if spool.read(place, id).is_ok() {
            spool
                .remove(place, id)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            return Ok(format!("{id}: deleted"));
        }
    }
    Err(format!("{id}: no such message"))
}
