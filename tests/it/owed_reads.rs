//! Every read path reads around an owed invalidation (issue 16 item 3), on a real Valkey and on
//! `MemoryStore`.
//!
//! While this process owes the store an invalidation (it failed and waits in the retry queue:
//! `Cache::pending_invalidations() > 0`), the store still holds the entry that invalidation is
//! about to remove. No read path may serve it: `CacheLayer` (plain, with eviction, with `Vary`,
//! with an L1 tier in front), `get_or_set`, `get`, `get_many`, `get_or_set_many` and `warm` each
//! get an entry stored, then an invalidation of it that the store refuses (a `FaultyStore`
//! failing invalidations only: reads and writes still work), then a new version in the source
//! of truth, and must answer with the new version or nothing, never the stored one. Once the
//! store takes invalidations again the queue drains and the paths hit again.

use crate::support;

use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::Request;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, Backend, StoreTimeouts};
use tower_valkey_cache::eviction::Lru;
use tower_valkey_cache::function::{Options, WarmOptions};
use tower_valkey_cache::testing::{Faults, FaultyStore, Op};
use tower_valkey_cache::{Cache, CacheLayer, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(20);

/// Every read path.
#[derive(Clone, Copy, Debug)]
enum Path {
    Layer,
    LayerEviction,
    LayerVary,
    LayerL1,
    GetOrSet,
    Get,
    GetMany,
    GetOrSetMany,
    Warm,
}

const PATHS: [Path; 9] = [
    Path::Layer,
    Path::LayerEviction,
    Path::LayerVary,
    Path::LayerL1,
    Path::GetOrSet,
    Path::Get,
    Path::GetMany,
    Path::GetOrSetMany,
    Path::Warm,
];

/// The source of truth: one version number.
#[derive(Clone, Default)]
struct Db(Arc<AtomicU64>);

impl Db {
    fn version(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `GET /item` cached under key `item` by `layer`, answering `v<version>` (with
/// `Vary: accept-language` when `vary`).
fn route(db: &Db, layer: CacheLayer, vary: bool) -> Router {
    Router::new()
        .route(
            "/item",
            get(move |State(db): State<Db>| async move {
                let body = format!("v{}", db.version());
                match vary {
                    true => ([("vary", "accept-language")], body).into_response(),
                    false => body.into_response(),
                }
            })
            .route_layer(layer.key("item").ttl(Duration::from_secs(300))),
        )
        .with_state(db.clone())
}

async fn get_item(app: &Router) -> support::Resp {
    let req = Request::get("/item")
        .header("accept-language", "fr")
        .body(Body::empty())
        .unwrap();
    support::send(app, req).await
}

/// One path's scenario: its cache, its app (for layer paths) and how it reads.
struct Case {
    path: Path,
    cache: Cache,
    faults: Faults,
    db: Db,
    app: Option<Router>,
}

const KEYS: [&str; 3] = ["item", "item:2", "item:3"];

impl Case {
    async fn new(b: &Backend, path: Path) -> Self {
        let store = FaultyStore::new(b.store());
        let faults = store.faults();
        let mut builder = Cache::builder(store)
            .namespace(b.namespace(&format!("owed-{path:?}")))
            .timeout(OP)
            .bulk_timeout(OP)
            // Retried every 50 ms (backoff up to 1 s) for as long as the test needs.
            .invalidation_retry(64, Duration::from_secs(600));
        if matches!(path, Path::LayerL1) {
            builder = builder.l1(100, Duration::from_secs(60));
        }
        let cache = builder.build();
        let db = Db::default();
        let layer = CacheLayer::new(cache.clone());
        let app = match path {
            Path::Layer | Path::LayerL1 | Path::Warm => Some(route(&db, layer, false)),
            Path::LayerEviction => Some(route(&db, layer.eviction(Lru::with_capacity(10)), false)),
            Path::LayerVary => Some(route(&db, layer, true)),
            _ => None,
        };
        if matches!(path, Path::LayerL1) {
            eventually(LIMIT, "the L1 subscription", || async {
                cache.l1_stats().is_some_and(|s| s.listening).then_some(())
            })
            .await;
        }
        Case {
            path,
            cache,
            faults,
            db,
            app,
        }
    }

    /// What the path serves now, as a version per key it reads (None: nothing served, the
    /// call failed or found nothing), and whether it was answered from the cache.
    async fn read(&self) -> (Vec<Option<u64>>, bool) {
        let v = |s: &str| s.trim_start_matches('v').parse::<u64>().ok();
        let db = self.db.clone();
        let load = || async move { Ok::<_, ()>(format!("v{}", db.version())) };
        match self.path {
            Path::Layer | Path::LayerEviction | Path::LayerVary | Path::LayerL1 => {
                let r = get_item(self.app.as_ref().unwrap()).await;
                (vec![v(r.text())], r.is_hit())
            }
            Path::Warm => {
                let reqs = (0..1).map(|_| Request::get("/item").body(Body::empty()).unwrap());
                let app = self.app.clone().unwrap();
                let report = self.cache.warm(app, reqs, WarmOptions::new()).await;
                let r = support::get(self.app.as_ref().unwrap(), "/item").await;
                // Answered from a fresh entry: the warm saw one (`already_fresh`).
                (vec![v(r.text())], report.already_fresh > 0)
            }
            Path::GetOrSet => {
                let before = self.cache.stats().hits;
                let r = self.cache.get_or_set("item", load).await.unwrap();
                (vec![v(&r)], self.cache.stats().hits > before)
            }
            Path::Get => match self.cache.get::<String>("item").await {
                Ok(Some(s)) => (vec![v(&s)], true),
                _ => (vec![None], false),
            },
            Path::GetMany => {
                let keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
                match self.cache.get_many::<String>(&keys).await {
                    Ok(vs) => {
                        let cached = vs.iter().any(Option::is_some);
                        (
                            vs.iter().map(|s| s.as_deref().and_then(v)).collect(),
                            cached,
                        )
                    }
                    Err(_) => (vec![None; KEYS.len()], false),
                }
            }
            Path::GetOrSetMany => {
                let before = self.cache.stats().hits;
                let db = self.db.clone();
                let out = self
                    .cache
                    .get_or_set_many(
                        &[1u32, 2, 3],
                        |id| KEYS[*id as usize - 1].to_owned(),
                        &Options::new(),
                        |ids| async move {
                            Ok::<_, ()>(
                                ids.into_iter()
                                    .map(|id| (id, format!("v{}", db.version())))
                                    .collect(),
                            )
                        },
                    )
                    .await
                    .unwrap();
                let cached = self.cache.stats().hits > before;
                (
                    out.iter().map(|s| s.as_deref().and_then(v)).collect(),
                    cached,
                )
            }
        }
    }

    /// Stores version 0 through the path (and checks the path now serves it from the cache).
    async fn seed(&self) {
        match self.path {
            Path::Get | Path::GetMany => {
                for k in KEYS {
                    self.cache
                        .set(k, &"v0".to_owned(), &Options::new())
                        .await
                        .unwrap();
                }
            }
            _ => {
                self.read().await;
            }
        }
        let (versions, cached) = self.read().await;
        assert!(cached, "{:?}: served from the cache once stored", self.path);
        assert!(
            versions.iter().all(|v| *v == Some(0)),
            "{:?}: {versions:?}",
            self.path
        );
    }
}

async fn reads_around_an_owed_invalidation(b: Backend) {
    let mut served_stale = Vec::new();
    for path in PATHS {
        let case = Case::new(&b, path).await;
        case.seed().await;

        // The invalidation fails: queued, owed to the store, which still holds the entry.
        case.faults.fail(Op::Invalidate);
        let r = case.cache.invalidate_keys(&KEYS.map(String::from)).await;
        assert!(r.is_err(), "{path:?}: the store refused the invalidation");
        assert!(case.cache.pending_invalidations() > 0, "{path:?}: queued");
        assert!(
            support::has_entry(&case.cache, "item").await,
            "{path:?}: the store still holds the entry"
        );
        case.db.bump();

        for _ in 0..3 {
            let (versions, cached) = case.read().await;
            if cached || versions.contains(&Some(0)) {
                served_stale.push(format!("{path:?}: {versions:?} (from cache: {cached})"));
            }
        }

        // The store takes invalidations again: the queue drains and the path caches again.
        case.faults.heal(Op::Invalidate);
        eventually(LIMIT, "the owed invalidation to land", || async {
            (case.cache.pending_invalidations() == 0).then_some(())
        })
        .await;
        let (versions, _) = case.read().await;
        assert!(
            versions.iter().all(|v| *v != Some(0)),
            "{path:?} after the retry: {versions:?}"
        );
    }
    assert!(
        served_stale.is_empty(),
        "read paths served the entry an owed invalidation removes:\n{}",
        served_stale.join("\n")
    );
}

mod valkey {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_read_path_serves_an_entry_while_its_invalidation_is_owed() {
        super::reads_around_an_owed_invalidation(super::Backend::valkey(super::VALKEY)).await
    }
}

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_read_path_serves_an_entry_while_its_invalidation_is_owed() {
        super::reads_around_an_owed_invalidation(super::Backend::memory(super::MemoryStore::new()))
            .await
    }
}
