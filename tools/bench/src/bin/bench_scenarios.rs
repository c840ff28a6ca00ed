//! In-process benchmark scenarios that wrk cannot express, printed as Markdown tables:
//! invalidation by tag vs pattern in a 1M-key namespace, the cost of the no-stale-refill guard,
//! a cold-key burst with and without coalescing, stale-while-revalidate latency vs a miss, and
//! start-up warming (batched `warm_values` vs one `set` per value, `warm` through a router),
//! and the cost of a hit on a varied resource (marker + variant) and on a POST keyed by its body.
//!
//! `scripts/bench` runs it against its own Valkey:
//! `VALKEY_URL=redis://127.0.0.1:PORT cargo run --release -p tvc-bench --bin bench_scenarios [-- --quick]`

use axum::{routing::get, Router};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_valkey_cache::function::{Options, WarmOptions};
use tower_valkey_cache::store::Write;
use tower_valkey_cache::{Cache, CacheLayer, ValkeyConfig, ValkeyStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn store(url: &str) -> Result<ValkeyStore, Error> {
    Ok(ValkeyStore::with_config(
        ValkeyConfig::from_url(url)
            .response_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .wait_timeout(Duration::from_secs(2)),
    )?)
}

fn cache(url: &str, ns: &str) -> Result<Cache, Error> {
    Ok(Cache::builder(store(url)?)
        .namespace(ns)
        .timeout(Duration::from_secs(30))
        .build())
}

async fn cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

async fn invalidation(url: &str, total: usize, hot: usize) -> Result<(), Error> {
    let c = cache(url, "bi")?;
    let s = store(url)?;
    let mut conn = s.connection().await?;
    // The namespace's bulk: plain keys written by a server-side loop, 10k per call.
    let fill = redis::Script::new(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', 'bi:cold_' .. i, 'x') end return 1",
    );
    let mut i = 0;
    while i < total - hot {
        let end = (i + 10_000).min(total - hot) - 1;
        let _: i64 = fill.arg(i).arg(end).invoke_async(&mut conn).await?;
        i = end + 1;
    }
    let opts = Options::new().ttl(Duration::from_secs(3600)).tags(["hot"]);
    let write_hot = || async {
        for chunk in (0..hot).collect::<Vec<_>>().chunks(500) {
            let futs = chunk.iter().map(|n| {
                let key = format!("hot_{n}");
                let c = c.clone();
                let opts = opts.clone();
                async move { c.set(&key, &n, &opts).await }
            });
            for r in futures_util::future::join_all(futs).await {
                r?;
            }
        }
        Ok::<_, Error>(())
    };
    println!("### Invalidation: one tag of {hot} entries vs a pattern over the same keys, in a {total}-key namespace\n");
    println!("| method | entries removed | time | Valkey CPU |");
    println!("|---|---:|---:|---:|");
    for (label, by_tag) in [
        ("tag (`invalidate_tag`)", true),
        ("pattern (`SCAN MATCH` + `UNLINK`)", false),
    ] {
        write_hot().await?;
        let cpu0 = cpu_seconds(&mut conn).await;
        let t = Instant::now();
        let n = if by_tag {
            c.invalidate_tag("hot").await?
        } else {
            c.invalidate_pattern("hot_*").await?
        };
        let took = t.elapsed();
        let cpu = cpu_seconds(&mut conn).await - cpu0;
        println!(
            "| {label} | {n} | {:.1} ms | {:.1} ms |",
            took.as_secs_f64() * 1e3,
            cpu * 1e3
        );
    }
    println!();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
    Ok(())
}

async fn guard_cost(url: &str, n: usize) -> Result<(), Error> {
    let c = cache(url, "bg")?;
    let value = Bytes::from(vec![b'v'; 1024]);
    let run = |guarded: bool| {
        let c = c.clone();
        let value = value.clone();
        async move {
            let t = Instant::now();
            for i in 0..n {
                let key = format!("k{}", i % 1000);
                c.store()
                    .write(
                        c.key_space(),
                        Write {
                            key: &key,
                            value: value.clone(),
                            ttl: Duration::from_secs(60),
                            tags: &[],
                            since: guarded.then_some(0),
                        },
                    )
                    .await?;
            }
            Ok::<_, Error>(t.elapsed())
        }
    };
    // Warm both paths (script load), then interleave.
    run(true).await?;
    run(false).await?;
    let (mut g, mut u) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        g += run(true).await?;
        u += run(false).await?;
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (3 * n) as f64;
    println!(
        "### Cost of the no-stale-refill guard on a fill (1 KiB, sequential, {n} writes × 3)\n"
    );
    println!("| fill | µs per write | ratio |");
    println!("|---|---:|---:|");
    println!(
        "| guarded (FILL script: tombstone + pattern check, SET) | {:.1} | {:.2}× |",
        per(g),
        per(g) / per(u)
    );
    println!("| unguarded (plain SET PX) | {:.1} | 1.00× |\n", per(u));
    Ok(())
}

async fn burst(
    url: &str,
    n: usize,
    coalesce: bool,
    round: usize,
) -> Result<(usize, Duration, Duration), Error> {
    let c = cache(url, "bb")?;
    let calls = Arc::new(AtomicUsize::new(0));
    let h = calls.clone();
    let app = Router::new().route(
        "/cold/{id}",
        get(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                "cold"
            }
        })
        .route_layer(
            CacheLayer::new(c)
                .key("cold:{id}")
                .coalesce(coalesce, Duration::from_secs(10)),
        ),
    );
    let uri = format!("/cold/{round}-{coalesce}");
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let app = app.clone();
            let uri = uri.clone();
            let b = barrier.clone();
            tokio::spawn(async move {
                b.wait().await;
                let t = Instant::now();
                let req = http::Request::get(uri)
                    .body(axum::body::Body::empty())
                    .unwrap();
                let _ = app.oneshot(req).await;
                t.elapsed()
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await?);
    }
    let total = started.elapsed();
    lat.sort();
    Ok((
        calls.load(Ordering::SeqCst),
        total,
        lat[lat.len() * 99 / 100],
    ))
}

async fn swr(url: &str, n: usize) -> Result<(), Error> {
    let c = cache(url, "bs")?;
    let app = Router::new().route(
        "/s/{id}",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "slow"
        })
        .route_layer(
            CacheLayer::new(c)
                .key("s:{id}")
                .ttl(Duration::from_millis(500))
                .stale_while_revalidate(Duration::from_secs(600)),
        ),
    );
    let send = |uri: String| {
        let app = app.clone();
        async move {
            let t = Instant::now();
            let req = http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            let _ = app.oneshot(req).await;
            t.elapsed()
        }
    };
    let mut miss = Duration::ZERO;
    for i in 0..n {
        miss += send(format!("/s/{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut stale = Duration::ZERO;
    for i in 0..n {
        stale += send(format!("/s/{i}")).await;
    }
    let (m, s) = (
        miss.as_secs_f64() * 1e3 / n as f64,
        stale.as_secs_f64() * 1e3 / n as f64,
    );
    println!("### Stale-while-revalidate: a request in the stale window vs a plain miss (50 ms handler, {n} keys)\n");
    println!("| request | mean latency | ratio to miss |");
    println!("|---|---:|---:|");
    println!("| miss (handler runs) | {m:.2} ms | 1.00× |");
    println!(
        "| stale hit (refresh runs behind it) | {s:.2} ms | {:.3}× |\n",
        s / m
    );
    Ok(())
}

/// Start-up warming of `n` values (1 KiB JSON each): batched `warm_values` vs one `set` per
/// value, and `warm` driving `n` requests through a cached router (10 ms handler, 32 at a time).
async fn warming(url: &str, n: usize) -> Result<(), Error> {
    let value = serde_json::json!({ "name": "x".repeat(1000) });
    let opts = Options::new().ttl(Duration::from_secs(600));
    let rows = [
        ("`warm_values`, batches of 500", "bw1"),
        ("one `set` per value", "bw2"),
    ];
    println!("### Warming {n} values (1 KiB JSON) and {n} pages\n");
    println!("| method | time | per item | stored |");
    println!("|---|---:|---:|---:|");
    for (i, (label, ns)) in rows.iter().enumerate() {
        let c = cache(url, ns)?;
        let started = Instant::now();
        let stored = if i == 0 {
            c.warm_values((0..n).map(|k| (format!("v:{k}"), &value)), 500, &opts)
                .await?
        } else {
            for k in 0..n {
                c.set(&format!("v:{k}"), &value, &opts).await?;
            }
            n
        };
        let t = started.elapsed();
        println!(
            "| {label} | {:.0} ms | {:.1} µs | {stored} |",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e6 / n as f64
        );
    }
    let c = cache(url, "bw3")?;
    let app = Router::new().route(
        "/p/{id}",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            "page"
        })
        .route_layer(
            CacheLayer::new(c.clone())
                .key("p:{id}")
                .ttl(Duration::from_secs(600)),
        ),
    );
    let requests = (0..n).map(|k| {
        http::Request::get(format!("/p/{k}"))
            .body(axum::body::Body::empty())
            .unwrap()
    });
    let report = c
        .warm(app, requests, WarmOptions::new().concurrency(32))
        .await;
    println!(
        "| `warm` through the router (10 ms handler, 32 at a time) | {:.0} ms | {:.1} µs | {} |\n",
        report.elapsed.as_secs_f64() * 1e3,
        report.elapsed.as_secs_f64() * 1e6 / n as f64,
        report.warmed
    );
    Ok(())
}

/// Hits on a plain route, on a `Vary: Accept-Language` route (two reads: marker, variant) and on
/// a POST keyed by its 200-byte body: one client in sequence (latency), then 64 at once
/// (throughput).
async fn variant_hits(url: &str, n: usize) -> Result<(), Error> {
    let c = cache(url, "bv")?;
    let app = Router::new()
        .route(
            "/plain",
            get(|| async { "plain" }).route_layer(CacheLayer::new(c.clone()).key("plain")),
        )
        .route(
            "/varied",
            get(|| async { ([("vary", "accept-language")], "varied") })
                .route_layer(CacheLayer::new(c.clone()).key("varied")),
        )
        .route(
            "/post",
            axum::routing::post(|body: Bytes| async move { body.len().to_string() }).route_layer(
                CacheLayer::new(c.clone())
                    .key("post")
                    .methods([http::Method::POST])
                    .key_body(4096),
            ),
        );
    let query = Bytes::from(vec![b'q'; 200]);
    let request = move |path: &str| {
        let b = http::Request::builder()
            .uri(path)
            .header("accept-language", "en-GB,en;q=0.9");
        if path == "/post" {
            b.method("POST")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(query.clone()))
                .unwrap()
        } else {
            b.body(axum::body::Body::empty()).unwrap()
        }
    };
    println!("### Hits: plain vs varied (marker + variant) vs POST keyed by a 200-byte body ({n} requests each)\n");
    println!("| route | mean latency, 1 client | throughput, 64 clients |");
    println!("|---|---:|---:|");
    for path in ["/plain", "/varied", "/post"] {
        // Fill it (and the varied route's marker).
        let _ = app.clone().oneshot(request(path)).await;
        let started = Instant::now();
        for _ in 0..n {
            let _ = app.clone().oneshot(request(path)).await;
        }
        let seq = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        let started = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (app, request) = (app.clone(), request.clone());
                tokio::spawn(async move {
                    for _ in 0..n / 64 {
                        let _ = app.clone().oneshot(request(path)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let rps = (n / 64 * 64) as f64 / started.elapsed().as_secs_f64();
        println!("| `{path}` | {seq:.0} µs | {rps:.0} req/s |");
    }
    println!();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("VALKEY_URL").map_err(|_| "set VALKEY_URL=redis://127.0.0.1:PORT")?;
    let quick = std::env::args().any(|a| a == "--quick");
    let (total, hot) = if quick {
        (100_000, 10_000)
    } else {
        (1_000_000, 10_000)
    };
    invalidation(&url, total, hot).await?;
    guard_cost(&url, if quick { 2_000 } else { 10_000 }).await?;
    println!("### Cold-key burst: 1,000 concurrent requests on one cold key, 50 ms handler\n");
    println!("| coalescing | handler calls | total time | p99 |");
    println!("|---|---:|---:|---:|");
    for (round, coalesce) in [(0, true), (1, false)] {
        let (calls, total, p99) = burst(&url, 1000, coalesce, round).await?;
        println!(
            "| {} | {calls} | {:.0} ms | {:.0} ms |",
            if coalesce { "on (default)" } else { "off" },
            total.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    println!();
    swr(&url, if quick { 20 } else { 100 }).await?;
    warming(&url, if quick { 2_000 } else { 10_000 }).await?;
    variant_hits(&url, if quick { 2_000 } else { 20_000 }).await?;
    Ok(())
}
