//! Where the inbox keeps messages: in memory (console mode, the last `max_messages`) or in
//! `file.dir` (file mode, `<id>.eml` + `<id>.json` as the file target writes them).
//!
//! Both keep an [`Index`] of every message in memory. File mode builds it from a directory
//! listing at start — no file is opened — and reads the summaries afterwards, newest first, in
//! the background; a page that shows a message not read yet reads it first. So startup costs one
//! `readdir` whatever the directory holds.
//!
//! Message bytes leave the store only as [`Loaded`], read under a [`Charge`] of the inbox's
//! memory [`Budget`] taken before the read, or as a [`stream`](Store::stream) that never holds
//! more than a chunk: no request can read a message outside the budget.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use super::body::{self, Body, Loaded, blocking};
use super::budget::{Budget, Charge};
use super::id::InboxId;
use super::index::{Entry, Index};
use super::mime::{self, Envelope, Summary};
use crate::message::{self, Message};

/// Console mode keeps bodies under 1 MiB in memory, until this much is held; the rest go to
/// unnamed temporary files, so 1000 large messages cost disk, not RAM.
const MEMORY_BUDGET: u64 = 64 * 1024 * 1024;
/// File mode reads summaries in batches of this many files per blocking task…
const LOAD_BATCH: usize = 256;
/// …and this many batches at once.
const LOADERS: usize = 8;
/// The read-state log in `file.dir`.
const READ_LOG: &str = ".smtp2gmail-inbox-read";
/// File mode reads summaries of messages up to this size in batches, under one charge of this
/// size per batch (one file at a time); larger ones are read one by one, each under its own.
const SMALL: u64 = message::SPILL_THRESHOLD as u64;

/// Where bodies live.
enum Kind {
    Memory {
        max_messages: usize,
        bodies: Mutex<HashMap<InboxId, Body>>,
        in_memory: Mutex<u64>,
    },
    Dir {
        dir: PathBuf,
        read_log: Mutex<()>,
    },
}

/// The inbox's messages.
pub struct Store {
    index: RwLock<Index>,
    kind: Kind,
    /// File mode: becomes true once every summary has been read.
    loaded: watch::Sender<bool>,
    /// What requests, captures and summaries may hold of messages at once.
    budget: Budget,
}

/// What a capture changed, for the events.
pub struct Captured {
    /// The new entry.
    pub entry: Entry,
    /// Entries dropped to stay within `max_messages`.
    pub evicted: Vec<InboxId>,
}

impl Store {
    /// Console mode: the last `max_messages` in memory, read within `budget`.
    pub fn memory(max_messages: usize, budget: Budget) -> io::Result<Store> {
        Ok(Store {
            index: RwLock::new(Index::default()),
            kind: Kind::Memory {
                max_messages,
                bodies: Mutex::default(),
                in_memory: Mutex::new(0),
            },
            loaded: watch::channel(true).0,
            budget,
        })
    }

    /// File mode: the messages in `dir` (created if missing), listed now, read later within
    /// `budget`.
    pub fn dir(dir: &Path, budget: Budget) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let read = read_log(dir)?;
        let mut index = Index::default();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".eml")) else {
                continue;
            };
            // Hidden files are not messages; nothing else in one folder fails to parse.
            let Ok(id) = InboxId::parse(stem) else {
                continue;
            };
            let received_ms = match received_from_id(&id) {
                Some(ms) => ms,
                None => modified_ms(&item.metadata()?),
            };
            index.insert(Entry {
                read: read.contains(id.as_str()),
                id,
                received_ms,
                size: 0,
                summary: None,
            });
        }
        compact_read_log(dir, &index)?;
        let done = index.is_empty();
        Ok(Store {
            index: RwLock::new(index),
            kind: Kind::Dir {
                dir: dir.to_path_buf(),
                read_log: Mutex::new(()),
            },
            loaded: watch::channel(done).0,
            budget,
        })
    }

    /// Where messages are kept, for `/api/v1/info`.
    pub fn location(&self) -> String {
        match &self.kind {
            Kind::Memory { .. } => "memory".to_string(),
            Kind::Dir { dir, .. } => dir.display().to_string(),
        }
    }

    /// The index, for reading.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a message that was just delivered (printed or filed). In file mode the files are
    /// already written; in console mode the body is kept here.
    pub async fn capture(
        &self,
        envelope: &message::Envelope,
        message: &Message,
    ) -> io::Result<Captured> {
        let id = InboxId::parse(envelope.id.as_str())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let _charge = self.budget.charge(message.len()).await;
        let raw = message.to_bytes().await?;
        if let Kind::Memory {
            bodies, in_memory, ..
        } = &self.kind
        {
            let kept = {
                let mut held = in_memory.lock().unwrap_or_else(|e| e.into_inner());
                let small = raw.len() < message::SPILL_THRESHOLD;
                let fits = small && *held + raw.len() as u64 <= MEMORY_BUDGET;
                if fits {
                    *held += raw.len() as u64;
                }
                fits
            };
            let body = match (kept, message.source()) {
                (true, _) => Body::Memory(raw.clone()),
                // The message's own spill file: kept open, it outlives its name, and nothing
                // is copied (5 MB written again per large message, before).
                (false, message::Source::OwnFile(path)) => {
                    Body::File(Arc::new(std::fs::File::open(path)?))
                }
                (false, _) => {
                    let bytes = raw.clone();
                    let file = tokio::task::spawn_blocking(move || {
                        let mut file = tempfile::tempfile()?;
                        file.write_all(&bytes).map(|()| file)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    Body::File(Arc::new(file))
                }
            };
            bodies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), body);
        }
        let record = Envelope {
            mail_from: envelope.mail_from.as_ref().map(|a| a.to_string()),
            rcpt_to: envelope.rcpt_to.iter().map(|a| a.to_string()).collect(),
        };
        let summary = tokio::task::spawn_blocking(move || mime::summarize(&raw, &record))
            .await
            .map_err(io::Error::other)?;
        let entry = Entry {
            id: id.clone(),
            received_ms: millis(envelope.received_at),
            size: message.len(),
            read: false,
            summary: Some(Arc::new(summary)),
        };
        let mut index = self.index_mut();
        index.insert(entry.clone());
        let mut evicted = Vec::new();
        if let Kind::Memory { max_messages, .. } = &self.kind {
            while index.len() > *max_messages {
                let Some(oldest) = index.oldest() else { break };
                index.remove(&oldest);
                evicted.push(oldest);
            }
        }
        drop(index);
        for id in &evicted {
            self.drop_body(id);
        }
        Ok(Captured { entry, evicted })
    }

    /// Waits for `bytes` of the budget: to hold while something made from a message's bytes,
    /// but kept without them (a cached view), is turned into an answer.
    pub async fn charge(&self, bytes: u64) -> Charge {
        self.budget.charge(bytes).await
    }

    /// The bytes of message `id`, read once a charge of their size has been taken (see
    /// [`body::load`]).
    pub async fn load(&self, id: &InboxId) -> io::Result<Option<Loaded>> {
        match self.open(id).await? {
            Some(body) => body::load(body, &self.budget).await.map(Some),
            None => Ok(None),
        }
    }

    /// The raw bytes of message `id` as a stream of chunks, with their number (see
    /// [`body::stream`]).
    pub async fn stream(&self, id: &InboxId) -> io::Result<Option<(u64, body::Chunks)>> {
        match self.open(id).await? {
            Some(body) => body::stream(body).await.map(Some),
            None => Ok(None),
        }
    }

    /// Message `id`'s body: shared from memory, or its file opened (file mode).
    async fn open(&self, id: &InboxId) -> io::Result<Option<Body>> {
        let path = match &self.kind {
            Kind::Memory { bodies, .. } => {
                let bodies = bodies.lock().unwrap_or_else(|e| e.into_inner());
                return Ok(bodies.get(id).map(Body::share));
            }
            Kind::Dir { dir, .. } => {
                if self.index().get(id).is_none() {
                    return Ok(None);
                }
                dir.join(id.file_name("eml"))
            }
        };
        match blocking(move || std::fs::File::open(path)).await {
            Ok(file) => Ok(Some(Body::File(Arc::new(file)))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The envelope sender of message `id` (`None` for the null sender), for release.
    pub fn return_path(&self, id: &str) -> Option<String> {
        let index = self.index();
        let summary = index.get(id)?.summary.clone()?;
        Some(summary.return_path.clone()).filter(|s| !s.is_empty())
    }

    /// Removes messages; returns those that were there. Only messages in the index are touched:
    /// an id names files only once it is known to be one of the inbox's messages.
    pub async fn delete(self: &Arc<Self>, ids: Vec<InboxId>) -> io::Result<Vec<InboxId>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut gone = Vec::new();
            for id in ids {
                if store.index().get(&id).is_none() {
                    continue;
                }
                if let Kind::Dir { dir, .. } = &store.kind {
                    for ext in ["eml", "json"] {
                        match std::fs::remove_file(dir.join(id.file_name(ext))) {
                            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                            _ => {}
                        }
                    }
                }
                if store.index_mut().remove(&id).is_some() {
                    store.drop_body(&id);
                    gone.push(id);
                }
            }
            Ok(gone)
        })
        .await
        .map_err(io::Error::other)?
    }

    fn drop_body(&self, id: &str) {
        if let Kind::Memory {
            bodies, in_memory, ..
        } = &self.kind
        {
            let body = bodies.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            match body {
                Some(Body::Memory(bytes)) => {
                    *in_memory.lock().unwrap_or_else(|e| e.into_inner()) -= bytes.len() as u64
                }
                // Closing the last handle frees the file's space.
                Some(Body::File(_)) | None => {}
            }
        }
    }

    /// Sets the read state of `ids`; returns those that changed.
    pub async fn set_read(self: &Arc<Self>, ids: &[InboxId], read: bool) -> Vec<InboxId> {
        let changed: Vec<InboxId> = {
            let mut index = self.index_mut();
            ids.iter()
                .filter(|id| index.set_read(id, read))
                .cloned()
                .collect()
        };
        if let Kind::Dir { dir, .. } = &self.kind
            && !changed.is_empty()
        {
            let (store, dir, ids) = (self.clone(), dir.clone(), changed.clone());
            let logged =
                tokio::task::spawn_blocking(move || store.log_read(&dir, &ids, read)).await;
            if let Ok(Err(err)) | Err(err) = logged.map_err(io::Error::other) {
                tracing::warn!(%err, "cannot record the read state in {READ_LOG}; it lasts until restart");
            }
        }
        changed
    }

    fn log_read(&self, dir: &Path, ids: &[InboxId], read: bool) -> io::Result<()> {
        let Kind::Dir { read_log, .. } = &self.kind else {
            return Ok(());
        };
        let _one_writer = read_log.lock().unwrap_or_else(|e| e.into_inner());
        let mark = if read { 'r' } else { 'u' };
        let text: String = ids.iter().map(|id| format!("{mark} {id}\n")).collect();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(READ_LOG))?
            .write_all(text.as_bytes())
    }

    /// Fills in the summaries of the entries among `ids` that have none yet (file mode).
    pub async fn ensure_loaded(self: &Arc<Self>, ids: Vec<InboxId>) {
        let Kind::Dir { dir, .. } = &self.kind else {
            return;
        };
        let missing: Vec<InboxId> = {
            let index = self.index();
            ids.into_iter()
                .filter(|id| index.get(id).is_some_and(|e| e.summary.is_none()))
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        // Small files in one blocking task, one at a time, under one charge; the larger ones
        // each under their own.
        let (store, dir) = (self.clone(), dir.clone());
        let charge = self.budget.charge(SMALL).await;
        let larger = blocking({
            let dir = dir.clone();
            move || {
                let _charge = charge;
                let mut larger = Vec::new();
                for id in missing {
                    match load_summary(&dir, &id, SMALL) {
                        Ok(loaded) => store.set_summary(&id, loaded),
                        Err(len) => larger.push((id, len)),
                    }
                }
                Ok(larger)
            }
        })
        .await;
        for (id, len) in larger.unwrap_or_default() {
            let loaded = match len > self.budget.limit() {
                true => {
                    tracing::warn!(id = %id, len, "a message of the inbox is larger than it reads at once");
                    (Summary::default(), len)
                }
                false => {
                    let charge = self.budget.charge(len).await;
                    let (dir, id) = (dir.clone(), id.clone());
                    let read = blocking(move || {
                        let _charge = charge;
                        Ok(load_summary(&dir, &id, len).unwrap_or((Summary::default(), len)))
                    });
                    read.await.unwrap_or((Summary::default(), len))
                }
            };
            self.set_summary(&id, loaded);
        }
    }

    fn set_summary(&self, id: &InboxId, (summary, size): (Summary, u64)) {
        let mut index = self.index_mut();
        index.set_summary(id, Arc::new(summary));
        if let Some(entry) = index.get(id).cloned() {
            index.insert(Entry { size, ..entry });
        }
    }

    /// File mode: reads every summary, newest first, then marks the store loaded. Run once, in
    /// the background. Several batches are read at once: on a cold cache this is waiting for the
    /// disk, one small file after another, and disks answer several requests as fast as one.
    pub async fn load_all(self: Arc<Self>) {
        use futures_util::StreamExt;
        let ids: Vec<InboxId> = self.index().newest_first().map(|e| e.id.clone()).collect();
        let batches = ids.chunks(LOAD_BATCH).map(<[InboxId]>::to_vec);
        futures_util::stream::iter(batches)
            .for_each_concurrent(LOADERS, |batch| self.ensure_loaded(batch))
            .await;
        self.loaded.send_replace(true);
    }

    /// Waits until every summary has been read (at once in console mode).
    pub async fn wait_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|&done| done).await;
    }

    /// Entries that `keep` holds, newest first, once every summary has been loaded. `keep` is
    /// first asked without the message's bytes, on the blocking pool; where it cannot tell so
    /// (`None`), the bytes are loaded, one message at a time within the budget, and it is asked
    /// again with them (a message that cannot be read is asked about as empty).
    pub async fn scan<F>(self: &Arc<Self>, keep: F) -> Vec<Entry>
    where
        F: Fn(&Entry, Option<&[u8]>) -> Option<bool> + Send + Sync + 'static,
    {
        self.wait_loaded().await;
        let entries: Vec<Entry> = self.index().newest_first().cloned().collect();
        let keep = Arc::new(keep);
        let decided = blocking({
            let keep = keep.clone();
            move || Ok(entries.into_iter().map(|e| (keep(&e, None), e)).collect())
        });
        let decided: Vec<(Option<bool>, Entry)> = decided.await.unwrap_or_default();
        let mut kept = Vec::new();
        for (decision, entry) in decided {
            let holds = match decision {
                Some(holds) => holds,
                None => match self.load(&entry.id).await {
                    Ok(Some(loaded)) => {
                        let (keep, entry) = (keep.clone(), entry.clone());
                        let decide = move || Ok(keep(&entry, Some(&loaded)) == Some(true));
                        blocking(decide).await.unwrap_or(false)
                    }
                    _ => keep(&entry, Some(&[])) == Some(true),
                },
            };
            if holds {
                kept.push(entry);
            }
        }
        kept
    }
}

/// The summary and size of `<dir>/<id>.eml`, with the envelope from `<id>.json` when present;
/// `Err(size)` when the file has more than `limit` bytes (nothing is read then). A file that
/// cannot be read gives an empty summary: it is listed, and opening it says why.
fn load_summary(dir: &Path, id: &InboxId, limit: u64) -> Result<(Summary, u64), u64> {
    use std::io::Read;
    let raw = std::fs::File::open(dir.join(id.file_name("eml"))).and_then(|file| {
        let len = file.metadata()?.len();
        if len > limit {
            return Ok(Err(len));
        }
        let mut raw = Vec::new();
        file.take(limit).read_to_end(&mut raw)?;
        Ok(Ok(raw))
    });
    let raw = match raw {
        Ok(Ok(raw)) => raw,
        Ok(Err(len)) => return Err(len),
        Err(err) => {
            tracing::warn!(%id, %err, "cannot read a message of the inbox");
            return Ok((Summary::default(), 0));
        }
    };
    let envelope: Envelope = std::fs::read(dir.join(id.file_name("json")))
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default();
    Ok((mime::summarize(&raw, &envelope), raw.len() as u64))
}

/// Our ids start with 11 hex digits of milliseconds since the epoch.
fn received_from_id(id: &str) -> Option<i64> {
    let digits = id.get(..11)?;
    (id.len() == 19 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| i64::from_str_radix(digits, 16).ok())
        .flatten()
}

fn modified_ms(metadata: &std::fs::Metadata) -> i64 {
    metadata.modified().map(millis).unwrap_or(0)
}

/// Milliseconds since the epoch.
pub fn millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The ids marked read in `dir`'s read log (later lines win).
fn read_log(dir: &Path) -> io::Result<HashSet<String>> {
    let text = match std::fs::read_to_string(dir.join(READ_LOG)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(err) => return Err(err),
    };
    let mut read = HashSet::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("r", id)) => read.insert(id.to_string()),
            Some(("u", id)) => read.remove(id),
            _ => false,
        };
    }
    Ok(read)
}

/// Rewrites the read log with only the messages still there, so it does not grow for ever.
fn compact_read_log(dir: &Path, index: &Index) -> io::Result<()> {
    let path = dir.join(READ_LOG);
    if !path.exists() {
        return Ok(());
    }
    let text: String = index
        .newest_first()
        .filter(|e| e.read)
        .map(|e| format!("r {}\n", e.id))
        .collect();
    crate::safeio::write_atomically(&path, text.as_bytes())
}
