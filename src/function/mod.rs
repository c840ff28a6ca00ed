//! Function caching: [`Cache::get_or_set`] and friends for any async computation (database
//! queries, external APIs), and batch operations.
//!
//! Values are serialized with serde (JSON by default) inside the same entry
//! format the response cache uses, so they get the same freshness, stale window, invalidation
//! guard, single-flight and fail-open behaviour:
//!
//! - concurrent calls for one key in this process run the loader **once**; the others get its
//!   value;
//! - a loader error is returned to the caller and not cached; with a stale window configured and
//!   a stale value present, the stale value is returned instead (stale-if-error);
//! - when the store is down or slow, the loader runs and its value is returned;
//! - a value loaded while its key was invalidated is not stored.
//!
//! ```
//! use std::time::Duration;
//! use tower_valkey_cache::{Cache, MemoryStore};
//! use tower_valkey_cache::function::Options;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = Cache::new(MemoryStore::new());
//! let user: Result<String, std::io::Error> = cache
//!     .get_or_set_with("user:1", &Options::new().ttl(Duration::from_secs(30)), || async {
//!         Ok("Ada".to_string()) // a database query, an API call...
//!     })
//!     .await;
//! assert_eq!(user.unwrap(), "Ada");
//! # }
//! ```
//!
//! Build keys with the same escaping as the layers: [`KeyTemplate::render_with`] or
//! [`escape`].
//!
//! [`KeyTemplate::render_with`]: crate::key::KeyTemplate::render_with
//! [`escape`]: crate::key::escape

mod warm;

pub use warm::{WarmOptions, WarmReport};

use crate::cache::flight::{follow, Join, Landing};
use crate::cache::BatchWrite;
use crate::entry::{now_ms, Entry, Freshness};
use crate::key::bound_length;
use crate::outcome::Outcome;
use crate::stats::RequestScope;
use crate::store::{StoreError, Write, Written};
use crate::Cache;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How values are turned into bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON via serde_json: readable in `valkey-cli`, the default.
    #[default]
    Json,
    /// postcard: a compact binary format (smaller values, faster to encode; not
    /// self-describing, so changing the type of a cached value needs a new key or namespace).
    #[cfg(feature = "postcard")]
    Postcard,
}

impl Codec {
    fn encode<T: Serialize>(self, v: &T) -> Option<Bytes> {
        match self {
            Codec::Json => serde_json::to_vec(v).ok().map(Bytes::from),
            #[cfg(feature = "postcard")]
            Codec::Postcard => postcard::to_allocvec(v).ok().map(Bytes::from),
        }
    }

    fn decode<T: DeserializeOwned>(self, b: &[u8]) -> Option<T> {
        match self {
            Codec::Json => serde_json::from_slice(b).ok(),
            #[cfg(feature = "postcard")]
            Codec::Postcard => postcard::from_bytes(b).ok(),
        }
    }
}

/// Per-call options of the function cache.
#[derive(Clone, Debug)]
pub struct Options {
    ttl: Option<Duration>,
    stale: Duration,
    tags: Vec<String>,
    codec: Codec,
    coalesce_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

impl Options {
    /// The cache's default TTL, no stale window, no tags, JSON.
    pub fn new() -> Self {
        Self {
            ttl: None,
            stale: Duration::ZERO,
            tags: Vec::new(),
            codec: Codec::Json,
            coalesce_wait: Duration::from_secs(10),
        }
    }

    /// How long a value stays fresh.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long past its freshness a value may still be returned when the loader fails
    /// (stale-if-error).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale = window;
        self
    }

    /// Tags recorded with the value, for [`Cache::invalidate_tag`].
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// The serialization format.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long concurrent callers wait for the one running the loader before running their
    /// own. Default 10 s.
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self
    }
}

impl Cache {
    /// Returns the cached value for `key`, or runs `loader`, caches its value and returns it.
    /// With the cache's default options; see [`get_or_set_with`](Self::get_or_set_with).
    pub async fn get_or_set<T, E, F, Fut>(&self, key: &str, loader: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.get_or_set_with(key, &Options::new(), loader).await
    }

    /// [`get_or_set`](Self::get_or_set) with per-call [`Options`].
    pub async fn get_or_set_with<T, E, F, Fut>(
        &self,
        key: &str,
        opts: &Options,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.get_or_set_if(key, opts, |_| true, loader).await
    }

    /// [`get_or_set_with`](Self::get_or_set_with) that stores the loaded value only when
    /// `store_if(&value)` holds. Otherwise the value is returned as it is (and handed to the
    /// concurrent callers waiting on this load, as any loaded value) but not stored, so the next
    /// call runs the loader again. It is never replaced by a stale value: unlike a loader error,
    /// a value that is not stored does not trigger stale-if-error.
    ///
    /// For values that must reach the caller but not the cache: `None` from a lookup that found
    /// nothing yet, a partial or degraded answer. `#[cached(unless = ..)]` and
    /// `#[cached(cache_none = false)]` expand to this.
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, MemoryStore};
    /// use tower_valkey_cache::function::Options;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = Cache::new(MemoryStore::new());
    /// let found: Result<Option<String>, std::io::Error> = cache
    ///     .get_or_set_if("user:7", &Options::new(), Option::is_some, || async {
    ///         Ok(None) // not in the database yet: do not cache the absence
    ///     })
    ///     .await;
    /// assert_eq!(found.unwrap(), None);
    /// assert_eq!(cache.get::<Option<String>>("user:7").await.unwrap(), None, "not stored");
    /// # }
    /// ```
    pub async fn get_or_set_if<T, E, P, F, Fut>(
        &self,
        key: &str,
        opts: &Options,
        store_if: P,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        P: FnOnce(&T) -> bool,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = bound_length(key.to_owned());
        // Records the call's outcome once, when it ends (however it ends).
        let mut call = Call::new(self);
        let mut stale: Option<(T, Duration)> = None;
        let mut clock = None;
        let epoch = self.epoch();
        match self.read(&key, None).await {
            Ok(lookup) => {
                clock = Some(lookup.clock);
                if let Some(raw) = lookup.value {
                    match Entry::decode(&raw) {
                        Ok(entry) => match entry.freshness(now_ms()) {
                            Freshness::Fresh(left) => {
                                if let Some(v) = opts.codec.decode(&entry.body) {
                                    call.set(Outcome::fresh(left));
                                    return Ok(v);
                                }
                                self.counters().decode_failure();
                            }
                            Freshness::Stale(past) if past < opts.stale => {
                                stale = opts.codec.decode(&entry.body).map(|v| (v, past));
                            }
                            _ => {}
                        },
                        // Written by an older version (keys changed meaning): a plain miss.
                        Err(e) if e.is_outdated() => {}
                        Err(_) => self.counters().decode_failure(),
                    }
                }
                call.set(Outcome::Miss {
                    stored: false,
                    detail: None,
                });
            }
            Err(_) => call.set(Outcome::StoreUnavailable),
        }

        // Single-flight: one loader run per key in this process.
        let mut lead = None;
        let mut attempts = 0;
        loop {
            match self.flights().join(&key) {
                Join::Lead(l) => {
                    lead = Some(l);
                    break;
                }
                Join::Follow(rx) => match follow(rx, opts.coalesce_wait, self.counters()).await {
                    Landing::Entry(e, stamp) if stamp == (clock, epoch) => {
                        if let Some(v) = opts.codec.decode(&e.body) {
                            call.set(Outcome::Collapsed);
                            return Ok(v);
                        }
                        break;
                    }
                    Landing::Cancelled | Landing::Entry(..) if attempts < 3 => attempts += 1,
                    _ => break,
                },
            }
        }
        // Now leading: a flight that landed between our read and our lead has stored the value
        // already. Check once more (one round trip on misses only) rather than load it twice.
        if lead.is_some() && clock.is_some() {
            if let Ok(lookup) = self.read(&key, None).await {
                if lookup.clock == clock.unwrap_or(0) {
                    if let Some(v) = lookup
                        .value
                        .and_then(|raw| fresh_value::<T>(&raw, opts.codec, now_ms()))
                    {
                        call.set(Outcome::Collapsed);
                        return Ok(v);
                    }
                }
            }
        }

        let started = Instant::now();
        let value = match loader().await {
            Ok(v) => v,
            Err(e) => {
                if let Some(l) = lead {
                    l.land(Landing::Unshareable);
                }
                if let Some((v, past)) = stale {
                    call.set(Outcome::stale(past, Some("stale-if-error")));
                    return Ok(v);
                }
                return Err(e);
            }
        };
        // Declined: still returned, and landed for the callers waiting on this load, not stored.
        let keep = store_if(&value);
        let entry = opts.codec.encode(&value).map(|body| {
            Entry::new(
                0,
                Vec::new(),
                body,
                now_ms(),
                opts.ttl.unwrap_or(self.default_ttl()),
                opts.stale,
            )
            .with_compute_time(started.elapsed())
        });
        let Some(entry) = entry else {
            tracing::warn!(namespace = %self.namespace(), "value does not serialize; not cached");
            return Ok(value);
        };
        // Without a clock (store unreachable at the read) the fill cannot be guarded: skip it.
        if let Some(since) = clock.filter(|_| keep) {
            if started.elapsed() < self.invalidation_window() {
                if let Ok(encoded) = entry.encode() {
                    let _ = self
                        .write(
                            Write {
                                key: &key,
                                value: encoded,
                                ttl: entry.store_ttl(now_ms()),
                                tags: &opts.tags,
                                since: Some(since),
                            },
                            None,
                        )
                        .await;
                }
            }
        }
        if let Some(l) = lead {
            l.land(Landing::Entry(Arc::new(entry), (clock, epoch)));
        }
        Ok(value)
    }

    /// The fresh cached value for `key`, if any (a value that does not decode as `T` is `None`).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let key = bound_length(key.to_owned());
        let lookup = self.read(&key, None).await?;
        Ok(lookup
            .value
            .and_then(|raw| fresh_value(&raw, Codec::Json, now_ms())))
    }

    /// Stores `value` under `key` unconditionally.
    pub async fn set<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        opts: &Options,
    ) -> Result<(), StoreError> {
        let key = bound_length(key.to_owned());
        let (encoded, ttl) = self.encode_value(value, opts)?;
        self.write(
            Write {
                key: &key,
                value: encoded,
                ttl,
                tags: &opts.tags,
                since: None,
            },
            None,
        )
        .await
        .map(|_| ())
    }

    /// The fresh cached values for `keys`, in order, in one store round trip.
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<T>>, StoreError> {
        let keys: Vec<String> = keys.iter().map(|k| bound_length(k.clone())).collect();
        let found = self.read_many(&keys).await?;
        let now = now_ms();
        Ok(found
            .values
            .into_iter()
            .map(|v| v.and_then(|raw| fresh_value(&raw, Codec::Json, now)))
            .collect())
    }

    /// Stores many values unconditionally in one store round trip, with the options' tags.
    pub async fn set_many<'a, T, I>(&self, entries: I, opts: &Options) -> Result<usize, StoreError>
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = (&'a str, &'a T)>,
    {
        let mut owned = Vec::new();
        for (k, v) in entries {
            let (encoded, ttl) = self.encode_value(v, opts)?;
            owned.push(BatchWrite {
                key: bound_length(k.to_owned()),
                value: encoded,
                ttl,
                tags: opts.tags.clone(),
            });
        }
        self.write_many(&owned, None).await.map(|w| w.len())
    }

    /// Returns values for `ids` in the caller's order: cached ones from one batch read, the
    /// missing ones from **one** call of `batch_loader` with exactly the missing ids, which are
    /// then stored in one round trip. `batch_loader` returns `(id, value)` pairs; ids it does not
    /// return are absent (`None`) in the result.
    pub async fn get_or_set_many<Id, T, E, K, F, Fut>(
        &self,
        ids: &[Id],
        key_fn: K,
        opts: &Options,
        batch_loader: F,
    ) -> Result<Vec<Option<T>>, E>
    where
        Id: Clone + Eq + std::hash::Hash,
        T: Serialize + DeserializeOwned + Clone,
        K: Fn(&Id) -> String,
        F: FnOnce(Vec<Id>) -> Fut,
        Fut: Future<Output = Result<Vec<(Id, T)>, E>>,
    {
        let keys: Vec<String> = ids.iter().map(|id| bound_length(key_fn(id))).collect();
        let found = self.read_many(&keys).await.ok();
        let now = now_ms();
        let mut out: Vec<Option<T>> = match &found {
            Some(f) => f
                .values
                .iter()
                .map(|v| v.as_ref().and_then(|raw| fresh_value(raw, opts.codec, now)))
                .collect(),
            None => vec![None; ids.len()],
        };
        let missing: Vec<usize> = (0..ids.len()).filter(|&n| out[n].is_none()).collect();
        self.counters().batch(
            (ids.len() - missing.len()) as u64,
            missing.len() as u64,
            found.is_some(),
        );
        if missing.is_empty() {
            return Ok(out);
        }
        let mut unique: Vec<Id> = Vec::with_capacity(missing.len());
        let mut seen = std::collections::HashSet::new();
        for &n in &missing {
            if seen.insert(ids[n].clone()) {
                unique.push(ids[n].clone());
            }
        }
        let started = Instant::now();
        let loaded: std::collections::HashMap<Id, T> =
            batch_loader(unique).await?.into_iter().collect();
        let mut to_store = Vec::new();
        for &n in &missing {
            if let Some(v) = loaded.get(&ids[n]) {
                out[n] = Some(v.clone());
                if let Ok((encoded, ttl)) = self.encode_value_timed(v, opts, started.elapsed()) {
                    to_store.push(BatchWrite {
                        key: keys[n].clone(),
                        value: encoded,
                        ttl,
                        tags: opts.tags.clone(),
                    });
                }
            }
        }
        if let Some(f) = &found {
            if started.elapsed() < self.invalidation_window() {
                to_store.sort_by(|a, b| a.key.cmp(&b.key));
                to_store.dedup_by(|a, b| a.key == b.key);
                let _ = self.write_many(&to_store, Some(f.clock)).await;
            }
        }
        Ok(out)
    }

    /// Stores precomputed values (reference data) in batches of `batch_size` (one round trip
    /// each); returns how many were stored.
    pub async fn warm_values<T, I>(
        &self,
        values: I,
        batch_size: usize,
        opts: &Options,
    ) -> Result<usize, StoreError>
    where
        T: Serialize,
        I: IntoIterator<Item = (String, T)>,
    {
        let batch_size = batch_size.max(1);
        let mut stored = 0;
        let mut batch = Vec::with_capacity(batch_size);
        let mut iter = values.into_iter().peekable();
        while iter.peek().is_some() {
            batch.clear();
            for (k, v) in iter.by_ref().take(batch_size) {
                let (encoded, ttl) = self.encode_value(&v, opts)?;
                batch.push(BatchWrite {
                    key: bound_length(k),
                    value: encoded,
                    ttl,
                    tags: opts.tags.clone(),
                });
            }
            stored += self
                .write_many(&batch, None)
                .await?
                .iter()
                .filter(|w| **w == Written::Stored)
                .count();
            tracing::debug!(namespace = %self.namespace(), stored, "warming values");
        }
        Ok(stored)
    }

    fn encode_value<T: Serialize>(
        &self,
        v: &T,
        opts: &Options,
    ) -> Result<(Bytes, Duration), StoreError> {
        self.encode_value_timed(v, opts, Duration::ZERO)
    }

    fn encode_value_timed<T: Serialize>(
        &self,
        v: &T,
        opts: &Options,
        took: Duration,
    ) -> Result<(Bytes, Duration), StoreError> {
        let body = opts.codec.encode(v).ok_or_else(|| {
            StoreError::new(
                crate::store::StoreErrorKind::Server,
                "value does not serialize",
            )
        })?;
        let now = now_ms();
        let entry = Entry::new(
            0,
            Vec::new(),
            body,
            now,
            opts.ttl.unwrap_or(self.default_ttl()),
            opts.stale,
        )
        .with_compute_time(took);
        let encoded = entry
            .encode()
            .map_err(|e| StoreError::new(crate::store::StoreErrorKind::Server, e.to_string()))?;
        Ok((encoded, entry.store_ttl(now)))
    }
}

/// One function-cache call's outcome, recorded once when the call ends (however it ends: a
/// dropped call records what it had reached).
struct Call<'a> {
    cache: &'a Cache,
    scope: RequestScope,
    outcome: Option<Outcome>,
}

impl<'a> Call<'a> {
    fn new(cache: &'a Cache) -> Self {
        Self {
            cache,
            scope: RequestScope::call(),
            outcome: None,
        }
    }

    fn set(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if let Some(o) = &self.outcome {
            self.cache.counters().record(o, &self.scope);
        }
    }
}

fn fresh_value<T: DeserializeOwned>(raw: &Bytes, codec: Codec, now: u64) -> Option<T> {
    let entry = Entry::decode(raw).ok()?;
    matches!(entry.freshness(now), Freshness::Fresh(_))
        .then(|| codec.decode(&entry.body))
        .flatten()
}
