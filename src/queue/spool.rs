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
//!
//! Nothing outside this module knows a path in the spool or a byte of its format: the queue uses
//! it through [`Store`].

mod commands;
mod format;
mod merges;
mod recover;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{Entry, Place, is_valid_id};
use super::record::{Merge, Request};
use super::store::{CommandChannel, Listing, MergeJournal, Store, StoreError};
use crate::group_commit::BlockingGroupCommit;
use crate::message::Message;
use crate::safeio;
pub use commands::{steer, try_lock};
use format::{read_trailer, record_error, to_json};

/// Where a place's [`DirSync`] is in [`Spool`]'s array.
fn place_index(place: Place) -> usize {
    match place {
        Place::Queue => 0,
        Place::Held => 1,
        Place::Dead => 2,
    }
}

/// The directory of each place.
fn dir_name(place: Place) -> &'static str {
    place.name()
}

/// Why the one server cannot take a spool. The message is for the operator and names the spool.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The spool directory cannot be created or opened.
    #[error("queue.dir: {0}")]
    Open(#[source] io::Error),
    /// Taking the spool's lock failed.
    #[error("cannot lock the spool {}: {source}", dir.display())]
    Lock {
        /// The spool directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Another server holds the lock.
    #[error("another smtp2gmail server is using the spool {}", dir.display())]
    InUse {
        /// The spool directory.
        dir: PathBuf,
    },
    /// Cleaning up after a crash failed.
    #[error("cannot recover the spool {}: {source}", dir.display())]
    Recover {
        /// The spool directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// Group commit of the directory entries of `queue/`, `held/` and `dead/`, in that order.
    dir_syncs: Arc<[DirSync; 3]>,
}

/// One directory fsync shared by everyone waiting for one ([`BlockingGroupCommit`]): twenty
/// sessions storing at once pay for one or two directory syncs instead of twenty in a row. Run
/// in the blocking task that wrote (or removed) the file, so a message costs one hand-over to a
/// blocking thread, not two.
#[derive(Debug)]
pub struct DirSync {
    dir: PathBuf,
    group: BlockingGroupCommit,
}

impl DirSync {
    fn new(dir: PathBuf) -> Self {
        DirSync {
            dir,
            group: BlockingGroupCommit::new(),
        }
    }

    /// Returns once a directory fsync that started after this call's changes has finished;
    /// blocking.
    pub fn sync(&self) -> io::Result<()> {
        self.group.run(|| safeio::sync_dir(&self.dir))
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let spool = Spool {
            root: root.to_path_buf(),
            dir_syncs: Arc::new(
                [Place::Queue, Place::Held, Place::Dead]
                    .map(|place| DirSync::new(root.join(dir_name(place)))),
            ),
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

    /// Opens the spool at `root` for the one server that runs on it: locked (the lock is held
    /// for as long as the returned file lives), and recovered after a crash.
    pub fn open_for_server(root: &Path) -> Result<(Spool, std::fs::File), OpenError> {
        let dir = || root.to_path_buf();
        let spool = Spool::open(root).map_err(OpenError::Open)?;
        let lock = try_lock(spool.root())
            .map_err(|source| OpenError::Lock { dir: dir(), source })?
            .ok_or_else(|| OpenError::InUse { dir: dir() })?;
        let removed = spool
            .recover()
            .map_err(|source| OpenError::Recover { dir: dir(), source })?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed message bodies whose acceptance never completed (no 250 was sent)"
            );
        }
        Ok((spool, lock))
    }

    /// Opens the spool at `root` for the `queue` commands; `None` when nothing was ever queued
    /// there.
    pub fn open_for_commands(root: &Path) -> io::Result<Option<Spool>> {
        if !root.join(dir_name(Place::Queue)).is_dir() {
            return Ok(None);
        }
        Spool::open(root).map(Some)
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where message bodies are spilled while they arrive: inside the spool, so that storing them
    /// is a hard link, not a copy.
    fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// The group commit of `place`'s directory, to take into a blocking task.
    fn dir_sync(&self, place: Place) -> impl Fn() -> io::Result<()> + Send + 'static {
        let (syncs, at) = (self.dir_syncs.clone(), place_index(place));
        move || syncs[at].sync()
    }

    fn dir(&self, place: Place) -> PathBuf {
        self.root.join(dir_name(place))
    }

    fn msg(&self, place: Place, id: &str) -> PathBuf {
        self.dir(place).join(format!("{id}.msg"))
    }

    fn json(&self, place: Place, id: &str) -> PathBuf {
        self.dir(place).join(format!("{id}.json"))
    }

    /// An entry's record: its `.json` if it has one, else the record inside its `.msg`.
    fn read_record(&self, place: Place, id: &str) -> Result<Option<Entry>, StoreError> {
        let read = match std::fs::read(self.json(place, id)) {
            Ok(bytes) => Entry::from_json(&bytes).map_err(record_error),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                read_trailer(&self.msg(place, id)).map_err(io::Error::from)
            }
            Err(err) => Err(err),
        };
        match read {
            Ok(entry) => Ok(Some(entry)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            // Cut short, unparseable, or written by another version.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::Unsupported
                ) =>
            {
                Err(StoreError::Unreadable(err.to_string()))
            }
            Err(err) => Err(err.into()),
        }
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
}

#[cfg(test)]
impl Spool {
    /// Leaves a `queue` command's request for the running scheduler, as the command does.
    pub fn submit(&self, request: &Request) -> io::Result<String> {
        commands::submit(&self.root, request)
    }
}

/// The file spool keeps each message in one `.msg` (see the module docs).
#[async_trait::async_trait]
impl Store for Spool {
    /// The message and its record go into one new file under its final name, fsynced; the
    /// directory fsync that makes the name durable is shared with the sessions storing at the same
    /// moment ([`DirSync`]). A crash before the fsync leaves a file without a valid footer, which
    /// [`recover`](Spool::recover) removes: no 250 was given for it.
    async fn put(&self, place: Place, entry: &Entry, message: &Message) -> Result<(), StoreError> {
        let (path, sync) = (self.msg(place, &entry.id), self.dir_sync(place));
        let (stored_entry, message) = (entry.clone(), format::Bytes::of(message));
        let stored = blocking(move || {
            let stored = match format::write_msg(&path, &message, &stored_entry) {
                // Another message's file: not ours to remove.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                written => written.and_then(|()| sync()),
            };
            if stored.is_err() {
                // The client gets 451 and sends again: a file left here would be a second copy.
                let _ = std::fs::remove_file(&path);
            }
            stored.map(|()| true)
        });
        match stored.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Exists(entry.id.clone())),
            Err(err) => Err(err.into()),
        }
    }

    async fn update(&self, place: Place, entry: &Entry) -> Result<(), StoreError> {
        let (json, bytes) = (self.json(place, &entry.id), to_json(entry)?);
        Ok(blocking(move || safeio::write_atomically(&json, &bytes)).await?)
    }

    async fn read(&self, place: Place, id: &str) -> Result<Option<Entry>, StoreError> {
        self.read_record(place, id)
    }

    async fn remove_delivered(&self, id: &str) -> Result<(), StoreError> {
        // The one server is the only writer: a delivered message is still in the queue.
        self.remove(Place::Queue, id).await.map(drop)
    }

    async fn contains(&self, place: Place, id: &str) -> Result<bool, StoreError> {
        Ok(self.msg(place, id).try_exists()?)
    }

    async fn message(&self, place: Place, entry: &Entry) -> Result<Option<Message>, StoreError> {
        let path = self.msg(place, &entry.id);
        Ok(path
            .try_exists()?
            .then(|| Message::stored(path, entry.size)))
    }

    /// The message first, durably, then its record. The directory fsync that makes the removal
    /// durable is shared with the sessions storing into the same directory at that moment.
    async fn remove(&self, place: Place, id: &str) -> Result<bool, StoreError> {
        let (msg, json, sync) = (
            self.msg(place, id),
            self.json(place, id),
            self.dir_sync(place),
        );
        let removed = blocking(move || {
            match std::fs::remove_file(&msg) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
                other => other?,
            }
            sync()?;
            std::fs::remove_file(&json).or_else(ignore_missing)?;
            Ok(true)
        });
        Ok(removed.await?)
    }

    /// The record is written first and the old one removed last, so a crash midway leaves the
    /// message with a record beside it; a record without its message is a leftover (see
    /// [`Spool::recover`]).
    async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> Result<(), StoreError> {
        let id = &entry.id;
        let (msg_from, msg_to) = (self.msg(from, id), self.msg(to, id));
        let (json_from, json_to) = (self.json(from, id), self.json(to, id));
        let (dir_from, dir_to) = (self.dir(from), self.dir(to));
        let bytes = to_json(entry)?;
        let moved = blocking(move || {
            safeio::write_atomically(&json_to, &bytes)?;
            std::fs::rename(&msg_from, &msg_to)?;
            safeio::sync_dir(&dir_to)?;
            std::fs::remove_file(&json_from).or_else(ignore_missing)?;
            safeio::sync_dir(&dir_from)
        });
        Ok(moved.await?)
    }

    async fn list(&self, place: Place) -> Result<Listing, StoreError> {
        let (mut entries, mut broken) = (Vec::new(), Vec::new());
        for id in self.ids(place, "msg")? {
            match self.read_record(place, &id) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(err) => broken.push((id, err)),
            }
        }
        entries.sort_by_key(|e| e.received_at);
        Ok((entries, broken))
    }

    async fn count(&self, place: Place) -> Result<usize, StoreError> {
        Ok(self.ids(place, "msg")?.len())
    }

    fn spill_dir(&self) -> Option<PathBuf> {
        Some(self.incoming())
    }

    fn describe(&self) -> String {
        format!("the spool {}", self.root.display())
    }

    fn problem(&self) -> Option<String> {
        let dir = self.incoming();
        tempfile::tempfile_in(&dir)
            .err()
            .map(|err| format!("spool not writable: {}: {err}", dir.display()))
    }
}

/// The journal in `merged/` (see `merges`).
#[async_trait::async_trait]
impl MergeJournal for Spool {
    async fn save_merge(&self, merge: &Merge) -> Result<(), StoreError> {
        Ok(self.write_merge(merge).await?)
    }

    async fn merges(&self) -> Result<(Vec<Merge>, Vec<(String, StoreError)>), StoreError> {
        Ok(self.read_merges())
    }

    async fn forget_merge(&self, id: &str) -> Result<(), StoreError> {
        Ok(self.remove_merge(id).await?)
    }
}

/// Request files in `control/` (see `commands`).
#[async_trait::async_trait]
impl CommandChannel for Spool {
    async fn requests(&self) -> Vec<(String, Request)> {
        commands::pending(&self.root)
    }

    async fn answer(&self, name: &str, answer: Result<String, String>) {
        commands::answer(&self.root, name, answer)
    }
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
