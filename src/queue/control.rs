//! The `queue` commands' retry and delete, written once against [`Store`] and used by every path
//! that carries them out: the running scheduler (which is then the only writer of the queue), a
//! command acting directly on a spool no server owns, or on a database any replica may be using.
//!
//! How a request reaches whoever carries it out is the store's business (the spool's request
//! files: `super::spool`).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::entry::{Entry, Place, is_valid_id};
use super::store::{Store, StoreError};

/// How often a running server looks for requests.
pub const POLL: Duration = Duration::from_secs(1);

/// What a `queue` command asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Request {
    /// Deliver now (one message, or every queued and dead one).
    Retry {
        /// The message, or `None` for all.
        #[serde(default, deserialize_with = "queue_id_or_all")]
        id: Option<String>,
    },
    /// Remove a message from the queue or the dead letters.
    Delete {
        /// The message.
        #[serde(deserialize_with = "queue_id")]
        id: String,
    },
}

/// A request's id, read from a request file: a queue id or the request is unreadable, so
/// nothing else ever reaches a spool path (the command checks it before writing the file too).
fn queue_id<'de, D: serde::Deserializer<'de>>(from: D) -> Result<String, D::Error> {
    checked(String::deserialize(from)?)
}

/// [`queue_id`], or none (every message).
fn queue_id_or_all<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(from)?
        .map(checked)
        .transpose()
}

fn checked<E: serde::de::Error>(id: String) -> Result<String, E> {
    match is_valid_id(&id) {
        true => Ok(id),
        false => Err(E::custom("not a queue id")),
    }
}

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

/// When a message made due by a command goes out: at once (a server is delivering, or replicas
/// sharing a database learn of it), or at the server's next start (a spool no server runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// Delivered at once.
    Now,
    /// Delivered when the server starts.
    NextStart,
}

/// Carries out a request directly on a store: `retry --all` makes every queued message and dead
/// letter due now; `pickup` says when they go out, for the answer.
pub async fn carry_out(
    store: &dyn Store,
    request: &Request,
    pickup: Pickup,
) -> Result<String, ControlError> {
    let now = SystemTime::now();
    match request {
        Request::Retry { id: Some(id) } => retry(store, id, now).await.map(|(_, done)| done),
        Request::Delete { id } => delete(store, id).await,
        Request::Retry { id: None } => {
            let mut count = 0;
            for place in [Place::Queue, Place::Dead] {
                let listed = store.list(place).await;
                let (entries, _) =
                    listed.map_err(|err| ControlError::Unreachable(err.to_string()))?;
                for entry in entries {
                    retry(store, &entry.id, now).await?;
                    count += 1;
                }
            }
            Ok(match pickup {
                Pickup::Now => format!("{count} messages will be retried now"),
                Pickup::NextStart => {
                    format!("{count} messages will be retried at the next start")
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_files_name_only_queue_ids() {
        let read = |json: &str| serde_json::from_str::<Request>(json).ok();
        assert_eq!(
            read(r#"{"action": "delete", "id": "0196a1b2c3d4e5f6a7b"}"#),
            Some(Request::Delete {
                id: "0196a1b2c3d4e5f6a7b".into()
            })
        );
        assert_eq!(
            read(r#"{"action": "retry", "id": null}"#),
            Some(Request::Retry { id: None })
        );
        assert_eq!(
            read(r#"{"action": "retry"}"#),
            Some(Request::Retry { id: None })
        );
        for bad in [
            r#"{"action": "delete", "id": "../../victim/token"}"#,
            r#"{"action": "retry", "id": "/etc/passwd"}"#,
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
    }
}
