//! The store as the splitter sees it: the same store, except that every message moved to the
//! dead letters is also handed to the scheduler core, which tells of it (the event and the DSN)
//! as it tells of its own dead letters. The splitter applies that outcome itself (a split message
//! given up); the tap brings it to the one place that tells, without the splitter knowing.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::record::{Entry, Place};
use super::store::{Listing, Store, StoreError};
use crate::message::Message;

/// `inner`, handing each message it moves to [`Place::Dead`] to `given_up`.
pub struct DeadLetterTap {
    inner: Arc<dyn Store>,
    given_up: mpsc::UnboundedSender<Entry>,
}

impl DeadLetterTap {
    /// The tap on `inner`; the core receives the dead letters from `given_up`'s other end.
    pub fn new(inner: Arc<dyn Store>, given_up: mpsc::UnboundedSender<Entry>) -> DeadLetterTap {
        DeadLetterTap { inner, given_up }
    }
}

#[async_trait::async_trait]
impl Store for DeadLetterTap {
    async fn put(&self, place: Place, entry: &Entry, message: &Message) -> Result<(), StoreError> {
        self.inner.put(place, entry, message).await
    }

    async fn update(&self, place: Place, entry: &Entry) -> Result<(), StoreError> {
        self.inner.update(place, entry).await
    }

    async fn read(&self, place: Place, id: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.read(place, id).await
    }

    async fn contains(&self, place: Place, id: &str) -> Result<bool, StoreError> {
        self.inner.contains(place, id).await
    }

    async fn message(&self, place: Place, entry: &Entry) -> Result<Option<Message>, StoreError> {
        self.inner.message(place, entry).await
    }

    async fn remove(&self, place: Place, id: &str) -> Result<bool, StoreError> {
        self.inner.remove(place, id).await
    }

    async fn remove_delivered(&self, id: &str) -> Result<(), StoreError> {
        self.inner.remove_delivered(id).await
    }

    /// Moved, then told: a move that failed made no dead letter.
    async fn move_to(&self, from: Place, to: Place, entry: &Entry) -> Result<(), StoreError> {
        self.inner.move_to(from, to, entry).await?;
        if to == Place::Dead {
            // The core stops only at shutdown, with the splitter.
            let _ = self.given_up.send(entry.clone());
        }
        Ok(())
    }

    async fn list(&self, place: Place) -> Result<Listing, StoreError> {
        self.inner.list(place).await
    }

    async fn count(&self, place: Place) -> Result<usize, StoreError> {
        self.inner.count(place).await
    }

    fn spill_dir(&self) -> Option<PathBuf> {
        self.inner.spill_dir()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn problem(&self) -> Option<String> {
        self.inner.problem()
    }
}
