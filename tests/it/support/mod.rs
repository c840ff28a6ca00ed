//! Shared test harness: the [`Backend`] a scenario runs on (one server, the cluster, or
//! `MemoryStore`), and helpers to drive axum routers in process (`tower::ServiceExt::oneshot`) or
//! over real TCP. The process-level parts (a throw-away `valkey-server` per test, the shared local
//! Valkey Cluster, free ports) live in `tools/harness` (crate `tvc-harness`, shared with the
//! tools in `tools/bench`) and are re-exported here.
//!
//! Declared once in `tests/it/main.rs`; a helper used by a module compiled in only with some
//! feature is dead without it, hence the `dead_code` allowance.
#![allow(dead_code)]

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_valkey_cache::store::Store;
use tower_valkey_cache::{Cache, CacheBuilder, MemoryStore, ValkeyConfig, ValkeyStore};

pub use tvc_harness::{ValkeyCluster, ValkeyServer};

pub mod trace;
pub use trace::LogCapture;

/// A response with its body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The `Cache-Status` header ("" when absent).
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
            .unwrap_or("")
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// Whether the response was a fresh hit.
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// Collects a response's body.
pub async fn collect<B>(res: Response<B>) -> Resp
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends a request through the router in process and collects the response.
pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let res = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .expect("request did not complete within 10 s")
        .expect("router is infallible");
    collect(res).await
}

/// `GET uri` through the router.
pub async fn get(app: &Router, uri: &str) -> Resp {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// A request builder for `method uri` with headers.
pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An axum router served over TCP on 127.0.0.1 in the background; stopped when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `app` on a free loopback port.
    pub async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1 client for [`HttpServer`].
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
>;

/// A new [`HttpClient`].
pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// `GET url` over TCP; returns the response with its body still streaming.
pub async fn http_get(client: &HttpClient, url: &str) -> Response<hyper::body::Incoming> {
    let req = Request::get(url)
        .body(http_body_util::Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no response headers within 10 s")
        .expect("HTTP request")
}

// ---------------------------------------------------------------------------------------------
// Valkey Cluster
// ---------------------------------------------------------------------------------------------

/// A [`ValkeyStore`](ValkeyStore) on the [shared](ValkeyCluster::shared)
/// cluster with `timeout` for connecting and for responses, and a namespace suffix unique in
/// this process (tests share the cluster, so each adds it to its namespaces).
pub fn shared_cluster_store(timeout: Duration) -> (&'static ValkeyCluster, ValkeyStore, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let cluster = ValkeyCluster::shared();
    let store = ValkeyStore::with_config(
        ValkeyConfig::cluster(cluster.urls())
            .connect_timeout(timeout)
            .response_timeout(timeout),
    )
    .expect("cluster store");
    (
        cluster,
        store,
        format!("_c{}", N.fetch_add(1, Ordering::Relaxed)),
    )
}

/// `ns` with `suffix`, unless it already ends with it.
pub fn suffixed(ns: &str, suffix: &str) -> String {
    if ns.ends_with(suffix) {
        ns.to_owned()
    } else {
        format!("{ns}{suffix}")
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The timeouts of a [`ValkeyStore`] on one server: connect, response, and waiting for a pooled
/// connection. Every test binary passes its own (generous: debug builds of parallel tests on a
/// 2-core machine are slow, and most scenarios are about behaviour, not latency).
#[derive(Clone, Copy, Debug)]
pub struct StoreTimeouts {
    /// `ValkeyConfig::connect_timeout`.
    pub connect: Duration,
    /// `ValkeyConfig::response_timeout`.
    pub response: Duration,
    /// `ValkeyConfig::wait_timeout`.
    pub wait: Duration,
}

impl StoreTimeouts {
    /// The same timeout for all three.
    pub const fn all(t: Duration) -> Self {
        Self {
            connect: t,
            response: t,
            wait: t,
        }
    }
}

/// A [`ValkeyStore`] on `server` with the timeouts `t`.
pub fn valkey_store(server: &ValkeyServer, t: StoreTimeouts) -> ValkeyStore {
    ValkeyStore::with_config(
        ValkeyConfig::from_url(server.url())
            .connect_timeout(t.connect)
            .response_timeout(t.response)
            .wait_timeout(t.wait),
    )
    .expect("valkey store")
}

/// The raw stored value at `key` (relative to the cache's namespace), read through the cache's
/// store.
pub async fn stored(cache: &Cache, key: &str) -> Option<Bytes> {
    cache
        .store()
        .read(cache.key_space(), key)
        .await
        .expect("store read")
        .value
}

/// Whether the cache's store holds an entry at `key` (relative to the cache's namespace).
pub async fn has_entry(cache: &Cache, key: &str) -> bool {
    stored(cache, key).await.is_some()
}

/// Whether the cache's store holds an entry of a bounded route (`CacheLayer::eviction`) at
/// `key`: such routes keep their entries in the namespace's bounded shard
/// (`KeySpace::bounded`).
pub async fn has_bounded_entry(cache: &Cache, key: &str) -> bool {
    let lookup = cache.store().read(&cache.key_space().bounded(), key).await;
    lookup.expect("store read").value.is_some()
}

/// Runs scenarios written once over a [`Backend`] on one backend: for every `name`, a
/// `#[tokio::test] async fn name()` calling `super::name(backend)`. Used in a module per backend:
///
/// ```ignore
/// mod memory {
///     crate::support::on!(super::Backend::memory(super::MemoryStore::new()) => miss_then_hit, head);
/// }
/// ```
#[allow(unused_macros)]
macro_rules! on {
    ($backend:expr => $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::$name($backend).await
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use on;

/// What a scenario written once runs on: its own single Valkey server, the binary's
/// [shared](ValkeyCluster::shared) cluster (each test in its own namespaces, see
/// [`namespace`](Self::namespace)), or a `MemoryStore`.
pub struct Backend {
    /// Where the store is.
    pub kind: Kind,
    /// The shards of every cache [`builder`](Backend::builder) builds (1 unless
    /// [`sharded`](Backend::sharded)).
    pub shards: u16,
}

/// The store a [`Backend`] runs on.
pub enum Kind {
    /// A `valkey-server` of this test alone.
    Valkey {
        server: ValkeyServer,
        store: ValkeyStore,
    },
    /// The shared cluster (3 primaries, 3 replicas); namespaces get `suffix`.
    Cluster {
        cluster: &'static ValkeyCluster,
        store: ValkeyStore,
        suffix: String,
    },
    /// The embedded store.
    Memory(MemoryStore),
}

impl From<Kind> for Backend {
    fn from(kind: Kind) -> Self {
        Backend { kind, shards: 1 }
    }
}

impl Backend {
    /// This backend, with every cache [`builder`](Self::builder) builds split into `shards`
    /// shards (`CacheBuilder::shards`).
    pub fn sharded(mut self, shards: u16) -> Self {
        self.shards = shards;
        self
    }

    /// A new single server, with a store on it with the timeouts `t`.
    pub fn valkey(t: StoreTimeouts) -> Self {
        let server = ValkeyServer::start();
        let store = valkey_store(&server, t);
        Kind::Valkey { server, store }.into()
    }

    /// The shared cluster, through a store with `timeout` for connecting and for responses.
    pub fn cluster(timeout: Duration) -> Self {
        let (cluster, store, suffix) = shared_cluster_store(timeout);
        Kind::Cluster {
            cluster,
            store,
            suffix,
        }
        .into()
    }

    /// `store` (e.g. `MemoryStore::new()`).
    pub fn memory(store: MemoryStore) -> Self {
        Kind::Memory(store).into()
    }

    /// The store, to share between caches.
    pub fn store(&self) -> Arc<dyn Store> {
        match &self.kind {
            Kind::Valkey { store, .. } | Kind::Cluster { store, .. } => Arc::new(store.clone()),
            Kind::Memory(store) => Arc::new(store.clone()),
        }
    }

    /// The namespace this test uses for `ns`: `ns` itself, with this test's suffix on the
    /// shared cluster.
    pub fn namespace(&self, ns: &str) -> String {
        match &self.kind {
            Kind::Cluster { suffix, .. } => suffixed(ns, suffix),
            _ => ns.to_owned(),
        }
    }

    /// A cache builder in [namespace](Self::namespace) `ns` with the operation timeout `op`.
    pub fn builder(&self, ns: &str, op: Duration) -> CacheBuilder {
        Cache::builder_shared(self.store())
            .namespace(self.namespace(ns))
            .shards(self.shards)
            .timeout(op)
    }

    /// [`builder`](Self::builder), built.
    pub fn cache(&self, ns: &str, op: Duration) -> Cache {
        self.builder(ns, op).build()
    }

    /// The single server, if this is one.
    pub fn server(&self) -> Option<&ValkeyServer> {
        match &self.kind {
            Kind::Valkey { server, .. } => Some(server),
            _ => None,
        }
    }

    /// The single server, mutably (to stop and restart it).
    ///
    /// # Panics
    ///
    /// If this is not a single server: the scenario only makes sense on one.
    pub fn server_mut(&mut self) -> &mut ValkeyServer {
        match &mut self.kind {
            Kind::Valkey { server, .. } => server,
            _ => panic!("this scenario needs a single Valkey server"),
        }
    }

    /// Whether this is the shared cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// Every key matching `pattern` as Valkey lists them (`KEYS`, on every primary of the
    /// cluster), sorted; None on memory.
    pub async fn keys(&self, pattern: &str) -> Option<Vec<String>> {
        match &self.kind {
            Kind::Valkey { server, .. } => Some(server.keys(pattern).await),
            Kind::Cluster { cluster, .. } => Some(cluster.keys(pattern)),
            Kind::Memory(_) => None,
        }
    }

    /// Deletes a full store key outside the crate (Valkey `DEL`), as a flush or an operator
    /// would.
    ///
    /// # Panics
    ///
    /// On memory: a `MemoryStore` loses nothing but by being dropped.
    pub async fn delete_raw(&self, store_key: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(store_key);
        match &self.kind {
            Kind::Valkey { server, .. } => {
                let _: i64 = server.query(&cmd).await;
            }
            Kind::Cluster { store, .. } => {
                let mut conn = store
                    .cluster_connection()
                    .await
                    .expect("cluster connection");
                let _: i64 = cmd.query_async(&mut conn).await.expect("DEL");
            }
            Kind::Memory(_) => panic!("a MemoryStore has no raw delete"),
        }
    }

    /// Writes raw bytes at a full store key for 60 s, outside the crate (Valkey `SET`,
    /// `MemoryStore::put_raw`).
    pub async fn put_raw(&self, store_key: &str, value: &[u8]) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(store_key).arg(value).arg("EX").arg(60);
        match &self.kind {
            Kind::Valkey { server, .. } => {
                let () = server.query(&cmd).await;
            }
            Kind::Cluster { store, .. } => {
                let mut conn = store
                    .cluster_connection()
                    .await
                    .expect("cluster connection");
                let () = cmd.query_async(&mut conn).await.expect("SET");
            }
            Kind::Memory(store) => store.put_raw(
                store_key,
                Bytes::copy_from_slice(value),
                Duration::from_secs(60),
            ),
        }
    }
}
