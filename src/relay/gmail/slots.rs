//! Gmail's concurrency limit, per mailbox.
//!
//! Gmail answers 429 "Too many concurrent requests for user" at about ten parallel sends to one
//! mailbox. The limit belongs to the mailbox, not to the credentials: a service account sending
//! as 500 users of its domain may run 500 × the limit. So the semaphores are kept per mailbox,
//! created when a mailbox first sends and dropped when it has nothing in flight, which keeps
//! memory bounded by the sends running, not by the senders ever seen.

use crate::locks::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The send slots of one account's mailboxes.
pub struct SendSlots {
    /// Parallel sends allowed per mailbox.
    per_mailbox: usize,
    /// Std mutex: held only to look up or drop an entry, never across an `.await`.
    mailboxes: Mutex<HashMap<Option<String>, Arc<Semaphore>>>,
}

/// One running send; the slot is free again when this is dropped.
pub struct SendSlot<'a> {
    slots: &'a SendSlots,
    mailbox: Option<String>,
    permit: Option<OwnedSemaphorePermit>,
}

impl SendSlots {
    /// Slots for `per_mailbox` parallel sends to each mailbox.
    pub fn new(per_mailbox: usize) -> Self {
        SendSlots {
            per_mailbox,
            mailboxes: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a free slot of `mailbox` (`None`: the credentials' own user).
    pub async fn acquire(&self, mailbox: Option<&str>) -> SendSlot<'_> {
        let mailbox = mailbox.map(crate::message::mailbox::mailbox_key);
        let semaphore = self
            .lock()
            .entry(mailbox.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_mailbox)))
            .clone();
        // Never closed, so acquiring cannot fail.
        let permit = semaphore.acquire_owned().await.ok();
        SendSlot {
            slots: self,
            mailbox,
            permit,
        }
    }

    /// How many mailboxes have a semaphore now (tests: idle mailboxes are forgotten).
    pub fn mailboxes(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<String>, Arc<Semaphore>>> {
        // The map holds no invariant a panic could break half-way.
        lock(&self.mailboxes)
    }
}

impl Drop for SendSlot<'_> {
    fn drop(&mut self) {
        let mut mailboxes = self.slots.lock();
        self.permit = None;
        // Under the lock no one can clone the semaphore meanwhile: with every permit back and
        // only the map holding it, the mailbox is idle.
        if let Some(semaphore) = mailboxes.get(&self.mailbox)
            && Arc::strong_count(semaphore) == 1
            && semaphore.available_permits() == self.slots.per_mailbox
        {
            mailboxes.remove(&self.mailbox);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mailboxes_have_their_own_slots_and_idle_ones_are_forgotten() {
        let slots = SendSlots::new(1);
        let alice = slots.acquire(Some("alice@example.com")).await;
        // Another mailbox is not held up by alice's full slot.
        let bob = slots.acquire(Some("Bob@example.com")).await;
        assert_eq!(slots.mailboxes(), 2);
        // Same mailbox, other spelling of the domain: waits for alice's slot.
        let again = slots.acquire(Some("ALICE@example.com"));
        tokio::pin!(again);
        assert!(futures_util::FutureExt::now_or_never(again.as_mut()).is_none());
        drop(alice);
        let again = again.await;
        drop(bob);
        assert_eq!(slots.mailboxes(), 1);
        drop(again);
        assert_eq!(slots.mailboxes(), 0);
    }
}
