//! The layout guard (issue 17): every process sharing a namespace names its keys the same way,
//! or the ones that differ fail closed and still invalidate where the others read.
//!
//! Two caches on one namespace stand for two processes: one with one shard, one with eight (or
//! the other way round). Whichever claims the namespace first records its layout; the other
//! serves nothing from the store, stores nothing, reports degraded, and applies its key, tag and
//! pattern invalidations in the recorded layout, where the first cache must see them.

use crate::support::{Backend, StoreTimeouts};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_valkey_cache::function::Options;
use tower_valkey_cache::store::{KeySpace, StoreErrorKind};
use tower_valkey_cache::testing::{FaultyStore, Op};
use tower_valkey_cache::{Cache, MemoryStore};

const VALKEY: StoreTimeouts = StoreTimeouts::all(Duration::from_secs(2));
const CLUSTER: Duration = Duration::from_secs(2);
const OP: Duration = Duration::from_secs(2);

/// `cache.get_or_set(key)` with a loader that counts its runs and answers `value`, tagged
/// `tag` (the value is what the cache returned).
async fn load(cache: &Cache, key: &str, tag: &str, value: u64, runs: &AtomicUsize) -> u64 {
    let opts = Options::new().tags([tag]);
    cache
        .get_or_set_with(key, &opts, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(value)
        })
        .await
        .expect("the loader does not fail")
}

/// The layouts `(first, second)` of the two caches: the backend's own and another.
fn layouts(b: &Backend) -> (u16, u16) {
    if b.shards == 1 {
        (1, 8)
    } else {
        (b.shards, 1)
    }
}

/// The cache that claims second fails closed, and every kind of its invalidations reaches the
/// entries of the cache that claimed first.
async fn another_layout_fails_closed_and_invalidates_in_the_recorded_one(b: Backend) {
    let (s1, s2) = layouts(&b);
    let first = b.builder("t_layout", OP).shards(s1).build();
    let second = b.builder("t_layout", OP).shards(s2).build();
    let runs = AtomicUsize::new(0);
    // `first` claims the namespace with its first operation.
    assert_eq!(load(&first, "item:1", "t1", 1, &runs).await, 1);
    assert_eq!(load(&first, "item:1", "t1", 2, &runs).await, 1, "a hit");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!first.is_degraded());

    // `second` finds the other layout: nothing from the store, nothing into it.
    let other = AtomicUsize::new(0);
    assert_eq!(
        load(&second, "item:1", "t1", 7, &other).await,
        7,
        "not first's entry"
    );
    assert_eq!(
        load(&second, "item:1", "t1", 8, &other).await,
        8,
        "nor its own"
    );
    assert_eq!(other.load(Ordering::SeqCst), 2);
    assert!(second.is_degraded());
    let refused = second
        .get::<u64>("item:1")
        .await
        .expect_err("reads fail closed");
    assert_eq!(refused.kind(), StoreErrorKind::Server);
    assert!(
        refused.to_string().contains("another key layout"),
        "{refused}"
    );
    assert_eq!(second.stats().stores, 0, "{:?}", second.stats());
    assert_eq!(first.get::<u64>("item:1").await.unwrap(), Some(1));

    // Each kind of invalidation by `second` lands where `first` reads.
    let kinds: [(&str, &str); 3] = [("key", "item:1"), ("tag", "t2"), ("pattern", "item:3*")];
    for (n, (kind, target)) in kinds.into_iter().enumerate() {
        let key = format!("item:{}", n + 1);
        let tag = format!("t{}", n + 1);
        let runs = AtomicUsize::new(0);
        load(&first, &key, &tag, 10, &runs).await;
        assert!(
            first.get::<u64>(&key).await.unwrap().is_some(),
            "{kind}: stored"
        );
        let removed = match kind {
            "key" => second.invalidate_key(target).await,
            "tag" => second.invalidate_tag(target).await,
            _ => second.invalidate_pattern(target).await,
        }
        .unwrap_or_else(|e| panic!("{kind} invalidation by the mismatched cache: {e}"));
        assert!(removed >= 1, "{kind}: {removed} removed");
        assert_eq!(
            first.get::<u64>(&key).await.unwrap(),
            None,
            "{kind}: first's entry is gone"
        );
        assert_eq!(
            load(&first, &key, &tag, 11, &runs).await,
            11,
            "{kind}: first reloads"
        );
    }
    assert_eq!(
        second.pending_invalidations(),
        0,
        "nothing owed: all landed"
    );
    assert!(!first.is_degraded());
}

/// Many first operations at once make one claim, and none of them runs before it.
async fn one_claim_for_many_first_operations(b: Backend) {
    let store = FaultyStore::new(b.store());
    let faults = store.faults();
    let cache = Cache::builder(store)
        .namespace(b.namespace("t_layout_once"))
        .shards(b.shards)
        .timeout(OP)
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                load(&cache, &format!("k{}", n % 8), "t", n, &runs).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(faults.calls(Op::Layout), 1);
    assert!(runs.load(Ordering::SeqCst) >= 8);
    assert_eq!(cache.stats().stores, 8, "{:?}", cache.stats());
}

/// A claim that cannot be made before any succeeded fails every operation (nothing is read or
/// stored under an unchecked layout) and owes invalidations; once it can, all goes on.
async fn an_unchecked_layout_fails_closed(b: Backend) {
    let store = FaultyStore::new(b.store());
    let faults = store.faults();
    let cache = Cache::builder(store)
        .namespace(b.namespace("t_layout_unchecked"))
        .shards(b.shards)
        .timeout(OP)
        .circuit_breaker(1_000_000, Duration::from_millis(10))
        .build();
    faults.fail(Op::Layout);
    let runs = AtomicUsize::new(0);
    assert_eq!(load(&cache, "k", "t", 1, &runs).await, 1);
    assert_eq!(load(&cache, "k", "t", 2, &runs).await, 2, "not stored");
    assert_eq!(faults.calls(Op::Read) + faults.calls(Op::Write), 0);
    assert!(cache.invalidate_key("k").await.is_err());
    assert_eq!(cache.pending_invalidations(), 1, "owed, not dropped");
    assert_eq!(faults.calls(Op::Invalidate), 0);
    faults.heal(Op::Layout);
    crate::support::eventually(Duration::from_secs(20), "the owed invalidation", || async {
        (cache.pending_invalidations() == 0).then_some(())
    })
    .await;
    assert_eq!(load(&cache, "k", "t", 3, &runs).await, 3);
    assert_eq!(load(&cache, "k", "t", 4, &runs).await, 3, "a hit");
}

/// A record lost (a flush) is re-created by the next claim: here by a cache with another
/// layout, which then owns the namespace; the cache that owned it notices at its next check and
/// fails closed from then on.
async fn a_lost_record_is_reclaimed_and_the_change_noticed(b: Backend) {
    let ns = b.namespace("t_layout_lost");
    let (s1, s2) = layouts(&b);
    let check = Duration::from_millis(300);
    let first = b
        .builder("t_layout_lost", OP)
        .shards(s1)
        .layout_check(check)
        .build();
    let runs = AtomicUsize::new(0);
    load(&first, "k", "t", 1, &runs).await;
    assert_eq!(load(&first, "k", "t", 2, &runs).await, 1);
    b.delete_raw(&KeySpace::layout_key(&ns)).await;
    let second = b
        .builder("t_layout_lost", OP)
        .shards(s2)
        .layout_check(check)
        .build();
    let other = AtomicUsize::new(0);
    load(&second, "k", "t", 5, &other).await;
    assert_eq!(
        load(&second, "k", "t", 6, &other).await,
        5,
        "second owns it now"
    );
    assert!(!second.is_degraded());
    tokio::time::sleep(check * 2).await;
    assert_eq!(
        load(&first, "k", "t", 3, &runs).await,
        3,
        "first reads around"
    );
    assert!(first.is_degraded());
    first.invalidate_key("k").await.expect("in second's layout");
    assert_eq!(
        load(&second, "k", "t", 7, &other).await,
        7,
        "second reloads"
    );
}

mod valkey {
    crate::support::on!(super::Backend::valkey(super::VALKEY) =>
        another_layout_fails_closed_and_invalidates_in_the_recorded_one,
        one_claim_for_many_first_operations,
        an_unchecked_layout_fails_closed,
        a_lost_record_is_reclaimed_and_the_change_noticed,
    );
}

mod valkey_sharded {
    crate::support::on!(super::Backend::valkey(super::VALKEY).sharded(8) =>
        another_layout_fails_closed_and_invalidates_in_the_recorded_one,
        a_lost_record_is_reclaimed_and_the_change_noticed,
    );
}

mod cluster {
    crate::support::on!(super::Backend::cluster(super::CLUSTER) =>
        another_layout_fails_closed_and_invalidates_in_the_recorded_one,
        one_claim_for_many_first_operations,
        an_unchecked_layout_fails_closed,
        a_lost_record_is_reclaimed_and_the_change_noticed,
    );
}

mod cluster_sharded {
    crate::support::on!(super::Backend::cluster(super::CLUSTER).sharded(128) =>
        another_layout_fails_closed_and_invalidates_in_the_recorded_one,
    );
}

mod memory {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()) =>
        another_layout_fails_closed_and_invalidates_in_the_recorded_one,
        one_claim_for_many_first_operations,
        an_unchecked_layout_fails_closed,
    );
}

mod memory_sharded {
    crate::support::on!(super::Backend::memory(super::MemoryStore::new()).sharded(8) =>
        another_layout_fails_closed_and_invalidates_in_the_recorded_one,
    );
}

/// On a Valkey Cluster a namespace is sharded by default; elsewhere it has one shard.
#[tokio::test]
async fn a_cluster_namespace_has_128_shards_by_default() {
    let b = Backend::cluster(CLUSTER);
    let cache = Cache::builder_shared(b.store())
        .namespace(b.namespace("t_layout_default"))
        .build();
    assert_eq!(cache.shard_count(), 128);
    assert_eq!(
        usize::from(tower_valkey_cache::DEFAULT_CLUSTER_SHARDS),
        cache.shard_count()
    );
    let runs = AtomicUsize::new(0);
    load(&cache, "k", "t", 1, &runs).await;
    assert_eq!(load(&cache, "k", "t", 2, &runs).await, 1);
    assert_eq!(Cache::new(MemoryStore::new()).shard_count(), 1);
}
