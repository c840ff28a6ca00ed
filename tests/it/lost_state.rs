//! The fill guard survives a store that lost its state (issue 16 item 5): Valkey restarted empty,
//! or a failover to a replica that had not received the latest invalidations, while a slow fill
//! was running. A fill that read the namespace's clock before the loss must not be stored after a
//! write's invalidation, although the store forgot everything it knew when the fill began.
//!
//! The central race (`invalidate::consistency_workload`) runs through repeated restarts of an
//! empty Valkey and repeated failovers of a cluster's namespace primary.
//!
//! And the clock's rules (it follows the server's time, a fill that read a clock ahead of the
//! store's or from before the clock's origin is refused) hold the same on every store.

use crate::support::{eventually, get as get_req, request, send, Backend, StoreTimeouts};
use crate::support::{valkey_store, Resp, ValkeyCluster, ValkeyServer};
use axum::extract::Path;
use axum::routing::{get, put};
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, Semaphore};
use tower_valkey_cache::store::{Store, Target, Write, Written};
use tower_valkey_cache::{
    Cache, CacheLayer, InvalidateLayer, MemoryStore, ValkeyConfig, ValkeyStore,
};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const OP: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_secs(30);

/// A slow item: `GET /items/{id}` reads the version, then waits for the gate before answering
/// (cached under `item:{id}`); `PUT /items/{id}` bumps it and invalidates `item:{id}`.
struct Slow {
    app: Router,
    /// Notified when a GET handler has read the version and waits.
    entered: Arc<Notify>,
    /// One permit lets one waiting GET answer.
    gate: Arc<Semaphore>,
}

fn slow_items(cache: &Cache) -> Slow {
    let db: Arc<AtomicU64> = Arc::new(AtomicU64::new(1));
    let entered = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let read = {
        let (db, entered, gate) = (db.clone(), entered.clone(), gate.clone());
        get(move |Path(_id): Path<u32>| async move {
            let v = db.load(Ordering::SeqCst);
            entered.notify_one();
            gate.acquire().await.unwrap().forget();
            v.to_string()
        })
    };
    let write = {
        let db = db.clone();
        put(move |Path(_id): Path<u32>| async move {
            (db.fetch_add(1, Ordering::SeqCst) + 1).to_string()
        })
    };
    let app = Router::new().route(
        "/items/{id}",
        read.route_layer(
            CacheLayer::new(cache.clone())
                .ttl(Duration::from_secs(600))
                .key("item:{id}"),
        )
        .merge(write.route_layer(InvalidateLayer::new(cache.clone()).keys(["item:{id}"]))),
    );
    Slow { app, entered, gate }
}

fn text(r: &Resp) -> &str {
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.text()
}

impl Slow {
    /// Starts a GET that reads version and clock now and is stored when the gate opens.
    async fn start_fill(&self) -> tokio::task::JoinHandle<Resp> {
        let app = self.app.clone();
        let fill = tokio::spawn(async move { get_req(&app, "/items/1").await });
        self.entered.notified().await;
        fill
    }

    /// Lets the fill answer (and the layer store it, or not).
    async fn finish_fill(&self, fill: tokio::task::JoinHandle<Resp>) {
        self.gate.add_permits(1);
        assert_eq!(text(&fill.await.unwrap()), "1", "the fill read version 1");
    }

    async fn write(&self) {
        assert_eq!(
            text(&send(&self.app, request("PUT", "/items/1", &[])).await),
            "2"
        );
    }

    /// The item as the next read serves it (opening the gate for a handler run).
    async fn read(&self) -> Resp {
        self.gate.add_permits(1);
        get_req(&self.app, "/items/1").await
    }
}

/// The namespace's clock as the store answers it now.
async fn clock(cache: &Cache) -> u64 {
    let lookup = cache.store().read(cache.key_space(), "x").await;
    lookup.expect("store read").clock
}

async fn owed_nothing(cache: &Cache) {
    eventually(POLL, "owed invalidations to land", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
}

/// A fill reads the clock, Valkey restarts empty, the write's invalidation lands on the empty
/// store, then the fill lands: refused (before: the clock restarted at 1, below the clock the fill
/// read, so the tombstone did not cover it and version 1 was served after version 2 was
/// acknowledged).
#[tokio::test]
async fn a_fill_that_read_the_clock_before_a_restart_is_refused() {
    let mut server = ValkeyServer::start();
    let cache = Cache::builder(valkey_store(&server, VALKEY))
        .namespace("t_restart")
        .timeout(OP)
        .circuit_breaker(1_000_000, Duration::from_millis(10))
        .build();
    let slow = slow_items(&cache);
    // The clock moves past its start.
    for _ in 0..5 {
        cache.invalidate_key("other").await.unwrap();
    }
    let fill = slow.start_fill().await;

    server.restart();
    let after = eventually(POLL, "the store to answer again", || async {
        cache.store().read(cache.key_space(), "x").await.ok()
    })
    .await;
    assert_eq!(after.clock, 0, "the store restarted empty");
    // The write after the restart: its invalidation lands on the new, empty store.
    slow.write().await;
    owed_nothing(&cache).await;

    let superseded = cache.stats().superseded;
    slow.finish_fill(fill).await;
    assert_eq!(
        cache.stats().superseded,
        superseded + 1,
        "the fill was stored"
    );
    let r = slow.read().await;
    assert_eq!(
        (text(&r), r.is_hit()),
        ("2", false),
        "stale after the restart"
    );
}

/// A fill reads the clock, the write's invalidation lands (its tombstone covers the fill), Valkey
/// restarts empty and forgets that tombstone, an unrelated invalidation starts the clock again,
/// then the fill lands: refused, because it read a clock from before the store's origin (before:
/// stored, and version 1 was served).
#[tokio::test]
async fn a_fill_is_refused_when_the_store_forgot_the_invalidation_covering_it() {
    let mut server = ValkeyServer::start();
    let cache = Cache::builder(valkey_store(&server, VALKEY))
        .namespace("t_forgot")
        .timeout(OP)
        .circuit_breaker(1_000_000, Duration::from_millis(10))
        .build();
    let slow = slow_items(&cache);
    for _ in 0..5 {
        cache.invalidate_key("other").await.unwrap();
    }
    let fill = slow.start_fill().await;
    slow.write().await;
    owed_nothing(&cache).await;

    server.restart();
    eventually(POLL, "the store to answer again", || async {
        cache.invalidate_key("other").await.ok()
    })
    .await;
    owed_nothing(&cache).await;

    let superseded = cache.stats().superseded;
    slow.finish_fill(fill).await;
    assert_eq!(
        cache.stats().superseded,
        superseded + 1,
        "the fill was stored"
    );
    let r = slow.read().await;
    assert_eq!(
        (text(&r), r.is_hit()),
        ("2", false),
        "stale after the restart"
    );
}

/// The node index of the replica of primary `primary` (`ROLE` names its primary's port).
fn replica_of(cluster: &ValkeyCluster, primary: usize) -> usize {
    let port = cluster.nodes()[primary].port().to_string();
    (0..cluster.nodes().len())
        .find(|&i| {
            let role = cluster.node_cli(i, &["ROLE"]);
            let mut lines = role.lines();
            lines.next() == Some("slave") && lines.nth(1) == Some(port.as_str())
        })
        .expect("the primary has a replica")
}

/// A fill reads the clock on the namespace's primary; its replica had stopped receiving
/// replication a few invalidations earlier; the primary dies and that lagging replica takes over;
/// the write's invalidation lands on it, then the fill lands: refused (before: the new primary's
/// clock was behind the one the fill read, so the write's tombstone did not cover the fill and
/// version 1 was served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_read_the_clock_before_a_failover_to_a_lagging_replica_is_refused() {
    let mut cluster = tokio::task::spawn_blocking(|| ValkeyCluster::start(3, 1))
        .await
        .unwrap();
    let store = ValkeyStore::with_config(
        ValkeyConfig::cluster(cluster.urls())
            .connect_timeout(OP)
            .response_timeout(OP),
    )
    .unwrap();
    // One shard: the test fails over the primary of the namespace's one slot.
    let cache = Cache::builder(store)
        .namespace("t_failover")
        .shards(1)
        .timeout(OP)
        .circuit_breaker(1_000_000, Duration::from_millis(10))
        .build();
    let slow = slow_items(&cache);
    for _ in 0..5 {
        cache.invalidate_key("other").await.unwrap();
    }
    let slot = cluster.slot("{t_failover}");
    let primary = cluster.primary_of_slot(slot).expect("the slot's primary");
    let replica = replica_of(&cluster, primary);

    // The replica stops receiving replication: its link is cut and the primary refuses to
    // serve it again (the cache's commands are still allowed).
    let ok = cluster.node_cli(
        primary,
        &["ACL", "SETUSER", "default", "-psync", "-sync", "-replconf"],
    );
    assert_eq!(ok.trim(), "OK");
    cluster.node_cli(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
    eventually(POLL, "the replica's link to go down", || async {
        let info = cluster.node_cli(replica, &["INFO", "replication"]);
        info.contains("master_link_status:down").then_some(())
    })
    .await;
    // Invalidations the replica never gets: the primary's clock moves ahead of the replica's.
    for _ in 0..5 {
        cache.invalidate_key("other").await.unwrap();
    }
    let fill = slow.start_fill().await;
    let read = clock(&cache).await;

    // The primary dies; the lagging replica takes over its slots.
    cluster.kill(primary);
    let ok = cluster.node_cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
    assert_eq!(ok.trim(), "OK");
    eventually(POLL, "the replica to serve the slot", || async {
        (cluster.primary_of_slot(slot) == Some(replica)).then_some(())
    })
    .await;
    let lagged = eventually(POLL, "the new primary to answer", || async {
        cache.store().read(cache.key_space(), "x").await.ok()
    })
    .await
    .clock;
    assert!(
        lagged < read,
        "the replica had all invalidations: {lagged} >= {read}"
    );
    owed_nothing(&cache).await;
    slow.write().await;
    owed_nothing(&cache).await;

    let superseded = cache.stats().superseded;
    slow.finish_fill(fill).await;
    assert_eq!(
        cache.stats().superseded,
        superseded + 1,
        "the fill was stored"
    );
    let r = slow.read().await;
    assert_eq!(
        (text(&r), r.is_hit()),
        ("2", false),
        "stale after the failover"
    );
}

/// The central race (`invalidate::consistency_workload`: 16 readers and 4 writers, no read after
/// an acknowledged write may answer an older version) while Valkey is killed and restarted empty
/// again and again: writes whose invalidation fails are owed and read around, fills that read the
/// clock before a restart are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_through_restarts() {
    let server = ValkeyServer::start();
    let timeouts = StoreTimeouts {
        connect: Duration::from_millis(300),
        response: Duration::from_secs(1),
        wait: Duration::from_millis(300),
    };
    let cache = Cache::builder(valkey_store(&server, timeouts))
        .namespace("t_consistency_restarts")
        .timeout(Duration::from_secs(1))
        .circuit_breaker(3, Duration::from_millis(50))
        .build();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarter = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || {
            let mut server = server;
            let mut restarts = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(400));
                server.stop();
                std::thread::sleep(Duration::from_millis(100));
                server.restart();
                restarts += 1;
            }
            (server, restarts)
        }
    });
    let r = crate::invalidate::consistency_workload(cache.clone()).await;
    stop.store(true, Ordering::SeqCst);
    let (_server, restarts) = restarter.await.unwrap();
    println!(
        "{restarts} restarts: {} reads ({} hits), {} writes: {} violations; {:?}",
        r.reads,
        r.hits,
        r.writes,
        r.violations,
        cache.stats()
    );
    assert!(restarts >= 2, "{restarts} restarts");
    assert!(r.hits > 0 && r.writes > 100, "{r:?}");
    assert_eq!(r.violations, 0, "{r:?}");
}

/// The central race on a Valkey Cluster whose namespace primary fails over to its replica and
/// back, again and again, while 16 readers and 4 writers run: no read that starts after an
/// acknowledged write answers an older version. Manual failovers (`CLUSTER FAILOVER` on the
/// replica: it catches up with the primary before taking over), so no acknowledged write is lost
/// to asynchronous replication, which no cache can make up for (see SECURITY.md); what moves is
/// the connection (`MOVED`, the breaker, owed invalidations read around) and the node holding the
/// clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_through_failovers() {
    let cluster = tokio::task::spawn_blocking(|| ValkeyCluster::start(3, 1))
        .await
        .unwrap();
    let store = ValkeyStore::with_config(
        ValkeyConfig::cluster(cluster.urls())
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    // One shard: the test fails over the primary of the namespace's one slot, again and again.
    let cache = Cache::builder(store)
        .namespace("t_consistency_failovers")
        .shards(1)
        .timeout(Duration::from_secs(1))
        .circuit_breaker(3, Duration::from_millis(50))
        .build();
    let slot = cluster.slot("{t_consistency_failovers}");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failovers = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || {
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                let Some(primary) = cluster.primary_of_slot(slot) else {
                    continue;
                };
                let replica = replica_of(&cluster, primary);
                if cluster.node_cli(replica, &["CLUSTER", "FAILOVER"]).trim() != "OK" {
                    continue;
                }
                let until = std::time::Instant::now() + POLL;
                while cluster.primary_of_slot(slot) != Some(replica) {
                    assert!(
                        std::time::Instant::now() < until,
                        "the failover did not finish"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                done += 1;
            }
            (cluster, done)
        }
    });
    let r = crate::invalidate::consistency_workload(cache.clone()).await;
    stop.store(true, Ordering::SeqCst);
    let (_cluster, done) = failovers.await.unwrap();
    println!(
        "{done} failovers: {} reads ({} hits), {} writes: {} violations; {:?}",
        r.reads,
        r.hits,
        r.writes,
        r.violations,
        cache.stats()
    );
    assert!(done >= 2, "{done} failovers");
    assert!(r.hits > 0 && r.writes > 100, "{r:?}");
    assert_eq!(r.violations, 0, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// The clock's rules, on every store
// ---------------------------------------------------------------------------------------------

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The clock follows the server's time and only moves forward; a fill is refused when it read a
/// clock ahead of the store's (the store lost state) or from before the clock's origin (the
/// first invalidation, which starts it, refuses fills in flight once); otherwise the usual
/// tombstone rules decide. Checked with `write` and `write_many` on every store.
async fn clock_rules(b: Backend) {
    let cache = b.cache("t_clock", OP);
    let (store, space) = (cache.store().clone(), cache.key_space().clone());
    let fill = |since: u64| Write {
        key: "k",
        value: Bytes::from_static(b"v"),
        ttl: Duration::from_secs(60),
        tags: &[],
        since: Some(since),
    };
    let both = |since: u64| {
        let (store, space) = (store.clone(), space.clone());
        async move {
            let one = store.write(&space, fill(since)).await.unwrap();
            let many = store.write_many(&space, vec![fill(since)]).await.unwrap();
            assert_eq!(
                vec![one],
                many,
                "write and write_many agree (since {since})"
            );
            one
        }
    };
    // A new namespace has no clock: fills that read it are stored.
    let first = store.read(&space, "k").await.unwrap().clock;
    assert_eq!(first, 0);
    assert_eq!(both(0).await, Written::Stored);

    // The first invalidation starts the clock at the server's time. (`k#other` is in `k`'s
    // shard, whose clock `k`'s fill reads, in a sharded namespace too.)
    let before = now_us();
    store
        .invalidate(&space, Target::Keys(&["k#other".into()]))
        .await
        .unwrap();
    let c1 = store.read(&space, "k").await.unwrap().clock;
    let skew = Duration::from_secs(60).as_micros() as u64;
    assert!(
        c1 + skew >= before && c1 <= now_us() + skew,
        "clock {c1} vs time {before}"
    );
    // A fill that read no clock began before the origin: refused once.
    assert_eq!(both(0).await, Written::Superseded);
    assert_eq!(both(c1).await, Written::Stored);
    // A clock ahead of the store's: the store lost state since the read.
    assert_eq!(both(c1 + 1).await, Written::Superseded);
    assert_eq!(both(c1 + 10_000_000).await, Written::Superseded);

    // It moves forward on every invalidation, however many run in the same microsecond.
    let mut last = c1;
    for _ in 0..20 {
        store
            .invalidate(&space, Target::Keys(&["k#other".into()]))
            .await
            .unwrap();
        let c = store.read(&space, "k").await.unwrap().clock;
        assert!(c > last, "{c} after {last}");
        last = c;
    }
    // A fill that read an older clock, not covered by the tombstones since: stored.
    assert_eq!(both(c1).await, Written::Stored);
    // Covered: refused.
    store
        .invalidate(&space, Target::Keys(&["k".into()]))
        .await
        .unwrap();
    assert_eq!(both(last).await, Written::Superseded);
    let now = store.read(&space, "k").await.unwrap().clock;
    assert_eq!(both(now).await, Written::Stored);
}

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) => clock_rules);
}

mod cluster {
    crate::support::on!(super::Backend::cluster(super::OP) => clock_rules);
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) => clock_rules);
}

/// The clock rules in a sharded namespace: each shard's clock (here `k`'s) obeys them.
mod sharded {
    crate::support::on!(super::Backend::valkey(super::VALKEY).sharded(8) => clock_rules);
}

mod memory_sharded {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()).sharded(8) => clock_rules);
}
