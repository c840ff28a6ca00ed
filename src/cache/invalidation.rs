//! [`Invalidation`]: keys, tags and patterns to invalidate together, run to the end whatever
//! happens to the caller.

use super::retry::Job;
use super::Cache;
use crate::store::{StoreError, StoreErrorKind};

/// Keys, tags and glob patterns to invalidate together ([`Cache::invalidate`]).
///
/// ```
/// use tower_valkey_cache::{Cache, Invalidation, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::new(MemoryStore::new());
/// let removed = cache
///     .invalidate(
///         Invalidation::new()
///             .key("user:1")
///             .tag("user:1")
///             .pattern("user_1_posts:*"),
///     )
///     .await
///     .unwrap();
/// assert_eq!(removed, 0);
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidation {
    keys: Vec<String>,
    tags: Vec<String>,
    patterns: Vec<String>,
}

impl Invalidation {
    /// Nothing to invalidate yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An exact key (relative to the namespace).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Exact keys (relative to the namespace).
    pub fn keys<I, T>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Every entry carrying `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Every entry carrying one of `tags`.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Every key matching the glob `pattern` (relative to the namespace; escape user input with
    /// [`glob_escape`](crate::key::glob_escape)).
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.patterns.push(pattern.into());
        self
    }

    /// Every key matching one of the glob `patterns`.
    pub fn patterns<I, T>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.patterns.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Whether there is nothing to invalidate.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty() && self.patterns.is_empty()
    }

    /// The store operations: one for all keys, one for all tags, one per pattern. Keys and tags
    /// are bounded as they were when stored ([`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN)), so a
    /// long key names its entry and a long tag its tag set.
    pub(crate) fn into_jobs(self) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(2 + self.patterns.len());
        if !self.keys.is_empty() {
            let keys = self
                .keys
                .into_iter()
                .map(crate::key::bound_length)
                .collect();
            jobs.push(Job::Keys(keys));
        }
        if !self.tags.is_empty() {
            let tags = self
                .tags
                .into_iter()
                .map(crate::key::bound_length)
                .collect();
            jobs.push(Job::Tags(tags));
        }
        jobs.extend(self.patterns.into_iter().map(Job::Pattern));
        jobs
    }
}

impl Cache {
    /// Runs every part of `invalidation` to the end and returns how many entries it removed.
    ///
    /// **Cancellation-safe**: the work runs in a task of its own (when a Tokio runtime runs
    /// this), so dropping the returned future (a client disconnect, a `TimeoutLayer`) does not
    /// stop it halfway. **Never lost**: a part the store does not accept now (unreachable, slow,
    /// breaker open) is owed to the store and retried in the background (merged with what is
    /// owed already, or replaced by a namespace-wide invalidation when the retry queue is full);
    /// until it lands this process reads around the cache (see
    /// [`CacheBuilder::invalidation_retry`](crate::CacheBuilder::invalidation_retry)). The result
    /// is then `Err` with the first failure, meaning "owed", not "lost". **Bounded wait** (opt-in,
    /// [`invalidation_wait`](crate::CacheBuilder::invalidation_wait)): an invalidation still
    /// running past the wait carries on in its task, owed in the same way, and the result is a
    /// [`Timeout`](StoreErrorKind::Timeout) error; by default the caller waits for all of it.
    ///
    /// [`invalidate_key`](Self::invalidate_key), [`invalidate_tag`](Self::invalidate_tag),
    /// [`invalidate_pattern`](Self::invalidate_pattern) and their plural forms are shorthands
    /// for this, and [`InvalidateLayer`](crate::InvalidateLayer) runs its templates through it.
    pub async fn invalidate(&self, invalidation: Invalidation) -> Result<u64, StoreError> {
        let jobs = invalidation.into_jobs();
        if jobs.is_empty() {
            return Ok(0);
        }
        let cache = self.clone();
        let run = async move {
            let mut removed = 0;
            let mut failed = None;
            let mut announced = false;
            for job in jobs {
                match cache.invalidate_or_queue(job).await {
                    Ok(n) => {
                        removed += n;
                        announced = true;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            // `l1_strict`: every instance's L1 has applied the announcements, or stopped
            // serving until it has, once its bound has passed (crate::l1, "The bound").
            if let (true, Some(wait)) = (announced, cache.inner.l1.strict_wait()) {
                tokio::time::sleep(wait).await;
            }
            match failed {
                None => Ok(removed),
                Some(e) => Err(e),
            }
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return run.await;
        };
        let ended_early = |detail: &dyn std::fmt::Display| {
            Err(StoreError::new(
                StoreErrorKind::Server,
                format!("invalidation task ended early: {detail}"),
            ))
        };
        let Some(wait) = self.inner.invalidation_wait else {
            return rt.spawn(run).await.unwrap_or_else(|e| ended_early(&e));
        };
        // The caller waits `invalidation_wait` at most; past it the task carries on, owed
        // (`RetryQueue::late`) until it has landed or been queued for retry.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let owner = self.clone();
        rt.spawn(async move {
            let mut run = std::pin::pin!(run);
            if let Some(result) = super::ops::within(wait, &mut run).await {
                let _ = tx.send(result);
                return;
            }
            // Taken before the caller hears of it, released after `run` has landed or queued
            // what failed: never a moment where nothing is owed. None when `LATE_MAX` are late
            // already: this caller waits in full (back-pressure on a slow store).
            let Some(_late) = owner.inner.retry.late() else {
                let _ = tx.send(run.await);
                return;
            };
            owner.inner.counters.invalidation_late();
            let _ = tx.send(Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "invalidation still running after {wait:?} (invalidation_wait): owed until it lands, reads skip the cache until then"
                ),
            )));
            match run.await {
                Ok(_) => tracing::info!(namespace = %owner.inner.namespace, "late invalidation landed"),
                Err(e) => tracing::info!(namespace = %owner.inner.namespace, error = %e, "late invalidation failed; queued for retry"),
            }
        });
        rx.await.unwrap_or_else(|e| ended_early(&e))
    }

    /// Invalidates one key; returns how many entries were removed. See
    /// [`invalidate`](Self::invalidate) (cancellation-safe, queued for retry on failure).
    pub async fn invalidate_key(&self, key: &str) -> Result<u64, StoreError> {
        self.invalidate(Invalidation::new().key(key)).await
    }

    /// Invalidates exact keys (relative to the namespace). See [`invalidate`](Self::invalidate).
    pub async fn invalidate_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        self.invalidate(Invalidation::new().keys(keys.iter().cloned()))
            .await
    }

    /// Invalidates every entry carrying `tag`. On Valkey a large tag is removed in bounded steps
    /// (its tombstone first, then [`invalidation_batch`](crate::ValkeyConfig::invalidation_batch)
    /// members per script), within [`bulk_timeout`](crate::CacheBuilder::bulk_timeout). See
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.invalidate(Invalidation::new().tag(tag)).await
    }

    /// Invalidates every entry carrying one of `tags`. See [`invalidate`](Self::invalidate).
    pub async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, StoreError> {
        self.invalidate(Invalidation::new().tags(tags.iter().cloned()))
            .await
    }

    /// Invalidates every key matching a glob `pattern` (relative to the namespace), by `SCAN` and
    /// `UNLINK` in batches on Valkey. Escape user input in it with
    /// [`glob_escape`](crate::key::glob_escape) (templates do this for you). See
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, StoreError> {
        self.invalidate(Invalidation::new().pattern(pattern)).await
    }
}
