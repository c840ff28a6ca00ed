//! Background refreshes: stale-while-revalidate and probabilistic early refresh.

use super::config::RouteConfig;
use super::lookup::{decode_for, resolve};
use super::miss::{collect_limited, random_token, Fill, LockGuard, Variant};
use super::policy;
use super::revalidate;
use super::vary::{Marker, Vary};
use crate::cache::flight::Landing;
use crate::entry::{now_ms, Entry, Freshness};
use crate::store::Written;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::sync::Arc;
use tower_service::Service;

/// How a refresh's request ended (before its outcome is counted).
enum Refreshed {
    /// A response the route stores: how the write went, the entry, whether the followers of the
    /// refresh may take it.
    Stored(Written, Entry, bool),
    /// A `304` to the conditional request made from the entry: the entry and the 304's headers.
    NotModified(Entry, http::HeaderMap),
    /// A 5xx the route shares with the followers (status, headers, complete body).
    Failed(http::StatusCode, http::HeaderMap, Bytes),
}

/// What a refresh needs from the request that triggered it.
pub(crate) struct Trigger {
    /// The route's key, and where the entry lives (the variant's key when a marker was found).
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) marker: Option<Marker>,
    pub(crate) tags: Vec<String>,
    /// The clock and epoch the triggering lookup read.
    pub(crate) stamp: (u64, u64),
    /// The `stored_at` of the entry the request was served.
    pub(crate) seen_stored_at: u64,
    /// That entry, when the refresh may revalidate it (`revalidate`): the request becomes
    /// conditional on its validators, and a `304` refreshes it.
    pub(crate) entry: Option<Entry>,
}

/// Refreshes an entry in the background: at most one refresh per key in this process (and,
/// with a fill lock, across instances), bounded by the refresh timeout. A refresh that fails
/// leaves the old entry in place; one the guard refuses (the key was invalidated meanwhile) is
/// counted as superseded, not as a failure.
pub(crate) fn spawn<S, ReqB, ResB>(
    cfg: Arc<RouteConfig>,
    trigger: Trigger,
    mut inner: S,
    req: Request<ReqB>,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    // A hit can be answered inside `call` (crate::layer::service::start), which a caller may
    // invoke outside a runtime: then no refresh starts (the entry was served; a later request
    // triggers it), rather than a panic.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(lead) = cfg.cache.flights().try_lead(&trigger.key) else {
        return;
    };
    runtime.spawn(async move {
        let mut lock = LockGuard::none(&cfg.cache, &trigger.key);
        if let Some(lease) = cfg.lock_lease {
            let token = random_token();
            if !matches!(
                cfg.cache.try_lock(&trigger.key, &token, lease).await,
                Ok(true)
            ) {
                return; // another instance is refreshing it
            }
            lock.token = Some(token);
        }
        let variant = Variant {
            base: trigger.base,
            marker: trigger.marker,
            headers: req.headers().clone(),
        };
        let mut fill = Fill::new(&cfg, trigger.key, trigger.stamp, variant, Some(lead), lock);
        fill.tags = trigger.tags;
        // Double-check: a refresh that landed between the read that triggered this one and
        // taking the lead has already replaced the entry this request saw.
        let found = resolve(&cfg, &fill.variant.base, &fill.variant.headers, false).await;
        if let Some((raw, true)) = found.ok().and_then(|r| {
            let same = r.key(&fill.variant.base) == fill.key;
            Some((r.lookup.value?, same))
        }) {
            if let Ok(e) = decode_for(&cfg, &raw) {
                if e.stored_at_ms != trigger.seen_stored_at {
                    let landing = match e.freshness(now_ms()) {
                        Freshness::Fresh(_) => Landing::Entry(Arc::new(e), fill.stamp()),
                        _ => Landing::Unshareable,
                    };
                    fill.finish(landing).await;
                    return;
                }
            }
        }
        let mut req = req;
        let ours = revalidate::make_conditional(trigger.entry.as_ref(), req.headers_mut());
        let work = async {
            let mut res = inner.call(req).await.ok()?;
            if res.status() == http::StatusCode::NOT_MODIFIED && ours {
                if let Some(entry) = &trigger.entry {
                    return Some(Refreshed::NotModified(entry.clone(), res.headers().clone()));
                }
            }
            if cfg.tag_headers
                && crate::headers::take_tags(res.headers_mut(), &mut fill.tags).is_err()
            {
                return None;
            }
            let vary = Vary::of(res.headers());
            if policy::fill_unstorable(&cfg, &res, None).is_some() {
                if cfg.shares_failure(&res) && fill.shares(&vary) {
                    // Requests that missed meanwhile follow this refresh: they share its failure.
                    let (parts, body) = res.into_parts();
                    let bytes = collect_limited(Box::pin(body), cfg.max_body_bytes).await?;
                    return Some(Refreshed::Failed(parts.status, parts.headers, bytes));
                }
                return None;
            }
            let (mut parts, body) = res.into_parts();
            let bytes = collect_limited(Box::pin(body), cfg.max_body_bytes).await?;
            let entry = fill.entry(parts.status, &mut parts.headers, bytes);
            let written = fill.store(&entry, &vary).await?;
            Some(Refreshed::Stored(written, entry, fill.shares(&vary)))
        };
        let counters = cfg.cache.counters();
        match tokio::time::timeout(cfg.refresh_timeout, work).await {
            Ok(Some(Refreshed::NotModified(entry, headers))) => {
                // Revalidated: the stored entry refreshed with the 304's headers (guarded).
                let (refreshed, written) = revalidate::refresh(fill, &entry, &headers).await;
                match written {
                    Some(Written::Stored) => counters.refreshes(),
                    Some(_) => {}
                    None => counters.refresh_failures(),
                }
                drop(refreshed);
            }
            Ok(Some(Refreshed::Stored(Written::Stored, entry, shareable))) => {
                counters.refreshes();
                let landing = match shareable {
                    true => Landing::Entry(Arc::new(entry), fill.stamp()),
                    false => Landing::Unshareable,
                };
                fill.finish(landing).await;
            }
            Ok(Some(Refreshed::Stored(..))) => {
                // Refused by the guard: the key was invalidated while the refresh ran (the store
                // counted it as superseded); the next request fills it anew.
                tracing::debug!(namespace = %cfg.cache.namespace(), "background refresh superseded by an invalidation");
                fill.decline();
            }
            Ok(Some(Refreshed::Failed(status, headers, body))) => {
                counters.refresh_failures();
                tracing::debug!(namespace = %cfg.cache.namespace(), %status, "background refresh failed; the stale entry stays");
                fill.fail(status, &headers, body).await;
            }
            _ => {
                counters.refresh_failures();
                tracing::debug!(namespace = %cfg.cache.namespace(), "background refresh failed; the stale entry stays");
                fill.decline();
            }
        }
    });
}
