//! What the code under test logs: a `Write` into a buffer the test reads, and a way to make a
//! subscriber the current thread's that sees every event despite tracing's process-wide cache.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything logged, shared with the subscriber (`with_writer(move || captured.clone())`).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Makes `subscriber` this thread's default so that it sees every event of this thread,
/// whatever other tests in this binary do on theirs.
///
/// tracing caches per callsite, process-wide, whether anyone is interested, and while at most one
/// dispatcher exists it asks only the thread that reaches the callsite first: a parallel test
/// with no subscriber would pin "saved the new refresh token" to never. A global (no-op) default
/// keeps two dispatchers alive so every registration asks them all, and the rebuild re-asks the
/// callsites registered before this test started.
pub fn capture_here(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        // Fails only if a global default exists already, which serves as well.
        let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new());
    });
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    guard
}
