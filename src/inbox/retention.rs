//! Retention by age (`inbox.max_age`): a sweep, every tenth of the age (at least every second, at
//! most every minute), deletes the messages received longer ago than that — in console mode from
//! memory, in file mode with their files — exactly as a `DELETE` through the API would, events
//! included, so an open page drops them too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Inbox;
use super::id::InboxId;
use super::store::millis;

/// The sweep's period for `max_age`.
pub fn period(max_age: Duration) -> Duration {
    (max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Sweeps until the server stops; returns at once when `inbox.max_age` is not set.
pub async fn run(inbox: Arc<Inbox>) {
    let Some(max_age) = inbox.max_age else {
        return;
    };
    let stopping = inbox.events.stopping();
    let mut ticks = tokio::time::interval(period(max_age));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = ticks.tick() => sweep(&inbox, max_age, SystemTime::now()).await,
        }
    }
}

/// Deletes the messages received before `now - max_age`.
pub async fn sweep(inbox: &Inbox, max_age: Duration, now: SystemTime) {
    let cutoff = millis(now).saturating_sub(max_age.as_millis() as i64);
    let old: Vec<InboxId> = {
        let index = inbox.store.index();
        index
            .newest_first()
            .filter(|e| e.received_ms < cutoff)
            .map(|e| e.id.clone())
            .collect()
    };
    if old.is_empty() {
        return;
    }
    let count = old.len();
    match inbox.delete(old).await {
        Ok(()) => tracing::info!(
            count,
            max_age = %humantime::format_duration(max_age),
            "inbox: messages older than inbox.max_age deleted"
        ),
        Err(err) => tracing::warn!(%err, "inbox: cannot delete messages older than inbox.max_age"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_runs_often_enough_but_not_too_often() {
        assert_eq!(period(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(
            period(Duration::from_secs(7 * 86400)),
            Duration::from_secs(60)
        );
    }
}
