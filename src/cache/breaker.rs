//! A circuit breaker in front of the store, so a dead Valkey adds no latency.
//!
//! Closed: every operation goes to the store. After `threshold` consecutive failures it opens:
//! operations fail at once for `cool_down`. Then one probe is let through (half-open); its success
//! closes the breaker, its failure opens it again for another cool-down.
//!
//! A lost connection fails every command pipelined on it at once: those are one failure, not
//! one per command. A connection failure counts only if its operation was sent after the last
//! one that counted, so a single cut with 30 requests in flight does not open the breaker (the
//! next requests reconnect), while a server that stays down (every new attempt refused) still
//! opens it within a few round trips. Timeouts count one by one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down_ms: u64,
    failures: AtomicU32,
    /// 0 when closed; otherwise the instant (ms since `epoch`) until which it stays open.
    open_until_ms: AtomicU64,
    /// When the last counted connection failure was seen (µs since `epoch`).
    last_lost_us: AtomicU64,
}

/// What the breaker says about the next operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    Allowed,
    Probe,
    Rejected,
}

/// A transition worth logging and counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    Closed,
    /// A success after failures that had not opened the breaker.
    Recovered,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 always means "closed".
    epoch().elapsed().as_millis() as u64 + 1
}

fn micros(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_micros() as u64
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        // Fixes the epoch now, so every operation's start is after it (one taken before would
        // read as 0 µs, the same as the loss it is compared with).
        epoch();
        Self {
            threshold: threshold.max(1),
            cool_down_ms: cool_down.as_millis() as u64,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            last_lost_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn permit(&self) -> Permit {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Allowed;
        }
        let now = now_ms();
        if now < until {
            return Permit::Rejected;
        }
        // Cool-down over: exactly one caller wins the probe by pushing the deadline forward.
        match self.open_until_ms.compare_exchange(
            until,
            now + self.cool_down_ms,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Permit::Probe,
            Err(_) => Permit::Rejected,
        }
    }

    /// A successful operation: [`Transition::Closed`] if it closed the breaker,
    /// [`Transition::Recovered`] if it ended a run of failures that had not opened it.
    pub(crate) fn success(&self) -> Option<Transition> {
        // Reads first: on the hot path (closed, no failures) nothing is written, so concurrent
        // requests do not contend on these cache lines.
        let recovered = self.failures.load(Ordering::Relaxed) != 0
            && self.failures.swap(0, Ordering::Relaxed) != 0;
        if self.open_until_ms.load(Ordering::Acquire) != 0
            && self.open_until_ms.swap(0, Ordering::AcqRel) != 0
        {
            Some(Transition::Closed)
        } else {
            recovered.then_some(Transition::Recovered)
        }
    }

    /// A failed operation, sent at `started`. `connection_lost`: it failed because the
    /// connection did (refused, reset, closed), which every operation in flight on it shares.
    pub(crate) fn failure(&self, started: Instant, connection_lost: bool) -> Option<Transition> {
        if connection_lost {
            // In flight when a counted loss was seen: the same loss. Only counted losses move the
            // mark, so under steady load against a dead server each new attempt still counts.
            if micros(started) < self.last_lost_us.load(Ordering::Acquire) {
                return None;
            }
            // Strictly after this operation's start, so the loss covers it.
            let seen = micros(Instant::now()).max(micros(started) + 1);
            self.last_lost_us.fetch_max(seen, Ordering::AcqRel);
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            let until = now_ms() + self.cool_down_ms;
            if self.open_until_ms.swap(until, Ordering::AcqRel) == 0 {
                return Some(Transition::Opened);
            }
        }
        None
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cool_down() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert_eq!(b.failure(Instant::now(), false), None);
        assert_eq!(b.failure(Instant::now(), false), None);
        assert_eq!(b.failure(Instant::now(), false), Some(Transition::Opened));
        assert_eq!(b.permit(), Permit::Rejected);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Rejected, "only one probe per cool-down");
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.permit(), Permit::Allowed);
        assert_eq!(b.success(), None, "closed already");
    }

    #[test]
    fn a_success_after_failures_below_the_threshold_is_a_recovery() {
        let b = Breaker::new(5, Duration::from_secs(1));
        assert_eq!(b.success(), None);
        b.failure(Instant::now(), false);
        assert_eq!(b.success(), Some(Transition::Recovered));
        assert_eq!(b.success(), None, "recovered already");
    }

    #[test]
    fn a_lost_connection_counts_once_for_the_commands_in_flight_on_it() {
        let b = Breaker::new(3, Duration::from_secs(60));
        // Thirty commands sent, then the connection drops: all fail together.
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        for _ in 0..30 {
            b.failure(sent, true);
        }
        assert!(!b.is_open(), "one lost connection is one failure");
        // Attempts sent after the loss that fail too (the server stays down) count, one by one.
        for n in 2..=3 {
            std::thread::sleep(Duration::from_millis(1));
            let t = b.failure(Instant::now(), true);
            assert_eq!(t, (n == 3).then_some(Transition::Opened), "attempt {n}");
        }
        assert!(b.is_open());
    }

    #[test]
    fn timeouts_in_flight_together_count_one_by_one() {
        let b = Breaker::new(3, Duration::from_secs(60));
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        b.failure(sent, false);
        b.failure(sent, false);
        assert_eq!(b.failure(sent, false), Some(Transition::Opened));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        b.failure(Instant::now(), false);
        b.success();
        assert_eq!(b.failure(Instant::now(), false), None);
        assert!(!b.is_open());
    }
}
