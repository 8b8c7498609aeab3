//! What a file looked like at the last look, and when to look again ([`Polls`]), to notice that
//! it changed: the credential files of gmail mode and the TLS certificate are polled with it, on
//! every platform (no SIGHUP on Windows).
//!
//! Polling metadata rather than inotify/kqueue/ReadDirectoryChangesW: portable, no dependency, a
//! few `stat` calls per interval, and it sees the cases that matter. Atomic writers (`authorize`,
//! certbot, Kubernetes secret updates) rename a new file over the old one, which changes the
//! file's identity even when size and modification time happen to match; in-place editors change
//! the size or the modification time.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// A file's modification time, size and identity; `None` from [`FileFingerprint::of`] when it
/// does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFingerprint {
    modified: Option<SystemTime>,
    len: u64,
    /// Device and inode on Unix: an atomic rename replaces them even when time and size match.
    /// Windows has no stable equivalent in std; time and size decide there.
    file_id: (u64, u64),
}

impl FileFingerprint {
    /// Follows symlinks, so a Kubernetes secret (a symlink into a directory swapped on update)
    /// is seen to change.
    pub fn of(path: &Path) -> Option<FileFingerprint> {
        let metadata = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let file_id = {
            use std::os::unix::fs::MetadataExt;
            (metadata.dev(), metadata.ino())
        };
        #[cfg(not(unix))]
        let file_id = (0, 0);
        Some(FileFingerprint {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            file_id,
        })
    }
}

/// The moments of a poll: every `interval` until `shutdown`.
pub struct Polls {
    ticks: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Polls {
    /// The first look is at once.
    pub fn new(interval: Duration, shutdown: CancellationToken) -> Polls {
        let mut ticks = tokio::time::interval(interval);
        // After a stall (a suspended laptop) one look is enough, not a burst of them.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Polls { ticks, shutdown }
    }

    /// Waits for the next look; false once `shutdown` is cancelled.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.ticks.tick() => true,
        }
    }
}
