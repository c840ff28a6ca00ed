//! The layout guard: every process sharing a namespace must name its keys the same way.
//!
//! A namespace's key layout (how many shards, whether hash-tagged: [`KeySpace::layout`]) is
//! part of every key name. Two processes whose layouts differ (one built with `shards(1)`, one
//! with `shards(8)`; a rolling change of the setting) would write entries, clocks and tombstones
//! under different names and miss each other's invalidations: stale reads, silently. So each
//! cache claims its layout in the store ([`Store::claim_layout`](crate::store::Store::claim_layout):
//! recorded if none is) before its first store operation, and again every
//! [`CacheBuilder::layout_check`](super::CacheBuilder::layout_check) (60 s by default, which
//! also re-creates a record lost to a flush):
//!
//! - the recorded layout is its own, or none was recorded: it goes on;
//! - another layout is recorded: the cache **fails closed**. Its reads, fills and locks fail
//!   (requests are served by the handler, uncached), it is [degraded](super::Cache::is_degraded),
//!   and its invalidations are applied in the recorded layout, so the processes that use it
//!   still see them. An error is logged when the mismatch is found;
//! - the claim fails (store down): before the first success every operation fails with the
//!   claim's error (nothing is read or written under an unchecked layout); afterwards the last
//!   verdict stands and the claim is retried a second later.
//!
//! The check costs one atomic load and a clock comparison per operation; the claim itself is one
//! store command per interval.

use crate::store::{KeySpace, StoreError, StoreErrorKind};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// No claim has succeeded yet.
const UNCHECKED: u8 = 0;
/// The recorded layout is this cache's.
const MATCHED: u8 = 1;
/// Another layout is recorded.
const MISMATCHED: u8 = 2;

/// How soon a failed claim is retried once a verdict exists.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One cache's layout guard (in `Cache`'s inner state).
#[derive(Debug)]
pub(crate) struct LayoutGuard {
    /// The record's key ([`KeySpace::layout_key`]).
    key: String,
    /// This cache's layout ([`KeySpace::layout`]).
    layout: String,
    /// The namespace and tombstone TTL, to build the recorded layout's key space.
    namespace: String,
    tombstone_ttl: Duration,
    interval: Duration,
    verdict: AtomicU8,
    /// When the next claim is due, in milliseconds since `origin`.
    next_ms: AtomicU64,
    origin: Instant,
    /// One claim at a time.
    claiming: tokio::sync::Mutex<()>,
    /// The recorded layout's key space while mismatched (None if the record is not a layout this
    /// version knows: then invalidations fail too, and are retried).
    recorded: RwLock<Option<Arc<KeySpace>>>,
}

/// What a cache may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Everything, in its own layout.
    Matched,
    /// Nothing but invalidations, in the recorded layout.
    Mismatched,
    /// A claim must be made (and waited for) first.
    Due,
}

impl LayoutGuard {
    pub(crate) fn new(namespace: &str, space: &KeySpace, interval: Duration) -> Self {
        Self {
            key: KeySpace::layout_key(namespace),
            layout: space.layout(),
            namespace: namespace.to_owned(),
            tombstone_ttl: space.tombstone_ttl(),
            interval,
            verdict: AtomicU8::new(UNCHECKED),
            next_ms: AtomicU64::new(0),
            origin: Instant::now(),
            claiming: tokio::sync::Mutex::new(()),
            recorded: RwLock::new(None),
        }
    }

    /// The record's key and this cache's layout, for the claim.
    pub(crate) fn claim(&self) -> (&str, &str) {
        (&self.key, &self.layout)
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The verdict as it stands, without waiting: `Due` when no claim has succeeded yet or the
    /// next one is due.
    #[inline]
    pub(crate) fn verdict(&self) -> Verdict {
        let v = self.verdict.load(Ordering::Acquire);
        if v == UNCHECKED || self.now_ms() >= self.next_ms.load(Ordering::Relaxed) {
            return Verdict::Due;
        }
        Self::known(v)
    }

    fn known(v: u8) -> Verdict {
        match v {
            MATCHED => Verdict::Matched,
            _ => Verdict::Mismatched,
        }
    }

    /// Whether another layout is recorded (as last checked).
    pub(crate) fn is_mismatched(&self) -> bool {
        self.verdict.load(Ordering::Acquire) == MISMATCHED
    }

    /// The verdict after a claim if one is due: `claim` runs it (the store's
    /// [`claim_layout`](crate::store::Store::claim_layout) under the cache's breaker and
    /// timeout). Before the first successful claim, callers wait for the one in progress; later,
    /// a caller that finds a claim in progress goes on with the last verdict.
    pub(crate) async fn checked<F>(&self, claim: F) -> Result<Verdict, StoreError>
    where
        F: AsyncFnOnce() -> Result<Option<String>, StoreError>,
    {
        match self.verdict() {
            Verdict::Due => {}
            v => return Ok(v),
        }
        let _one = if self.verdict.load(Ordering::Acquire) == UNCHECKED {
            self.claiming.lock().await
        } else {
            match self.claiming.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(Self::known(self.verdict.load(Ordering::Acquire))),
            }
        };
        // Another caller may have claimed while this one waited.
        match self.verdict() {
            Verdict::Due => {}
            v => return Ok(v),
        }
        match claim().await {
            Ok(recorded) => Ok(self.settle(recorded)),
            Err(e) => {
                let v = self.verdict.load(Ordering::Acquire);
                if v == UNCHECKED {
                    return Err(e);
                }
                self.next_ms.store(
                    self.now_ms() + RETRY_AFTER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                Ok(Self::known(v))
            }
        }
    }

    /// Records a claim's answer: the layout recorded before it (None: this cache's is now).
    fn settle(&self, recorded: Option<String>) -> Verdict {
        let verdict = match recorded {
            Some(other) if other != self.layout => {
                let space = KeySpace::from_layout(&self.namespace, &other, self.tombstone_ttl);
                if self.verdict.load(Ordering::Acquire) != MISMATCHED {
                    tracing::error!(
                        namespace = %self.namespace,
                        recorded = %other,
                        configured = %self.layout,
                        understood = space.is_some(),
                        "cache namespace has another key layout (shards) in the store; \
                         serving without cache, invalidating in the recorded layout"
                    );
                }
                *self.recorded.write().unwrap_or_else(|p| p.into_inner()) = space.map(Arc::new);
                MISMATCHED
            }
            _ => {
                if self.verdict.load(Ordering::Acquire) == MISMATCHED {
                    tracing::info!(namespace = %self.namespace, "cache namespace layout matches again");
                }
                *self.recorded.write().unwrap_or_else(|p| p.into_inner()) = None;
                MATCHED
            }
        };
        self.next_ms.store(
            self.now_ms() + self.interval.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.verdict.store(verdict, Ordering::Release);
        Self::known(verdict)
    }

    /// The recorded layout's key space, while mismatched and understood.
    pub(crate) fn recorded(&self) -> Option<Arc<KeySpace>> {
        self.recorded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The error of an operation refused while mismatched.
    pub(crate) fn mismatch(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::Server,
            format!(
                "namespace `{}` is recorded with another key layout than `{}`: \
                 every process sharing a namespace needs the same CacheBuilder::shards",
                self.namespace, self.layout
            ),
        )
    }
}
