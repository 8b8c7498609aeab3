//! The `queue` commands' retry and delete on the records alone, written once against [`Store`]:
//! the scheduler core's commands (`schedule::requests`) build on them, adding what only the
//! scheduler's state knows (a message in flight, a held mailbox, a paused account).

use std::time::{Duration, SystemTime};

use super::record::{Entry, Place};
use super::store::{Store, StoreError};

/// How often a running server looks for requests.
pub const POLL: Duration = Duration::from_secs(1);

/// Why a `queue` command could not be carried out. The message is the command's output.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No place holds that id.
    #[error("{0}: no such message")]
    NoSuchMessage(String),
    /// A delivery of it is running right now.
    #[error("{0}: being delivered right now")]
    InFlight(String),
    /// A held transaction of a split message: released by the splitter, not by a retry.
    #[error(
        "{0}: held until the other transactions of its message arrive (at most \
         queue.split_window); `queue show {0}` says more"
    )]
    Held(String),
    /// The store failed.
    #[error("{id}: {source}")]
    Store {
        /// The message.
        id: String,
        /// What failed.
        source: StoreError,
    },
    /// The queue could not be reached (no answer from the running server, a lock that cannot be
    /// taken, a database that is down).
    #[error("{0}")]
    Unreachable(String),
    /// The running server's answer, as it wrote it.
    #[error("{0}")]
    Answered(String),
}

impl ControlError {
    fn store(id: &str) -> impl FnOnce(StoreError) -> ControlError + '_ {
        move |source| ControlError::Store {
            id: id.to_string(),
            source,
        }
    }
}

/// Makes a message due now: a queued one keeps its history, a dead one moves back to the queue.
/// Returns the updated entry and what was done.
pub async fn retry(
    store: &dyn Store,
    id: &str,
    now: SystemTime,
) -> Result<(Entry, String), ControlError> {
    let read = |place| async move { store.read(place, id).await.map_err(ControlError::store(id)) };
    if let Some(mut entry) = read(Place::Queue).await? {
        entry.next_attempt = now;
        let updated = store.update(Place::Queue, &entry).await;
        updated.map_err(ControlError::store(id))?;
        return Ok((entry, format!("{id}: will be retried now")));
    }
    if read(Place::Held).await?.is_some() {
        return Err(ControlError::Held(id.to_string()));
    }
    let Some(mut entry) = read(Place::Dead).await? else {
        return Err(ControlError::NoSuchMessage(id.to_string()));
    };
    entry.dead_reason = None;
    entry.next_attempt = now;
    let moved = store.move_to(Place::Dead, Place::Queue, &entry).await;
    moved.map_err(ControlError::store(id))?;
    Ok((
        entry,
        format!("{id}: moved back from the dead letters, will be retried now"),
    ))
}

/// Deletes a message, queued, held or dead.
pub async fn delete(store: &dyn Store, id: &str) -> Result<String, ControlError> {
    for place in [Place::Queue, Place::Held, Place::Dead] {
        if store
            .remove(place, id)
            .await
            .map_err(ControlError::store(id))?
        {
            return Ok(format!("{id}: deleted"));
        }
    }
    Err(ControlError::NoSuchMessage(id.to_string()))
}
