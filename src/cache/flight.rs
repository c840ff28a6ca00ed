//! Single-flight: concurrent misses on one key in one process run the handler (or loader) once.
//!
//! The first caller for a key becomes the **leader** and gets a [`Lead`]; later callers become
//! **followers** and wait, bounded, for what the leader lands: an entry to answer with, the
//! leader's failure to answer with (a 5xx response, a loader's error), word that the result was
//! not shareable (they then run the handler themselves), or word that the leader was cancelled.
//! Dropping a [`Lead`] without landing it counts as cancellation, so a leader whose client went
//! away never leaves followers hanging.
//!
//! [`elect`] is the one follower loop every caller uses: a cancelled leader (or a landing from
//! before an invalidation the follower saw) sends the followers back to elect a new leader among
//! themselves, **however many leaders in a row are cancelled**, until the follower's own wait
//! bound has passed. No count of attempts caps it: a fixed cap (three) once let every follower of
//! a fourth cancelled leader run the handler at once (31 runs for 30 followers instead of 5).
//!
//! [`Failures`] is the optional short error cache (`CacheLayer::error_ttl`,
//! `Options::error_ttl`): a failure kept in this process for a few seconds, keyed and guarded
//! like a landing (by the stamp of the read that preceded it).

use crate::entry::Entry;
use crate::stats::Counters;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What a leader hands its followers.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// The entry the leader stored (or served), and the invalidation clock its fill read.
    /// A follower answers with it only if its own read saw the same clock: otherwise an
    /// invalidation happened in between and the entry may predate a write the follower must see.
    Entry(Arc<Entry>, Stamp),
    /// The leader's handler or loader failed: followers that read the same stamp answer with the
    /// same failure instead of running it again.
    Failed(Failure, Stamp),
    /// The leader's result is not shareable (not cacheable): followers run on their own.
    Unshareable,
    /// The leader went away before landing: followers elect a new one.
    Cancelled,
}

/// A leader's failure, as its followers (and the error cache) share it.
#[derive(Clone)]
pub(crate) enum Failure {
    /// A 5xx response (the layer): status, headers and body as an entry that is never stored.
    /// Only responses the route could share at all (no `Set-Cookie`, not `private` / `no-store`
    /// / `no-cache`, a `Vary` it can key by) become one.
    Response(Arc<Entry>),
    /// A loader's error (the function cache): an `E` behind `Any`, cloned by each follower that
    /// calls with the same error type.
    Error(Arc<dyn Any + Send + Sync>),
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Response(e) => f.debug_tuple("Response").field(&e.status).finish(),
            Failure::Error(_) => f.write_str("Error(..)"),
        }
    }
}

impl Failure {
    /// Bytes it holds (what the error cache weighs it by).
    fn weight(&self) -> u32 {
        match self {
            Failure::Response(e) => {
                let headers: usize = e
                    .headers
                    .iter()
                    .map(|(n, v)| n.as_str().len() + v.len())
                    .sum();
                (64 + headers + e.body.len()).min(u32::MAX as usize) as u32
            }
            Failure::Error(_) => 64,
        }
    }
}

/// When a fill's read happened: the store's invalidation clock (None when the store could not be
/// read) and this process's invalidation epoch. Equal stamps mean no invalidation in between.
pub(crate) type Stamp = (Option<u64>, u64);

type Slot = watch::Receiver<Option<Landing>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<HashMap<String, Slot>>>,
}

/// The outcome of [`Flights::join`].
pub(crate) enum Join {
    Lead(Lead),
    Follow(Slot),
}

/// Held by the leader of a flight; see the module docs.
#[derive(Debug)]
pub(crate) struct Lead {
    map: Arc<Mutex<HashMap<String, Slot>>>,
    key: String,
    tx: watch::Sender<Option<Landing>>,
    landed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map only holds channel handles; a panic while it was held cannot corrupt it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flights {
    /// Flights in progress (keys being filled by a leader in this process).
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Leads the flight for `key`, or follows the one in progress.
    pub(crate) fn join(&self, key: &str) -> Join {
        let mut map = lock(&self.map);
        if let Some(rx) = map.get(key) {
            // A finished flight whose leader has not removed it yet is as good as absent.
            if rx.borrow().is_none() && rx.has_changed().is_ok() {
                return Join::Follow(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        Join::Lead(Lead {
            map: self.map.clone(),
            key: key.to_owned(),
            tx,
            landed: false,
        })
    }

    /// Leads the flight for `key` only if none is in progress (background refreshes).
    pub(crate) fn try_lead(&self, key: &str) -> Option<Lead> {
        match self.join(key) {
            Join::Lead(l) => Some(l),
            Join::Follow(_) => None,
        }
    }
}

/// What [`elect`] ends with.
#[derive(Debug)]
pub(crate) enum Elected {
    /// This caller leads the flight: it runs the handler (or loader) and lands the result.
    Lead(Lead),
    /// A leader's result this caller may answer with: [`Landing::Entry`] or
    /// [`Landing::Failed`], landed with the caller's own stamp.
    Landed(Landing),
    /// Run alone, leading nothing: the leader's result was not shareable, or the caller's wait
    /// bound passed.
    Alone,
}

/// Leads the flight for `key`, or follows it and returns what its leader landed for a caller
/// whose read had `stamp`. A cancelled leader, or a landing from a read with another stamp (an
/// invalidation in between), sends the caller back to elect a new leader, as often as it takes,
/// until `wait` has passed since the call: then it runs alone.
pub(crate) async fn elect(
    flights: &Flights,
    key: &str,
    stamp: Stamp,
    wait: Duration,
    counters: &Counters,
) -> Elected {
    let deadline = Instant::now() + wait;
    loop {
        let rx = match flights.join(key) {
            Join::Lead(l) => return Elected::Lead(l),
            Join::Follow(rx) => rx,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match follow(rx, left, counters).await {
            Some(Landing::Entry(e, s)) if s == stamp => {
                return Elected::Landed(Landing::Entry(e, s))
            }
            Some(Landing::Failed(f, s)) if s == stamp => {
                return Elected::Landed(Landing::Failed(f, s))
            }
            Some(Landing::Unshareable) | None => return Elected::Alone,
            // Cancelled, or landed for a read on the other side of an invalidation: elect again.
            Some(_) if Instant::now() < deadline => {}
            Some(_) => return Elected::Alone,
        }
    }
}

/// Waits up to `wait` for the leader, counted in [`Stats::waiting`](crate::Stats::waiting)
/// meanwhile; None when the wait timed out.
pub(crate) async fn follow(mut rx: Slot, wait: Duration, counters: &Counters) -> Option<Landing> {
    let _waiting = counters.waiting();
    match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => Some(v.clone().unwrap_or(Landing::Cancelled)),
        Ok(Err(_)) => Some(Landing::Cancelled),
        Err(_) => None,
    }
}

impl Lead {
    /// Hands `landing` to the followers and ends the flight.
    pub(crate) fn land(mut self, landing: Landing) {
        self.finish(landing);
    }

    fn finish(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        let mut map = lock(&self.map);
        // Remove our slot (not a newer flight's) so the next miss starts a new flight.
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
        drop(map);
        self.tx.send_replace(Some(landing));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.finish(Landing::Cancelled);
    }
}

/// The most bytes of failures the error cache holds per [`Cache`](crate::Cache) (a 5xx body
/// counts its size): beyond it, the least recently used failures are dropped.
const FAILURES_MAX_BYTES: u64 = 16 << 20;

/// A failure as the error cache keeps it: until `until`, for reads with `stamp`.
#[derive(Clone)]
struct Kept {
    failure: Failure,
    stamp: Stamp,
    ttl: Duration,
}

struct KeptFor;

impl moka::Expiry<String, Kept> for KeptFor {
    fn expire_after_create(&self, _: &String, v: &Kept, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &Kept,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The short error cache of one [`Cache`](crate::Cache): recent failures of handlers
/// (`CacheLayer::error_ttl`) and loaders (`Options::error_ttl`), in this process only, each for
/// its own `ttl`, bounded to [`FAILURES_MAX_BYTES`]. A failure is served only to a read with the
/// stamp it was recorded with, so any invalidation of the namespace (in any process: it advances
/// the store's clock) or in this process (the epoch) retires it at once. Created on first use.
#[derive(Default)]
pub(crate) struct Failures {
    kept: OnceLock<moka::sync::Cache<String, Kept>>,
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failures")
            .field("on", &self.kept.get().is_some())
            .finish()
    }
}

impl Failures {
    /// Keeps `failure` for `key` for `ttl`, for reads with `stamp`. A failure read without the
    /// store's clock (store unavailable) is not kept: nothing could tell when it went stale.
    pub(crate) fn keep(&self, key: &str, failure: Failure, stamp: Stamp, ttl: Duration) {
        if ttl.is_zero() || stamp.0.is_none() {
            return;
        }
        let kept = self.kept.get_or_init(|| {
            moka::sync::Cache::builder()
                .max_capacity(FAILURES_MAX_BYTES)
                .weigher(|_, v: &Kept| v.failure.weight())
                .expire_after(KeptFor)
                .build()
        });
        kept.insert(
            key.to_owned(),
            Kept {
                failure,
                stamp,
                ttl,
            },
        );
    }

    /// The failure kept for `key`, if it was recorded after a read with `stamp` and has not
    /// expired. One kept for another stamp is dropped.
    pub(crate) fn get(&self, key: &str, stamp: Stamp) -> Option<Failure> {
        let kept = self.kept.get()?;
        let k = kept.get(key)?;
        if k.stamp == stamp {
            Some(k.failure)
        } else {
            kept.invalidate(key);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_landing() {
        let f = Flights::default();
        let Join::Lead(lead) = f.join("k") else {
            panic!("first caller leads")
        };
        let Join::Follow(rx) = f.join("k") else {
            panic!("second caller follows")
        };
        let waiter =
            tokio::spawn(
                async move { follow(rx, Duration::from_secs(5), &Counters::default()).await },
            );
        lead.land(Landing::Unshareable);
        assert!(matches!(waiter.await.unwrap(), Some(Landing::Unshareable)));
        assert!(
            matches!(f.join("k"), Join::Lead(_)),
            "a landed flight is over"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let f = Flights::default();
        let lead = f.join("k");
        let Join::Follow(rx) = f.join("k") else {
            panic!()
        };
        drop(lead);
        assert!(matches!(
            follow(rx, Duration::from_secs(5), &Counters::default()).await,
            Some(Landing::Cancelled)
        ));
    }

    #[tokio::test]
    async fn follow_is_bounded() {
        let f = Flights::default();
        let _lead = f.join("k");
        let Join::Follow(rx) = f.join("k") else {
            panic!()
        };
        assert!(follow(rx, Duration::from_millis(10), &Counters::default())
            .await
            .is_none());
    }
}
