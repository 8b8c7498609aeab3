//! The spool on disk: one `<id>.msg` per message, in `queue/` while it waits and in `dead/` once
//! given up, plus an `<id>.json` once the message has a history.
//!
//! A `.msg` holds the exact received bytes followed by the message's first record (the [`Entry`]
//! as JSON) and a fixed-size footer that gives the record's length. One file, written under its
//! final name and fsynced, then one directory fsync shared with the sessions storing at the same
//! moment ([`DirSync`]) — only then does the client get its 250. One file and one fsync per message,
//! as Postfix does: the first version wrote a body and a separate record and cost twice the file
//! creations and fsyncs on the hot path.
//!
//! A `.msg` whose footer is missing or does not add up is an accept that never finished (no 250 was
//! given): it is removed at start. Attempts, retries and dead-letter reasons are written to
//! `<id>.json` beside it (atomically: temporary file, fsync, rename); when it exists it supersedes
//! the record in the `.msg`. After Gmail's 200 the `.msg` is removed and the directory fsynced
//! before anything else, so a crash can repeat a delivery that was in flight but never loses one
//! that was acknowledged; a `.json` without its `.msg` is a leftover, removed at start.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::split::SplitRecord;
use crate::message::{Address, Envelope, Message, MessageId};
use crate::safeio;

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Waiting for delivery.
    Queue,
    /// Given up: a permanent failure or too old. Kept until retried or deleted.
    Dead,
    /// One transaction of a message an MTA split into several, waiting for the others
    /// (see [`super::split`]).
    Held,
}

impl Place {
    fn dir_name(self) -> &'static str {
        match self {
            Place::Queue => "queue",
            Place::Dead => "dead",
            Place::Held => "held",
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
    /// Size of the message in bytes (the start of its `.msg`).
    pub size: u64,
    /// The Gmail account chosen at accept time.
    pub account: String,
    /// The user the account sends as when that is each message's sender (a service account
    /// impersonating the sender), lowercased; `None` when the account is one mailbox. Gmail's
    /// limits (rate, concurrency, daily sending limit) belong to that mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Failed attempts that count towards the backoff: not those that met a paused account,
    /// so mail held for a credentials problem goes out at once when it is fixed.
    #[serde(default)]
    pub failures: u32,
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
    /// For a held transaction of a split message, or a message merged from several: which
    /// message, and what the merge did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitRecord>,
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
            mailbox: None,
            attempts: 0,
            failures: 0,
            next_attempt: envelope.received_at,
            last_error: None,
            dead_reason: None,
            history: Vec::new(),
            split: None,
        }
    }

    /// The same entry for the mailbox of `user` (see [`Entry::mailbox`]).
    pub fn with_mailbox(mut self, user: Option<&str>) -> Entry {
        self.mailbox = user.map(crate::message::mailbox::mailbox_key);
        self
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
    /// The same for `held/`.
    held_sync: Arc<DirSync>,
}

/// One directory fsync shared by everyone waiting for one: twenty sessions storing at once pay
/// for one or two directory syncs instead of twenty in a row (group commit).
#[derive(Debug)]
pub struct DirSync {
    dir: PathBuf,
    /// Numbers handed to callers, each taken after the caller created or removed a name.
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
            held_sync: Arc::new(DirSync::new(root.join(Place::Held.dir_name()))),
        };
        for dir in [
            spool.incoming(),
            spool.dir(Place::Queue),
            spool.dir(Place::Dead),
            spool.dir(Place::Held),
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

    fn msg(&self, place: Place, id: &str) -> PathBuf {
        self.dir(place).join(format!("{id}.msg"))
    }

    fn json(&self, place: Place, id: &str) -> PathBuf {
        self.dir(place).join(format!("{id}.json"))
    }

    /// Stores a newly accepted message durably. Returns only when a crash can no longer lose it.
    ///
    /// The message and its record go into one new file under its final name, fsynced; the
    /// directory fsync that makes the name durable is shared with the sessions storing at the same
    /// moment ([`DirSync`]). A crash before the fsync leaves a file without a valid footer, which
    /// [`recover`](Self::recover) removes: no 250 was given for it.
    pub async fn put(&self, entry: &Entry, message: &Message) -> io::Result<()> {
        self.put_into(Place::Queue, entry, message).await
    }

    /// [`put`](Self::put) into `place`: `Queue`, or `Held` for a transaction of a split message.
    pub async fn put_into(&self, place: Place, entry: &Entry, message: &Message) -> io::Result<()> {
        let mut trailer = serde_json::to_vec(entry).map_err(io::Error::other)?;
        trailer.extend_from_slice(&footer(trailer.len()));
        let path = self.msg(place, &entry.id);
        let sync = match place {
            Place::Held => &self.held_sync,
            _ => &self.queue_sync,
        };
        let stored = match message.store_with(&path, trailer).await {
            Ok(()) => sync.sync().await,
            // Another message's file: not ours to remove.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Err(err),
            Err(err) => Err(err),
        };
        if stored.is_err() {
            // The client gets 451 and sends again: a file left here would be a second copy.
            let _ = std::fs::remove_file(&path);
        }
        stored
    }

    /// Rewrites an entry's record (after an attempt, or a retry request).
    pub async fn update(&self, place: Place, entry: &Entry) -> io::Result<()> {
        let (json, bytes) = (self.json(place, &entry.id), to_json(entry)?);
        blocking(move || safeio::write_atomically(&json, &bytes)).await
    }

    /// Reads an entry's record: its `.json` if it has one, else the record inside its `.msg`.
    pub fn read(&self, place: Place, id: &str) -> io::Result<Entry> {
        match std::fs::read(self.json(place, id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(invalid),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                read_trailer(&self.msg(place, id)).map_err(io::Error::from)
            }
            Err(err) => Err(err),
        }
    }

    /// The path of the file that begins with an entry's message bytes ([`Entry::size`] of them).
    pub fn message_path(&self, place: Place, id: &str) -> PathBuf {
        self.msg(place, id)
    }

    /// Removes a delivered (or deleted) message: the message first, durably, then its record.
    pub async fn remove(&self, place: Place, id: &str) -> io::Result<()> {
        let (msg, json, dir) = (self.msg(place, id), self.json(place, id), self.dir(place));
        blocking(move || {
            std::fs::remove_file(&msg)?;
            safeio::sync_dir(&dir)?;
            std::fs::remove_file(&json).or_else(ignore_missing)
        })
        .await
    }

    /// Moves an entry between `queue/` and `dead/`, writing its new record there. The record is
    /// written first and the old one removed last, so a crash midway leaves the message with a
    /// record beside it; a record without its message is a leftover (see [`Spool::recover`]).
    pub async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> io::Result<()> {
        let id = &entry.id;
        let (msg_from, msg_to) = (self.msg(from, id), self.msg(to, id));
        let (json_from, json_to) = (self.json(from, id), self.json(to, id));
        let (dir_from, dir_to) = (self.dir(from), self.dir(to));
        let bytes = to_json(entry)?;
        blocking(move || {
            safeio::write_atomically(&json_to, &bytes)?;
            std::fs::rename(&msg_from, &msg_to)?;
            safeio::sync_dir(&dir_to)?;
            std::fs::remove_file(&json_from).or_else(ignore_missing)?;
            safeio::sync_dir(&dir_from)
        })
        .await
    }

    /// Every readable entry in `place`, oldest first; unreadable ones are reported, not fatal.
    pub fn list(&self, place: Place) -> io::Result<Listing> {
        let (mut entries, mut broken) = (Vec::new(), Vec::new());
        for id in self.ids(place, "msg")? {
            match self.read(place, &id) {
                Ok(entry) => entries.push(entry),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => broken.push((id, err)),
            }
        }
        entries.sort_by_key(|e| e.received_at);
        Ok((entries, broken))
    }

    /// How many messages `place` holds (no parsing; for metrics).
    pub fn count(&self, place: Place) -> usize {
        self.ids(place, "msg").map_or(0, |ids| ids.len())
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

    /// Cleans up after a crash: removes messages whose accept never completed, records left
    /// behind by an interrupted removal or move, spilled bodies and temporary files. Returns how
    /// many incomplete accepts it removed. Runs before the server accepts or delivers anything.
    pub fn recover(&self) -> io::Result<usize> {
        let mut removed = self.upgrade_eml_pairs()?;
        for place in [Place::Queue, Place::Held] {
            for id in self.ids(place, "msg")? {
                let msg = self.msg(place, &id);
                // With a `.json` it had attempts, so it was acknowledged: never removed here. Only
                // a file cut short is removed; one that cannot be read now (EIO, permissions) or
                // was written by a newer version is kept and reported by `list`.
                if !self.json(place, &id).exists()
                    && matches!(read_trailer(&msg), Err(TrailerError::Incomplete))
                {
                    std::fs::remove_file(&msg)?;
                    removed += 1;
                }
            }
        }
        for place in [Place::Queue, Place::Dead, Place::Held] {
            for id in self.ids(place, "json")? {
                // Beside an `.eml` it is an old-format record the upgrade could not read: kept.
                let eml = self.dir(place).join(format!("{id}.eml"));
                if !self.msg(place, &id).exists() && !eml.exists() {
                    std::fs::remove_file(self.json(place, &id)).or_else(ignore_missing)?;
                }
            }
        }
        for dir in [
            self.incoming(),
            self.dir(Place::Queue),
            self.dir(Place::Dead),
            self.dir(Place::Held),
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
        safeio::sync_dir(&self.dir(Place::Dead))?;
        safeio::sync_dir(&self.dir(Place::Held))?;
        Ok(removed)
    }
}

impl Spool {
    /// Spools written before a message became one file held `<id>.eml` (the bytes) and `<id>.json`
    /// (the record, the same [`Entry`] as now). Each pair becomes a `.msg`, the `.json` staying as
    /// the current record, so mail queued by an older server is delivered by a newer one. An
    /// `.eml` without its record was an unfinished accept then too: removed (and counted).
    fn upgrade_eml_pairs(&self) -> io::Result<usize> {
        let (mut upgraded, mut removed) = (0, 0);
        for place in [Place::Queue, Place::Dead] {
            for id in self.ids(place, "eml")? {
                let eml = self.dir(place).join(format!("{id}.eml"));
                let record = match std::fs::read(self.json(place, &id)) {
                    Ok(bytes) => serde_json::from_slice::<Entry>(&bytes).map_err(invalid),
                    Err(err) => Err(err),
                };
                match record {
                    Ok(mut entry) => {
                        entry.size = std::fs::metadata(&eml)?.len();
                        let mut trailer = serde_json::to_vec(&entry).map_err(io::Error::other)?;
                        trailer.extend_from_slice(&footer(trailer.len()));
                        safeio::write_with(&self.msg(place, &id), |file| {
                            io::copy(&mut std::fs::File::open(&eml)?, file)?;
                            io::Write::write_all(file, &trailer)
                        })?;
                        std::fs::remove_file(&eml)?;
                        upgraded += 1;
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        std::fs::remove_file(&eml)?;
                        removed += 1;
                    }
                    Err(err) => {
                        tracing::error!(id, %err, "unreadable record beside an old-format message file; left in place (see docs/queue.md)")
                    }
                }
            }
            safeio::sync_dir(&self.dir(place))?;
        }
        if upgraded > 0 {
            tracing::info!(
                upgraded,
                "queued messages converted to the one-file spool format"
            );
        }
        Ok(removed)
    }
}

/// Ends a `.msg`: a newline (so `tail` shows the record on a line of its own), a marker, and the
/// record's length in ten digits. Fixed size, so a reader finds the record from the file's end.
const FOOTER_MARK: &[u8] = b"\nsmtp2gmail record v1 ";
/// The start of every version's footer.
const FOOTER_FAMILY: &[u8] = b"\nsmtp2gmail record v";
const FOOTER_LEN: usize = FOOTER_MARK.len() + 10 + 1;

fn footer(record_len: usize) -> Vec<u8> {
    let mut footer = FOOTER_MARK.to_vec();
    footer.extend_from_slice(format!("{record_len:010}\n").as_bytes());
    footer
}

/// Why the record inside a `.msg` could not be read.
#[derive(Debug)]
enum TrailerError {
    /// No footer at the end, or one that does not add up: the write was cut short.
    Incomplete,
    /// A complete file that cannot be used: unreadable now, a record that does not parse or does
    /// not match, a footer of another version.
    Unusable(io::Error),
}

impl From<io::Error> for TrailerError {
    fn from(err: io::Error) -> Self {
        TrailerError::Unusable(err)
    }
}

impl From<TrailerError> for io::Error {
    fn from(err: TrailerError) -> Self {
        match err {
            TrailerError::Incomplete => {
                invalid("incomplete message file (being received, or cut short by a crash)")
            }
            TrailerError::Unusable(err) => err,
        }
    }
}

/// The record inside a `.msg`.
fn read_trailer(path: &Path) -> Result<Entry, TrailerError> {
    let mut file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    if file_len < FOOTER_LEN as u64 {
        return Err(TrailerError::Incomplete);
    }
    let mut footer = [0u8; FOOTER_LEN];
    file.seek(SeekFrom::End(-(FOOTER_LEN as i64)))?;
    file.read_exact(&mut footer)?;
    let Some(rest) = footer.strip_prefix(FOOTER_MARK) else {
        if footer.starts_with(FOOTER_FAMILY) {
            let footer = String::from_utf8_lossy(&footer).trim().to_string();
            return Err(TrailerError::Unusable(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("written by another version of smtp2gmail ({footer})"),
            )));
        }
        return Err(TrailerError::Incomplete);
    };
    let record_len: u64 = rest
        .strip_suffix(b"\n")
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .ok_or(TrailerError::Incomplete)?;
    let size = (file_len - FOOTER_LEN as u64)
        .checked_sub(record_len)
        .ok_or(TrailerError::Incomplete)?;
    let mut record = vec![0u8; record_len as usize];
    file.seek(SeekFrom::Start(size))?;
    file.read_exact(&mut record)?;
    let entry: Entry = serde_json::from_slice(&record).map_err(invalid)?;
    if entry.size != size {
        return Err(TrailerError::Unusable(invalid(format!(
            "the record says {} bytes, the file holds {size}",
            entry.size
        ))));
    }
    Ok(entry)
}

fn invalid(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
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

#[cfg(test)]
mod tests;
