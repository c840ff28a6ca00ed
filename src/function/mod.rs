//! Function caching: [`Cache::get_or_set`] and friends for any async computation (database
//! queries, external APIs), and batch operations.
//!
//! Values are serialized with serde (JSON by default; the codec is recorded in the entry and every
//! read decodes with it) inside the same entry
//! format the response cache uses, so they get the same freshness, stale window, invalidation
//! guard, single-flight and fail-open behaviour:
//!
//! - concurrent calls for one key in this process run the loader **once**; the others get its
//!   value;
//! - a loader error is returned to the caller and to the calls waiting on the same load (a clone:
//!   a failing loader runs once, not once per caller), and not stored; with a stale window
//!   configured and a stale value present, the stale value is returned instead
//!   (stale-if-error); with [`Options::error_ttl`] it also answers the next calls for a few
//!   seconds (in this process);
//! - a caller running the loader that is cancelled (dropped) hands the load to one of the
//!   waiting calls, however many times in a row, within their wait bound;
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
//! // Errors are shared with the callers waiting on the same load (`E: Clone`): an error type
//! // that is not `Clone` goes behind an `Arc`.
//! let user: Result<String, std::sync::Arc<std::io::Error>> = cache
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

use crate::cache::flight::{elect, Elected, Failure, Landing};
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

/// The header of a function-cache entry that names its codec, when it is not JSON (an entry
/// without it is JSON: every entry written before codecs were recorded is).
const CODEC_HEADER: http::HeaderName = http::header::CONTENT_TYPE;
#[cfg(feature = "postcard")]
const POSTCARD: &str = "application/postcard";

impl Codec {
    /// The codec an entry was written with; None for one this build cannot read (written with a
    /// codec whose feature is off, or by a newer version).
    fn of(entry: &Entry) -> Option<Codec> {
        let named = entry.headers.iter().find(|(n, _)| *n == CODEC_HEADER);
        match named.map(|(_, v)| v.as_bytes()) {
            None => Some(Codec::Json),
            #[cfg(feature = "postcard")]
            Some(v) if v == POSTCARD.as_bytes() => Some(Codec::Postcard),
            Some(_) => None,
        }
    }

    /// The headers of an entry written with this codec.
    fn headers(self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        match self {
            Codec::Json => Vec::new(),
            #[cfg(feature = "postcard")]
            Codec::Postcard => vec![(CODEC_HEADER, http::HeaderValue::from_static(POSTCARD))],
        }
    }

    /// The value in `entry`, decoded with the codec it was written with (whatever codec the
    /// reader would write with), or None.
    fn read<T: DeserializeOwned>(entry: &Entry) -> Option<T> {
        Codec::of(entry)?.decode(&entry.body)
    }

    /// The entry for a value encoded with this codec (`body`), written at `now`.
    fn entry(self, body: Bytes, now: u64, opts: &Options, default_ttl: Duration) -> Entry {
        Entry::new(
            0,
            self.headers(),
            body,
            now,
            opts.ttl.unwrap_or(default_ttl),
            opts.stale,
        )
    }

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
    error_ttl: Duration,
}

/// The longest `error_ttl` ([`Options::error_ttl`], [`CacheLayer::error_ttl`]): a failure is
/// never answered from the error cache for longer than this. 60 s.
///
/// [`CacheLayer::error_ttl`]: crate::CacheLayer::error_ttl
pub const MAX_ERROR_TTL: Duration = Duration::from_secs(60);

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
            error_ttl: Duration::ZERO,
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

    /// The serialization format values are written with. Reads decode every value with the
    /// codec it was written with (recorded in its entry), whatever this says.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long concurrent callers wait for the one running the loader before running their
    /// own, in all: if the caller running it is cancelled, the waiting ones elect another, as
    /// often as it takes, within this bound. Default 10 s.
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self
    }

    /// A short error cache: a loader error answers the calls on the same key for `ttl` (at most
    /// [`MAX_ERROR_TTL`]) with a clone of the same error, instead of running the failing loader
    /// again. Default off.
    ///
    /// Kept in this process only, never in the store, and guarded like a value: any
    /// invalidation of the namespace (in any process) retires it at once, and with
    /// [`stale_if_error`](Self::stale_if_error) a stale value inside its window is returned
    /// instead. An error loaded while the store was unreachable is not kept. Without this
    /// option a failing loader is still shared with the calls waiting on it (single-flight).
    pub fn error_ttl(mut self, ttl: Duration) -> Self {
        self.error_ttl = ttl.min(MAX_ERROR_TTL);
        self
    }
}

impl Cache {
    /// Returns the cached value for `key`, or runs `loader`, caches its value and returns it.
    /// With the cache's default options; see [`get_or_set_with`](Self::get_or_set_with).
    pub async fn get_or_set<T, E, F, Fut>(&self, key: &str, loader: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.get_or_set_with(key, &Options::new(), loader).await
    }

    /// [`get_or_set`](Self::get_or_set) with per-call [`Options`].
    ///
    /// Concurrent calls for `key` in this process run `loader` once: the others get its value,
    /// or **a clone of its error** (hence `E: Clone`: a failing loader is not run once per
    /// caller). For an error type that is not `Clone`, share it behind an `Arc`:
    /// `loader().await.map_err(Arc::new)` (what moka's `try_get_with` does for you). With
    /// [`Options::error_ttl`] the error also answers the next calls for a few seconds.
    pub async fn get_or_set_with<T, E, F, Fut>(
        &self,
        key: &str,
        opts: &Options,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: Clone + Send + Sync + 'static,
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
    /// let found: Result<Option<String>, std::sync::Arc<std::io::Error>> = cache
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
        E: Clone + Send + Sync + 'static,
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
        match self.read(&key, None, false).await {
            Ok(lookup) => {
                clock = Some(lookup.clock);
                if let Some(raw) = lookup.value {
                    match Entry::decode(&raw) {
                        Ok(entry) => match entry.freshness(now_ms()) {
                            Freshness::Fresh(left) => {
                                if let Some(v) = Codec::read(&entry) {
                                    call.set(Outcome::fresh(left));
                                    return Ok(v);
                                }
                                self.counters().decode_failure();
                            }
                            Freshness::Stale(past) if past < opts.stale => {
                                stale = Codec::read(&entry).map(|v| (v, past));
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
        let stamp = (clock, epoch);

        // The error cache (`error_ttl`): this key's loader failed moments ago, after a read with
        // this call's stamp: answer with a clone of that error.
        if !opts.error_ttl.is_zero() {
            if let Some(Failure::Error(e)) = self.failures().get(&key, stamp) {
                if let Some(e) = e.downcast_ref::<E>() {
                    return shared_error(&mut call, e, stale, ERROR_CACHED);
                }
            }
        }

        // Single-flight: one loader run per key in this process; a cancelled runner hands the
        // flight to one of the waiting calls.
        let mut lead = None;
        match elect(
            self.flights(),
            &key,
            stamp,
            opts.coalesce_wait,
            self.counters(),
        )
        .await
        {
            Elected::Lead(l) => lead = Some(l),
            Elected::Landed(Landing::Entry(e, _)) => {
                if let Some(v) = Codec::read(&e) {
                    call.set(Outcome::Collapsed);
                    return Ok(v);
                }
            }
            Elected::Landed(Landing::Failed(Failure::Error(e), _)) => {
                // Another call site may fail with another error type: then run alone.
                if let Some(e) = e.downcast_ref::<E>() {
                    return shared_error(&mut call, e, stale, Outcome::Collapsed);
                }
            }
            Elected::Landed(_) | Elected::Alone => {}
        }
        // Now leading: a flight that landed between our read and our lead has stored the value
        // already. Check once more (one round trip on misses only) rather than load it twice.
        if lead.is_some() && clock.is_some() {
            if let Ok(lookup) = self.read(&key, None, false).await {
                if lookup.clock == clock.unwrap_or(0) {
                    if let Some(v) = lookup
                        .value
                        .and_then(|raw| fresh_value::<T>(&raw, now_ms()))
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
                // Shared with the waiting calls (and, with `error_ttl`, the next ones).
                let failure = Failure::Error(Arc::new(e.clone()));
                self.failures()
                    .keep(&key, failure.clone(), stamp, opts.error_ttl);
                if let Some(l) = lead {
                    l.land(Landing::Failed(failure, stamp));
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
            opts.codec
                .entry(body, now_ms(), opts, self.default_ttl())
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
            l.land(Landing::Entry(Arc::new(entry), stamp));
        }
        Ok(value)
    }

    /// The fresh cached value for `key`, if any (a value that does not decode as `T` is `None`),
    /// decoded with the codec it was written with.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let key = bound_length(key.to_owned());
        let lookup = self.read(&key, None, false).await?;
        Ok(lookup.value.and_then(|raw| fresh_value(&raw, now_ms())))
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

    /// The fresh cached values for `keys`, in order, in one store round trip, each decoded with
    /// the codec it was written with. Timed in `cache.request.duration` (`cache.operation`
    /// `get_many`).
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<T>>, StoreError> {
        let _timed = BatchCall::new(self, "get_many");
        let keys: Vec<String> = keys.iter().map(|k| bound_length(k.clone())).collect();
        let found = self.read_many(&keys).await?;
        let now = now_ms();
        Ok(found
            .values
            .into_iter()
            .map(|v| v.and_then(|raw| fresh_value(&raw, now)))
            .collect())
    }

    /// Stores many values unconditionally in one store round trip, with the options' tags.
    /// Timed in `cache.request.duration` (`cache.operation` `set_many`).
    pub async fn set_many<'a, T, I>(&self, entries: I, opts: &Options) -> Result<usize, StoreError>
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = (&'a str, &'a T)>,
    {
        let _timed = BatchCall::new(self, "set_many");
        let mut owned = Vec::new();
        for (k, v) in entries {
            let (encoded, ttl) = self.encode_value(v, opts)?;
            owned.push(BatchWrite {
                key: bound_length(k.to_owned()),
                value: encoded,
                ttl,
                tags: opts.tags.clone(),
                since: None,
            });
        }
        self.write_many(&owned).await.map(|w| w.len())
    }

    /// Returns values for `ids` in the caller's order: cached ones from one batch read, the
    /// missing ones from **one** call of `batch_loader` with exactly the missing ids, which are
    /// then stored in one round trip. `batch_loader` returns `(id, value)` pairs; ids it does not
    /// return are absent (`None`) in the result. Each id is counted in `cache.requests` (a hit,
    /// miss or store-unavailable); the call is timed in `cache.request.duration`
    /// (`cache.operation` `get_or_set_many`).
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
        let _timed = BatchCall::new(self, "get_or_set_many");
        let keys: Vec<String> = ids.iter().map(|id| bound_length(key_fn(id))).collect();
        let found = self.read_many(&keys).await.ok();
        let now = now_ms();
        let mut out: Vec<Option<T>> = match &found {
            Some(f) => f
                .values
                .iter()
                .map(|v| v.as_ref().and_then(|raw| fresh_value(raw, now)))
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
                        // Guarded by the clock of the key's own shard, as read.
                        since: found.as_ref().map(|f| f.clocks[n]),
                    });
                }
            }
        }
        if found.is_some() && started.elapsed() < self.invalidation_window() {
            to_store.sort_by(|a, b| a.key.cmp(&b.key));
            to_store.dedup_by(|a, b| a.key == b.key);
            let _ = self.write_many(&to_store).await;
        }
        Ok(out)
    }

    /// Stores precomputed values (reference data) in batches of `batch_size` (one round trip
    /// each); returns how many were stored. Timed in `cache.request.duration` (`cache.operation`
    /// `warm_values`, the whole call).
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
        let _timed = BatchCall::new(self, "warm_values");
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
                    since: None,
                });
            }
            stored += self
                .write_many(&batch)
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
        let entry = opts
            .codec
            .entry(body, now, opts, self.default_ttl())
            .with_compute_time(took);
        let encoded = entry
            .encode()
            .map_err(|e| StoreError::new(crate::store::StoreErrorKind::Server, e.to_string()))?;
        Ok((encoded, entry.store_ttl(now)))
    }
}

/// A batch call of the function cache, timed into `cache.request.duration` when it ends
/// (however it ends).
struct BatchCall<'a> {
    cache: &'a Cache,
    op: &'static str,
    scope: RequestScope,
}

impl<'a> BatchCall<'a> {
    fn new(cache: &'a Cache, op: &'static str) -> Self {
        Self {
            cache,
            op,
            scope: RequestScope::call(),
        }
    }
}

impl Drop for BatchCall<'_> {
    fn drop(&mut self) {
        self.cache.counters().batch_call(self.op, &self.scope);
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

/// What a call answered from the error cache is labelled with.
const ERROR_CACHED: Outcome = Outcome::Miss {
    stored: false,
    detail: Some("error-cached"),
};

/// A call answered with another load's error (a follower of the failed load, labelled
/// [`Outcome::Collapsed`], or the error cache): its own stale value if it has one inside its
/// stale-if-error window, else a clone of the error.
fn shared_error<T, E: Clone>(
    call: &mut Call<'_>,
    e: &E,
    stale: Option<(T, Duration)>,
    outcome: Outcome,
) -> Result<T, E> {
    match stale {
        Some((v, past)) => {
            call.set(Outcome::stale(past, Some("stale-if-error")));
            Ok(v)
        }
        None => {
            call.set(outcome);
            Err(e.clone())
        }
    }
}

/// The value of a stored entry if it is fresh at `now`, decoded with the codec it was written
/// with.
fn fresh_value<T: DeserializeOwned>(raw: &Bytes, now: u64) -> Option<T> {
    let entry = Entry::decode(raw).ok()?;
    matches!(entry.freshness(now), Freshness::Fresh(_))
        .then(|| Codec::read(&entry))
        .flatten()
}
