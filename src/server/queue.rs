//! The queue's part of the assembly, kept to these two functions: how the queue of gmail mode is
//! started for a configuration, and how its background work runs. When the queue gets one entry
//! point of its own that does both, this module is what changes.

use std::sync::Arc;
use std::time::Duration;

use crate::config::QueueConfig;
use crate::queue::{self, Started};
use crate::relay::Gmail;
use crate::tasks::Tasks;

/// Starts the queue on its configured backend, delivering through `gmail`; the storage's own
/// tasks (the database's connections and listener) run as `storage`.
pub(super) async fn start(
    config: &QueueConfig,
    gmail: Arc<Gmail>,
    storage: &Tasks,
) -> Result<Started, queue::StartError> {
    queue::start(config, gmail, storage).await
}

/// Runs the scheduler and the split-message task as `tasks` until they close; the scheduler then
/// waits up to `grace` for the deliveries in flight. Returns the spool's lock, to be held until
/// every task has ended.
pub(super) fn run(started: Started, tasks: &Tasks, grace: Duration) -> Option<std::fs::File> {
    let shutdown = tasks.closing();
    tasks.spawn(started.scheduler.run(shutdown.clone(), grace));
    tasks.spawn(started.splitter.run(shutdown.clone()));
    started.lock
}
