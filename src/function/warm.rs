//! Warming a router's caches by driving requests through it, as traffic would.

use crate::outcome::{Outcome, PendingStore};
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

impl Cache {
    /// Drives `requests` through `service` (a router with `CacheLayer`s) so its caches fill as
    /// they would under traffic, `concurrency` at a time, and reports what happened, judged by
    /// each response's [`Outcome`] extension (set by every `CacheLayer`, with or without its
    /// `Cache-Status` header): a stored miss is warmed (a streamed response once its body is
    /// complete and stored), a fresh hit or an answer collapsed onto a concurrent fill of the
    /// same key (a duplicate request) is already fresh, anything else failed.
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
                let outcome = res.extensions().get::<Outcome>().copied();
                let pending = res.extensions().get::<PendingStore>().cloned();
                let ok = res.status().is_success();
                // Drain the body: a streamed response is stored when it completes.
                let complete = res.into_body().collect().await.is_ok();
                let stored = match (outcome, pending) {
                    (Some(o), _) if o.is_stored() => true,
                    (Some(Outcome::Miss { .. }), Some(p)) => p.stored().await,
                    _ => false,
                };
                Some((outcome, stored, ok && complete))
            }
        }))
        .buffer_unordered(opts.concurrency);
        while let Some(r) = results.next().await {
            let result = match r {
                Some((_, true, true)) => {
                    report.warmed += 1;
                    "warmed"
                }
                // A fresh hit, or a duplicate request collapsed onto a concurrent fill; stale hits
                // warmed nothing and count as failed.
                Some((Some(o), _, true)) if o.is_fresh_hit() || o == Outcome::Collapsed => {
                    report.already_fresh += 1;
                    "already_fresh"
                }
                _ => {
                    report.failed += 1;
                    "failed"
                }
            };
            self.counters().warm(result);
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
