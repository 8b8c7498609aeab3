//! Slows down repeated AUTH failures from one address across sessions. Closing a session after
//! a few failures only makes a guesser reconnect; this makes each further guess from the same
//! address wait longer, up to [`MAX_DELAY`], until it stops failing for [`WINDOW`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have before its replies are delayed: a person mistyping gets a few
/// tries at full speed (as many as one session allows).
pub const FREE_FAILURES: u32 = 3;
/// The longest delay before a failure reply.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most; beyond this the stale ones are dropped (and, under a flood of
/// distinct addresses, everything is), so the map cannot grow without bound.
const MAX_ADDRESSES: usize = 10_000;

/// Recent AUTH failures per remote address.
#[derive(Default)]
pub struct Throttle {
    /// A std mutex: never held across an `.await`.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// Records a failure from `ip` at `now`; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&ip) {
            failures.retain(|_, (_, last)| now.duration_since(*last) < WINDOW);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        delay_after(entry.0)
    }

    /// A successful AUTH from `ip` clears its record.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&ip);
    }
}

/// 0 for the free failures, then 1 s, 2 s, 4 s, … up to [`MAX_DELAY`].
fn delay_after(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES + 1) {
        None => Duration::ZERO,
        Some(extra) => Duration::from_secs(1u64 << extra.min(5)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_address_and_reset() {
        let throttle = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..10).map(|_| throttle.failed(a, t0).as_secs()).collect();
        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(throttle.failed(b, t0), Duration::ZERO, "per address");
        assert_eq!(
            throttle.failed(a, t0 + WINDOW),
            Duration::ZERO,
            "forgotten after the window"
        );
        for _ in 0..5 {
            throttle.failed(b, t0);
        }
        throttle.succeeded(b);
        assert_eq!(throttle.failed(b, t0), Duration::ZERO, "cleared by success");
    }
}
