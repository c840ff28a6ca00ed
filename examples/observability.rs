//! Metrics and traces of a cached axum app: `GET /metrics` in the Prometheus text format, produced
//! from the crate's OpenTelemetry instruments by the `opentelemetry-prometheus` exporter.
//!
//! Run it:
//!
//! ```text
//! cargo run --example observability                                   # embedded MemoryStore
//! VALKEY_URL=redis://127.0.0.1:6379 cargo run --example observability # Valkey
//! RUST_LOG=tower_valkey_cache=trace cargo run --example observability # + request and store spans
//! ```
//!
//! Then:
//!
//! ```text
//! curl -s localhost:3000/items/1 ; curl -s localhost:3000/items/1     # a miss, then a hit
//! curl -s localhost:3000/items/1 -H 'authorization: Bearer x'         # a bypass
//! curl -s -X PUT localhost:3000/items/1                               # an invalidation
//! curl -s localhost:3000/news; sleep 2; curl -s localhost:3000/news   # a miss, then a stale hit
//! for i in 1 2 3 4; do curl -s localhost:3000/top/$i; done            # the 4th evicts one
//! curl -s localhost:3000/metrics | grep -E '^(cache|db)_'
//! ```
//!
//! The app is built by [`app`] (and the metrics pipeline by [`prometheus_pipeline`]) so that the
//! crate's tests can serve exactly this app and parse its `/metrics`.

use axum::{
    extract::{Path, State},
    http::header,
    response::IntoResponse,
    routing::{get, put},
    Router,
};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tower_valkey_cache::eviction::Lru;
use tower_valkey_cache::{Cache, CacheLayer, InvalidateLayer, MemoryStore, ValkeyStore};

/// A meter provider whose instruments are read, at each scrape, into `registry` (the
/// `opentelemetry-prometheus` exporter is a pull-based `MetricReader`).
pub fn prometheus_pipeline(
    registry: &prometheus::Registry,
) -> Result<SdkMeterProvider, Box<dyn std::error::Error>> {
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()?;
    Ok(SdkMeterProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("observability-example")
                .build(),
        )
        .with_reader(exporter)
        .build())
}

/// A cache in namespace `example` whose instruments come from `provider`.
pub fn cache(store: impl tower_valkey_cache::store::Store, provider: &SdkMeterProvider) -> Cache {
    builder(store, provider).build()
}

fn builder(
    store: impl tower_valkey_cache::store::Store,
    provider: &SdkMeterProvider,
) -> tower_valkey_cache::CacheBuilder {
    Cache::builder(store)
        .namespace("example")
        .meter(provider.meter("tower-valkey-cache"))
}

/// `/top/{id}`: a route bounded to 3 entries (least recently used evicted), so the eviction
/// instruments have something to count. Needs a store with bounded namespaces (Valkey, memory).
pub fn bounded(cache: Cache) -> Router {
    Router::new().route(
        "/top/{id}",
        get(item).route_layer(
            CacheLayer::new(cache)
                .key("top:{id}")
                .ttl(Duration::from_secs(60))
                .eviction(Lru::with_capacity(3)),
        ),
    )
}

async fn item(Path(id): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(5)).await; // a database query
    format!("item {id}\n")
}

async fn news() -> &'static str {
    "today's news\n"
}

/// `GET /metrics`: everything in `registry`, in the Prometheus text format (version 0.0.4).
async fn metrics(State(registry): State<prometheus::Registry>) -> impl IntoResponse {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// The app: `/items/{id}` cached for a minute (PUT invalidates it), `/news` fresh for one
/// second and then served stale while it refreshes, and `/metrics`.
pub fn app(cache: Cache, registry: prometheus::Registry) -> Router {
    Router::new()
        .route(
            "/items/{id}",
            get(item)
                .route_layer(
                    CacheLayer::new(cache.clone())
                        .key("item:{id}")
                        .ttl(Duration::from_secs(60)),
                )
                .merge(
                    put(|| async { "updated\n" })
                        .route_layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"])),
                ),
        )
        .route(
            "/news",
            get(news).route_layer(
                CacheLayer::new(cache)
                    .ttl(Duration::from_secs(1))
                    .stale_while_revalidate(Duration::from_secs(60)),
            ),
        )
        .route("/metrics", get(metrics).with_state(registry))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_valkey_cache=info".into()),
        )
        .init();

    let registry = prometheus::Registry::new();
    let provider = prometheus_pipeline(&registry)?;
    // Also make it the global provider, for other instrumented libraries (and for caches built
    // without `CacheBuilder::meter`, which take the global provider's meter when built).
    opentelemetry::global::set_meter_provider(provider.clone());

    // With an L1 tier in front of the store (its instruments are `cache.l1.*`).
    let l1 = |b: tower_valkey_cache::CacheBuilder| b.l1(10_000, Duration::from_secs(30)).build();
    let cache = match std::env::var("VALKEY_URL") {
        Ok(url) => l1(builder(ValkeyStore::new(&url)?, &provider)),
        Err(_) => l1(builder(MemoryStore::new(), &provider)),
    };
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("observability example on http://127.0.0.1:{port} (metrics at /metrics)");
    axum::serve(listener, app(cache.clone(), registry).merge(bounded(cache)))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    provider.shutdown()?;
    Ok(())
}
