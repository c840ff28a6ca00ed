//! The cache's store operations: the one place that talks to the store.
//!
//! Every rule about a store operation lives here once, so no caller can skip it:
//!
//! - the circuit breaker and the per-operation timeout ([`Cache::guarded`]);
//! - the layout guard: no operation in a key layout other than the namespace's recorded one
//!   ([`super::layout`]);
//! - reads around an owed invalidation: while this process owes the store an invalidation (it
//!   failed and waits in the retry queue, or a namespace-wide invalidation replaced what the
//!   queue could not hold), every read fails as if the store were down, so no caller serves an
//!   entry that invalidation is about to remove ([`Cache::owed`]);
//! - waking the retry queue when the store answers again after failures;
//! - sealing (compression, encryption) on every write and opening on every read
//!   ([`crate::seal`]);
//! - the L1 tier: consulted and filled by reads, filled or dropped by writes, dropped and
//!   announced by invalidations ([`crate::l1`]);
//! - the counters of stored, superseded and invalidated entries;
//! - route eviction: ranked reads touch, stored writes are ranked and evict
//!   ([`crate::eviction`]).
//!
//! `layer`, `invalidate` and `function` reach the store only through these functions.

use super::breaker::{Permit, Transition};
use super::flight::Flights;
use super::layout::Verdict;
use super::retry::Job;
use super::Cache;
use crate::eviction::{EvictionPolicy, RouteEviction};
use crate::stats::Counters;
use crate::store::{
    Lookup, LookupMany, StoreError, StoreErrorKind, StoreFuture, Target, Write, Written,
};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `fut`'s output if it completes within `limit`, else None (`fut` is left as it is, to be
/// awaited further or dropped). A future that is ready at once (MemoryStore, a ready reply, an
/// invalidation with nothing to wait for) needs no timer: it is polled once before the timeout
/// is armed.
pub(super) async fn within<F>(limit: Duration, fut: &mut F) -> Option<F::Output>
where
    F: std::future::Future + Unpin,
{
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(std::pin::Pin::new(&mut *fut), cx))
    })
    .await;
    match first {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await.ok(),
    }
}

/// An owned write for batch operations: key, encoded (plain) entry, TTL, tags.
#[derive(Clone, Debug)]
pub(crate) struct BatchWrite {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) ttl: Duration,
    pub(crate) tags: Vec<String>,
    /// `Some(clock)`: store only if nothing covering the entry was invalidated after `clock`
    /// (the clock of the entry's shard its read returned, [`LookupMany::clocks`]); None:
    /// unconditionally.
    pub(crate) since: Option<u64>,
}

impl Cache {
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Whether logs may show raw keys ([`CacheBuilder::log_raw_keys`](super::CacheBuilder::log_raw_keys)).
    pub(crate) fn logs_raw_keys(&self) -> bool {
        self.inner.log_raw_keys
    }

    /// This process's invalidation epoch (see [`crate::cache::flight::Stamp`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    /// How long an invalidation's tombstones live: a fill that takes longer is never stored.
    pub(crate) fn invalidation_window(&self) -> Duration {
        self.inner.space.tombstone_ttl()
    }

    /// The eviction of a route bounded by `policy` in this cache's namespace; None when the
    /// store cannot hold bounded namespaces.
    pub(crate) fn route_eviction(&self, policy: Arc<dyn EvictionPolicy>) -> Option<RouteEviction> {
        RouteEviction::new(self.inner.store.as_ref(), &self.inner.space, policy)
    }

    /// Runs one store operation in this cache's own key layout: once the layout guard says it
    /// matches the namespace's recorded layout ([`super::layout`]: a claim is made first when
    /// one is due; a mismatch refuses the operation), [`Self::run_guarded`].
    pub(crate) async fn guarded<'a, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: StoreFuture<'a, T>,
    ) -> Result<T, StoreError> {
        match self.inner.layout.verdict() {
            Verdict::Matched => {}
            _ => match self.layout().await? {
                Verdict::Matched => {}
                _ => return Err(self.inner.layout.mismatch()),
            },
        }
        self.run_guarded(op, timeout, fut).await
    }

    /// The layout guard's verdict, claiming the layout first if a claim is due (a claim that
    /// fails before any succeeded is this operation's error). A mismatch found drops this
    /// process's L1 copies, which were filled under the layout that no longer holds.
    async fn layout(&self) -> Result<Verdict, StoreError> {
        let i = &self.inner;
        let (key, layout) = i.layout.claim();
        let v = i
            .layout
            .checked(async || {
                self.run_guarded("layout", i.op_timeout, i.store.claim_layout(key, layout))
                    .await
            })
            .await?;
        if v == Verdict::Mismatched {
            i.l1.flush();
        }
        Ok(v)
    }

    /// Runs one store operation under the circuit breaker and a timeout, in a `cache.store`
    /// span (TRACE level), timed into `db.client.operation.duration` (operations the breaker
    /// rejects are not sent, so not timed). Not gated by the layout guard: for the guard's own
    /// claim, and for invalidations (which choose their layout, [`Self::invalidate_target`]).
    async fn run_guarded<'a, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: StoreFuture<'a, T>,
    ) -> Result<T, StoreError> {
        let span = self.admit(op)?;
        let started = std::time::Instant::now();
        let mut fut = tracing::Instrument::instrument(fut, span.clone());
        let result = within(timeout, &mut fut).await.unwrap_or_else(|| {
            Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("{op} took longer than {timeout:?}"),
            ))
        });
        self.settle(op, &span, started, result)
    }

    /// [`Self::guarded`] for an operation that completes without waiting (a store's
    /// [`read_now`](crate::store::Store::read_now)): the same breaker verdict, span fields,
    /// timing and outcome; no timeout, since nothing waits. `None` when the store has no such
    /// form: then nothing was admitted (a breaker's one probe is not spent on it).
    ///
    /// The breaker is asked after the operation: attempting an in-process read costs the store
    /// nothing, and a result the breaker rejects is not returned.
    fn guarded_now<T>(
        &self,
        op: &'static str,
        run: impl FnOnce() -> Option<Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        match self.inner.layout.verdict() {
            Verdict::Matched => {}
            // A claim must be made first: by the asynchronous form.
            Verdict::Due => return None,
            Verdict::Mismatched => return Some(Err(self.inner.layout.mismatch())),
        }
        let started = std::time::Instant::now();
        let result = run()?;
        Some(match self.admit(op) {
            Ok(span) => self.settle(op, &span, started, result),
            Err(e) => Err(e),
        })
    }

    /// The breaker's permit for one store operation, and its span.
    fn admit(&self, op: &'static str) -> Result<tracing::Span, StoreError> {
        let inner = &self.inner;
        if inner.breaker.permit() == Permit::Rejected {
            return Err(StoreError::new(
                StoreErrorKind::CircuitOpen,
                "circuit breaker open",
            ));
        }
        Ok(tracing::trace_span!(
            "cache.store",
            otel.kind = "client",
            db.system.name = inner.store.name(),
            db.operation.name = op,
            cache.namespace = %inner.namespace,
            outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        ))
    }

    /// What one admitted store operation's result does: its span fields, its timing, and the
    /// breaker (a success may close it and wake the retry queue; a failure may open it).
    fn settle<T>(
        &self,
        op: &'static str,
        span: &tracing::Span,
        started: std::time::Instant,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        let elapsed = started.elapsed();
        let error_type = result.as_ref().err().map(|e| error_type(e.kind()));
        if !span.is_disabled() {
            span.record("outcome", if error_type.is_some() { "error" } else { "ok" });
            if let Some(e) = error_type {
                span.record("error.type", e);
            }
            span.record("duration_us", elapsed.as_micros() as u64);
        }
        inner.counters.store_op(op, elapsed, error_type);
        match &result {
            Ok(_) => match inner.breaker.success() {
                None | Some(Transition::Opened) => {}
                Some(Transition::Closed) => {
                    inner.counters.breaker_closed();
                    tracing::info!(namespace = %inner.namespace, "cache store reachable again; circuit closed");
                    // Owed invalidations are retried now, not at the end of their backoff.
                    inner.retry.wake();
                }
                Some(Transition::Recovered) => inner.retry.wake(),
            },
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

    /// The error every read returns while this process owes the store an invalidation: the store
    /// may hold entries that invalidation is about to remove, so nothing is served from it.
    ///
    /// The same holds while the namespace is recorded with another key layout
    /// ([`super::layout`]): then this process's L1 copies may miss the other processes'
    /// invalidations too.
    fn owed(&self) -> Option<StoreError> {
        let i = &self.inner;
        if i.layout.is_mismatched() {
            return Some(i.layout.mismatch());
        }
        (i.retry.pending() > 0).then(|| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                "invalidation pending; cache reads suspended",
            )
        })
    }

    /// Reads `key` (the value, opened, and the namespace's clock): from L1 when it has it, else
    /// from the store (then filling L1). With `eviction`, the read goes to the store, in the
    /// route's shard, and with `touch` touches the entry's rank in the same operation (L1 would
    /// hide uses from the policy).
    pub(crate) async fn read(
        &self,
        key: &str,
        eviction: Option<&RouteEviction>,
        touch: bool,
    ) -> Result<Lookup, StoreError> {
        if let Some(ev) = eviction {
            if let Some(e) = self.owed() {
                return Err(e);
            }
            let i = &self.inner;
            let fut = if touch {
                ev.store.route_read(&ev.keys, &ev.space, key, ev.spec())
            } else {
                i.store.read(&ev.keys, key)
            };
            return self
                .guarded("read", i.op_timeout, fut)
                .await
                .map(|lookup| self.opened(key, lookup));
        }
        let i = &self.inner;
        let ticket = if i.answers_now {
            match self.read_now(key) {
                ReadNow::Done(r) => return r,
                ReadNow::Later(later) => later.0,
            }
        } else if let Some(e) = self.owed() {
            return Err(e);
        } else {
            None
        };
        // Self::read_later, written out: one future less to build and move on the hot path of a
        // store that must be waited for.
        let r = self
            .guarded("read", i.op_timeout, i.store.read(&i.space, key))
            .await;
        self.read_done(key, ticket, r)
    }

    /// Whether [`Self::read_now`] can find anything without waiting: an L1 tier, or a store that
    /// answers [`Store::read_now`](crate::store::Store::read_now). Otherwise it always returns
    /// `Later`, and the caller had better not stop to ask.
    pub(crate) fn answers_now(&self) -> bool {
        self.inner.answers_now
    }

    /// The part of [`Self::read`] (without eviction) that needs no waiting: an owed
    /// invalidation, an L1 hit, or a store whose reads complete at once
    /// ([`Store::read_now`](crate::store::Store::read_now)). Otherwise what
    /// [`Self::read_later`] continues from. The hit path of an in-process tier runs this
    /// without a future.
    pub(crate) fn read_now(&self, key: &str) -> ReadNow {
        if let Some(e) = self.owed() {
            return ReadNow::Done(Err(e));
        }
        let i = &self.inner;
        // L1 (crate::l1): a hit makes no network call; a miss fills it from the store read.
        let ticket = match i.l1.lookup(key) {
            Ok(hit) => return ReadNow::Done(Ok(hit)),
            Err(ticket) => ticket,
        };
        match self.guarded_now("read", || i.store.read_now(&i.space, key)) {
            Some(r) => ReadNow::Done(self.read_done(key, ticket, r)),
            None => ReadNow::Later(Later(ticket)),
        }
    }

    /// Finishes a read [`Self::read_now`] could not: the store's own (asynchronous) read.
    pub(crate) async fn read_later(&self, key: &str, later: Later) -> Result<Lookup, StoreError> {
        let i = &self.inner;
        let r = self
            .guarded("read", i.op_timeout, i.store.read(&i.space, key))
            .await;
        self.read_done(key, later.0, r)
    }

    /// A store read's result, opened, filling L1 (with the ticket taken before the read).
    fn read_done(
        &self,
        key: &str,
        ticket: Option<crate::l1::Ticket>,
        r: Result<Lookup, StoreError>,
    ) -> Result<Lookup, StoreError> {
        let r = r.map(|lookup| self.opened(key, lookup));
        if let (Some(t), Ok(lookup)) = (ticket, &r) {
            self.inner.l1.fill(t, key, lookup);
        }
        r
    }

    /// Reads many entries in one operation (not through L1), opened.
    pub(crate) async fn read_many(&self, keys: &[String]) -> Result<LookupMany, StoreError> {
        if let Some(e) = self.owed() {
            return Err(e);
        }
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

    /// Writes one entry (`write.value` is the plain encoding: sealed here), guarded by
    /// `write.since`; with `eviction`, a stored entry is then ranked and what the policy names is
    /// evicted (one more operation).
    pub(crate) async fn write(
        &self,
        write: Write<'_>,
        eviction: Option<&RouteEviction>,
    ) -> Result<Written, StoreError> {
        let i = &self.inner;
        // L1 keeps the plain encoding (crate::seal): an L1 hit neither decrypts nor inflates.
        let (key, ttl, value, since) = (write.key, write.ttl, write.value.clone(), write.since);
        // Tags reach the store bounded, as invalidations name them (Invalidation::into_jobs).
        let tags = crate::key::bound_all(write.tags);
        let write = Write {
            value: self.seal(key, write.value)?,
            tags: &tags,
            ..write
        };
        let bytes = write.value.len();
        let ticket = i.l1.ticket(key);
        let space = eviction.map_or(&i.space, |ev| &ev.keys);
        let r = self
            .guarded("write", i.op_timeout, i.store.write(space, write))
            .await;
        i.l1.after_write(ticket, key, &value, since, &r);
        match r {
            Ok(Written::Stored) => i.counters.stored(bytes),
            Ok(Written::Superseded) => i.counters.superseded(),
            Err(_) => {}
        }
        if let (Ok(Written::Stored), Some(ev)) = (&r, eviction) {
            self.record_ranked(ev, key, ttl).await;
        }
        r
    }

    /// Ranks a just-stored route entry and evicts what its policy names. A failed record leaves
    /// the entry unindexed until its next read indexes it (the read heals the index); the failure
    /// is logged and counted by `guarded`.
    async fn record_ranked(&self, ev: &RouteEviction, key: &str, ttl: Duration) {
        let i = &self.inner;
        let fut = ev.store.route_record(&ev.space, key, ttl, ev.spec());
        if let Ok(evicted) = self.guarded("evict", i.op_timeout, fut).await {
            if !evicted.is_empty() {
                i.counters.evicted(ev.policy.name(), evicted.len() as u64);
                tracing::debug!(
                    namespace = %i.namespace,
                    policy = ev.policy.name(),
                    evicted = evicted.len(),
                    "evicted entries to stay within capacity"
                );
            }
        }
    }

    /// Writes many entries in one operation, each guarded by its own `since`; returns one
    /// [`Written`] per write, in order.
    pub(crate) async fn write_many(
        &self,
        batch: &[BatchWrite],
    ) -> Result<Vec<Written>, StoreError> {
        // Tags reach the store bounded, as invalidations name them (Invalidation::into_jobs).
        let tags: Vec<_> = batch
            .iter()
            .map(|w| crate::key::bound_all(&w.tags))
            .collect();
        let writes: Vec<Write<'_>> = batch
            .iter()
            .zip(&tags)
            .map(|(w, tags)| {
                Ok(Write {
                    key: &w.key,
                    value: self.seal(&w.key, w.value.clone())?,
                    ttl: w.ttl,
                    tags,
                    since: w.since,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let sizes: Vec<usize> = writes.iter().map(|w| w.value.len()).collect();
        let i = &self.inner;
        let out = self
            .guarded(
                "write_many",
                i.bulk_timeout,
                i.store.write_many(&i.space, writes),
            )
            .await;
        // Values written in place: drop this process's L1 copies (crate::l1).
        i.l1.forget_keys(batch.iter().map(|w| w.key.as_str()));
        let out = out?;
        for (w, size) in out.iter().zip(sizes) {
            match w {
                Written::Stored => i.counters.stored(size),
                Written::Superseded => i.counters.superseded(),
            }
        }
        Ok(out)
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

    /// The stored form of the encoded entry `plain` for `key` ([`crate::seal`]): every write
    /// goes through here.
    fn seal(&self, key: &str, plain: Bytes) -> Result<Bytes, StoreError> {
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
    fn open(&self, key: &str, raw: Bytes) -> Bytes {
        let i = &self.inner;
        match i.sealer.open(&i.space, key, raw) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!(namespace = %i.namespace, error = %e, "cached value does not open; treating as a miss");
                Bytes::new()
            }
        }
    }

    /// [`open`](Self::open) on a store read.
    fn opened(&self, key: &str, lookup: Lookup) -> Lookup {
        Lookup {
            value: lookup.value.map(|raw| self.open(key, raw)),
            clock: lookup.clock,
        }
    }

    /// Runs an invalidation; if the store fails, owes it to the store (the retry queue: never
    /// dropped, see [`super::retry`]) and returns the error.
    pub(crate) async fn invalidate_or_queue(&self, job: Job) -> Result<u64, StoreError> {
        match self.invalidate_target(job.target()).await {
            Ok(n) => Ok(n),
            Err(e) => {
                self.inner.retry.push(self, job, &e);
                Err(e)
            }
        }
    }

    /// Runs one invalidation: the store's (clock, tombstones, removal), then this process's L1,
    /// then the announcement to other instances' L1 tiers (its failure fails the invalidation,
    /// so it is retried).
    pub(crate) async fn invalidate_target(&self, target: Target<'_>) -> Result<u64, StoreError> {
        let i = &self.inner;
        i.epoch.fetch_add(1, Ordering::AcqRel);
        // Tags and patterns run in steps on the store's bulk connection (a large tag, a scan):
        // the budget of multi-step operations, not the one of a hit.
        let (timeout, kind) = match target {
            Target::Pattern(_) => (i.bulk_timeout, "pattern"),
            Target::Tags(_) => (i.bulk_timeout, "tag"),
            _ => (i.op_timeout, "key"),
        };
        // In this cache's layout, or in the namespace's recorded one when they differ
        // (super::layout): the processes that use it must see this invalidation.
        let r = match self.layout().await {
            Ok(Verdict::Mismatched) => match i.layout.recorded() {
                Some(recorded) => {
                    self.run_guarded("invalidate", timeout, i.store.invalidate(&recorded, target))
                        .await
                }
                None => Err(i.layout.mismatch()),
            },
            Ok(_) => {
                self.run_guarded("invalidate", timeout, i.store.invalidate(&i.space, target))
                    .await
            }
            Err(e) => Err(e),
        };
        // L1: drop this process's copies (whatever the store said), then tell the others.
        i.l1.forget(target);
        let n = r?;
        i.counters.invalidated(kind, n);
        if let Some((bus, channel, payload)) = i.l1.announcement(target) {
            self.run_guarded("publish", i.op_timeout, bus.publish(channel, &payload))
                .await?;
        }
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

/// What [`Cache::read_now`] found.
pub(crate) enum ReadNow {
    /// The read is complete.
    Done(Result<Lookup, StoreError>),
    /// The store must be asked and waited for: [`Cache::read_later`].
    Later(Later),
}

/// A read [`Cache::read_now`] started and [`Cache::read_later`] finishes (the L1 ticket taken
/// before it, so a value that changed meanwhile does not fill L1).
pub(crate) struct Later(Option<crate::l1::Ticket>);
