//! Criterion micro-benchmarks for the pieces every request pays for: key rendering, the entry
//! codec and the whole `CacheLayer` hit path on a `MemoryStore` (in process, no HTTP, no
//! network), so changes to the hot path show up without wrk's noise.
//!
//! ```text
//! cargo bench --bench micro                 # all
//! cargo bench --bench micro -- entry        # one group
//! cargo bench --bench micro -- router-cpu   # hit vs bare by on-CPU time (shared machines)
//! ```
//!
//! `scripts/bench` measures the same paths end to end over HTTP; these numbers isolate the
//! cache's own CPU work.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::time::Duration;
use tower::ServiceExt;
use tower_valkey_cache::entry::{now_ms, Entry};
use tower_valkey_cache::key::{escape, DefaultKey, KeyContext, KeyStrategy, KeyTemplate};
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    let req = http::Request::get("/users/7/posts?page=2&sort=new&lang=en")
        .header("x-tenant", "acme")
        .body(())
        .unwrap();
    let (parts, _) = req.into_parts();

    let template = KeyTemplate::parse("user:{id}:posts:{query.page}:{header.x-tenant}").unwrap();
    g.bench_function("template (path param, query, header)", |b| {
        b.iter(|| {
            let ctx = KeyContext::new(black_box(&parts))
                .with_path_params(vec![("id".into(), "7".into())]);
            template.key(&ctx).unwrap()
        })
    });
    let simple = KeyTemplate::parse("item:{id}").unwrap();
    g.bench_function("template item:{id}", |b| {
        b.iter(|| {
            let ctx = KeyContext::new(black_box(&parts))
                .with_path_params(vec![("id".into(), "7".into())]);
            simple.key(&ctx).unwrap()
        })
    });
    g.bench_function("default key (sorted query)", |b| {
        b.iter(|| {
            let ctx = KeyContext::new(black_box(&parts));
            DefaultKey.key(&ctx).unwrap()
        })
    });
    let credential = http::Request::get("/me")
        .header(
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abcdefabcdefabcdef",
        )
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let hashed = KeyTemplate::parse("me:{header.authorization}").unwrap();
    g.bench_function("template with a hashed credential", |b| {
        b.iter(|| {
            hashed
                .key(&KeyContext::new(black_box(&credential)))
                .unwrap()
        })
    });
    g.bench_function("escape (hostile value)", |b| {
        b.iter(|| escape(black_box("a:b*c?[d] e%f/ünï")))
    });
    g.finish();

    // The same keys timed by this thread's CPU time (see `router-cpu`): steadier on a shared
    // machine, for comparing versions.
    let mut g = c.benchmark_group("key-cpu");
    let params = || vec![("id".to_owned(), "7".to_owned())];
    let cases: [(&str, &KeyTemplate, &http::request::Parts); 3] = [
        ("template (path param, query, header)", &template, &parts),
        ("template item:{id}", &simple, &parts),
        ("template with a hashed credential", &hashed, &credential),
    ];
    for (name, t, p) in cases {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu_time();
                for _ in 0..iters {
                    let ctx = KeyContext::new(black_box(p)).with_path_params(params());
                    black_box(t.key(&ctx).unwrap());
                }
                thread_cpu_time().saturating_sub(start)
            })
        });
    }
    g.bench_function("default key (sorted query)", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(DefaultKey.key(&KeyContext::new(black_box(&parts))).unwrap());
            }
            thread_cpu_time().saturating_sub(start)
        })
    });
    g.finish();
}

fn entry(size: usize) -> Entry {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("etag", HeaderValue::from_static("\"0123456789abcdef\""));
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    Entry::from_response(
        StatusCode::OK,
        &headers,
        Bytes::from(vec![b'x'; size]),
        now_ms(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("entry");
    for size in [1024usize, 64 * 1024] {
        let e = entry(size);
        let raw = e.encode().unwrap();
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(format!("encode {} KiB", size / 1024), |b| {
            b.iter(|| black_box(&e).encode().unwrap())
        });
        g.bench_function(format!("decode {} KiB", size / 1024), |b| {
            b.iter(|| Entry::decode(black_box(&raw)).unwrap())
        });
    }
    let garbage = Bytes::from(vec![0xA5u8; 1024]);
    g.bench_function("decode garbage (miss)", |b| {
        b.iter(|| Entry::decode(black_box(&garbage)).is_err())
    });
    g.finish();
}

fn memory_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    let bare = {
        let body = body.clone();
        Router::new()
            .route("/item/{id}", get(move || async move { body.clone() }))
            // Finalise the routes as `axum::serve` does; an unfinalised router rebuilds each
            // handler's layers on every call.
            .with_state(())
    };
    let cache = Cache::builder(MemoryStore::new())
        .namespace("micro")
        .build();
    let cached = Router::new()
        .route(
            "/item/{id}",
            get(move || async move { body.clone() }).route_layer(
                CacheLayer::new(cache)
                    .key("item:{id}")
                    .ttl(Duration::from_secs(3600)),
            ),
        )
        .with_state(());
    let request = || http::Request::get("/item/1").body(Body::empty()).unwrap();
    // Fill the entry; every measured request is a hit.
    rt.block_on(async {
        let res = cached.clone().oneshot(request()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = cached.clone().oneshot(request()).await.unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(status.contains("; hit"), "not a hit: {status}");
    });

    let mut g = c.benchmark_group("router");
    g.bench_function("bare handler (1 KiB)", |b| {
        b.to_async(&rt).iter_batched(
            request,
            |req| {
                let app = bare.clone();
                async move { app.oneshot(req).await.unwrap() }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("CacheLayer hit, MemoryStore (1 KiB)", |b| {
        b.to_async(&rt).iter_batched(
            request,
            |req| {
                let app = cached.clone();
                async move { app.oneshot(req).await.unwrap() }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The same two paths timed by this thread's CPU time instead of wall time: on a shared
    // machine other processes inflate wall time (and its noise) but not the work done here.
    // The request is built inside the timed loop, the same for both.
    let mut g = c.benchmark_group("router-cpu");
    for (name, app) in [
        ("bare handler (1 KiB)", bare),
        ("CacheLayer hit, MemoryStore (1 KiB)", cached),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let app = app.clone();
                async move {
                    let start = thread_cpu_time();
                    for _ in 0..iters {
                        black_box(app.clone().oneshot(request()).await.unwrap());
                    }
                    thread_cpu_time().saturating_sub(start)
                }
            })
        });
    }
    g.finish();
}

/// CPU time this thread has used (the runtime is current-thread: the work runs here).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, keys, codec, memory_hit);
criterion_main!(benches);
