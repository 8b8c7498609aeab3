//! Where queued messages are kept, by concern: the records and their messages ([`Store`]), the
//! journal of merges of split messages ([`MergeJournal`]), and the channel through which the
//! `queue` commands reach a running server ([`CommandChannel`]). Each store implements the
//! concerns it has, and nothing else: the spool all three; PostgreSQL the first two (its
//! commands change the shared tables directly, so it has no channel).
//!
//! Every store makes the same promises, whatever its format:
//! - [`Store::put`] returns only once a crash can no longer lose the message (the client's 250
//!   waits for it), and leaves nothing behind when it fails (the client gets 451 and sends again);
//! - a message is removed only when asked ([`Store::remove`]: after Gmail's 200, or an operator's
//!   delete), so a crash can repeat a delivery that was in flight but never loses one;
//! - a record and its message move between places together ([`Store::move_to`]).
//!
//! Records are read through `record::Entry::from_json`, so both stores read every older version
//! of the record format (docs/queue.md, "Record format").

use std::path::PathBuf;

use super::record::{Entry, Merge, Place, RecordError, Request};
use crate::message::Message;

/// The readable records of a place, oldest first, and the ids whose records cannot be read (with
/// why): one broken record must not hide the others.
pub type Listing = (Vec<Entry>, Vec<(String, StoreError)>);

/// Why a store could not do what was asked. Messages are for the operator's log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage failed (disk, permissions, a lost connection).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A record that cannot be used (cut short, unparseable, written by a newer version).
    #[error("unreadable record: {0}")]
    Unreadable(String),
    /// The id is taken: another message's, not ours to replace.
    #[error("{0}: already stored")]
    Exists(String),
    /// The storage cannot be reached at all right now (a database down); the same request may
    /// succeed later.
    #[error("the queue storage is unavailable: {0}")]
    Unavailable(String),
}

impl From<RecordError> for StoreError {
    fn from(err: RecordError) -> Self {
        StoreError::Unreadable(err.to_string())
    }
}

/// The records of queued, held and dead messages, and their bytes. See the module docs for what
/// every implementation promises.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a newly accepted message and its record durably in `place` (`Queue`, or `Held` for
    /// one transaction of a split message).
    async fn put(&self, place: Place, entry: &Entry, message: &Message) -> Result<(), StoreError>;

    /// Replaces a message's record (after an attempt; a retry request).
    async fn update(&self, place: Place, entry: &Entry) -> Result<(), StoreError>;

    /// One record; `None` when `place` does not hold that id.
    async fn read(&self, place: Place, id: &str) -> Result<Option<Entry>, StoreError>;

    /// Whether `place` holds that id (cheaper than reading its record).
    async fn contains(&self, place: Place, id: &str) -> Result<bool, StoreError>;

    /// The bytes of a message, for delivery or for reading its headers; `None` once it has been
    /// removed. Large messages are not read into memory.
    async fn message(&self, place: Place, entry: &Entry) -> Result<Option<Message>, StoreError>;

    /// Removes a message and its record; false when `place` did not hold it.
    async fn remove(&self, place: Place, id: &str) -> Result<bool, StoreError>;

    /// After Gmail's 200: removes the message wherever it is now (keeping it would only send it
    /// again). Called by the delivery itself, so that the removals of concurrent sends proceed
    /// together instead of one after the other in the scheduler's loop.
    async fn remove_delivered(&self, id: &str) -> Result<(), StoreError>;

    /// Moves a message from one place to another under its new record.
    async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> Result<(), StoreError>;

    /// Every record of `place`, oldest first.
    async fn list(&self, place: Place) -> Result<Listing, StoreError>;

    /// How many messages `place` holds (for metrics: no parsing).
    async fn count(&self, place: Place) -> Result<usize, StoreError>;

    /// Where the SMTP sessions should spill large bodies so that [`Store::put`] can take them
    /// without a copy; `None` for the system's temporary directory.
    fn spill_dir(&self) -> Option<PathBuf>;

    /// The store for the operator's log ("the spool /var/spool/smtp2gmail").
    fn describe(&self) -> String;

    /// Why the store cannot take mail right now, for `/readyz` (a spool that is not writable,
    /// a database that is unreachable); `None` when it can. Cheap: called on every probe.
    fn problem(&self) -> Option<String> {
        None
    }
}

/// The journal of merges of held transactions (see `queue::split`): a merge is recorded durably
/// before anything of it moves, so that one a crash interrupted is completed at the next start,
/// and kept for `queue.max_age`, so that a transaction sent again later is recognised.
#[async_trait::async_trait]
pub trait MergeJournal: Send + Sync + 'static {
    /// Records a merge durably (replacing an earlier record of the same merge);
    /// [`MergeJournal::merges`] lists it until [`MergeJournal::forget_merge`].
    async fn save_merge(&self, merge: &Merge) -> Result<(), StoreError>;

    /// Every merge record, oldest first, and those that cannot be read.
    async fn merges(&self) -> Result<(Vec<Merge>, Vec<(String, StoreError)>), StoreError>;

    /// Forgets the record of the merge that made message `id`.
    async fn forget_merge(&self, id: &str) -> Result<(), StoreError>;
}

/// How the `queue` commands reach the server that owns a store whose state lives in that server's
/// memory (the spool): requests left for it, and its answers.
#[async_trait::async_trait]
pub trait CommandChannel: Send + Sync + 'static {
    /// The requests waiting for the running server, oldest first, each with the name to answer
    /// it under; taking them removes them.
    async fn requests(&self) -> Vec<(String, Request)>;

    /// Answers a request taken from [`CommandChannel::requests`].
    async fn answer(&self, name: &str, answer: Result<String, String>);
}
