//! A miss: single-flight, the fill lock, the handler, and storing its response through a
//! [`Fill`], the guard that owns a fill's flight and lock.

use super::body::{CacheBody, Tee};
use super::bounds::{Inner, SendBody};
use super::conditional;
use super::config::RouteConfig;
use super::freshness;
use super::lookup::fresh_entry;
use super::policy;
use super::request_body::CacheRequestBody;
use super::response::{from_entry, Answer};
use super::revalidate;
use super::vary::{Marker, Vary};
use crate::cache::flight::{elect, Elected, Failure, Landing, Lead, Stamp};
use crate::entry::{now_ms, Entry, Freshness};
use crate::outcome::{Outcome, PendingStore};
use crate::store::{Write, Written};
use crate::Cache;
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a request's lookup leaves for [`miss`].
pub(crate) struct Missed {
    pub(crate) is_head: bool,
    pub(crate) revalidate: bool,
    /// The route's key.
    pub(crate) base: String,
    /// Where the entry lives (the variant's key when a marker was found).
    pub(crate) key: String,
    pub(crate) tags: Vec<String>,
    pub(crate) marker: Option<Marker>,
    /// The invalidation clock the lookup read, and this process's epoch then.
    pub(crate) stamp: (u64, u64),
    /// A stale entry that may stand in for a failing handler (stale-if-error).
    pub(crate) stale: Option<(Entry, Duration)>,
    /// A stored entry with validators: the handler gets a conditional request, and a `304`
    /// refreshes the entry (`revalidate`).
    pub(crate) revalidating: Option<Entry>,
    pub(crate) detail: Option<&'static str>,
}

/// The answer for a request served with the entry another request's fill produced: collapsed
/// when it is fresh, stale-if-error when the leader stood in a stale entry for its failing
/// handler; None once the entry is past even its stale window.
fn shared_answer<B: Body>(entry: &Entry, is_head: bool) -> Option<Answer<B>> {
    let now = now_ms();
    let outcome = match entry.freshness(now) {
        Freshness::Fresh(_) => Outcome::Collapsed,
        Freshness::Stale(past) => Outcome::stale(past, Some("stale-if-error")),
        Freshness::Expired => return None,
    };
    Some(from_entry(entry, is_head, outcome, now))
}

/// What a request answered from the error cache is labelled with.
const ERROR_CACHED: Outcome = Outcome::Miss {
    stored: false,
    detail: Some("error-cached"),
};

/// The answer for a request served with a failure of this key's handler (a follower of the
/// failed fill, `outcome` [`Outcome::Collapsed`], or the error cache): the request's own stale
/// entry if it has one inside its stale-if-error window, else the failed response.
fn failed_answer<B: Body>(
    failed: &Entry,
    stale: Option<(Entry, Duration)>,
    is_head: bool,
    outcome: Outcome,
) -> Answer<B> {
    match stale {
        Some((entry, past)) => from_entry(
            &entry,
            is_head,
            Outcome::stale(past, Some("stale-if-error")),
            now_ms(),
        ),
        None => from_entry(failed, is_head, outcome, now_ms()),
    }
}

/// A miss: single-flight, fill lock, the handler, and storing its response.
pub(crate) async fn miss<S, ReqB, ResB>(
    cfg: Arc<RouteConfig>,
    mut inner: S,
    req: Request<CacheRequestBody<ReqB>>,
    missed: Missed,
) -> Result<Answer<ResB>, S::Error>
where
    S: Inner<ReqB, ResB>,
    ReqB: SendBody,
    ResB: SendBody,
{
    let Missed {
        is_head,
        revalidate,
        base,
        key,
        mut tags,
        marker,
        stamp: (clock, epoch),
        stale,
        revalidating,
        detail,
    } = missed;
    let counters = cfg.cache.counters();
    let headers = req.headers().clone();
    let stamp: Stamp = (Some(clock), epoch);

    // The error cache (`error_ttl`): this key's handler failed moments ago, after a read with
    // this request's stamp: answer with that failure rather than run the handler again.
    if !cfg.error_ttl.is_zero() && !revalidate {
        if let Some(Failure::Response(e)) = cfg.cache.failures().get(&key, stamp) {
            return Ok(failed_answer(&e, stale, is_head, ERROR_CACHED));
        }
    }

    // Single-flight: one handler run per key in this process; the others wait for its entry,
    // or its failure, and elect a new leader if it is cancelled.
    let mut lead = None;
    if cfg.coalesce && !is_head {
        let flights = cfg.cache.flights();
        match elect(flights, &key, stamp, cfg.coalesce_wait, counters).await {
            Elected::Lead(l) => lead = Some(l),
            Elected::Landed(Landing::Entry(e, _)) => {
                if let Some(answer) = shared_answer(&e, is_head) {
                    return Ok(answer);
                }
            }
            Elected::Landed(Landing::Failed(Failure::Response(e), _)) => {
                return Ok(failed_answer(&e, stale, is_head, Outcome::Collapsed));
            }
            Elected::Landed(_) | Elected::Alone => {}
        }
    }

    // Fill lock: one handler run per key across every instance sharing the store.
    let mut lock = LockGuard::none(&cfg.cache, &key);
    if let (Some(lease), false) = (cfg.lock_lease, is_head) {
        let token = random_token();
        match cfg.cache.try_lock(&key, &token, lease).await {
            Ok(true) => lock.token = Some(token),
            Ok(false) => {
                counters.lock_waits();
                let waited = {
                    let _waiting = counters.waiting();
                    wait_for_entry(&cfg, (&base, &key), &headers, lease, &token).await
                };
                match waited {
                    // A request asking to revalidate must not be answered with the cached copy.
                    Waited::Entry(entry, from) if !revalidate => {
                        let entry = Arc::new(entry);
                        if let Some(l) = lead {
                            // Followers share this request's key, not necessarily its variant.
                            l.land(match from == key {
                                true => Landing::Entry(entry.clone(), stamp),
                                false => Landing::Unshareable,
                            });
                        }
                        return Ok(from_entry(&entry, is_head, Outcome::Collapsed, now_ms()));
                    }
                    Waited::Entry(..) => {}
                    // The holder's lease ran out (it died): we hold the lock now.
                    Waited::Locked => lock.token = Some(token),
                    Waited::TimedOut => counters.lock_timeouts(),
                }
            }
            Err(_) => {}
        }
    }

    let variant = Variant {
        base,
        marker,
        headers,
    };
    let mut fill = Fill::new(&cfg, key, (clock, epoch), variant, lead, lock);

    // Double-check now that this request leads (and holds the fill lock, if any): a flight that
    // landed, or a lock holder that released, between our lookup and taking the lead has already
    // stored the entry. Without this a late miss runs the handler a second time.
    if !revalidate && fill.leads() {
        if let Some((entry, from)) =
            fresh_entry(&cfg, &fill.variant.base, &fill.variant.headers).await
        {
            let entry = Arc::new(entry);
            let landing = match from == fill.key {
                true => Landing::Entry(entry.clone(), stamp),
                false => Landing::Unshareable,
            };
            fill.finish(landing).await;
            return Ok(from_entry(&entry, is_head, Outcome::Collapsed, now_ms()));
        }
    }

    let mut req = req;
    let ours = revalidate::make_conditional(revalidating.as_ref(), req.headers_mut());
    let res = match stale {
        // Stale-if-error: a stale entry may stand in for a failing or slow handler.
        Some((entry, past)) => {
            let call = inner.call(req);
            let ran = match cfg.handler_timeout {
                Some(t) => tokio::time::timeout(t, call).await.ok(),
                None => Some(call.await),
            };
            match ran {
                Some(Ok(res)) if !res.status().is_server_error() => res,
                _ => {
                    let entry = Arc::new(entry);
                    let outcome = Outcome::stale(past, Some("stale-if-error"));
                    fill.finish(Landing::Entry(entry.clone(), stamp)).await;
                    return Ok(from_entry(&entry, is_head, outcome, now_ms()));
                }
            }
        }
        None => inner.call(req).await?,
    };
    let mut res = res;
    // Tags that do not parse: not stored (an entry missing a tag escapes its invalidation).
    let mut unparsable_tags = None;
    if cfg.tag_headers && crate::headers::take_tags(res.headers_mut(), &mut tags).is_err() {
        unparsable_tags = Some("unparsable-tags");
    }
    fill.tags = tags;
    let (fill, res) = match revalidate::on_response(fill, revalidating, ours, res, is_head).await {
        Ok(answer) => return Ok(answer),
        Err(unchanged) => unchanged,
    };
    if is_head {
        // A HEAD response has no body to store; the GET that follows will fill the entry.
        fill.decline();
        let outcome = Outcome::Miss {
            stored: false,
            detail: Some("head"),
        };
        return Ok((res.map(CacheBody::stream), outcome));
    }
    if let Some(reason) = policy::fill_unstorable(&cfg, &res, unparsable_tags) {
        // A 5xx is not stored, but the followers of this fill share it (and, with `error_ttl`,
        // the next misses): one handler run per failure, if the response is one the route could
        // share.
        if unparsable_tags.is_none()
            && cfg.shares_failure(&res)
            && fill.shares(&Vary::of(res.headers()))
        {
            return Ok(share_failure(&cfg, fill, res).await);
        }
        fill.decline();
        let outcome = Outcome::Miss {
            stored: false,
            detail: Some(reason),
        };
        return Ok((res.map(CacheBody::stream), outcome));
    }
    // Followers joined on this request's key: they may take the entry only if it is stored under
    // that key for them too (same vary headers as the lookup went by).
    let vary = Vary::of(res.headers());
    let (parts, body) = res.into_parts();
    let hint = body.size_hint();
    if hint.lower() > cfg.max_body_bytes as u64 {
        fill.decline();
        let outcome = Outcome::Miss {
            stored: false,
            detail: Some("too-large"),
        };
        return Ok((
            Response::from_parts(parts, CacheBody::stream(body)),
            outcome,
        ));
    }
    if hint.exact().is_some() && !cfg.stream_misses {
        // Known length within the limit (axum's usual bodies): collect, store, then answer, so
        // `Cache-Status` can say whether it was stored and the next request hits.
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                fill.decline();
                let outcome = Outcome::Miss {
                    stored: false,
                    detail: detail.or(Some("body-error")),
                };
                return Ok((Response::from_parts(parts, CacheBody::failed(e)), outcome));
            }
        };
        let mut parts = parts;
        let entry = fill.entry(parts.status, &mut parts.headers, bytes.clone());
        let stored = fill.store(&entry, &vary).await;
        let landing = freshness::landing(&fill, entry, &vary);
        fill.finish(landing).await;
        let outcome = Outcome::Miss {
            stored: stored == Some(Written::Stored),
            detail: match stored {
                Some(Written::Superseded) => Some("invalidated"),
                None => Some("store-unavailable"),
                Some(_) => None,
            },
        };
        return Ok((Response::from_parts(parts, CacheBody::full(bytes)), outcome));
    }
    // Unknown length: stream it through and store a copy once it completes within the limit.
    // Followers wait for the landing at the end; if the body is dropped or too large, the fill
    // is dropped with it, which releases them and the lock.
    let status = parts.status;
    let mut headers = parts.headers.clone();
    let (pending, report) = PendingStore::new();
    let tee = Tee::new(
        cfg.max_body_bytes,
        Box::new(move |bytes| {
            tokio::spawn(async move {
                let entry = fill.entry(status, &mut headers, bytes);
                let stored = fill.store(&entry, &vary).await;
                report.report(stored == Some(Written::Stored));
                let landing = freshness::landing(&fill, entry, &vary);
                fill.finish(landing).await;
            });
        }),
    );
    let mut res = Response::from_parts(parts, CacheBody::tee(body, tee));
    res.extensions_mut().insert(pending);
    let outcome = Outcome::Miss {
        stored: false,
        detail,
    };
    Ok((res, outcome))
}

/// Answers the leader with its handler's 5xx and hands the same status, headers and body to the
/// followers of its fill (and, with `error_ttl`, to the error cache), once the body is complete
/// within `max_body_bytes`: a body that is larger, fails or is dropped is shared with nobody (the
/// followers run the handler themselves). Never stored.
async fn share_failure<B>(cfg: &RouteConfig, fill: Fill, res: Response<B>) -> Answer<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let outcome = Outcome::Miss {
        stored: false,
        detail: Some("status"),
    };
    let (parts, body) = res.into_parts();
    let hint = body.size_hint();
    if hint.lower() > cfg.max_body_bytes as u64 {
        fill.decline();
        return (
            Response::from_parts(parts, CacheBody::stream(body)),
            outcome,
        );
    }
    if hint.exact().is_some() {
        return match body.collect().await {
            Ok(c) => {
                let bytes = c.to_bytes();
                fill.fail(parts.status, &parts.headers, bytes.clone()).await;
                (Response::from_parts(parts, CacheBody::full(bytes)), outcome)
            }
            Err(e) => {
                fill.decline();
                (Response::from_parts(parts, CacheBody::failed(e)), outcome)
            }
        };
    }
    let (status, headers) = (parts.status, parts.headers.clone());
    let tee = Tee::new(
        cfg.max_body_bytes,
        Box::new(move |bytes| {
            tokio::spawn(async move { fill.fail(status, &headers, bytes).await });
        }),
    );
    (
        Response::from_parts(parts, CacheBody::tee(body, tee)),
        outcome,
    )
}

/// What waiting on another instance's fill lock ended with.
enum Waited {
    /// The holder stored a fresh entry (for this request's variant), at this key.
    Entry(Entry, String),
    /// The holder's lease expired without an entry (it died): this request took the lock.
    Locked,
    /// Neither within `lease`: run the handler without the lock.
    TimedOut,
}

/// Polls the store until `key` holds a fresh entry, or the lock frees up (the holder's lease
/// expired), or `lease` passes (another instance holds the fill lock and runs the handler).
/// `base` is the route's key, `key` the lock's (the variant's, when known).
async fn wait_for_entry(
    cfg: &RouteConfig,
    (base, key): (&str, &str),
    headers: &HeaderMap,
    lease: Duration,
    token: &str,
) -> Waited {
    let deadline = Instant::now() + lease;
    let mut pause = Duration::from_millis(5);
    while Instant::now() + pause < deadline {
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_millis(100));
        if let Some((e, from)) = fresh_entry(cfg, base, headers).await {
            return Waited::Entry(e, from);
        }
        if let Ok(true) = cfg.cache.try_lock(key, token, lease).await {
            return Waited::Locked;
        }
    }
    Waited::TimedOut
}

/// The fill lock held by a request: released when the fill finishes, or, on any other exit
/// (an early return, a panic, the request future dropped), by a task spawned when it drops.
pub(crate) struct LockGuard {
    cache: Cache,
    key: String,
    pub(crate) token: Option<String>,
}

impl LockGuard {
    pub(crate) fn none(cache: &Cache, key: &str) -> Self {
        Self {
            cache: cache.clone(),
            key: key.to_owned(),
            token: None,
        }
    }

    async fn release(&mut self) {
        if let Some(t) = self.token.take() {
            let _ = self.cache.unlock(&self.key, &t).await;
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
                rt.spawn(async move {
                    let _ = cache.unlock(&key, &t).await;
                });
            }
        }
    }
}

/// Which variant of the route's key a fill is for.
pub(crate) struct Variant {
    /// The route's key (where the marker, or a response without `Vary`, lives).
    pub(crate) base: String,
    /// The marker the lookup found there, if any.
    pub(crate) marker: Option<Marker>,
    /// The request's headers, to key the variant once the response names its vary headers.
    pub(crate) headers: HeaderMap,
}

/// A fill in progress: what is needed to store the handler's response once it is complete, and
/// the guard of its single-flight lead and fill lock.
///
/// [`finish`](Self::finish) releases the lock and hands the followers their landing;
/// [`decline`](Self::decline) tells them the response is not shareable. Dropping a fill any other
/// way (an early return, a panic, the request future dropped) releases the lock from a spawned
/// task and tells the followers the leader is gone, so they elect a new one: no exit can leave
/// them waiting or the lock held.
pub(crate) struct Fill {
    cfg: Arc<RouteConfig>,
    /// The key the lookup read the entry at (the variant's when a marker was found): the
    /// single-flight and fill-lock key.
    pub(crate) key: String,
    pub(crate) variant: Variant,
    pub(crate) tags: Vec<String>,
    /// The route's TTL, shortened by this fill's jitter.
    ttl: Duration,
    /// This fill's jitter: every TTL it stores (the route's, or the response's own with
    /// `respect_cache_control`) is multiplied by it.
    jitter: f64,
    since: u64,
    epoch: u64,
    started: Instant,
    lead: Option<Lead>,
    lock: LockGuard,
}

impl Fill {
    pub(crate) fn new(
        cfg: &Arc<RouteConfig>,
        key: String,
        (since, epoch): (u64, u64),
        variant: Variant,
        lead: Option<Lead>,
        lock: LockGuard,
    ) -> Self {
        // Only ever shorten: an entry must not outlive the freshness the route (or the
        // response) promises.
        let jitter = 1.0 - cfg.ttl_jitter * fastrand::f64();
        let ttl = cfg.ttl().mul_f64(jitter);
        Self {
            cfg: cfg.clone(),
            key,
            variant,
            tags: Vec::new(),
            ttl,
            jitter,
            since,
            epoch,
            started: Instant::now(),
            lead,
            lock,
        }
    }

    /// Whether this fill leads a flight or holds the fill lock (others may be waiting on it).
    pub(crate) fn leads(&self) -> bool {
        self.lead.is_some() || self.lock.token.is_some()
    }

    pub(crate) fn stamp(&self) -> Stamp {
        (Some(self.since), self.epoch)
    }

    /// Releases the fill lock, then hands `landing` to the followers.
    pub(crate) async fn finish(mut self, landing: Landing) {
        self.lock.release().await;
        if let Some(l) = self.lead.take() {
            l.land(landing);
        }
    }

    /// The handler failed with a shareable 5xx (`status`, `headers`, `body`): the followers get
    /// it, and with `error_ttl` so do the next misses of this key for that long. The lock is
    /// released (nothing was stored: another instance waiting on it runs its own handler).
    pub(crate) async fn fail(self, status: StatusCode, headers: &HeaderMap, body: Bytes) {
        let entry = Entry::from_response(
            status,
            headers,
            body,
            now_ms(),
            Duration::ZERO,
            Duration::ZERO,
        );
        let failure = Failure::Response(Arc::new(entry));
        let stamp = self.stamp();
        self.cfg
            .cache
            .failures()
            .keep(&self.key, failure.clone(), stamp, self.cfg.error_ttl);
        self.finish(Landing::Failed(failure, stamp)).await;
    }

    /// The response is not shareable: followers run on their own; the lock is released.
    pub(crate) fn decline(mut self) {
        if let Some(l) = self.lead.take() {
            l.land(Landing::Unshareable);
        }
    }

    /// The entry for a response; adds a strong content-hash `ETag` to `headers` when the
    /// handler set none, so clients can revalidate (`If-None-Match` → 304).
    pub(crate) fn entry(&self, status: StatusCode, headers: &mut HeaderMap, body: Bytes) -> Entry {
        if self.cfg.etag && !headers.contains_key(header::ETAG) {
            headers.insert(header::ETAG, conditional::etag_for(&body));
        }
        if self.cfg.http_freshness {
            let requested = freshness::request_time(self.started.elapsed());
            return freshness::entry(&self.cfg, status, headers, body, requested, now_ms())
                .with_compute_time(self.started.elapsed());
        }
        let ttl = match self.cfg.respect_cache_control {
            // The jitter applies to every TTL source (the response's own lifetime too).
            true => conditional::response_ttl(headers).map_or(self.ttl, |t| t.mul_f64(self.jitter)),
            false => self.ttl,
        };
        Entry::from_response(status, headers, body, now_ms(), ttl, self.cfg.stale_for())
            .with_compute_time(self.started.elapsed())
    }

    /// The route this fill is for.
    pub(crate) fn cfg(&self) -> &RouteConfig {
        &self.cfg
    }

    /// Whether requests that joined this fill's key (single-flight followers) may take its
    /// entry: only if the response varies on exactly what the lookup keyed by.
    pub(crate) fn shares(&self, vary: &Vary) -> bool {
        self.variant.marker.as_ref().map(|m| &m.names[..]) == vary.names()
    }

    /// Stores the entry; None when the store failed or the fill outlived the invalidation
    /// window (its guard can no longer be checked, so it is dropped).
    ///
    /// A response with `Vary` first writes the variant marker at the route's key (reusing the
    /// generation found there when the header list matches), guarded like any fill, and only
    /// then the variant: a fill that read the key before an invalidation cannot restore the old
    /// generation, and a variant written after an invalidation is unreachable.
    pub(crate) async fn store(&self, entry: &Entry, vary: &Vary) -> Option<Written> {
        if self.started.elapsed() >= self.cfg.cache.invalidation_window() {
            tracing::debug!("fill took longer than the invalidation window; not stored");
            return None;
        }
        let base = &self.variant.base;
        let Some(names) = vary.names() else {
            return self.put(base, entry, self.since).await;
        };
        // The marker outlives the variants written under it (a shorter-lived marker only costs
        // hits: its variants become unreachable).
        let ttl = entry
            .store_ttl(now_ms())
            .max(self.ttl.saturating_add(self.cfg.stale_for()));
        let mut marker = match &self.variant.marker {
            // Reusing a generation is guarded by the clock that generation began at.
            Some(m) if m.names == names => m.clone(),
            _ => Marker::new(names.to_vec(), self.since),
        };
        let mut written = self
            .put(base, &marker.entry(ttl)?, marker.since.min(self.since))
            .await?;
        if written == Written::Superseded && marker.since < self.since {
            // Something covering the key was invalidated since the generation began, though
            // not since this fill's read: start a new generation (its variants are all new).
            marker = Marker::new(names.to_vec(), self.since);
            written = self.put(base, &marker.entry(ttl)?, self.since).await?;
        }
        if written != Written::Stored {
            return Some(written);
        }
        let key = marker.variant_key(base, &self.variant.headers, &self.cfg.encodings);
        self.put(&key, entry, self.since).await
    }

    /// Encodes and writes one entry at `key` with the fill's tags, guarded by clock `since`.
    async fn put(&self, key: &str, entry: &Entry, since: u64) -> Option<Written> {
        let value = match entry.encode() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "response cannot be encoded; not stored");
                return None;
            }
        };
        let write = Write {
            key,
            value,
            ttl: entry.store_ttl(now_ms()),
            tags: &self.tags,
            since: Some(since),
        };
        self.cfg
            .cache
            .write(write, self.cfg.eviction.as_deref())
            .await
            .ok()
    }
}

/// The whole body if it completes without error, trailers, or growing past `max`.
pub(crate) async fn collect_limited<B: Body<Data = Bytes>>(
    mut body: Pin<Box<B>>,
    max: usize,
) -> Option<Bytes> {
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let data = frame.ok()?.into_data().ok()?;
        len += data.len();
        if len > max {
            return None;
        }
        chunks.push(data);
    }
    Some(if chunks.len() == 1 {
        chunks.pop().unwrap_or_default()
    } else {
        chunks.concat().into()
    })
}

pub(crate) fn random_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}
