//! The `queue` commands' requests, carried out by the scheduler (the only writer of the queue
//! while the server runs): retry now, delete.

use super::{MailboxKey, Scheduler};
use crate::queue::control::{self, ControlError, Request};
use crate::queue::entry::Place;

impl Scheduler {
    /// Carries out the `queue` commands' requests.
    pub(super) async fn serve_requests(&mut self) {
        for (name, request) in self.store.requests().await {
            let answer = match &request {
                Request::Retry { id: Some(id) } => self.retry(id).await,
                Request::Retry { id: None } => {
                    let ids: Vec<String> = self.entries.keys().cloned().collect();
                    let dead = self
                        .store
                        .list(Place::Dead)
                        .await
                        .map(|(e, _)| e)
                        .unwrap_or_default();
                    let mut count = 0;
                    for id in ids.iter().chain(dead.iter().map(|e| &e.id)) {
                        count += usize::from(self.retry(id).await.is_ok());
                    }
                    Ok(format!("{count} messages will be retried now"))
                }
                Request::Delete { id } => self.delete(id).await,
            };
            self.store.answer(&name, answer).await;
        }
    }

    /// An operator's "deliver now": the message is due at once, and its account's deferral or
    /// pause is lifted — the operator knows something the schedule does not (the daily limit
    /// was raised, the credentials were fixed at Google's end).
    async fn retry(&mut self, id: &str) -> Result<String, ControlError> {
        if self.in_flight.contains(id) {
            return Err(ControlError::InFlight(id.to_string()));
        }
        let now = self.clock.now();
        let (entry, done) = match self.unschedule(id) {
            // Only the schedule changes: not worth an fsync per message of a `retry --all`. After
            // a restart the record's own time applies, which only delays the attempt.
            Some(mut entry) => {
                entry.next_attempt = now;
                (entry, format!("{id}: will be retried now"))
            }
            None => control::retry(&*self.store, id, now).await?,
        };
        let key = MailboxKey::of(&entry);
        let held = self.index.get_mut(&key).is_some_and(|mailbox| {
            let held = mailbox.held_until.is_some() || mailbox.deferred_until.is_some();
            mailbox.held_until = None;
            mailbox.deferred_until = None;
            held
        });
        let paused = self
            .accounts
            .get(&entry.account)
            .is_some_and(|account| account.paused_until.is_some());
        if held || paused {
            tracing::info!(mailbox = %key, "operator retry: deferral and holds lifted");
        }
        if paused {
            self.resume(&entry.account);
        }
        self.schedule(entry);
        Ok(done)
    }

    async fn delete(&mut self, id: &str) -> Result<String, ControlError> {
        let scheduled = self.unschedule(id);
        let done = match control::delete(&*self.store, id).await {
            Ok(done) => done,
            Err(err) => {
                // Still on disk: keep delivering it.
                scheduled.into_iter().for_each(|entry| self.schedule(entry));
                return Err(err);
            }
        };
        // A delivery in flight finds its file gone when it ends (see `finish`).
        Ok(done)
    }
}
