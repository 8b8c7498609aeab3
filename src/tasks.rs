//! Background tasks that belong to one part of the server: spawned on a tracker the server waits
//! for at shutdown, and told to end by a token the server cancels when that part must close.
//!
//! A task spawned with a bare `tokio::spawn` outlives whatever started it unless someone
//! remembers to stop it, and nobody can wait for it: a server whose shutdown "returned" could
//! still hold a database session open. Everything the server starts goes through a [`Tasks`]
//! instead (docs/design.md, "Lifecycle: every task tracked, one shutdown order").

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of one part of the server, and the signal that the part is closing.
///
/// Clones share the tracker and the signal. [`Tasks::default`] is a set that nobody closes or
/// waits for: what a one-shot command (`queue list`) or a test of a single component uses, whose
/// tasks end with their work or with the process.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    closing: CancellationToken,
}

impl Tasks {
    /// A new set, open and not closing.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` as one of these tasks: [`Tasks::wait`] waits for it too.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// The tracker itself, for a component that spawns its own tasks on it (the webhook
    /// senders); they are waited for like any of these tasks.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Cancelled once the tasks must end; each task watches it (or a child of it).
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Tells every task to end, and lets [`Tasks::wait`] return once the running ones have.
    pub fn close(&self) {
        self.closing.cancel();
        self.tracker.close();
    }

    /// Returns once the set is closed and every task in it has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}
