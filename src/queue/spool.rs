//! The spool on disk: one `<id>.eml` (the exact received bytes) and one `<id>.json` (the [`Entry`])
//! per message, in `queue/` while it waits and in `dead/` once given up.
//!
//! The `.json` is the commit record. On accept the `.eml` is stored first, then the `.json`, then
//! the directory is fsynced — only then does the client get its 250. After Gmail's 200 the `.json`
//! is removed and the directory fsynced before anything else, so a crash can repeat a delivery
//! that was in flight but never loses one that was acknowledged. An `.eml` without `.json` is an
//! accept that never finished (no 250 was given): it is removed at start.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::message::{Address, Envelope, Message, MessageId};
use crate::safeio;

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Waiting for delivery.
    Queue,
    /// Given up: a permanent failure or too old. Kept until retried or deleted.
    Dead,
}

impl Place {
    fn dir_name(self) -> &'static str {
        match self {
            Place::Queue => "queue",
            Place::Dead => "dead",
        }
    }
}

/// One delivery attempt, for `queue show` and the operator reading a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// What happened, without secrets.
    pub outcome: String,
}

/// The metadata record of one queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The queue id (also the file names).
    pub id: String,
    /// The reverse path; `None` for `<>`.
    pub mail_from: Option<String>,
    /// The envelope recipients.
    pub rcpt_to: Vec<String>,
    /// The client that sent it.
    pub remote: String,
    /// Its HELO/EHLO name.
    pub helo: String,
    /// Its SMTP AUTH identity.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// When the server accepted it.
    #[serde(with = "humantime_serde")]
    pub received_at: SystemTime,
    /// Size of the `.eml` in bytes.
    pub size: u64,
    /// The Gmail account chosen at accept time.
    pub account: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due.
    #[serde(with = "humantime_serde")]
    pub next_attempt: SystemTime,
    /// The last failure, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why it is a dead letter, if it is one.
    #[serde(default)]
    pub dead_reason: Option<String>,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub history: Vec<Attempt>,
}

impl Entry {
    /// A fresh entry for a message accepted now.
    pub fn new(envelope: &Envelope, size: u64, account: &str) -> Entry {
        Entry {
            id: envelope.id.to_string(),
            mail_from: envelope.mail_from.as_ref().map(|a| a.to_string()),
            rcpt_to: envelope.rcpt_to.iter().map(|a| a.to_string()).collect(),
            remote: envelope.remote.to_string(),
            helo: envelope.helo.clone(),
            auth_user: envelope.auth_user.clone(),
            received_at: envelope.received_at,
            size,
            account: account.to_string(),
            attempts: 0,
            next_attempt: envelope.received_at,
            last_error: None,
            dead_reason: None,
            history: Vec::new(),
        }
    }

    /// The envelope again, for delivery.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            id: MessageId::from_stored(&self.id),
            mail_from: self.mail_from.as_deref().map(Address::new),
            rcpt_to: self.rcpt_to.iter().map(Address::new).collect(),
            remote: self
                .remote
                .parse()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            helo: self.helo.clone(),
            auth_user: self.auth_user.clone(),
            received_at: self.received_at,
        }
    }

    /// Records the outcome of an attempt that ended `at`.
    pub fn record(&mut self, at: SystemTime, outcome: String) {
        self.attempts += 1;
        self.history.push(Attempt {
            at,
            outcome: outcome.clone(),
        });
        self.last_error = Some(outcome);
    }
}

/// The readable entries of a place, and the ids whose records could not be read (with why).
pub type Listing = (Vec<Entry>, Vec<(String, io::Error)>);

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// Group commit of `queue/`'s directory entries.
    queue_sync: Arc<DirSync>,
}

/// One directory fsync shared by everyone waiting for one: twenty sessions storing at once pay
/// for one or two directory syncs instead of twenty in a row (group commit).
#[derive(Debug)]
pub struct DirSync {
    dir: PathBuf,
    /// Numbers handed to callers, each taken after the caller's rename or unlink.
    requested: AtomicU64,
    /// The highest number a finished sync is known to cover; held while a sync runs.
    synced: tokio::sync::Mutex<u64>,
}

impl DirSync {
    fn new(dir: PathBuf) -> Self {
        DirSync {
            dir,
            requested: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once a directory fsync that started after this call's changes has finished.
    pub async fn sync(&self) -> io::Result<()> {
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= mine {
            return Ok(());
        }
        // Everything requested so far happened before this sync starts, so it covers them all.
        let covers = self.requested.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        blocking(move || safeio::sync_dir(&dir)).await?;
        *synced = covers;
        Ok(())
    }
}

/// True for a queue id: the server's own ids are lowercase hex, and nothing else may reach a path.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let spool = Spool {
            root: root.to_path_buf(),
            queue_sync: Arc::new(DirSync::new(root.join(Place::Queue.dir_name()))),
        };
        for dir in [
            spool.incoming(),
            spool.dir(Place::Queue),
            spool.dir(Place::Dead),
        ] {
            std::fs::create_dir_all(&dir).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot create {}: {err}", dir.display()),
                )
            })?;
        }
        Ok(spool)
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where message bodies are spilled while they arrive: inside the spool, so that storing them
    /// is a hard link, not a copy.
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    fn dir(&self, place: Place) -> PathBuf {
        self.root.join(place.dir_name())
    }

    fn eml(&self, place: Place, id: &str) -> PathBuf {
        self.dir(place).join(format!("{id}.eml"))
    }

    fn json(&self, place: Place, id: &str) -> PathBuf {
        self.dir(place).join(format!("{id}.json"))
    }

    /// Stores a newly accepted message durably. Returns only when a crash can no longer lose it.
    ///
    /// The body and a temporary record are written and fsynced in parallel; the record is renamed
    /// into place only once both are durable, and one directory fsync shared with the sessions
    /// storing at the same moment makes the names durable ([`DirSync`]).
    pub async fn put(&self, entry: &Entry, message: &Message) -> io::Result<()> {
        let json = self.json(Place::Queue, &entry.id);
        let bytes = to_json(entry)?;
        let dir = self.dir(Place::Queue);
        let record = blocking(move || {
            let temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
            let (mut file, temp_path) = temp.into_parts();
            file.write_all(&bytes)?;
            file.sync_all()?;
            Ok(temp_path)
        });
        let eml = self.eml(Place::Queue, &entry.id);
        let (stored, record) = tokio::join!(message.store(&eml), record);
        stored?;
        let record = record?;
        blocking(move || record.persist(&json).map_err(|err| err.error)).await?;
        self.queue_sync.sync().await
    }

    /// Rewrites an entry's record (after an attempt, or a retry request).
    pub async fn update(&self, place: Place, entry: &Entry) -> io::Result<()> {
        let (json, bytes) = (self.json(place, &entry.id), to_json(entry)?);
        blocking(move || safeio::write_atomically(&json, &bytes)).await
    }

    /// Reads an entry's record.
    pub fn read(&self, place: Place, id: &str) -> io::Result<Entry> {
        let bytes = std::fs::read(self.json(place, id))?;
        serde_json::from_slice(&bytes)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// The path of an entry's message bytes.
    pub fn message_path(&self, place: Place, id: &str) -> PathBuf {
        self.eml(place, id)
    }

    /// Removes a delivered (or deleted) message: the record first, durably, then the bytes.
    pub async fn remove(&self, place: Place, id: &str) -> io::Result<()> {
        let (json, eml, dir) = (self.json(place, id), self.eml(place, id), self.dir(place));
        blocking(move || {
            std::fs::remove_file(&json)?;
            safeio::sync_dir(&dir)?;
            std::fs::remove_file(&eml).or_else(ignore_missing)
        })
        .await
    }

    /// Moves an entry between `queue/` and `dead/`, writing its new record there. The record moves
    /// last, so a crash midway leaves the message where its record is (see [`Spool::recover`]).
    pub async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> io::Result<()> {
        let id = &entry.id;
        let (eml_from, eml_to) = (self.eml(from, id), self.eml(to, id));
        let (json_from, json_to) = (self.json(from, id), self.json(to, id));
        let (dir_from, dir_to) = (self.dir(from), self.dir(to));
        let bytes = to_json(entry)?;
        blocking(move || {
            std::fs::rename(&eml_from, &eml_to)?;
            safeio::write_atomically(&json_to, &bytes)?;
            safeio::sync_dir(&dir_to)?;
            std::fs::remove_file(&json_from)?;
            safeio::sync_dir(&dir_from)
        })
        .await
    }

    /// Every readable entry in `place`, oldest first; unreadable records are reported, not fatal.
    pub fn list(&self, place: Place) -> io::Result<Listing> {
        let (mut entries, mut broken) = (Vec::new(), Vec::new());
        for id in self.ids(place, "json")? {
            match self.read(place, &id) {
                Ok(entry) => entries.push(entry),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => broken.push((id, err)),
            }
        }
        entries.sort_by_key(|e| e.received_at);
        Ok((entries, broken))
    }

    /// How many records `place` holds (no parsing; for metrics).
    pub fn count(&self, place: Place) -> usize {
        self.ids(place, "json").map_or(0, |ids| ids.len())
    }

    fn ids(&self, place: Place, extension: &str) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for item in std::fs::read_dir(self.dir(place))? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(extension)
                .and_then(|s| s.strip_suffix('.'))
                && is_valid_id(id)
            {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// Cleans up after a crash: finishes interrupted moves to `dead/`, removes bodies whose accept
    /// never completed and leftover temporary files. Returns how many incomplete accepts it removed.
    pub fn recover(&self) -> io::Result<usize> {
        let mut removed = 0;
        for id in self.ids(Place::Queue, "eml")? {
            if self.json(Place::Queue, &id).exists() {
                continue;
            }
            if self.json(Place::Dead, &id).exists() {
                std::fs::rename(self.eml(Place::Queue, &id), self.eml(Place::Dead, &id))?;
            } else {
                std::fs::remove_file(self.eml(Place::Queue, &id))?;
                removed += 1;
            }
        }
        for dir in [
            self.incoming(),
            self.dir(Place::Queue),
            self.dir(Place::Dead),
        ] {
            for item in std::fs::read_dir(&dir)? {
                let item = item?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                if dir == self.incoming() || name.starts_with(".tmp-") {
                    std::fs::remove_file(item.path()).or_else(ignore_missing)?;
                }
            }
        }
        safeio::sync_dir(&self.dir(Place::Queue))?;
        Ok(removed)
    }
}

fn to_json(entry: &Entry) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn ignore_missing(err: io::Error) -> io::Result<()> {
    if err.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}
