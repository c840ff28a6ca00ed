//! Bounded namespaces (`tower_valkey_cache::eviction`): every policy against a plain reference
//! model on real Valkey and on `MemoryStore`, concurrency, TTLs, leftovers, Valkey Cluster and a
//! bounded route.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{valkey_store, StoreTimeouts, ValkeyServer};
use tower_valkey_cache::eviction::{
    BoundedCache, BoundedStore, Evict, EvictionPolicy, Fifo, Lfu, Lifo, Lru, Mru, Scoring, Touch,
};
use tower_valkey_cache::{MemoryStore, ValkeyStore};

// ---------------------------------------------------------------------------------------------
// The reference model: a plain list, linear scans, no cleverness.

#[derive(Clone, Copy, Debug)]
enum Op {
    Set(u8),
    Get(u8),
    Delete(u8),
}

struct ModelEntry {
    key: String,
    uses: u64,
    stamp: u64,
    value: u32,
}

struct Model {
    scoring: Scoring,
    capacity: usize,
    seq: u64,
    entries: Vec<ModelEntry>,
}

impl Model {
    fn new(scoring: Scoring, capacity: usize) -> Self {
        Self {
            scoring,
            capacity,
            seq: 0,
            entries: Vec::new(),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    fn touch(&mut self, i: usize, touch: Touch) {
        match touch {
            Touch::Keep => {}
            Touch::Stamp => {
                self.seq += 1;
                self.entries[i].stamp = self.seq;
            }
            Touch::Count => {
                self.seq += 1;
                self.entries[i].uses += 1;
                self.entries[i].stamp = self.seq;
            }
        }
    }

    fn victim(&self) -> usize {
        let ranks = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.uses, e.stamp), i));
        match self.scoring.evict {
            Evict::Lowest => ranks.min().unwrap().1,
            Evict::Highest => ranks.max().unwrap().1,
        }
    }

    /// Returns the evicted keys.
    fn set(&mut self, key: &str, value: u32) -> Vec<String> {
        if let Some(i) = self.position(key) {
            self.entries[i].value = value;
            self.touch(i, self.scoring.on_set);
            return Vec::new();
        }
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let i = self.victim();
            evicted.push(self.entries.remove(i).key);
        }
        self.seq += 1;
        self.entries.push(ModelEntry {
            key: key.to_owned(),
            uses: 1,
            stamp: self.seq,
            value,
        });
        evicted
    }

    fn get(&mut self, key: &str) -> Option<u32> {
        let i = self.position(key)?;
        self.touch(i, self.scoring.on_get);
        Some(self.entries[i].value)
    }

    fn delete(&mut self, key: &str) -> bool {
        match self.position(key) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Keys in eviction order, next victim first.
    fn keys(&self) -> Vec<String> {
        let mut ranked: Vec<_> = self
            .entries
            .iter()
            .map(|e| ((e.uses, e.stamp), e.key.clone()))
            .collect();
        ranked.sort();
        if self.scoring.evict == Evict::Highest {
            ranked.reverse();
        }
        ranked.into_iter().map(|(_, k)| k).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Custom policies, as a user would write them.

/// Most frequently used.
#[derive(Clone, Debug)]
struct Mfu(usize);

impl EvictionPolicy for Mfu {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        Scoring {
            on_set: Touch::Count,
            on_get: Touch::Count,
            evict: Evict::Highest,
        }
    }
}

/// FIFO by first insertion: overwrites keep their place.
#[derive(Clone, Debug)]
struct FirstIn(usize);

impl EvictionPolicy for FirstIn {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        Scoring {
            on_set: Touch::Keep,
            on_get: Touch::Keep,
            evict: Evict::Lowest,
        }
    }
}

/// LFU that counts reads only (a set stamps but keeps the count).
#[derive(Clone, Debug)]
struct ReadLfu(usize);

impl EvictionPolicy for ReadLfu {
    fn capacity(&self) -> usize {
        self.0
    }
    fn scoring(&self) -> Scoring {
        Scoring {
            on_set: Touch::Stamp,
            on_get: Touch::Count,
            evict: Evict::Lowest,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The Valkey stores' timeouts: generous (debug builds of parallel tests on a busy machine).
const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(5));

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        5 => (0u8..6).prop_map(Op::Set),
        4 => (0u8..6).prop_map(Op::Get),
        1 => (0u8..6).prop_map(Op::Delete),
    ];
    prop::collection::vec(op, 1..50)
}

const CASES: u32 = 40;

/// Runs random operation sequences on `store` under the policy `make(capacity)` and compares
/// every answer and the eviction order after every step with the model.
fn check_against_model<P>(store: BoundedStore, make: fn(usize) -> P, stamp_bits: Option<u8>)
where
    P: EvictionPolicy + Clone,
{
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&(1usize..=4, ops()), |(capacity, ops)| {
        let policy = make(capacity);
        let mut model = Model::new(policy.scoring(), capacity);
        let mut cache = BoundedCache::<u32, P>::new(store.clone(), &unique(policy.name()), policy);
        if let Some(bits) = stamp_bits {
            cache = cache.stamp_bits(bits);
        }
        rt.block_on(async {
            for (n, op) in ops.iter().enumerate() {
                let value = n as u32;
                match *op {
                    Op::Set(k) => {
                        let key = format!("k{k}");
                        let evicted = cache.set(&key, &value).await.unwrap();
                        prop_assert_eq!(
                            evicted,
                            model.set(&key, value),
                            "evicted by op {}: {:?}",
                            n,
                            op
                        );
                    }
                    Op::Get(k) => {
                        let key = format!("k{k}");
                        let got = cache.get(&key).await.unwrap();
                        prop_assert_eq!(got, model.get(&key), "value read by op {}: {:?}", n, op);
                    }
                    Op::Delete(k) => {
                        let key = format!("k{k}");
                        let gone = cache.delete(&key).await.unwrap();
                        prop_assert_eq!(gone, model.delete(&key), "deleted by op {}: {:?}", n, op);
                    }
                }
                prop_assert_eq!(
                    cache.keys().await.unwrap(),
                    model.keys(),
                    "keys after op {}: {:?}",
                    n,
                    op
                );
                prop_assert_eq!(cache.len().await.unwrap(), model.entries.len());
            }
            prop_assert_eq!(cache.clear().await.unwrap(), model.entries.len() as u64);
            prop_assert_eq!(cache.len().await.unwrap(), 0);
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

macro_rules! model_tests {
    ($($name:ident: $make:expr;)*) => {
        mod model_valkey {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let server = ValkeyServer::start();
                    check_against_model(valkey_store(&server, VALKEY).into(), $make, None);
                }
            )*
        }
        mod model_memory {
            use super::*;
            $(
                #[test]
                fn $name() {
                    check_against_model(MemoryStore::new().into(), $make, None);
                }
            )*
        }
    };
}

model_tests! {
    fifo: Fifo::with_capacity;
    lifo: Lifo::with_capacity;
    lru: Lru::with_capacity;
    mru: Mru::with_capacity;
    lfu: Lfu::with_capacity;
    custom_mfu: Mfu;
    custom_first_in: FirstIn;
    custom_read_lfu: ReadLfu;
}

/// With 5 stamp bits the counting policies renumber their stamps every ~28 operations: the order
/// must not change.
#[test]
fn stamp_renumbering_keeps_the_order_on_valkey() {
    let server = ValkeyServer::start();
    check_against_model(
        valkey_store(&server, VALKEY).into(),
        Lfu::with_capacity,
        Some(5),
    );
    check_against_model(valkey_store(&server, VALKEY).into(), Mfu, Some(5));
    check_against_model(valkey_store(&server, VALKEY).into(), ReadLfu, Some(5));
}

// ---------------------------------------------------------------------------------------------
// TTLs, leftovers.

async fn expired_entries_leave_the_index_lazily(store: BoundedStore) {
    let cache = BoundedCache::<u32, Lru>::new(store.clone(), &unique("ttl"), Lru::with_capacity(3));
    cache
        .set_with_ttl("short", &1, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    cache.set("b", &2).await.unwrap();
    cache.set("c", &3).await.unwrap();
    assert_eq!(cache.len().await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Still counted: nothing has looked at it yet.
    assert_eq!(cache.len().await.unwrap(), 3);
    // "short" is the LRU victim: it is dropped as a ghost, not reported as evicted.
    assert_eq!(cache.set("d", &4).await.unwrap(), Vec::<String>::new());
    assert_eq!(cache.keys().await.unwrap(), ["b", "c", "d"]);
    // The next eviction evicts a live entry.
    assert_eq!(cache.set("e", &5).await.unwrap(), ["b"]);

    // A read of an expired entry removes it from the index.
    cache
        .set_with_ttl("c", &30, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.len().await.unwrap(), 3);
    assert_eq!(cache.get("c").await.unwrap(), None);
    assert_eq!(cache.len().await.unwrap(), 2);

    // Rewriting an expired LFU entry starts its count over.
    let lfu = BoundedCache::<u32, Lfu>::new(store, &unique("ttl-lfu"), Lfu::with_capacity(2));
    lfu.set_with_ttl("hot", &1, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    for _ in 0..5 {
        lfu.get("hot").await.unwrap();
    }
    lfu.set("cold", &2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    lfu.set("hot", &3).await.unwrap(); // one use again, newer than "cold"
    assert_eq!(lfu.keys().await.unwrap(), ["cold", "hot"]);
    assert_eq!(lfu.set("new", &4).await.unwrap(), ["cold"]);
}

#[tokio::test]
async fn ttl_valkey() {
    let server = ValkeyServer::start();
    expired_entries_leave_the_index_lazily(valkey_store(&server, VALKEY).into()).await;
}

#[tokio::test]
async fn ttl_memory() {
    expired_entries_leave_the_index_lazily(MemoryStore::new().into()).await;
}

async fn pttl(server: &ValkeyServer, key: &str) -> i64 {
    server.cli(&["PTTL", key]).await
}

#[tokio::test]
async fn index_keys_live_as_long_as_the_longest_entry_and_no_longer() {
    let server = ValkeyServer::start();
    let store = valkey_store(&server, VALKEY);
    let cache = BoundedCache::<u32, Lfu>::new(store.clone(), "abandoned", Lfu::with_capacity(10));
    cache
        .set_with_ttl("a", &1, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    cache
        .set_with_ttl("b", &2, Some(Duration::from_millis(600)))
        .await
        .unwrap();
    cache
        .set_with_ttl("c", &3, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    cache.get("a").await.unwrap();
    for key in ["{abandoned}|idx", "{abandoned}|seq"] {
        let t = pttl(&server, key).await;
        assert!((400..=600).contains(&t), "{key} PTTL {t}");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.keys("*").await,
        Vec::<String>::new(),
        "an abandoned namespace leaves nothing"
    );

    // An entry without TTL makes the index persistent; emptying the namespace removes it.
    let cache = BoundedCache::<u32, Lru>::new(store, "forever", Lru::with_capacity(2));
    cache
        .set_with_ttl("a", &1, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    cache.set("b", &2).await.unwrap();
    assert_eq!(pttl(&server, "{forever}|idx").await, -1);
    assert_eq!(pttl(&server, "{forever}|seq").await, -1);
    assert!(cache.delete("a").await.unwrap());
    assert!(cache.delete("b").await.unwrap());
    assert!(!cache.delete("b").await.unwrap());
    assert_eq!(server.keys("*").await, Vec::<String>::new());

    // clear() removes values, index and counter, in batches.
    let big = BoundedCache::<u32, Fifo>::new(
        valkey_store(&server, VALKEY),
        "big",
        Fifo::with_capacity(2_500),
    );
    for i in 0..2_600u32 {
        big.set(&i.to_string(), &i).await.unwrap();
    }
    assert_eq!(big.len().await.unwrap(), 2_500);
    assert_eq!(server.keys("{big}:*").await.len(), 2_500);
    assert_eq!(big.clear().await.unwrap(), 2_500);
    assert_eq!(server.keys("*").await, Vec::<String>::new());
}

#[tokio::test]
async fn lowering_the_capacity_evicts_down_to_it() {
    let server = ValkeyServer::start();
    for store in [
        BoundedStore::from(MemoryStore::new()),
        valkey_store(&server, VALKEY).into(),
    ] {
        let wide = BoundedCache::<u32, Fifo>::new(store.clone(), "shrink", Fifo::with_capacity(5));
        for i in 0..5u32 {
            wide.set(&format!("k{i}"), &i).await.unwrap();
        }
        let narrow = BoundedCache::<u32, Fifo>::new(store, "shrink", Fifo::with_capacity(2));
        assert_eq!(
            narrow.set("k9", &9).await.unwrap(),
            ["k0", "k1", "k2", "k3"]
        );
        assert_eq!(narrow.keys().await.unwrap(), ["k4", "k9"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn hammer<P: EvictionPolicy + Clone>(server: &ValkeyServer, policy: P) {
    const CAPACITY: usize = 40;
    let ns = unique(&format!("hammer-{}", policy.name()));
    let store = valkey_store(server, VALKEY);
    let cache = BoundedCache::<u64, P>::new(store, &ns, policy);
    let index = format!("{{{ns}}}|idx");
    let values = format!("{{{ns}}}:*");
    let done = Arc::new(AtomicBool::new(false));

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let monitor = {
        let done = done.clone();
        let (index, values) = (index.clone(), values.clone());
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !done.load(Ordering::Relaxed) {
                let (card, keys): (usize, Vec<String>) = redis::pipe()
                    .cmd("ZCARD")
                    .arg(&index)
                    .cmd("KEYS")
                    .arg(&values)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(card <= CAPACITY, "index holds {card} > {CAPACITY}");
                assert!(keys.len() <= CAPACITY, "{} values > {CAPACITY}", keys.len());
                samples += 1;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut evicted = 0usize;
            for i in 0..600u64 {
                let key = format!("k{}", rng.next() % 120);
                match rng.next() % 10 {
                    0..=4 => evicted += cache.set(&key, &i).await.unwrap().len(),
                    5..=8 => {
                        cache.get(&key).await.unwrap();
                    }
                    _ => {
                        cache.delete(&key).await.unwrap();
                    }
                }
            }
            evicted
        }));
    }
    let mut evicted = 0;
    for t in tasks {
        evicted += t.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let samples = monitor.await.unwrap();
    assert!(samples > 0);
    assert!(evicted > 0, "the namespace was never full");

    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&values)
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("{{{ns}}}:");
    let stored: BTreeSet<String> = keys
        .iter()
        .map(|k| k.strip_prefix(&prefix).unwrap().to_owned())
        .collect();
    let indexed: BTreeSet<String> = members.into_iter().collect();
    assert_eq!(indexed, stored, "the index matches the stored entries");
    assert!(indexed.len() <= CAPACITY);
    assert_eq!(cache.len().await.unwrap(), indexed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_on_one_namespace_never_exceed_capacity() {
    let server = ValkeyServer::start();
    hammer(&server, Lru::with_capacity(40)).await;
    hammer(&server, Lfu::with_capacity(40)).await;
    hammer(&server, Fifo::with_capacity(40)).await;
    hammer(&server, Mru::with_capacity(40)).await;
    hammer(&server, Lifo::with_capacity(40)).await;
}

// ---------------------------------------------------------------------------------------------
// Valkey Cluster: every policy, and every key of a namespace in its slot.

async fn exercise<P: EvictionPolicy + Clone>(store: &ValkeyStore, ns: &str, policy: P) {
    let cache = BoundedCache::<u32, P>::new(store.clone(), ns, policy).ttl(Duration::from_secs(60));
    let mut evicted = 0;
    for i in 0..12u32 {
        evicted += cache.set(&format!("k{}", i % 7), &i).await.unwrap().len();
        cache.get(&format!("k{}", (i * 3) % 7)).await.unwrap();
        cache
            .set_with_ttl("short", &i, Some(Duration::from_millis(1)))
            .await
            .unwrap();
    }
    assert!(evicted > 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    cache.keys().await.unwrap();
    cache.delete("k1").await.unwrap();
    assert!(cache.len().await.unwrap() <= 3);
}

/// Every policy on a real Valkey Cluster (3 primaries, 3 replicas), through a cluster store.
#[tokio::test]
async fn bounded_namespaces_run_on_valkey_cluster() {
    let (cluster, store, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    assert!(store.is_cluster());
    exercise(&store, &format!("c-fifo{sfx}"), Fifo::with_capacity(3)).await;
    exercise(&store, &format!("c-lifo{sfx}"), Lifo::with_capacity(3)).await;
    exercise(&store, &format!("c-lru{sfx}"), Lru::with_capacity(3)).await;
    exercise(&store, &format!("c-mru{sfx}"), Mru::with_capacity(3)).await;
    exercise(&store, &format!("c-lfu{sfx}"), Lfu::with_capacity(3)).await;

    // Every key a namespace's scripts created (declared or not) is in the namespace's slot.
    let keys = cluster.keys(&format!("{{c-*{sfx}}}*"));
    assert!(keys.len() > 10, "{keys:?}");
    for key in &keys {
        let tag = &key[..key.find('}').unwrap() + 1];
        assert_eq!(
            cluster.slot(key),
            cluster.slot(tag),
            "{key} is outside its namespace's slot"
        );
    }
    // The namespaces are spread over more than one slot, and the nodes do enforce slots: keys
    // of two slots in one command are refused.
    let (lru, lfu) = (format!("{{c-lru{sfx}}}:k0"), format!("{{c-lfu{sfx}}}:k0"));
    assert_ne!(cluster.slot(&lru), cluster.slot(&lfu));
    let mut cmd = redis::cmd("MGET");
    cmd.arg(&lru).arg(&lfu);
    let client = redis::Client::open(cluster.urls()[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let crossed: redis::RedisResult<Vec<Option<String>>> = cmd.query_async(&mut conn).await;
    let err = crossed.unwrap_err();
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "{err}"
    );

    // clear() in batches, on the cluster too.
    let big =
        BoundedCache::<u32, Lru>::new(store, &format!("c-big{sfx}"), Lru::with_capacity(1_500));
    for i in 0..1_600u32 {
        big.set(&i.to_string(), &i).await.unwrap();
    }
    assert_eq!(big.clear().await.unwrap(), 1_500);
}

// ---------------------------------------------------------------------------------------------
// A bounded route.

async fn lru_route_evicts_the_least_recently_read(cache: tower_valkey_cache::Cache) {
    use axum::{extract::Path, routing::get, Router};
    use tower_valkey_cache::CacheLayer;

    let calls: Arc<[AtomicUsize; 8]> = Arc::new(Default::default());
    let counted = calls.clone();
    let app: Router = Router::new().route(
        "/item/{id}",
        get(move |Path(id): Path<usize>| {
            let calls = counted.clone();
            async move {
                calls[id].fetch_add(1, Ordering::SeqCst);
                format!("item {id}")
            }
        })
        .route_layer(
            CacheLayer::new(cache)
                .key("item:{id}")
                .eviction(Lru::with_capacity(3)),
        ),
    );
    let hit = |id: usize| {
        let app = app.clone();
        async move {
            let res = support::get(&app, &format!("/item/{id}")).await;
            assert_eq!(res.text(), format!("item {id}"));
            res.is_hit()
        }
    };
    let calls_of = |id: usize| calls[id].load(Ordering::SeqCst);

    for id in 1..=3 {
        assert!(!hit(id).await, "first read of {id} is a miss");
    }
    assert!(hit(1).await, "1 is cached"); // recency now 2, 3, 1
    assert!(!hit(4).await); // stores 4, evicts 2: the least recently read
    assert!(hit(3).await, "3 survived"); // recency now 1, 4, 3
    assert!(!hit(2).await, "2 was evicted");
    assert_eq!(calls_of(2), 2);
    // Storing 2 again evicted 1.
    assert!(hit(4).await);
    assert!(hit(3).await);
    assert!(hit(2).await);
    assert!(!hit(1).await, "1 was evicted");
    assert_eq!(calls_of(1), 2);
    assert_eq!([calls_of(3), calls_of(4)], [1, 1]);
}

fn route_cache(
    store: impl tower_valkey_cache::store::Store,
    ns: &str,
) -> tower_valkey_cache::Cache {
    tower_valkey_cache::Cache::builder(store)
        .namespace(ns)
        .timeout(Duration::from_secs(5))
        .build()
}

#[tokio::test]
async fn router_lru_memory() {
    lru_route_evicts_the_least_recently_read(route_cache(MemoryStore::new(), "route")).await;
}

/// A bounded route on a Valkey Cluster: the index lives in the namespace's slot beside the
/// entries (`{ns}|evict:idx`), so the read and record scripts run there.
#[tokio::test]
async fn router_lru_cluster() {
    let (cluster, store, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    let ns = format!("route{sfx}");
    lru_route_evicts_the_least_recently_read(route_cache(store, &ns)).await;
    let members: Vec<String> = cluster
        .cli(&["ZRANGE", &format!("{{{ns}}}|evict:idx"), "0", "-1"])
        .await;
    assert_eq!(members, ["item:3", "item:2", "item:1"]);
    let entries = cluster.keys(&format!("{{{ns}}}:*"));
    let want: Vec<String> = (1..=3).map(|i| format!("{{{ns}}}:item:{i}")).collect();
    assert_eq!(entries, want);
}

#[tokio::test]
async fn router_lru_valkey() {
    let server = ValkeyServer::start();
    lru_route_evicts_the_least_recently_read(route_cache(valkey_store(&server, VALKEY), "route"))
        .await;
    let members: Vec<String> = server.cli(&["ZRANGE", "route|evict:idx", "0", "-1"]).await;
    assert_eq!(members, ["item:3", "item:2", "item:1"]);
    let mut entries = server.keys("route:*").await;
    entries.sort();
    assert_eq!(entries, ["route:item:1", "route:item:2", "route:item:3"]);
}

// ---------------------------------------------------------------------------------------------
// A quick measurement (not a benchmark): `cargo test --release --test eviction -- --ignored
// --nocapture measure`.

async fn time<F, Fut>(n: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        f(i).await;
    }
    start.elapsed()
}

async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// `usec_per_call` of `cmd` in `INFO commandstats`.
async fn server_usec(conn: &mut redis::aio::MultiplexedConnection, cmd: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .unwrap_or_else(|| panic!("no stats for {cmd}: {info}"));
    let v = line.split("usec_per_call=").nth(1).unwrap();
    v.split(',').next().unwrap().parse().unwrap()
}

async fn cache_get<P: EvictionPolicy>(cache: &BoundedCache<String, P>, key: &str) {
    cache.get(key).await.unwrap().unwrap();
}

#[tokio::test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn measure_bookkeeping_cost() {
    const N: usize = 20_000;
    let server = ValkeyServer::start();
    let store = valkey_store(&server, VALKEY);
    let value = "x".repeat(1024);
    let lru = BoundedCache::<String, Lru>::new(store.clone(), "m-lru", Lru::with_capacity(10));
    let fifo = BoundedCache::<String, Fifo>::new(store.clone(), "m-fifo", Fifo::with_capacity(10));
    let lfu = BoundedCache::<String, Lfu>::new(store.clone(), "m-lfu", Lfu::with_capacity(10));
    lru.set("k", &value).await.unwrap();
    fifo.set("k", &value).await.unwrap();
    lfu.set("k", &value).await.unwrap();
    let mut conn = store.connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("plain:k")
        .arg(serde_json::to_vec(&value).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();

    // Best of 5 rounds, interleaved: the machine this runs on is rarely quiet.
    let mut best = [Duration::MAX; 4];
    for _round in 0..5 {
        let t = time(N, |_| {
            let mut conn = conn.clone();
            async move {
                let raw: Vec<u8> = redis::cmd("GET")
                    .arg("plain:k")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let _: String = serde_json::from_slice(&raw).unwrap();
            }
        })
        .await;
        best[0] = best[0].min(t);
        let t = time(N, |_| async {
            lru.get("k").await.unwrap().unwrap();
        })
        .await;
        best[1] = best[1].min(t);
        let t = time(N, |_| async {
            fifo.get("k").await.unwrap().unwrap();
        })
        .await;
        best[2] = best[2].min(t);
        let t = time(N, |_| async {
            lfu.get("k").await.unwrap().unwrap();
        })
        .await;
        best[3] = best[3].min(t);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    println!("sequential reads of a 1 KiB value, best of 5 rounds of {N}, one connection:");
    println!("  plain GET + decode          {:6.1} us", per(best[0]));
    for (i, name) in [(1, "LRU get"), (2, "FIFO get"), (3, "LFU get")] {
        println!(
            "  {name:<27} {:6.1} us  ({:.3}x plain)",
            per(best[i]),
            per(best[i]) / per(best[0])
        );
    }

    // Server time per call (INFO commandstats), which the noise of a busy client machine does
    // not inflate as much.
    let mut admin = conn.clone();
    let plain_us = {
        reset_stats(&mut admin).await;
        time(5_000, |_| {
            let mut conn = conn.clone();
            async move {
                let _: Vec<u8> = redis::cmd("GET")
                    .arg("plain:k")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
        .await;
        server_usec(&mut admin, "get").await
    };
    println!("server time per call: GET {plain_us:.2} us");
    macro_rules! script_cost {
        ($name:literal, $cache:expr) => {
            reset_stats(&mut admin).await;
            time(5_000, |_| async {
                cache_get($cache, "k").await;
            })
            .await;
            println!(
                "  {} get script {:.2} us",
                $name,
                server_usec(&mut admin, "evalsha").await
            );
        };
    }
    script_cost!("LRU", &lru);
    script_cost!("FIFO", &fifo);
    script_cost!("LFU", &lfu);

    // Through a router: a hit on a plain route vs a hit on a route with LRU eviction.
    {
        use axum::{routing::get, Router};
        use tower_valkey_cache::CacheLayer;
        let body = value.clone();
        let route = |ns: &str, lru: bool| {
            let cache = route_cache(store.clone(), ns);
            let mut layer = CacheLayer::new(cache);
            if lru {
                layer = layer.eviction(Lru::with_capacity(1000));
            }
            let body = body.clone();
            Router::<()>::new().route(
                "/item",
                get(move || {
                    let body = body.clone();
                    async move { body }
                })
                .route_layer(layer),
            )
        };
        let plain = route("m-route-plain", false);
        let bounded = route("m-route-lru", true);
        assert!(!support::get(&plain, "/item").await.is_hit());
        assert!(!support::get(&bounded, "/item").await.is_hit());
        let mut best = [Duration::MAX; 2];
        for _round in 0..5 {
            let t = time(N / 2, |_| async {
                assert!(support::get(&plain, "/item").await.is_hit());
            })
            .await;
            best[0] = best[0].min(t);
            let t = time(N / 2, |_| async {
                assert!(support::get(&bounded, "/item").await.is_hit());
            })
            .await;
            best[1] = best[1].min(t);
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / (N / 2) as f64;
        println!(
            "sequential route hits (in-process router, 1 KiB body), best of 5 rounds of {}:",
            N / 2
        );
        println!("  plain hit                   {:6.1} us", per(best[0]));
        println!(
            "  hit with LRU bookkeeping    {:6.1} us  ({:.3}x plain)",
            per(best[1]),
            per(best[1]) / per(best[0])
        );
    }

    // Sets that evict: capacity 1,000, 20,000 distinct keys (19,000 evictions).
    println!("sets with eviction (capacity 1000, {N} distinct keys, 64-byte value):");
    let small = "y".repeat(62);
    /// ops/s, and server time per set script.
    async fn sets<P: EvictionPolicy + Clone>(
        store: &ValkeyStore,
        admin: &mut redis::aio::MultiplexedConnection,
        policy: P,
        value: &str,
        concurrency: usize,
    ) -> (f64, f64) {
        let cache = BoundedCache::<String, P>::new(store.clone(), &unique("m-set"), policy);
        reset_stats(admin).await;
        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut evicted = 0;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (cache, next, value) = (cache.clone(), next.clone(), value.to_owned());
                tokio::spawn(async move {
                    let mut evicted = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= N {
                            return evicted;
                        }
                        evicted += cache.set(&format!("key:{i}"), &value).await.unwrap().len();
                    }
                })
            })
            .collect();
        for t in tasks {
            evicted += t.await.unwrap();
        }
        let took = start.elapsed();
        let usec = server_usec(admin, "evalsha").await;
        assert_eq!(evicted, N - 1000);
        assert_eq!(cache.len().await.unwrap(), 1000);
        cache.clear().await.unwrap();
        (N as f64 / took.as_secs_f64(), usec)
    }
    for concurrency in [1, 32] {
        let r = [
            (
                "fifo",
                sets(
                    &store,
                    &mut admin,
                    Fifo::with_capacity(1000),
                    &small,
                    concurrency,
                )
                .await,
            ),
            (
                "lifo",
                sets(
                    &store,
                    &mut admin,
                    Lifo::with_capacity(1000),
                    &small,
                    concurrency,
                )
                .await,
            ),
            (
                "lru",
                sets(
                    &store,
                    &mut admin,
                    Lru::with_capacity(1000),
                    &small,
                    concurrency,
                )
                .await,
            ),
            (
                "mru",
                sets(
                    &store,
                    &mut admin,
                    Mru::with_capacity(1000),
                    &small,
                    concurrency,
                )
                .await,
            ),
            (
                "lfu",
                sets(
                    &store,
                    &mut admin,
                    Lfu::with_capacity(1000),
                    &small,
                    concurrency,
                )
                .await,
            ),
        ];
        reset_stats(&mut admin).await;
        let plain = {
            let start = Instant::now();
            let next = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (mut conn, next, value) = (conn.clone(), next.clone(), small.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= N {
                                return;
                            }
                            let _: () = redis::cmd("SET")
                                .arg(format!("plain:{i}"))
                                .arg(&value)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            N as f64 / start.elapsed().as_secs_f64()
        };
        let plain_us = server_usec(&mut admin, "set").await;
        let line: Vec<String> = r
            .iter()
            .map(|(n, (ops, us))| format!("{n} {ops:.0}/s ({us:.1} us)"))
            .collect();
        println!(
            "  {concurrency:>2} in flight: plain SET {plain:.0}/s ({plain_us:.1} us) | {}",
            line.join(" | ")
        );
    }
}

/// Entries stored by a route without eviction, then read by a bounded route of the same
/// namespace, are indexed by the read (and evict to make room), on both stores.
async fn bounded_reads_index_entries_they_find(cache: tower_valkey_cache::Cache) {
    use axum::{extract::Path, routing::get, Router};
    use tower_valkey_cache::CacheLayer;

    let app = |layer: CacheLayer| -> Router {
        Router::new().route(
            "/item/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}") })
                .route_layer(layer.key("item:{id}")),
        )
    };
    let plain = app(CacheLayer::new(cache.clone()));
    let bounded = app(CacheLayer::new(cache).eviction(Fifo::with_capacity(2)));
    for id in 1..=3 {
        assert!(!support::get(&plain, &format!("/item/{id}")).await.is_hit());
    }
    for id in 1..=3 {
        assert!(support::get(&bounded, &format!("/item/{id}"))
            .await
            .is_hit());
    }
    // Indexing 3 evicted 1 (first in); 2 and 3 stay.
    assert!(!support::get(&plain, "/item/1").await.is_hit());
    assert!(support::get(&plain, "/item/2").await.is_hit());
    assert!(support::get(&plain, "/item/3").await.is_hit());
}

#[tokio::test]
async fn bounded_reads_index_unindexed_entries_memory() {
    bounded_reads_index_entries_they_find(route_cache(MemoryStore::new(), "heal")).await;
}

#[tokio::test]
async fn bounded_reads_index_unindexed_entries_cluster() {
    let (cluster, store, sfx) = support::shared_cluster_store(Duration::from_secs(2));
    let ns = format!("heal{sfx}");
    bounded_reads_index_entries_they_find(route_cache(store, &ns)).await;
    let members: Vec<String> = cluster
        .cli(&["ZRANGE", &format!("{{{ns}}}|evict:idx"), "0", "-1"])
        .await;
    assert_eq!(members, ["item:2", "item:3"]);
}

#[tokio::test]
async fn bounded_reads_index_unindexed_entries_valkey() {
    let server = ValkeyServer::start();
    bounded_reads_index_entries_they_find(route_cache(valkey_store(&server, VALKEY), "heal")).await;
    let members: Vec<String> = server.cli(&["ZRANGE", "heal|evict:idx", "0", "-1"]).await;
    assert_eq!(members, ["item:2", "item:3"]);
}
