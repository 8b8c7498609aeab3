//! The one retry backoff: doubling from a first wait up to a cap, with ±20 % jitter so that
//! messages or clients that failed together do not all retry at the same moment. Used by the
//! queue's scheduler (between attempts of a queued message) and by the Gmail relay's short
//! in-session retries.

use std::time::Duration;

/// The wait after `failed_attempts` failures (the first failure waits about `first`), doubling with
/// each further failure up to `max`, then jittered by ±20 %.
pub fn with_jitter(first: Duration, max: Duration, failed_attempts: u32) -> Duration {
    // 2^20 times any sane first wait is far beyond any sane cap; the bound keeps the shift legal.
    let doublings = failed_attempts.saturating_sub(1).min(20);
    let base = first.saturating_mul(1 << doublings).min(max);
    base.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_jitter(wait: Duration, base: Duration) -> bool {
        wait >= base.mul_f64(0.8) && wait <= base.mul_f64(1.2)
    }

    #[test]
    fn doubles_from_first_to_max_with_jitter() {
        let first = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        for (failures, base) in [
            (0, 60),
            (1, 60),
            (2, 120),
            (3, 240),
            (7, 3600),
            (1000, 3600),
        ] {
            let wait = with_jitter(first, max, failures);
            assert!(
                within_jitter(wait, Duration::from_secs(base)),
                "{failures}: {wait:?}"
            );
        }
        let uncapped = with_jitter(Duration::from_secs(1), Duration::MAX, 4);
        assert!(
            within_jitter(uncapped, Duration::from_secs(8)),
            "{uncapped:?}"
        );
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| with_jitter(Duration::from_secs(60), Duration::MAX, 1))
            .collect();
        assert!(waits.len() > 1, "all 20 waits were equal");
    }
}
