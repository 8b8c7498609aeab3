//! Waking a replica when new mail is queued: one session per store `LISTEN`s on
//! [`super::NEW_MAIL_CHANNEL`] and turns every notification into a wake-up of the scheduler.
//!
//! An idle replica then runs no query at all. When the session ends (the server restarted, a
//! network cut) the replica is woken once (to look for what it may have missed), and a keeper
//! task listens again, waiting a little longer after each failure (at most
//! [`MAX_RECONNECT_PAUSE`]); the scheduler's own bounded sleep covers the gap meanwhile. The
//! keeper is one of the database's tasks: it ends when they close (the server's shutdown) or
//! when the store is dropped, whichever comes first, and the session with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Database, DatabaseError};

/// The longest pause between attempts to listen again during an outage.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(10);

/// The session listening for new mail, once started, and the wake-ups it gives.
pub struct Listener {
    /// A notification leaves one permit when nobody waits, so one that arrives while the
    /// scheduler is busy wakes its next wait at once.
    wake: Arc<Notify>,
    /// Stops the keeper task when the store is dropped (the database's tasks closing stops it too).
    keeper: Mutex<Option<DropGuard>>,
}

impl Listener {
    /// Not listening yet.
    pub fn new() -> Listener {
        Listener {
            wake: Arc::new(Notify::new()),
            keeper: Mutex::new(None),
        }
    }

    /// Listens, unless already listening: returns once the `LISTEN` is in place, so mail queued
    /// after this wakes [`Listener::wait`]. Fails (and can be called again) when the database
    /// cannot be reached.
    pub async fn start(&self, database: &Arc<Database>) -> Result<(), DatabaseError> {
        let mut keeper = self.keeper.lock().await;
        if keeper.is_some() {
            return Ok(());
        }
        let session = database.listen_for_new_mail().await?;
        let stop = database.tasks().closing().child_token();
        database.tasks().spawn(keep(
            database.clone(),
            session,
            self.wake.clone(),
            stop.clone(),
        ));
        *keeper = Some(stop.drop_guard());
        Ok(())
    }

    /// Returns on a notification (or one that came since the last wait), or after `timeout`;
    /// starts listening first if need be.
    pub async fn wait(&self, database: &Arc<Database>, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            if let Err(err) = self.start(database).await {
                tracing::debug!(%err, "cannot listen for new mail yet");
                return std::future::pending().await;
            }
            self.wake.notified().await
        })
        .await;
    }

    /// Wakes this replica's own waiter (a change made here that it should look at).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Default for Listener {
    fn default() -> Self {
        Listener::new()
    }
}

type Session = (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
);

/// Forwards notifications until `stop`; listens again whenever the session ends.
async fn keep(
    database: Arc<Database>,
    mut session: Session,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let (client, mut notifications) = session;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                notification = notifications.recv() => match notification {
                    Some(_) => wake.notify_one(),
                    None => break,
                },
            }
        }
        drop(client);
        tracing::warn!("lost the database session listening for new mail; listening again");
        // Mail queued while nobody listened: look for it.
        wake.notify_one();
        let mut pause = Duration::from_millis(250);
        session = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let listening = tokio::select! {
                // A connection attempt can hang as long as the network lets it.
                _ = stop.cancelled() => return,
                listening = database.listen_for_new_mail() => listening,
            };
            match listening {
                Ok(session) => break session,
                Err(err) => {
                    tracing::debug!(%err, "cannot listen for new mail yet");
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                }
            }
        };
        tracing::info!("listening for new mail again");
        wake.notify_one();
    }
}
