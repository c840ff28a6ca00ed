//! The [`Cache`] handle: a store, a namespace, defaults and the shared machinery every layer and
//! the function cache go through (timeouts, the circuit breaker, statistics).

use crate::breaker::{Breaker, Permit, Transition};
use crate::flight::Flights;
use crate::invalidate::retry::{Job, RetryQueue};
use crate::stats::{Counters, Stats};
use crate::store::{
    KeySpace, Lookup, Store, StoreError, StoreErrorKind, StoreFuture, Target, Write, Written,
};
use std::sync::Arc;
use std::time::Duration;

/// A cheap-to-clone handle on a cache: a [`Store`], a namespace and defaults.
///
/// Build one per namespace and share it between routes, layers and background jobs.
///
/// ```
/// use std::time::Duration;
/// use tower_valkey_cache::{Cache, MemoryStore};
///
/// let cache = Cache::builder(MemoryStore::new())
///     .namespace("shop")
///     .ttl(Duration::from_secs(30))
///     .build();
/// assert_eq!(cache.namespace(), "shop");
/// ```
#[derive(Clone, Debug)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) space: KeySpace,
    pub(crate) namespace: String,
    pub(crate) ttl: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) bulk_timeout: Duration,
    pub(crate) breaker: Breaker,
    pub(crate) counters: Counters,
    pub(crate) retry: RetryQueue,
    pub(crate) flights: Flights,
    pub(crate) log_raw_keys: bool,
    /// Invalidations started by this process (successful or not).
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// The L1 tier and invalidation announcements ([`crate::l1`]).
    pub(crate) l1: crate::l1::State,
    /// Compression and encryption of stored entries ([`crate::seal`]).
    pub(crate) sealer: crate::seal::Sealer,
}

/// Builds a [`Cache`]. See [`Cache::builder`].
#[derive(Debug)]
pub struct CacheBuilder {
    store: Arc<dyn Store>,
    namespace: String,
    ttl: Duration,
    op_timeout: Duration,
    bulk_timeout: Duration,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    tombstone_ttl: Duration,
    retry_capacity: usize,
    retry_give_up: Duration,
    log_raw_keys: bool,
    #[cfg(feature = "metrics")]
    meter: Option<opentelemetry::metrics::Meter>,
    pub(crate) l1: crate::l1::Config,
    sealer: crate::seal::Sealer,
}

impl CacheBuilder {
    /// The namespace: every key is stored as `namespace:key`. Default `cache`.
    ///
    /// # Panics
    ///
    /// If the namespace is empty or contains `:`, `|`, white space or glob metacharacters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let ns = namespace.into();
        assert!(
            !ns.is_empty()
                && !ns
                    .chars()
                    .any(|c| c.is_whitespace() || ":|*?[]\\{}".contains(c)),
            "cache namespace `{ns}` must be non-empty, without `:`, `|`, braces, white space or glob characters"
        );
        self.namespace = ns;
        self
    }

    /// Default time to live of entries (routes may override). Default 60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Timeout of one store operation; past it the request is served without the cache.
    /// Default 100 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Timeout of multi-step operations (pattern invalidation). Default 30 s.
    pub fn bulk_timeout(mut self, timeout: Duration) -> Self {
        self.bulk_timeout = timeout;
        self
    }

    /// The circuit breaker: after `failures` consecutive store failures, skip the store for
    /// `cool_down`, then probe it with one operation. Default 5 failures, 1 s.
    pub fn circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cool_down = cool_down;
        self
    }

    /// How long invalidations are remembered for fills in flight. A fill (a handler run after a
    /// miss) that takes longer than this is not stored. Default 60 s.
    pub fn invalidation_window(mut self, window: Duration) -> Self {
        self.tombstone_ttl = window;
        self
    }

    /// Invalidations that fail (store unreachable) are queued, up to `capacity`, and retried in
    /// the background until they succeed or `give_up_after` passes. While any is pending, this
    /// process serves requests from the handler, not from the cache. Default 1024, 10 minutes.
    pub fn invalidation_retry(mut self, capacity: usize, give_up_after: Duration) -> Self {
        self.retry_capacity = capacity;
        self.retry_give_up = give_up_after;
        self
    }

    /// Whether logs and spans show cache keys as they are (`key` field) instead of only a short
    /// hash of them (`key_hash`). Keys may hold user data (ids, query values, hashed
    /// credentials): keep this off in production. Default off.
    pub fn log_raw_keys(mut self, enable: bool) -> Self {
        self.log_raw_keys = enable;
        self
    }

    /// The OpenTelemetry meter the cache's instruments are created from (see
    /// [`metrics`](crate::metrics) for the list). Default: the global meter provider's meter
    /// for scope `tower-valkey-cache`, taken when [`build`](Self::build) runs, so install the
    /// global provider before building caches.
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, MemoryStore};
    ///
    /// let meter = opentelemetry::global::meter("tower-valkey-cache"); // or provider.meter(...)
    /// let cache = Cache::builder(MemoryStore::new()).meter(meter).build();
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Stores entries whose encoding reaches the threshold LZ4-compressed (feature
    /// `compression`). Default off. Reads decompress whatever is compressed, whether or not
    /// this is set, up to [`Compression::max_size`](crate::seal::Compression::max_size). See
    /// [`seal`](crate::seal).
    ///
    /// ```
    /// use tower_valkey_cache::{Cache, Compression, MemoryStore};
    ///
    /// let cache = Cache::builder(MemoryStore::new())
    ///     .compression(Compression::lz4().threshold(2048))
    ///     .build();
    /// ```
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compression(mut self, compression: crate::seal::Compression) -> Self {
        self.sealer.compression = Some(compression);
        self
    }

    /// Seals every entry with AES-256-GCM under the keyring's current key, bound to its store
    /// key (feature `encryption`). Reads accept only entries that authenticate under a key of
    /// the ring; anything else is a miss. Default off. See [`seal`](crate::seal).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_valkey_cache::{Cache, Keyring, MemoryStore};
    ///
    /// let key: [u8; 32] = [7; 32]; // from the application's secret store
    /// let cache = Cache::builder(MemoryStore::new())
    ///     .namespace("sessions")
    ///     .encryption(Keyring::new(1, &key)?)
    ///     .build();
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn encryption(mut self, keyring: crate::seal::Keyring) -> Self {
        self.sealer.keyring = Some(keyring);
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        #[cfg(feature = "metrics")]
        let counters = Counters::with_metrics(crate::metrics::Metrics::new(
            &self.meter.unwrap_or_else(crate::metrics::default_meter),
            &self.namespace,
            self.store.name(),
        ));
        #[cfg(not(feature = "metrics"))]
        let counters = Counters::default();
        let l1 = crate::l1::State::new(&self.l1, &self.store, &self.namespace);
        Cache {
            inner: Arc::new(Inner {
                space: if self.store.needs_hash_tags() {
                    KeySpace::hash_tagged(&self.namespace, self.tombstone_ttl)
                } else {
                    KeySpace::new(&self.namespace, self.tombstone_ttl)
                },
                store: self.store,
                namespace: self.namespace,
                ttl: self.ttl,
                op_timeout: self.op_timeout,
                bulk_timeout: self.bulk_timeout,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cool_down),
                counters,
                retry: RetryQueue::new(self.retry_capacity, self.retry_give_up),
                flights: Flights::default(),
                log_raw_keys: self.log_raw_keys,
                epoch: std::sync::atomic::AtomicU64::new(0),
                l1,
                sealer: self.sealer,
            }),
        }
    }
}

impl Cache {
    /// A cache over `store` with default settings (namespace `cache`, TTL 60 s, 100 ms timeout).
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).build()
    }

    /// A builder over `store`.
    pub fn builder(store: impl Store) -> CacheBuilder {
        Self::builder_shared(Arc::new(store))
    }

    /// A builder over a store shared with other caches (other namespaces).
    pub fn builder_shared(store: Arc<dyn Store>) -> CacheBuilder {
        CacheBuilder {
            store,
            namespace: "cache".into(),
            ttl: Duration::from_secs(60),
            op_timeout: Duration::from_millis(100),
            bulk_timeout: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(60),
            retry_capacity: 1024,
            retry_give_up: Duration::from_secs(600),
            log_raw_keys: false,
            #[cfg(feature = "metrics")]
            meter: None,
            l1: Default::default(),
            sealer: Default::default(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The default TTL.
    pub fn default_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The key space (store key names) of this cache's namespace.
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.space
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Whether the circuit breaker currently skips the store.
    pub fn is_degraded(&self) -> bool {
        self.inner.breaker.is_open()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Whether logs may show raw keys ([`CacheBuilder::log_raw_keys`]).
    pub(crate) fn logs_raw_keys(&self) -> bool {
        self.inner.log_raw_keys
    }

    /// Runs one store operation under the circuit breaker and a timeout, in a `cache.store`
    /// span (TRACE level), timed into `db.client.operation.duration` (operations the breaker
    /// rejects are not sent, so not timed).
    pub(crate) async fn guarded<'a, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: StoreFuture<'a, T>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        if inner.breaker.permit() == Permit::Rejected {
            return Err(StoreError::new(
                StoreErrorKind::CircuitOpen,
                "circuit breaker open",
            ));
        }
        let span = tracing::trace_span!(
            "cache.store",
            otel.kind = "client",
            db.system.name = inner.store.name(),
            db.operation.name = op,
            cache.namespace = %inner.namespace,
            outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let mut fut = tracing::Instrument::instrument(fut, span.clone());
        // A store that answers at once (MemoryStore, a ready reply) needs no timer: poll once
        // before arming the timeout. The future is boxed, so polling it first and then handing
        // it to the timeout moves nothing.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(std::pin::Pin::new(&mut fut), cx))
        })
        .await;
        let result = match first {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("{op} took longer than {timeout:?}"),
                )),
            },
        };
        let elapsed = started.elapsed();
        let error_type = result.as_ref().err().map(|e| error_type(e.kind()));
        if !span.is_disabled() {
            span.record("outcome", if error_type.is_some() { "error" } else { "ok" });
            if let Some(e) = error_type {
                span.record("error.type", e);
            }
            span.record("duration_us", elapsed.as_micros() as u64);
        }
        #[cfg(feature = "metrics")]
        if let Some(m) = inner.counters.otel() {
            m.store_op(op, elapsed, error_type);
        }
        match &result {
            Ok(_) => {
                if inner.breaker.success() == Some(Transition::Closed) {
                    inner.counters.breaker_closed();
                    tracing::info!(namespace = %inner.namespace, "cache store reachable again; circuit closed");
                }
            }
            Err(e) => {
                inner.counters.store_error();
                tracing::warn!(namespace = %inner.namespace, op, error = %e, "cache store operation failed");
                let lost = e.kind() == StoreErrorKind::Unavailable;
                if inner.breaker.failure(started, lost) == Some(Transition::Opened) {
                    inner.counters.breaker_opened();
                    tracing::warn!(namespace = %inner.namespace, "cache store failing; circuit open, serving without cache");
                }
            }
        }
        result
    }

    /// Invalidations waiting in the retry queue (see [`CacheBuilder::invalidation_retry`]).
    pub fn pending_invalidations(&self) -> usize {
        self.inner.retry.pending()
    }

    pub(crate) async fn read(&self, key: &str) -> Result<Lookup, StoreError> {
        let i = &self.inner;
        if i.retry.pending() > 0 {
            // An invalidation this process owes the store has not landed: the store may hold
            // entries it is about to remove, so do not serve from it.
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "invalidation pending; cache reads suspended",
            ));
        }
        // L1 (crate::l1): a hit makes no network call; a miss fills it from the store read.
        let ticket = match self.l1_lookup(key) {
            Ok(hit) => return Ok(hit),
            Err(ticket) => ticket,
        };
        let r = self
            .guarded("read", i.op_timeout, i.store.read(&i.space, key))
            .await
            .map(|lookup| self.opened(key, lookup));
        if let (Some(t), Ok(lookup)) = (ticket, &r) {
            self.l1_fill(t, key, lookup);
        }
        r
    }

    /// This process's invalidation epoch (see [`crate::flight::Stamp`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    pub(crate) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let i = &self.inner;
        self.guarded(
            "lock",
            i.op_timeout,
            i.store.try_lock(&i.space, key, token, lease),
        )
        .await
    }

    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let i = &self.inner;
        self.guarded("unlock", i.op_timeout, i.store.unlock(&i.space, key, token))
            .await
    }

    pub(crate) async fn write(&self, write: Write<'_>) -> Result<Written, StoreError> {
        let i = &self.inner;
        // L1 keeps the plain encoding (crate::seal): an L1 hit neither decrypts nor inflates.
        let (key, value, since) = (write.key, write.value.clone(), write.since);
        let write = Write {
            value: self.seal(key, write.value)?,
            ..write
        };
        let bytes = write.value.len();
        let ticket = self.l1_ticket(key);
        let r = self
            .guarded("write", i.op_timeout, i.store.write(&i.space, write))
            .await;
        self.l1_after_write(ticket, key, &value, since, &r);
        match r {
            Ok(Written::Stored) => i.counters.stored(bytes),
            Ok(Written::Superseded) => i.counters.superseded(),
            Err(_) => {}
        }
        r
    }

    /// The stored form of the encoded entry `plain` for `key` ([`crate::seal`]): every write
    /// goes through here.
    pub(crate) fn seal(&self, key: &str, plain: bytes::Bytes) -> Result<bytes::Bytes, StoreError> {
        let i = &self.inner;
        i.sealer.seal(&i.space, key, plain).map_err(|e| {
            tracing::warn!(namespace = %i.namespace, error = %e, "entry cannot be sealed; not stored");
            StoreError::new(StoreErrorKind::Server, e.to_string())
        })
    }

    /// The encoded entry from a stored value ([`crate::seal`]): every read goes through here.
    /// A value that does not open (does not authenticate, does not decompress) reads as an
    /// empty value, which no entry decoder accepts: callers count it as an undecodable entry
    /// (once per request, as for any other), never serve it, and the next fill overwrites it.
    pub(crate) fn open(&self, key: &str, raw: bytes::Bytes) -> bytes::Bytes {
        let i = &self.inner;
        match i.sealer.open(&i.space, key, raw) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!(namespace = %i.namespace, error = %e, "cached value does not open; treating as a miss");
                bytes::Bytes::new()
            }
        }
    }

    /// [`open`](Self::open) on a store read.
    pub(crate) fn opened(&self, key: &str, lookup: Lookup) -> Lookup {
        Lookup {
            value: lookup.value.map(|raw| self.open(key, raw)),
            clock: lookup.clock,
        }
    }

    /// Reads many entries in one operation (not through L1), opened.
    pub(crate) async fn read_many(
        &self,
        keys: &[String],
    ) -> Result<crate::store::LookupMany, StoreError> {
        let i = &self.inner;
        let mut found = self
            .guarded(
                "read_many",
                i.bulk_timeout,
                i.store.read_many(&i.space, keys),
            )
            .await?;
        for (value, key) in found.values.iter_mut().zip(keys) {
            *value = value.take().map(|raw| self.open(key, raw));
        }
        Ok(found)
    }

    /// Invalidates one key; returns how many entries were removed.
    pub async fn invalidate_key(&self, key: &str) -> Result<u64, StoreError> {
        self.invalidate_keys(&[key.to_owned()]).await
    }

    /// Invalidates exact keys (relative to the namespace). Keys are bounded as they were when
    /// stored ([`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN)), so a long key names its entry.
    pub async fn invalidate_keys(&self, keys: &[String]) -> Result<u64, StoreError> {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| crate::key::bound_length(k.clone()))
            .collect();
        self.invalidate(Target::Keys(&keys)).await
    }

    /// Invalidates every entry carrying `tag`.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.invalidate_tags(&[tag.to_owned()]).await
    }

    /// Invalidates every entry carrying one of `tags`.
    pub async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, StoreError> {
        self.invalidate(Target::Tags(tags)).await
    }

    /// Invalidates every key matching a glob `pattern` (relative to the namespace), by `SCAN` and
    /// `UNLINK` in batches on Valkey. Escape user input in it with
    /// [`glob_escape`](crate::key::glob_escape) (templates do this for you).
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64, StoreError> {
        self.invalidate(Target::Pattern(pattern)).await
    }

    /// Runs an invalidation; if the store fails, queues it for retry and returns the error.
    pub(crate) async fn invalidate_or_queue(&self, job: Job) -> Result<u64, StoreError> {
        match self.invalidate(job.target()).await {
            Ok(n) => Ok(n),
            Err(e) => {
                if self.inner.retry.push(&self.inner, job) {
                    self.inner.counters.retry_queued();
                } else {
                    self.inner.counters.retry_dropped();
                }
                Err(e)
            }
        }
    }

    pub(crate) async fn invalidate(&self, target: Target<'_>) -> Result<u64, StoreError> {
        let i = &self.inner;
        i.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let timeout = match target {
            Target::Pattern(_) => i.bulk_timeout,
            _ => i.op_timeout,
        };
        let kind = match target {
            Target::Keys(_) => "key",
            Target::Tags(_) => "tag",
            Target::Pattern(_) => "pattern",
        };
        let r = self
            .guarded("invalidate", timeout, i.store.invalidate(&i.space, target))
            .await;
        // L1 (crate::l1): drop this process's copies (whatever the store said), then tell the
        // other instances; an announcement that fails fails the invalidation (it is retried).
        self.l1_forget(target);
        let n = r?;
        i.counters.invalidated(kind, n);
        self.l1_publish(target).await?;
        Ok(n)
    }
}

/// The `error.type` of a failed store operation (metrics and spans).
fn error_type(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Unavailable => "unavailable",
        StoreErrorKind::Timeout => "timeout",
        StoreErrorKind::CircuitOpen => "circuit_open",
        StoreErrorKind::Server => "server",
    }
}
