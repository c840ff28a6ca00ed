//! A circuit breaker in front of the store, so a dead Valkey adds no latency.
//!
//! Closed: every operation goes to the store. After `threshold` consecutive failures it opens:
//! operations fail at once for `cool_down`. Then one probe is let through (half-open); its success
//! closes the breaker, its failure opens it again for another cool-down.

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
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 always means "closed".
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down_ms: cool_down.as_millis() as u64,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
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

    pub(crate) fn success(&self) -> Option<Transition> {
        // Reads first: on the hot path (closed, no failures) nothing is written, so concurrent
        // requests do not contend on these cache lines.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Acquire) != 0
            && self.open_until_ms.swap(0, Ordering::AcqRel) != 0
        {
            Some(Transition::Closed)
        } else {
            None
        }
    }

    pub(crate) fn failure(&self) -> Option<Transition> {
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
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), Some(Transition::Opened));
        assert_eq!(b.permit(), Permit::Rejected);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Rejected, "only one probe per cool-down");
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.permit(), Permit::Allowed);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        b.failure();
        b.success();
        assert_eq!(b.failure(), None);
        assert!(!b.is_open());
    }
}
