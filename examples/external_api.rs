//! Caching an external API call with `Cache::get_or_set`: an "exchange rates" upstream that takes
//! 200 ms per call, called through a cached function.
//!
//! The example starts its own upstream (a tiny axum server on 127.0.0.1, random port) that counts
//! the calls it answers, so it runs offline, then exits by itself.
//!
//! Run it:
//!
//! ```text
//! cargo run --example external_api                                    # embedded MemoryStore
//! VALKEY_URL=redis://127.0.0.1:6379 cargo run --example external_api  # Valkey
//! ```
//!
//! What to look for in the output:
//!
//! - the first call for a currency takes ~200 ms (the upstream), the next ones microseconds;
//! - 50 concurrent calls for a currency not cached yet make **one** upstream call (single-flight);
//! - when the upstream fails after the value went stale, the stale value is returned
//!   (stale-if-error) instead of the error;
//! - the upstream's call count at each step, and the cache's counters at the end.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_valkey_cache::function::Options;
use tower_valkey_cache::{Cache, MemoryStore, ValkeyStore};

/// What the upstream answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Rates {
    base: String,
    rates: BTreeMap<String, f64>,
    /// Which upstream call produced this answer (1, 2, ...).
    upstream_call: usize,
}

// ---------------------------------------------------------------------------------------------
// The upstream: a slow exchange-rate API that counts its calls and can be made to fail.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn rates_handler(
    State(up): State<Upstream>,
    Path(base): Path<String>,
) -> Result<Json<Rates>, StatusCode> {
    let n = up.calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    if up.failing.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    // Units of each currency per US dollar.
    let per_usd: [(&str, f64); 5] = [
        ("USD", 1.0),
        ("EUR", 0.92),
        ("GBP", 0.79),
        ("JPY", 151.3),
        ("CHF", 0.88),
    ];
    let base_per_usd = per_usd
        .iter()
        .find(|(c, _)| *c == base)
        .map(|(_, r)| *r)
        .ok_or(StatusCode::NOT_FOUND)?;
    let rates = per_usd
        .into_iter()
        .filter(|(c, _)| *c != base)
        .map(|(c, r)| (c.to_string(), ((r / base_per_usd) * 1e4).round() / 1e4))
        .collect();
    Ok(Json(Rates {
        base,
        rates,
        upstream_call: n,
    }))
}

async fn start_upstream() -> std::io::Result<(SocketAddr, Upstream)> {
    let up = Upstream::default();
    let app = Router::new()
        .route("/rates/{base}", get(rates_handler))
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, up))
}

// ---------------------------------------------------------------------------------------------
// The client side: a plain HTTP call, and the cached function around it.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct RatesClient {
    http: Client<HttpConnector, Empty<Bytes>>,
    upstream: SocketAddr,
    cache: Cache,
}

impl RatesClient {
    /// The uncached call: `GET /rates/{base}`.
    async fn fetch(&self, base: &str) -> Result<Rates, String> {
        let uri = format!("http://{}/rates/{base}", self.upstream);
        let res = self
            .http
            .get(uri.parse().map_err(|e| format!("{e}"))?)
            .await
            .map_err(|e| format!("upstream unreachable: {e}"))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("upstream body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("upstream answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("bad upstream JSON: {e}"))
    }

    /// The cached call: fresh for 2 s, then usable for 60 s more if the upstream fails.
    async fn rates(&self, base: &str) -> Result<Rates, String> {
        let key = format!("rates:{}", tower_valkey_cache::key::escape(base));
        let opts = Options::new()
            .ttl(Duration::from_secs(2))
            .stale_if_error(Duration::from_secs(60))
            .tags(["rates"]);
        self.cache
            .get_or_set_with(&key, &opts, || self.fetch(base))
            .await
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();

    let (store_name, cache) = match std::env::var("VALKEY_URL") {
        Ok(url) => (
            format!("Valkey at {url}"),
            Cache::builder(ValkeyStore::new(&url)?)
                .namespace("external_api")
                .build(),
        ),
        Err(_) => (
            "the embedded MemoryStore".to_string(),
            Cache::builder(MemoryStore::new())
                .namespace("external_api")
                .build(),
        ),
    };
    // Connect before the first timed operation (operations time out after 100 ms by default, and
    // a first connection, in a debug build, can take longer), then start from a clean slate.
    cache.store().ping().await?;
    if let Err(e) = cache.invalidate_tag("rates").await {
        println!("could not clear old rates ({e}); continuing");
    }

    let (addr, upstream) = start_upstream().await?;
    println!("upstream (200 ms per call) on http://{addr}; caching in {store_name}\n");
    let client = RatesClient {
        http: Client::builder(TokioExecutor::new()).build_http(),
        upstream: addr,
        cache: cache.clone(),
    };
    let calls = || upstream.calls.load(Ordering::SeqCst);

    // 1. Sequential calls: a miss, then hits.
    for i in 1..=3 {
        let t = Instant::now();
        let r = client.rates("EUR").await?;
        println!(
            "EUR call {i}: {:>12}  EUR->USD {}  (from upstream call #{}; upstream calls so far: {})",
            ms(t.elapsed()),
            r.rates["USD"],
            r.upstream_call,
            calls()
        );
    }

    // 2. 50 concurrent calls for a currency nobody asked for yet: one upstream call.
    let before = calls();
    let t = Instant::now();
    let results = futures_util::future::join_all((0..50).map(|_| client.rates("USD"))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    println!(
        "\n50 concurrent USD calls: {ok} answered in {}, upstream calls made: {}",
        ms(t.elapsed()),
        calls() - before
    );

    // 3. Concurrent calls over several currencies: one upstream call per uncached currency.
    let before = calls();
    let t = Instant::now();
    let bases = ["GBP", "JPY", "EUR", "USD"];
    let results =
        futures_util::future::join_all((0..40).map(|i| client.rates(bases[i % bases.len()]))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    println!(
        "40 concurrent calls over {bases:?}: {ok} answered in {}, upstream calls made: {} (GBP and JPY)",
        ms(t.elapsed()),
        calls() - before
    );

    // 4. The upstream goes down after EUR went stale: the stale value is served.
    upstream.failing.store(true, Ordering::SeqCst);
    println!("\nupstream now failing; waiting 2.1 s for the cached EUR rates to go stale ...");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = calls();
    let t = Instant::now();
    match client.rates("EUR").await {
        Ok(r) => println!(
            "EUR with upstream down: {:>12}  served the stale value from upstream call #{} (the loader tried: {} upstream call)",
            ms(t.elapsed()),
            r.upstream_call,
            calls() - before
        ),
        Err(e) => println!("EUR with upstream down: error {e}"),
    }
    match client.rates("CHF").await {
        Ok(_) => println!("CHF with upstream down: unexpectedly answered"),
        Err(e) => println!("CHF with upstream down (never cached): error propagated: {e}"),
    }

    // 5. The upstream recovers: the next call refreshes the value.
    upstream.failing.store(false, Ordering::SeqCst);
    let t = Instant::now();
    let r = client.rates("EUR").await?;
    println!(
        "EUR after recovery: {:>12}  fresh value from upstream call #{}",
        ms(t.elapsed()),
        r.upstream_call
    );

    let s = cache.stats();
    println!(
        "\nupstream calls in total: {} (for {} cached-function calls)",
        calls(),
        3 + 50 + 40 + 2 + 1
    );
    println!(
        "cache stats: hits={} misses={} coalesced={} stores={} stale_if_error={} store_unavailable={}",
        s.hits, s.misses, s.coalesced, s.stores, s.stale_if_error, s.store_unavailable
    );
    Ok(())
}
