//! Compression and encryption at rest (src/seal.rs) against a real Valkey: round trips through a
//! `CacheLayer` route and through `get_or_set` for bodies of 0 B, 1 B, 1 MiB and 1 MiB of
//! incompressible bytes; what is stored (`STRLEN`, envelope flags); tampered, wrong-key, copied
//! and hostile compressed entries are misses (the handler or loader runs, never a 5xx); key
//! rotation keeps old entries readable until the key leaves the ring; L1 keeps entries opened.

use crate::support;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{get as get_req, ValkeyServer};
use tower_valkey_cache::function::{Codec, Options};
use tower_valkey_cache::{Cache, CacheLayer, Compression, Keyring, ValkeyConfig, ValkeyStore};

/// Records the largest single allocation made by the current thread (the hostile-length test
/// runs on a current-thread runtime, so every allocation of its request happens here).
struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(layout.size())));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];

fn store(url: &str) -> ValkeyStore {
    ValkeyStore::with_config(
        ValkeyConfig::from_url(url)
            .connect_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(5))
            .wait_timeout(Duration::from_secs(2)),
    )
    .expect("valkey store")
}

/// A cache over `url`, namespace `ns`, with generous timeouts (1 MiB bodies on a loaded machine).
fn builder(url: &str, ns: &str) -> tower_valkey_cache::CacheBuilder {
    Cache::builder(store(url))
        .namespace(ns)
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_secs(5))
}

fn json(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}}},",
            i % 977
        ));
        i += 1;
    }
    s.truncate(n);
    s.into_bytes()
}

fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The bodies of the issue: 0 B, 1 B, 1 MiB (JSON, compressible), 1 MiB incompressible.
fn bodies() -> Vec<Vec<u8>> {
    (0..4).map(body).collect()
}

fn body(n: usize) -> Vec<u8> {
    match n {
        0 => Vec::new(),
        1 => b"x".to_vec(),
        2 => json(1 << 20),
        _ => noise(1 << 20),
    }
}

/// `GET /b/{n}` answers `bodies()[n]`, counting handler runs.
fn route(cache: &Cache, runs: &Arc<AtomicUsize>) -> Router {
    let runs = runs.clone();
    Router::new().route(
        "/b/{n}",
        get(move |Path(n): Path<usize>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                body(n)
            }
        })
        .route_layer(CacheLayer::new(cache.clone()).max_body_bytes(4 << 20)),
    )
}

async fn stored(server: &ValkeyServer, key: &str) -> Vec<u8> {
    server.query(redis::cmd("GET").arg(key)).await
}

async fn put_raw(server: &ValkeyServer, key: &str, value: &[u8]) {
    let _: () = server
        .query(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(60))
        .await;
}

/// Checks the route serves every body from the cache, byte for byte, after one handler run each,
/// and returns the stored values.
async fn route_round_trip(server: &ValkeyServer, cache: &Cache) -> Vec<Vec<u8>> {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = route(cache, &runs);
    let mut raw = Vec::new();
    for (n, body) in bodies().iter().enumerate() {
        let uri = format!("/b/{n}");
        let first = get_req(&app, &uri).await;
        assert_eq!(first.body, body[..], "fill of body {n}");
        let again = get_req(&app, &uri).await;
        assert!(again.is_hit(), "body {n}: {}", again.cache_status());
        assert_eq!(again.body, body[..], "hit of body {n}");
        raw.push(stored(server, &format!("{}:GET:{uri}", cache.namespace())).await);
    }
    assert_eq!(runs.load(Ordering::SeqCst), bodies().len());
    raw
}

/// Same through `get_or_set` (postcard, so the incompressible bytes stay incompressible).
async fn get_or_set_round_trip(server: &ValkeyServer, cache: &Cache) -> Vec<Vec<u8>> {
    let loads = AtomicUsize::new(0);
    let opts = Options::new().codec(Codec::Postcard);
    let mut raw = Vec::new();
    for (n, body) in bodies().into_iter().enumerate() {
        let key = format!("v{n}");
        for _ in 0..2 {
            let v: Vec<u8> = cache
                .get_or_set_with(&key, &opts, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(body.clone())
                })
                .await
                .unwrap();
            assert_eq!(v, body, "value {n}");
        }
        raw.push(stored(server, &format!("{}:{key}", cache.namespace())).await);
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        bodies().len(),
        "one load each"
    );
    raw
}

/// `(envelope flags or None for a plain entry, stored length)`.
fn shape(raw: &[u8]) -> (Option<u8>, usize) {
    let flags = raw.starts_with(b"TVC\x02").then(|| raw[4]);
    (flags, raw.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_entries_round_trip_and_only_compressible_ones_shrink() {
    let server = ValkeyServer::start();
    let cache = builder(&server.url(), "zip")
        .compression(Compression::lz4())
        .build();
    for raw in [
        route_round_trip(&server, &cache).await,
        get_or_set_round_trip(&server, &cache).await,
    ] {
        let shapes: Vec<_> = raw.iter().map(|r| shape(r)).collect();
        // 0 B and 1 B: under the threshold, plain.
        assert_eq!((shapes[0].0, shapes[1].0), (None, None));
        // 1 MiB of JSON: LZ4, over three times smaller.
        assert_eq!(shapes[2].0, Some(0x01));
        assert!(shapes[2].1 * 3 < 1 << 20, "{shapes:?}");
        // 1 MiB of noise: compression would not shrink it, so it is stored plain.
        assert_eq!(shapes[3].0, None);
        assert!(shapes[3].1 > 1 << 20);
    }
    assert_eq!(cache.stats().decode_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_entries_round_trip_and_hold_no_plaintext() {
    let server = ValkeyServer::start();
    let cache = builder(&server.url(), "vault")
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .build();
    for raw in [
        route_round_trip(&server, &cache).await,
        get_or_set_round_trip(&server, &cache).await,
    ] {
        for (r, body) in raw.iter().zip(bodies()) {
            assert_eq!(shape(r).0, Some(0x02), "every entry is encrypted");
            let probe = &body[..body.len().min(64)];
            assert!(
                probe.len() < 8 || !r.windows(probe.len()).any(|w| w == probe),
                "plaintext in the stored value"
            );
        }
    }
    // Compression first, then encryption: the JSON body is stored small and sealed.
    let both = builder(&server.url(), "both")
        .compression(Compression::lz4())
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .build();
    let raw = route_round_trip(&server, &both).await;
    assert_eq!(shape(&raw[2]).0, Some(0x03));
    assert!(raw[2].len() * 3 < 1 << 20);
    assert_eq!(shape(&raw[3]).0, Some(0x02));
    assert_eq!(
        cache.stats().decode_failures + both.stats().decode_failures,
        0
    );
}

/// One byte flipped in the stored value (header, key id, nonce, ciphertext or tag): a miss, the
/// handler answers with the genuine body, and its fill overwrites the tampered value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_entries_are_misses_and_overwritten() {
    let server = ValkeyServer::start();
    let cache = builder(&server.url(), "vault")
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = route(&cache, &runs);
    get_req(&app, "/b/1").await;
    let key = "vault:GET:/b/1";
    let genuine = stored(&server, key).await;
    for i in [0, 4, 6, 12, 25, genuine.len() - 1] {
        let mut tampered = genuine.clone();
        tampered[i] ^= 0x40;
        put_raw(&server, key, &tampered).await;
        let before = (runs.load(Ordering::SeqCst), cache.stats().decode_failures);
        let r = get_req(&app, "/b/1").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "x"), "byte {i}");
        assert!(!r.is_hit(), "byte {i}");
        assert_eq!(runs.load(Ordering::SeqCst), before.0 + 1, "handler ran");
        assert_eq!(cache.stats().decode_failures, before.1 + 1);
        // Overwritten: the next request is a hit again.
        assert!(get_req(&app, "/b/1").await.is_hit(), "byte {i}");
    }
    // Truncated, and a plaintext entry planted by someone who can write to Valkey.
    let plain = tower_valkey_cache::entry::Entry::new(
        200,
        vec![],
        Bytes::from_static(b"forged"),
        tower_valkey_cache::entry::now_ms(),
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .encode()
    .unwrap();
    for planted in [genuine[..genuine.len() / 2].to_vec(), plain.to_vec()] {
        put_raw(&server, key, &planted).await;
        let r = get_req(&app, "/b/1").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "x"));
        assert!(!r.is_hit());
    }

    // The function cache: same rule.
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>("genuine".to_owned())
    };
    cache.get_or_set("f", load).await.unwrap();
    let mut tampered = stored(&server, "vault:f").await;
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    put_raw(&server, "vault:f", &tampered).await;
    assert_eq!(cache.get::<String>("f").await.unwrap(), None);
    assert_eq!(cache.get_or_set("f", load).await.unwrap(), "genuine");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(
        cache.get::<String>("f").await.unwrap().as_deref(),
        Some("genuine")
    );
}

/// A cache with another key cannot read the entries (a miss, the loader runs); after rotation
/// (B current, A old) entries sealed under A still read, new ones are sealed under B; once A
/// leaves the ring its entries are misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_miss_and_rotation_keeps_old_entries_readable() {
    let server = ValkeyServer::start();
    let url = server.url();
    let under_a = builder(&url, "rot")
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .build();
    let loads = Arc::new(AtomicUsize::new(0));
    let get = |cache: Cache, key: &'static str| {
        let loads = loads.clone();
        async move {
            cache
                .get_or_set(key, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(format!("value of {key}"))
                })
                .await
                .unwrap()
        }
    };
    get(under_a.clone(), "old").await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // Wrong key under the same id, and an unknown id: both misses.
    let wrong = builder(&url, "rot")
        .encryption(Keyring::new(1, &KEY_B).unwrap())
        .build();
    assert_eq!(wrong.get::<String>("old").await.unwrap(), None);
    let other_id = builder(&url, "rot")
        .encryption(Keyring::new(2, &KEY_B).unwrap())
        .build();
    assert_eq!(other_id.get::<String>("old").await.unwrap(), None);
    // Through get_or_set the loader runs (and counts the undecodable entry).
    let fallback = wrong
        .get_or_set("old", || async { Ok::<_, ()>("reloaded".to_owned()) })
        .await
        .unwrap();
    assert_eq!(fallback, "reloaded");
    assert_eq!(wrong.stats().decode_failures, 1);
    // (That fill stored "reloaded" under B's key id 1; put A's entry back.)
    under_a.invalidate_key("old").await.unwrap();
    get(under_a.clone(), "old").await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // Rotation: B current, A old.
    let rotated = builder(&url, "rot")
        .encryption(
            Keyring::new(2, &KEY_B)
                .unwrap()
                .with_old_key(1, &KEY_A)
                .unwrap(),
        )
        .build();
    assert_eq!(get(rotated.clone(), "old").await, "value of old");
    assert_eq!(loads.load(Ordering::SeqCst), 2, "read under the old key");
    get(rotated.clone(), "new").await;
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    let new_raw = stored(&server, "rot:new").await;
    assert_eq!(&new_raw[5..9], &2u32.to_be_bytes(), "sealed under B");
    // A cache still on A alone (an instance not yet rotated) cannot read B's entries.
    assert_eq!(under_a.get::<String>("new").await.unwrap(), None);

    // A leaves the ring: its entries are misses, B's still read.
    let only_b = builder(&url, "rot")
        .encryption(Keyring::new(2, &KEY_B).unwrap())
        .build();
    assert_eq!(only_b.get::<String>("old").await.unwrap(), None);
    assert_eq!(
        only_b.get::<String>("new").await.unwrap().as_deref(),
        Some("value of new")
    );
    assert_eq!(get(only_b.clone(), "old").await, "value of old");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        4,
        "reloaded, then stored under B"
    );
}

/// Alice's ciphertext copied over Bob's entry does not authenticate at Bob's key: Bob gets his
/// own response from the handler, never Alice's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ciphertext_copied_to_another_key_is_a_miss() {
    let server = ValkeyServer::start();
    let cache = builder(&server.url(), "users")
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let app = Router::new().route(
        "/user/{id}",
        get(move |Path(id): Path<String>| {
            let runs = counted.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                format!("private data of {id}")
            }
        })
        .route_layer(CacheLayer::new(cache.clone())),
    );
    assert_eq!(
        get_req(&app, "/user/alice").await.text(),
        "private data of alice"
    );
    let alice = stored(&server, "users:GET:/user/alice").await;
    put_raw(&server, "users:GET:/user/bob", &alice).await;
    let r = get_req(&app, "/user/bob").await;
    assert_eq!(r.text(), "private data of bob");
    assert!(!r.is_hit());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().decode_failures, 1);
    // Same bytes in another namespace with the same keys: a miss too.
    let other = builder(&server.url(), "users2")
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .build();
    put_raw(&server, "users2:GET:/user/alice", &alice).await;
    let other_app = Router::new().route(
        "/user/{id}",
        get(|| async { "from the handler" }).route_layer(CacheLayer::new(other)),
    );
    assert_eq!(
        get_req(&other_app, "/user/alice").await.text(),
        "from the handler"
    );
}

/// A compressed value written by a hostile client declaring a 15 MiB decoded length for a
/// 16-byte block (under the 16 MiB limit, far over what the block can expand to), and one
/// declaring 4 GiB: misses, the handler answers, and the request allocates nothing near the
/// declared size.
#[tokio::test(flavor = "current_thread")]
async fn hostile_compressed_lengths_are_misses_without_big_allocations() {
    let server = ValkeyServer::start();
    let cache = builder(&server.url(), "zip")
        .compression(Compression::lz4())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = route(&cache, &runs);
    for declared in [15u32 << 20, u32::MAX] {
        let mut hostile = b"TVC\x02\x01".to_vec();
        hostile.extend_from_slice(&declared.to_be_bytes());
        hostile.extend_from_slice(&[0x1f; 16]);
        put_raw(&server, "zip:GET:/b/1", &hostile).await;
        PEAK.with(|p| p.set(0));
        let r = get_req(&app, "/b/1").await;
        let peak = PEAK.with(|p| p.get());
        assert_eq!((r.status.as_u16(), r.text()), (200, "x"));
        assert!(!r.is_hit());
        assert!(peak < 1 << 20, "largest allocation {peak} bytes");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().decode_failures, 2);
}

/// With L1, hits of an encrypted, compressed route come from process memory (opened once), and
/// serve the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_serves_sealed_entries_opened() {
    let server = ValkeyServer::start();
    let cache = builder(&server.url(), "l1seal")
        .compression(Compression::lz4())
        .encryption(Keyring::new(1, &KEY_A).unwrap())
        .l1(100, Duration::from_secs(60))
        .build();
    support::eventually(Duration::from_secs(5), "the L1 subscription", || async {
        cache.l1_stats().unwrap().listening.then_some(())
    })
    .await;
    let runs = Arc::new(AtomicUsize::new(0));
    let app = route(&cache, &runs);
    let body = body(2);
    assert_eq!(get_req(&app, "/b/2").await.body, body[..]);
    for _ in 0..3 {
        let r = get_req(&app, "/b/2").await;
        assert!(r.is_hit());
        assert_eq!(r.body, body[..]);
    }
    let l1 = cache.l1_stats().unwrap();
    assert!(l1.hits >= 3, "{l1:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        shape(&stored(&server, "l1seal:GET:/b/2").await).0,
        Some(0x03)
    );
}
