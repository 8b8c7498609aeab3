//! Group commit: one run of an expensive step (a directory fsync, a `NOTIFY`) on behalf of every
//! caller that asked for it before the run started.
//!
//! A caller first makes its change (creates a file, commits a row), then calls
//! [`GroupCommit::run`]. It returns once a run that *started after the change* has finished: a
//! run already under way when the caller arrived may have missed the change, so the caller waits
//! for it and then takes part in the next one, which covers everyone who arrived meanwhile.
//! Twenty sessions storing at once thus pay for one or two runs instead of twenty in a row, and a
//! lone caller pays for exactly one, as without the coordinator.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// The coordinator of one step run from async code (see the module docs).
#[derive(Debug, Default)]
pub struct GroupCommit {
    /// Tickets handed to callers, each taken after the caller's change.
    requested: AtomicU64,
    /// The highest ticket a finished run is known to cover; held while a run runs.
    covered: tokio::sync::Mutex<u64>,
}

impl GroupCommit {
    /// A coordinator with nothing requested yet.
    pub fn new() -> GroupCommit {
        GroupCommit::default()
    }

    /// Returns once a run of `step` that started after this call finished, running it here if no
    /// other caller's run covers this one. A failed run fails only the callers that ran or
    /// waited for it as their own (the next caller runs again).
    pub async fn run<E, F>(&self, step: impl FnOnce() -> F) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.covered.lock().await;
        if *covered >= mine {
            return Ok(());
        }
        // Every ticket taken so far belongs to a change made before this run starts.
        let covers = self.requested.load(Ordering::SeqCst);
        step().await?;
        *covered = covers;
        Ok(())
    }
}

/// The same for a blocking step run on a blocking thread (a directory fsync after the file's,
/// in the same blocking task: one hand-over between threads per message instead of two).
#[derive(Debug, Default)]
pub struct BlockingGroupCommit {
    requested: AtomicU64,
    covered: std::sync::Mutex<u64>,
}

impl BlockingGroupCommit {
    /// A coordinator with nothing requested yet.
    pub fn new() -> BlockingGroupCommit {
        BlockingGroupCommit::default()
    }

    /// [`GroupCommit::run`], blocking: waits on a std mutex, so call it only where blocking is
    /// allowed.
    pub fn run<E>(&self, step: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = crate::locks::lock(&self.covered);
        if *covered >= mine {
            return Ok(());
        }
        let covers = self.requested.load(Ordering::SeqCst);
        step()?;
        *covered = covers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Every caller returns after a run that started after its change, and concurrent callers
    /// share runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_runs_that_cover_them() {
        let group = Arc::new(GroupCommit::new());
        // "changes" counts changes made; a run records how many it saw when it started.
        let changes = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for _ in 0..200 {
            let (group, changes, seen, runs) =
                (group.clone(), changes.clone(), seen.clone(), runs.clone());
            callers.push(tokio::spawn(async move {
                let mine = changes.fetch_add(1, Ordering::SeqCst) + 1;
                group
                    .run(|| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        seen.store(changes.load(Ordering::SeqCst), Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok::<_, ()>(())
                    })
                    .await
                    .unwrap();
                assert!(
                    seen.load(Ordering::SeqCst) >= mine,
                    "returned before a run saw its change"
                );
            }));
        }
        for caller in callers {
            caller.await.unwrap();
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!((1..=200).contains(&runs));
    }

    /// The blocking coordinator keeps the same promise, from many threads.
    #[test]
    fn blocking_callers_share_runs_that_cover_them() {
        let group = Arc::new(BlockingGroupCommit::new());
        let (changes, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (group, changes, seen) = (group.clone(), changes.clone(), seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mine = changes.fetch_add(1, Ordering::SeqCst) + 1;
                        group
                            .run(|| {
                                seen.store(changes.load(Ordering::SeqCst), Ordering::SeqCst);
                                Ok::<_, ()>(())
                            })
                            .unwrap();
                        assert!(seen.load(Ordering::SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[tokio::test]
    async fn a_failed_run_fails_its_caller_and_the_next_runs_again() {
        let group = GroupCommit::new();
        assert_eq!(group.run(|| async { Err("disk") }).await, Err("disk"));
        let mut ran = false;
        group
            .run(|| {
                ran = true;
                async { Ok::<_, &str>(()) }
            })
            .await
            .unwrap();
        assert!(ran);
    }
}
