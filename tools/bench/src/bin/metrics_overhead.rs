//! What the OpenTelemetry instruments cost on the hottest path: fresh hits through a `Router` on
//! a `MemoryStore`, in process (`oneshot`, one thread), so the cache's own work dominates.
//!
//! ```text
//! cargo run --release -p tvc-bench --bin metrics_overhead                         # sdk, noop
//! cargo run --release -p tvc-bench --bin metrics_overhead --no-default-features   # off
//! cargo run --release -p tvc-bench --bin metrics_overhead -- --http   # over HTTP/1.1 on loopback
//! ```
//!
//! Modes: `sdk` records into an OTel SDK meter provider (what an app exporting metrics pays),
//! `noop` uses the global meter with no provider installed, `off` is the crate built without the
//! `opentelemetry` feature. Each mode runs `ROUNDS` rounds of `HITS` hits, interleaved; the median
//! round is reported.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_valkey_cache::{Cache, CacheBuilder, CacheLayer, MemoryStore};

const HITS: usize = 50_000;
/// Hits per round over HTTP (each is a loopback round trip).
const HTTP_HITS: usize = 10_000;
const ROUNDS: usize = 7;

fn app(cache: Cache) -> Router {
    Router::new().route(
        "/items/{id}",
        get(|| async { "item" }).route_layer(
            CacheLayer::new(cache)
                .key("item:{id}")
                .ttl(Duration::from_secs(3600)),
        ),
    )
}

/// A hit target: the router in process, or the router served on loopback and a keep-alive
/// client.
#[allow(clippy::large_enum_variant)] // two values, built once
enum Target {
    InProcess(Router),
    Http {
        client: hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Empty<bytes::Bytes>,
        >,
        url: http::Uri,
    },
}

impl Target {
    async fn new(app: Router, http: bool) -> Self {
        if !http {
            return Target::InProcess(app);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let url = format!("http://{addr}/items/1").parse().unwrap();
        Target::Http { client, url }
    }

    async fn hit(&self) {
        match self {
            Target::InProcess(app) => {
                let req = http::Request::get("/items/1").body(Body::empty()).unwrap();
                let res = app.clone().oneshot(req).await.unwrap();
                debug_assert!(res.headers()["cache-status"]
                    .to_str()
                    .unwrap()
                    .contains("; hit"));
            }
            Target::Http { client, url } => {
                use http_body_util::BodyExt;
                let res = client.get(url.clone()).await.unwrap();
                res.into_body().collect().await.unwrap();
            }
        }
    }

    fn hits(&self) -> usize {
        match self {
            Target::InProcess(_) => HITS,
            Target::Http { .. } => HTTP_HITS,
        }
    }
}

async fn round(target: &Target) -> Duration {
    let started = Instant::now();
    for _ in 0..target.hits() {
        target.hit().await;
    }
    started.elapsed()
}

fn builder() -> CacheBuilder {
    Cache::builder(MemoryStore::new()).namespace("bench")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let http = std::env::args().any(|a| a == "--http");
    #[cfg(feature = "metrics")]
    let (provider, modes) = {
        use opentelemetry::metrics::MeterProvider as _;
        // A pull reader, as with a Prometheus endpoint: recording cost only, nothing exported.
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry)
            .build()
            .expect("exporter");
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(exporter)
            .build();
        let sdk = builder()
            .meter(provider.meter("tower-valkey-cache"))
            .build();
        let modes = vec![("sdk", app(sdk)), ("noop", app(builder().build()))];
        (provider, modes)
    };
    #[cfg(not(feature = "metrics"))]
    let modes = vec![("off", app(builder().build()))];

    let mut targets = Vec::new();
    for (name, app) in modes {
        let target = Target::new(app, http).await;
        // Fill the entry, then warm up.
        target.hit().await;
        round(&target).await;
        targets.push((name, target));
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (n, (_, target)) in targets.iter().enumerate() {
            times[n].push(round(target).await);
        }
    }
    for ((name, target), mut t) in targets.iter().zip(times) {
        t.sort();
        let median = t[t.len() / 2];
        let hits = target.hits();
        println!(
            "{name:>4}{}: {:>9.0} hits/s  ({:.2} µs/hit, median of {ROUNDS} rounds of {hits})",
            if http { " (http)" } else { "" },
            hits as f64 / median.as_secs_f64(),
            median.as_secs_f64() * 1e6 / hits as f64,
        );
    }
    #[cfg(feature = "metrics")]
    drop(provider);
}
