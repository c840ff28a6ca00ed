//! The invalidations this process owes the store, retried in the background until they land.
//!
//! A write has already happened when its invalidation runs, so a failed invalidation must not
//! fail the response, and must never be lost:
//!
//! - **Owed by target.** A key, tag or pattern is owed once however many failed invalidations
//!   named it: the same key written 50 times during an outage is one retry. Keys owed together
//!   are retried together (up to [`KEYS_PER_RETRY`] per store operation).
//! - **Never dropped.** When more than `capacity` targets would be owed, or one is still failing
//!   `give_up_after` after it was first queued, everything owed is replaced by one
//!   **namespace-wide invalidation** (the *floor*): on the store, the pattern `*` over the
//!   namespace, so it advances the clock and records a tombstone that refuses every fill that
//!   read an older clock, then removes every entry of the namespace (`SCAN` on Valkey). A floor
//!   is held in memory until it lands, however long the store takes to come back; it covers every
//!   target queued before it starts, so those are not retried on their own.
//! - **Read around.** While anything is owed (queued, being retried, a floor, or an invalidation
//!   still running past its caller's `invalidation_wait`, [`RetryQueue::late`]), this process
//!   serves every request from the handler instead of from the cache ([`RetryQueue::pending`]),
//!   so it cannot serve an entry that an owed invalidation is about to remove.
//! - **Retried at once on recovery.** Failed retries back off (50 ms, doubling up to 1 s), but
//!   the first store operation that succeeds after failures (the circuit breaker closing) wakes
//!   the worker ([`RetryQueue::wake`]).
//!
//! Counted in [`Stats`](crate::Stats) (`invalidations_queued`, `invalidations_retried`,
//! `invalidation_floors`) and in `cache.invalidation.retries`.

use super::{Cache, Inner};
use crate::store::{StoreError, Target};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Keys retried in one store operation.
pub(crate) const KEYS_PER_RETRY: usize = 256;
/// Tags retried in one store operation.
const TAGS_PER_RETRY: usize = 64;
/// The pattern of a namespace-wide invalidation: every key of the namespace.
const FLOOR: &str = "*";
/// The first retry's delay, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// An invalidation to run (again).
#[derive(Clone, Debug)]
pub(crate) enum Job {
    Keys(Vec<String>),
    Tags(Vec<String>),
    Pattern(String),
    /// Every entry of the namespace ([`FLOOR`]).
    Floor,
}

impl Job {
    pub(crate) fn target(&self) -> Target<'_> {
        match self {
            Job::Keys(k) => Target::Keys(k),
            Job::Tags(t) => Target::Tags(t),
            Job::Pattern(p) => Target::Pattern(p),
            Job::Floor => Target::Pattern(FLOOR),
        }
    }
}

/// A job for logs: its keys, tags or pattern hashed, unless raw keys are allowed
/// ([`CacheBuilder::log_raw_keys`](crate::CacheBuilder::log_raw_keys)).
struct Logged<'a>(&'a Job, bool);

impl std::fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, names): (&str, Vec<&str>) = match self.0 {
            Job::Keys(k) => ("keys", k.iter().map(String::as_str).collect()),
            Job::Tags(t) => ("tags", t.iter().map(String::as_str).collect()),
            Job::Pattern(p) => ("pattern", vec![p.as_str()]),
            Job::Floor => return write!(f, "the whole namespace"),
        };
        write!(f, "{kind} [")?;
        for (n, name) in names.iter().enumerate() {
            let sep = if n == 0 { "" } else { ", " };
            if self.1 {
                write!(f, "{sep}{name}")?;
            } else {
                write!(
                    f,
                    "{sep}#{}",
                    &crate::key::short_hash(name.as_bytes())[..12]
                )?;
            }
        }
        write!(f, "]")
    }
}

/// What [`RetryQueue::push`] did with a failed invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Its targets are owed (some may have been owed already).
    Queued,
    /// Every target was owed already, or a namespace-wide invalidation that has not started
    /// yet covers it.
    Merged,
    /// The queue would hold more than its capacity: a namespace-wide invalidation is owed
    /// instead of everything queued.
    Floor,
}

/// The targets owed, each with when it was first queued.
#[derive(Debug, Default)]
struct Owed {
    keys: HashMap<String, Instant>,
    tags: HashMap<String, Instant>,
    patterns: HashMap<String, Instant>,
    /// A namespace-wide invalidation owed and not started: since when.
    floor: Option<Instant>,
    /// Targets the worker is running now: still owed until they land.
    running: usize,
    /// Invalidations still running past their caller's wait ([`RetryQueue::late`]): owed until
    /// they land or are queued.
    late: usize,
}

impl Owed {
    fn queued(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len()
    }

    fn count(&self) -> usize {
        self.queued() + usize::from(self.floor.is_some()) + self.running + self.late
    }

    /// Owes a floor instead of everything queued (which it covers: it starts after them).
    fn raise_floor(&mut self, since: Instant) {
        let oldest = self
            .keys
            .values()
            .chain(self.tags.values())
            .chain(self.patterns.values())
            .chain(self.floor.iter())
            .fold(since, |a, b| a.min(*b));
        self.keys.clear();
        self.tags.clear();
        self.patterns.clear();
        self.floor = Some(oldest);
    }
}

/// One turn of the worker: a floor, or the targets queued.
#[derive(Debug)]
enum Work {
    Floor(Instant),
    Targets {
        keys: Vec<(String, Instant)>,
        tags: Vec<(String, Instant)>,
        patterns: Vec<(String, Instant)>,
    },
}

/// What the worker and the queue share (the worker holds no strong reference to the cache).
#[derive(Debug, Default)]
struct Shared {
    owed: Mutex<Owed>,
    /// [`Owed::count`], for the read path.
    pending: AtomicUsize,
    wake: Notify,
    /// The cache is gone: the worker ends.
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Owed> {
        // Plain maps, each change made in one step: a panic elsewhere leaves them usable.
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the count after a change made under `owed`'s lock.
    fn publish(&self, owed: &Owed) {
        self.pending.store(owed.count(), Ordering::Release);
    }
}

#[derive(Debug)]
pub(crate) struct RetryQueue {
    shared: Arc<Shared>,
    worker: OnceLock<()>,
    capacity: usize,
    give_up_after: Duration,
}

impl Drop for RetryQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl RetryQueue {
    pub(crate) fn new(capacity: usize, give_up_after: Duration) -> Self {
        Self {
            shared: Arc::default(),
            worker: OnceLock::new(),
            capacity: capacity.max(1),
            give_up_after,
        }
    }

    /// Targets owed to the store (queued or being retried), plus one for a namespace-wide
    /// invalidation, plus invalidations still running past their caller's wait ([`late`]);
    /// reads go around the cache while this is not 0.
    ///
    /// [`late`]: Self::late
    pub(crate) fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Counts an invalidation that is still running when its caller stops waiting for it
    /// ([`CacheBuilder::invalidation_wait`](crate::CacheBuilder::invalidation_wait)) as owed
    /// until the returned guard is dropped: after it has landed, or failed and been
    /// [pushed](Self::push) (so the count never drops to 0 in between).
    /// None when [`LATE_MAX`] are late already: that caller keeps waiting instead (the
    /// back-pressure a waiting caller gives, so late tasks cannot pile up on a slow store).
    pub(crate) fn late(&self) -> Option<Late<'_>> {
        let mut owed = self.shared.lock();
        if owed.late >= LATE_MAX {
            return None;
        }
        owed.late += 1;
        self.shared.publish(&owed);
        Some(Late(&self.shared))
    }

    /// Lets the worker retry at once instead of at the end of its backoff (the store answered
    /// again).
    pub(crate) fn wake(&self) {
        if self.pending() > 0 {
            self.shared.wake.notify_one();
        }
    }

    /// Owes `job` (which failed with `error`) to the store: queued by target, merged with what is
    /// owed already, or replaced by a namespace-wide invalidation when the queue is full. Counted
    /// and logged here.
    pub(crate) fn push(&self, cache: &Cache, job: Job, error: &StoreError) -> Pushed {
        self.worker.get_or_init(|| {
            let inner = Arc::downgrade(&cache.inner);
            tokio::spawn(worker(inner, self.shared.clone(), self.give_up_after));
        });
        let now = Instant::now();
        let outcome = {
            let mut owed = self.shared.lock();
            let outcome = if owed.floor.is_some() {
                Pushed::Merged
            } else {
                let (map, names): (&HashMap<_, _>, Vec<&String>) = match &job {
                    Job::Keys(k) => (&owed.keys, k.iter().collect()),
                    Job::Tags(t) => (&owed.tags, t.iter().collect()),
                    Job::Pattern(p) => (&owed.patterns, vec![p]),
                    Job::Floor => (&owed.patterns, Vec::new()),
                };
                let mut new: Vec<&String> = names
                    .into_iter()
                    .filter(|n| !map.contains_key(n.as_str()))
                    .collect();
                new.sort_unstable();
                new.dedup();
                if matches!(job, Job::Floor) || owed.queued() + new.len() > self.capacity {
                    owed.raise_floor(now);
                    Pushed::Floor
                } else if new.is_empty() {
                    Pushed::Merged
                } else {
                    let map = match &job {
                        Job::Keys(_) => &mut owed.keys,
                        Job::Tags(_) => &mut owed.tags,
                        _ => &mut owed.patterns,
                    };
                    for n in new {
                        map.insert(n.clone(), now);
                    }
                    Pushed::Queued
                }
            };
            self.shared.publish(&owed);
            outcome
        };
        self.shared.wake.notify_one();
        let counters = cache.counters();
        counters.retry_queued(outcome);
        let job = Logged(&job, cache.logs_raw_keys());
        match outcome {
            Pushed::Queued => {
                tracing::warn!(%job, %error, "invalidation failed; queued for retry (reads skip the cache until it lands)");
            }
            Pushed::Merged => {
                tracing::warn!(%job, %error, "invalidation failed; already owed, retried with the earlier one (reads skip the cache until it lands)");
            }
            Pushed::Floor => {
                tracing::error!(%job, %error, capacity = self.capacity, "invalidation failed and the retry queue is full: the whole namespace will be invalidated once the store answers (reads skip the cache until then)");
            }
        }
        outcome
    }
}

/// At most this many invalidations run past their caller's wait at once ([`RetryQueue::late`]);
/// the callers of further ones wait for them in full.
pub(crate) const LATE_MAX: usize = 64;

/// An invalidation past its caller's wait, owed while this lives ([`RetryQueue::late`]).
#[derive(Debug)]
pub(crate) struct Late<'a>(&'a Shared);

impl Drop for Late<'_> {
    fn drop(&mut self) {
        let mut owed = self.0.lock();
        owed.late -= 1;
        self.0.publish(&owed);
    }
}

/// Takes what the worker runs next: a floor if one is owed (it covers everything queued), else
/// every target queued. They stay counted (as running) until [`settle`].
fn take(shared: &Shared) -> Option<Work> {
    let mut owed = shared.lock();
    let work = if let Some(since) = owed.floor.take() {
        owed.keys.clear();
        owed.tags.clear();
        owed.patterns.clear();
        owed.running = 1;
        Work::Floor(since)
    } else if owed.queued() == 0 {
        return None;
    } else {
        owed.running = owed.queued();
        Work::Targets {
            keys: owed.keys.drain().collect(),
            tags: owed.tags.drain().collect(),
            patterns: owed.patterns.drain().collect(),
        }
    };
    shared.publish(&owed);
    Some(work)
}

/// What did not land: targets to queue again (or to give up on for a floor), or the floor.
#[derive(Debug, Default)]
struct Unfinished {
    floor: Option<Instant>,
    keys: Vec<(String, Instant)>,
    tags: Vec<(String, Instant)>,
    patterns: Vec<(String, Instant)>,
}

impl Unfinished {
    fn is_empty(&self) -> bool {
        self.floor.is_none()
            && self.keys.is_empty()
            && self.tags.is_empty()
            && self.patterns.is_empty()
    }
}

/// Runs `work` against the store; returns what did not land.
async fn run(c: &Cache, work: Work) -> Unfinished {
    let mut left = Unfinished::default();
    let logs_raw = c.logs_raw_keys();
    let attempt = async |job: Job| match c.invalidate_target(job.target()).await {
        Ok(n) => {
            c.counters().retry_succeeded();
            let logged = Logged(&job, logs_raw);
            match job {
                Job::Floor => {
                    tracing::warn!(job = %logged, removed = n, "namespace-wide invalidation landed; reading from the cache again")
                }
                _ => tracing::info!(job = %logged, removed = n, "queued invalidation succeeded"),
            }
            true
        }
        Err(e) => {
            tracing::debug!(job = %Logged(&job, logs_raw), error = %e, "queued invalidation failed again");
            false
        }
    };
    match work {
        Work::Floor(since) => {
            if !attempt(Job::Floor).await {
                left.floor = Some(since);
            }
        }
        Work::Targets {
            keys,
            tags,
            patterns,
        } => {
            for chunk in keys.chunks(KEYS_PER_RETRY) {
                let job = Job::Keys(chunk.iter().map(|(k, _)| k.clone()).collect());
                if !attempt(job).await {
                    left.keys.extend_from_slice(chunk);
                }
            }
            for chunk in tags.chunks(TAGS_PER_RETRY) {
                let job = Job::Tags(chunk.iter().map(|(t, _)| t.clone()).collect());
                if !attempt(job).await {
                    left.tags.extend_from_slice(chunk);
                }
            }
            for (p, since) in patterns {
                if !attempt(Job::Pattern(p.clone())).await {
                    left.patterns.push((p, since));
                }
            }
        }
    }
    left
}

/// Owes again what did not land: a target still failing `give_up_after` after it was first
/// queued, or one more than the queue holds, makes a floor instead; a floor owed meanwhile covers
/// the rest.
fn settle(c: &Cache, shared: &Shared, left: Unfinished, give_up_after: Duration, capacity: usize) {
    let logs_raw = c.logs_raw_keys();
    let mut owed = shared.lock();
    owed.running = 0;
    let mut raised = None;
    if let Some(since) = left.floor {
        owed.floor = Some(owed.floor.map_or(since, |f| f.min(since)));
    }
    let groups = [(left.keys, 0usize), (left.tags, 1), (left.patterns, 2)];
    for (targets, group) in groups {
        for (name, since) in targets {
            if owed.floor.is_some() {
                // The floor owed starts after this target was queued: it covers it.
                continue;
            }
            if since.elapsed() >= give_up_after {
                let job = match group {
                    0 => Job::Keys(vec![name]),
                    1 => Job::Tags(vec![name]),
                    _ => Job::Pattern(name),
                };
                raised.get_or_insert(format!("{}", Logged(&job, logs_raw)));
                owed.raise_floor(since);
                continue;
            }
            let map = match group {
                0 => &mut owed.keys,
                1 => &mut owed.tags,
                _ => &mut owed.patterns,
            };
            map.entry(name)
                .and_modify(|t| *t = (*t).min(since))
                .or_insert(since);
        }
    }
    let full = owed.floor.is_none() && owed.queued() > capacity;
    if full {
        owed.raise_floor(Instant::now());
    }
    shared.publish(&owed);
    drop(owed);
    if let Some(job) = raised {
        c.counters().retry_floor();
        tracing::error!(%job, ?give_up_after, "gave up retrying an invalidation: the whole namespace will be invalidated once the store answers (reads skip the cache until then)");
    } else if full {
        c.counters().retry_floor();
        tracing::error!(capacity, "invalidation retry queue full: the whole namespace will be invalidated once the store answers (reads skip the cache until then)");
    }
}

async fn worker(cache: Weak<Inner>, shared: Arc<Shared>, give_up_after: Duration) {
    let mut backoff = BACKOFF.0;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            break;
        }
        let Some(work) = take(&shared) else {
            shared.wake.notified().await;
            continue;
        };
        let Some(inner) = cache.upgrade() else { break };
        let c = Cache { inner };
        let left = run(&c, work).await;
        let failed = !left.is_empty();
        settle(&c, &shared, left, give_up_after, c.inner.retry.capacity);
        drop(c);
        if failed {
            // Until the backoff ends, or the store answers again (`RetryQueue::wake`).
            let _ = tokio::time::timeout(backoff, shared.wake.notified()).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        } else {
            backoff = BACKOFF.0;
        }
    }
    let owed = shared.pending.load(Ordering::Acquire);
    if owed > 0 {
        tracing::error!(
            owed,
            "cache dropped while it owed the store invalidations: they are lost (entries expire at their TTL)"
        );
    }
}
