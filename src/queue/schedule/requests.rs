//! The `queue` commands carried out by the core, over any state: retry now (one message or every
//! one), delete. The running spool server serves them from its request files; a command on a
//! spool no server runs, or on the database, carries them out itself with the same functions.

use std::collections::HashSet;
use std::time::SystemTime;

use super::{Scheduler, State};
use crate::queue::control::ControlError;
use crate::queue::record::{Place, Request};

/// When a message made due by a command goes out: at once (a server is delivering, or replicas
/// sharing a database learn of it), or at the server's next start (a spool no server runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// Delivered at once.
    Now,
    /// Delivered when the server starts.
    NextStart,
}

impl<S: State> Scheduler<S> {
    /// Carries out the requests waiting in the command channel, if this state has one.
    pub(super) async fn serve_requests(&mut self) {
        let Some(channel) = self.commands.clone() else {
            return;
        };
        for (name, request) in channel.requests().await {
            let now = self.clock.now();
            let answer = carry_out(&mut self.state, &self.in_flight, &request, Pickup::Now, now);
            let answer = answer.await.map_err(|err| err.to_string());
            channel.answer(&name, answer).await;
        }
    }
}

/// Carries out one request on `state`; `in_flight` are the messages being delivered by this
/// process (a retry of one of them is refused: its outcome decides), `pickup` says when retried
/// mail goes out, for the answer.
pub async fn carry_out<S: State>(
    state: &mut S,
    in_flight: &HashSet<String>,
    request: &Request,
    pickup: Pickup,
    now: SystemTime,
) -> Result<String, ControlError> {
    match request {
        Request::Retry { id: Some(id) } => retry(state, in_flight, id, now).await,
        Request::Delete { id } => state.delete(id).await,
        Request::Retry { id: None } => {
            let mut ids = Vec::new();
            for place in [Place::Queue, Place::Dead] {
                let listed = state.store().list(place).await;
                let (entries, _) =
                    listed.map_err(|err| ControlError::Unreachable(err.to_string()))?;
                ids.extend(entries.into_iter().map(|entry| entry.id));
            }
            let mut count = 0;
            for id in &ids {
                count += usize::from(retry(state, in_flight, id, now).await.is_ok());
            }
            Ok(match pickup {
                Pickup::Now => format!("{count} messages will be retried now"),
                Pickup::NextStart => format!("{count} messages will be retried at the next start"),
            })
        }
    }
}

/// An operator's "deliver now": the message is due at once, and its mailbox's deferral or hold
/// and its account's pause are lifted — the operator knows something the schedule does not (the
/// daily limit was raised, the credentials were fixed at Google's end).
async fn retry<S: State>(
    state: &mut S,
    in_flight: &HashSet<String>,
    id: &str,
    now: SystemTime,
) -> Result<String, ControlError> {
    if in_flight.contains(id) {
        return Err(ControlError::InFlight(id.to_string()));
    }
    let (entry, done) = state.due_now(id, now).await?;
    let key = super::MailboxKey::of(&entry);
    match state.lift(&key).await {
        Ok(true) => tracing::info!(mailbox = %key, "operator retry: deferral and holds lifted"),
        Ok(false) => {}
        Err(err) => tracing::warn!(mailbox = %key, %err, "operator retry: cannot lift the holds"),
    }
    Ok(done)
}
