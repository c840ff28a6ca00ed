//! Background retries of invalidations that failed because the store was unreachable.
//!
//! A write has already happened when its invalidation runs, so a failed invalidation must not
//! fail the response, and must not be forgotten. Failed invalidations wait in a bounded queue and
//! are retried in order, with backoff, until they succeed or `give_up_after` passes. While any is
//! pending, this process serves every request from the handler instead of from the cache, so it
//! cannot serve an entry that a pending invalidation is about to remove.

use super::{Cache, Inner};
use crate::store::Target;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// An invalidation to run again.
#[derive(Clone, Debug)]
pub(crate) enum Job {
    Keys(Vec<String>),
    Tags(Vec<String>),
    Pattern(String),
}

impl Job {
    pub(crate) fn target(&self) -> Target<'_> {
        match self {
            Job::Keys(k) => Target::Keys(k),
            Job::Tags(t) => Target::Tags(t),
            Job::Pattern(p) => Target::Pattern(p),
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

#[derive(Debug)]
pub(crate) struct RetryQueue {
    tx: OnceLock<mpsc::Sender<(Job, Instant)>>,
    pending: AtomicUsize,
    capacity: usize,
    give_up_after: Duration,
}

impl RetryQueue {
    pub(crate) fn new(capacity: usize, give_up_after: Duration) -> Self {
        Self {
            tx: OnceLock::new(),
            pending: AtomicUsize::new(0),
            capacity: capacity.max(1),
            give_up_after,
        }
    }

    /// Invalidations waiting to be retried.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Queues a job; false when the queue is full (the job is dropped and logged).
    pub(crate) fn push(&self, cache: &Cache, job: Job) -> bool {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.capacity);
            tokio::spawn(worker(Arc::downgrade(&cache.inner), rx));
            tx
        });
        self.pending.fetch_add(1, Ordering::AcqRel);
        match tx.try_send((job, Instant::now())) {
            Ok(()) => true,
            Err(e) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                let job = Logged(&e.into_inner().0, cache.logs_raw_keys());
                tracing::error!(%job, "invalidation retry queue full; invalidation dropped (entries expire at their TTL)");
                false
            }
        }
    }
}

async fn worker(cache: Weak<Inner>, mut rx: mpsc::Receiver<(Job, Instant)>) {
    while let Some((job, queued)) = rx.recv().await {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(inner) = cache.upgrade() else { return };
            let c = Cache { inner };
            let q = &c.inner.retry;
            match c.invalidate_target(job.target()).await {
                Ok(n) => {
                    q.pending.fetch_sub(1, Ordering::AcqRel);
                    c.counters().retry_succeeded();
                    tracing::info!(job = %Logged(&job, c.logs_raw_keys()), removed = n, "queued invalidation succeeded");
                    break;
                }
                Err(e) if queued.elapsed() >= q.give_up_after => {
                    q.pending.fetch_sub(1, Ordering::AcqRel);
                    c.counters().retry_dropped();
                    tracing::error!(job = %Logged(&job, c.logs_raw_keys()), error = %e, "gave up retrying invalidation");
                    break;
                }
                Err(_) => {}
            }
            drop(c);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
