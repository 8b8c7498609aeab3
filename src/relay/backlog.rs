//! Work on accepted mail that a person reads later — the console's summary, the inbox's capture —
//! done after the `250`, in the background, in the order the messages were accepted.
//!
//! [`Backlog`] is a delivery target that answers at once: it takes a second handle on the message
//! ([`Message::share`]: a reference count, or a hard link to a spilled body — never a copy) and
//! queues it for its [`BacklogWorker`], which hands the messages one at a time to the wrapped
//! target. Parsing and printing a 5 MB message then cost the client nothing; before, the client
//! waited for both (and for the inbox's copy of the body) inside its transaction.
//!
//! The backlog is bounded twice: at most [`MAX_WAITING`] messages, and at most
//! [`MAX_WAITING_IN_MEMORY`] bytes of bodies held in memory (large bodies wait in their spill
//! files and cost a file descriptor-free hard link). When either is full the next session waits
//! before its `250` (back-pressure), so a client faster than the console slows down to its pace
//! instead of growing the server's memory. At shutdown the worker finishes every message already
//! accepted before it ends: the SMTP sessions end first, which closes the backlog.
//!
//! Whoever reads the result — the inbox's API, which a test calls right after its `250` —
//! waits for [`Progress::caught_up`] first: the messages accepted before the request are then
//! captured, as they were when capturing happened inside the transaction.
//!
//! What the wrapped target says can no longer change the answer, which was given: a failure is
//! logged. The console and the inbox never refuse a message for its content, and a stdout that
//! cannot be written is the developer's terminal gone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::{Deliver, DeliveryError, Receipt};
use crate::message::{Envelope, Message};

/// How many accepted messages may wait for the worker.
pub const MAX_WAITING: usize = 256;
/// How many bytes of waiting bodies may be held in memory (bodies under the spill threshold).
pub const MAX_WAITING_IN_MEMORY: u64 = 16 * 1024 * 1024;

/// One accepted message waiting for the worker, with its share of the memory bound.
struct Waiting {
    envelope: Envelope,
    message: Message,
    _memory: Option<OwnedSemaphorePermit>,
}

/// The delivery target that answers at once and leaves the work to a [`BacklogWorker`].
pub struct Backlog {
    waiting: mpsc::Sender<Waiting>,
    /// The memory bound, in KiB (a semaphore counts in `u32`)…
    memory: Arc<Semaphore>,
    /// …of this many KiB in all.
    memory_total: u32,
    /// The wrapped target, asked for its size limit (which cannot wait for the worker).
    target: Arc<dyn Deliver>,
    /// How many messages were handed to the worker; held while one is, so that the count and
    /// the order in the channel agree.
    handed: tokio::sync::Mutex<u64>,
    progress: Arc<Progress>,
}

/// How far the worker has come: what a reader waits on (see the module docs).
#[derive(Debug)]
pub struct Progress {
    /// Messages accepted (handed to the worker) so far.
    accepted: watch::Sender<u64>,
    /// Messages the worker has finished, in the order accepted.
    done: watch::Sender<u64>,
}

impl Progress {
    /// Returns once every message accepted before this call has been handed on (printed and
    /// captured).
    pub async fn caught_up(&self) {
        let accepted = *self.accepted.borrow();
        let _ = self
            .done
            .subscribe()
            .wait_for(|done| *done >= accepted)
            .await;
    }
}

/// Runs the wrapped target on each accepted message, in order; ends once every [`Backlog`]
/// handle is gone and everything they accepted is done.
pub struct BacklogWorker {
    waiting: mpsc::Receiver<Waiting>,
    target: Arc<dyn Deliver>,
    progress: Arc<Progress>,
}

impl Backlog {
    /// A backlog in front of `target`, and the worker that must run for it to make progress.
    pub fn new(target: Arc<dyn Deliver>) -> (Backlog, BacklogWorker) {
        Backlog::bounded(target, MAX_WAITING, MAX_WAITING_IN_MEMORY)
    }

    /// [`Backlog::new`] with other bounds (tests).
    pub fn bounded(
        target: Arc<dyn Deliver>,
        max_waiting: usize,
        max_in_memory: u64,
    ) -> (Backlog, BacklogWorker) {
        let (sender, receiver) = mpsc::channel(max_waiting);
        let progress = Arc::new(Progress {
            accepted: watch::Sender::new(0),
            done: watch::Sender::new(0),
        });
        let backlog = Backlog {
            handed: tokio::sync::Mutex::new(0),
            progress: progress.clone(),
            waiting: sender,
            memory: Arc::new(Semaphore::new(kib(max_in_memory) as usize)),
            memory_total: kib(max_in_memory),
            target: target.clone(),
        };
        let worker = BacklogWorker {
            waiting: receiver,
            target,
            progress,
        };
        (backlog, worker)
    }

    /// How far the worker has come, for readers of what it produces.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

/// `bytes` in whole KiB, rounded up, as semaphore permits.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

#[async_trait::async_trait]
impl Deliver for Backlog {
    fn size_limit(&self, max_recipients: usize) -> Option<u64> {
        self.target.size_limit(max_recipients)
    }

    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let shared = message
            .share()
            .await
            .map_err(|err| DeliveryError::local(format!("cannot keep the message: {err}")))?;
        // A body larger than the whole bound takes all of it rather than wait forever.
        let memory = match kib(shared.in_memory()).min(self.memory_total) {
            0 => None,
            wanted => Some(
                self.memory
                    .clone()
                    .acquire_many_owned(wanted)
                    .await
                    .map_err(|_| closed())?,
            ),
        };
        let waiting = Waiting {
            envelope: envelope.clone(),
            message: shared,
            _memory: memory,
        };
        let mut handed = self.handed.lock().await;
        self.waiting.send(waiting).await.map_err(|_| closed())?;
        *handed += 1;
        self.progress.accepted.send_replace(*handed);
        Ok(Receipt::new(envelope.id.to_string()))
    }
}

/// The worker is gone (only while the server stops): the client keeps the message.
fn closed() -> DeliveryError {
    DeliveryError::local("shutting down, try again later")
}

impl BacklogWorker {
    /// Hands every accepted message to the target, in order, until the backlog is closed and
    /// empty.
    pub async fn run(mut self) {
        while let Some(waiting) = self.waiting.recv().await {
            let Waiting {
                envelope,
                message,
                _memory: held,
            } = waiting;
            if let Err(err) = self.target.deliver(&envelope, &message).await {
                tracing::warn!(id = %envelope.id, %err, "an accepted message could not be shown");
            }
            // Only now is the room it took free for the next one.
            drop((message, held));
            self.progress.done.send_modify(|done| *done += 1);
        }
    }
}

#[cfg(test)]
mod tests;
