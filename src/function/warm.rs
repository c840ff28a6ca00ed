//! Warming a router's caches by driving requests through it, as traffic would.

use crate::Cache;
use futures_util::StreamExt;
use http::{header, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_service::Service;

/// What [`Cache::warm`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Requests whose response was stored.
    pub warmed: usize,
    /// Requests answered from a fresh entry (nothing to do).
    pub already_fresh: usize,
    /// Requests that failed or whose response was not stored.
    pub failed: usize,
    /// Time taken.
    pub elapsed: Duration,
}

type ProgressFn = Arc<dyn Fn(&WarmReport) + Send + Sync>;

/// Options of [`Cache::warm`].
#[derive(Clone)]
pub struct WarmOptions {
    concurrency: usize,
    force: bool,
    on_progress: Option<ProgressFn>,
}

impl std::fmt::Debug for WarmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmOptions")
            .field("concurrency", &self.concurrency)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl WarmOptions {
    /// 8 requests at a time, skipping fresh entries, no progress callback.
    pub fn new() -> Self {
        Self {
            concurrency: 8,
            force: false,
            on_progress: None,
        }
    }

    /// How many requests run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Refill entries that are still fresh (sends `Cache-Control: no-cache`, which makes
    /// `CacheLayer` skip its lookup and store the new response).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Called after each request with the report so far.
    pub fn on_progress(mut self, f: impl Fn(&WarmReport) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }
}

/// Whether a `Cache-Status` value says "hit" with a positive `ttl` and no detail.
/// The last member of a `Cache-Status` list: the cache closest to the client (RFC 9211), the
/// outermost `CacheLayer`; an inner cache's members come before it. Members of this crate hold no
/// comma.
fn last_member(status: &str) -> &str {
    status.rsplit(',').next().unwrap_or(status)
}

fn is_fresh_hit(status: &str) -> bool {
    let mut parts = status.split(';').map(str::trim).skip(1);
    parts.next() == Some("hit")
        && parts.all(|p| {
            p.strip_prefix("ttl=")
                .is_some_and(|t| t.parse::<i64>().is_ok_and(|t| t > 0))
        })
}

impl Cache {
    /// Drives `requests` through `service` (a router with `CacheLayer`s) so its caches fill as
    /// they would under traffic, `concurrency` at a time, and reports what happened, judged by
    /// each response's `Cache-Status` (routes must keep that header on).
    ///
    /// ```
    /// use axum::{routing::get, Router, body::Body};
    /// use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};
    /// use tower_valkey_cache::function::WarmOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = Cache::new(MemoryStore::new());
    /// let app: Router = Router::new()
    ///     .route("/items/{id}", get(|| async { "item" }).route_layer(CacheLayer::new(cache.clone())));
    /// let requests = (0..10).map(|i| http::Request::get(format!("/items/{i}")).body(Body::empty()).unwrap());
    /// let report = cache.warm(app, requests, WarmOptions::new()).await;
    /// assert_eq!(report.warmed, 10);
    /// # }
    /// ```
    pub async fn warm<S, B, RB, I>(&self, service: S, requests: I, opts: WarmOptions) -> WarmReport
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: std::fmt::Debug,
        RB: Body + Send,
        I: IntoIterator<Item = Request<B>>,
    {
        let started = Instant::now();
        let mut report = WarmReport::default();
        let force = opts.force;
        let mut results = futures_util::stream::iter(requests.into_iter().map(|mut req| {
            if force {
                req.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
            let svc = service.clone();
            async move {
                let res = svc.oneshot(req).await.ok()?;
                let status = res.headers().get("cache-status").cloned();
                let ok = res.status().is_success();
                // Drain the body: a streamed response is stored when it completes.
                let complete = res.into_body().collect().await.is_ok();
                Some((status, ok && complete))
            }
        }))
        .buffer_unordered(opts.concurrency);
        while let Some(r) = results.next().await {
            match r {
                // A fresh hit (positive ttl); stale hits warmed nothing and count as failed.
                Some((Some(s), true)) if s.to_str().is_ok_and(|s| is_fresh_hit(last_member(s))) => {
                    report.already_fresh += 1;
                    self.counters().warm("already_fresh");
                }
                Some((Some(s), true))
                    if s.to_str().is_ok_and(|s| last_member(s).contains("stored")) =>
                {
                    report.warmed += 1;
                    self.counters().warm("warmed");
                }
                _ => {
                    report.failed += 1;
                    self.counters().warm("failed");
                }
            }
            report.elapsed = started.elapsed();
            if let Some(f) = &opts.on_progress {
                f(&report);
            }
        }
        report.elapsed = started.elapsed();
        tracing::info!(
            namespace = %self.namespace(),
            warmed = report.warmed,
            already_fresh = report.already_fresh,
            failed = report.failed,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "cache warming finished"
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_the_member_closest_to_the_client() {
        let ours = "tower-valkey-cache; hit; ttl=5";
        assert!(is_fresh_hit(last_member(ours)));
        assert!(is_fresh_hit(last_member(&format!(
            "inner; fwd=uri-miss, {ours}"
        ))));
        assert!(!is_fresh_hit(last_member(
            "inner; hit; ttl=5, tower-valkey-cache; fwd=uri-miss; stored"
        )));
        assert!(!is_fresh_hit(last_member(
            "tower-valkey-cache; hit; ttl=-2"
        )));
        assert!(
            last_member("inner; hit, tower-valkey-cache; fwd=uri-miss; stored").contains("stored")
        );
    }
}
