//! Where queued messages are kept: the one interface between the queue's logic (the acceptor,
//! the scheduler, the splitter, the `queue` commands) and its storage.
//!
//! Every store makes the same promises, whatever its format:
//! - [`Store::put`] returns only once a crash can no longer lose the message (the client's 250
//!   waits for it), and leaves nothing behind when it fails (the client gets 451 and sends again);
//! - a message is removed only when asked ([`Store::remove`]: after Gmail's 200, or an operator's
//!   delete), so a crash can repeat a delivery that was in flight but never loses one;
//! - a record and its message move between places together ([`Store::move_to`]).
//!
//! The file spool ([`super::spool::Spool`]) is the embedded default and owns every byte of its
//! format; nothing outside it knows a path or a footer.

use std::path::PathBuf;

use super::control::{ControlError, Request};
use super::entry::{Entry, Place};
use super::split::Merge;
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
    /// A record that cannot be used (cut short, unparseable, written by another version).
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

/// A queue's storage. See the module docs for what every implementation promises.
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

    /// Moves a message from one place to another under its new record.
    async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> Result<(), StoreError>;

    /// Every record of `place`, oldest first.
    async fn list(&self, place: Place) -> Result<Listing, StoreError>;

    /// How many messages `place` holds (for metrics: no parsing).
    async fn count(&self, place: Place) -> Result<usize, StoreError>;

    /// Records a merge of held transactions durably before anything of it moves (see
    /// [`super::split`]); [`Store::merges`] lists it until [`Store::forget_merge`].
    async fn save_merge(&self, merge: &Merge) -> Result<(), StoreError>;

    /// Every merge record, oldest first, and those that cannot be read.
    async fn merges(&self) -> Result<(Vec<Merge>, Vec<(String, StoreError)>), StoreError>;

    /// Forgets the record of the merge that made message `id`.
    async fn forget_merge(&self, id: &str) -> Result<(), StoreError>;

    /// The `queue` commands' requests waiting for the running server, oldest first, each with
    /// the name to answer it under. A store the commands change directly has none.
    async fn requests(&self) -> Vec<(String, Request)>;

    /// Answers a request taken from [`Store::requests`].
    async fn answer(&self, name: &str, answer: Result<String, ControlError>);

    /// Carries out a `queue` command from outside the server: through the running server when
    /// one owns the queue, directly otherwise.
    async fn steer(&self, request: Request) -> Result<String, ControlError>;

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
