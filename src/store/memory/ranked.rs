//! Bounded namespaces in a [`MemoryStore`] ([`RankedStore`]): the same rules as the Valkey
//! scripts, under one lock.
//!
//! Each function here mirrors a script in `store/valkey/lua/ranked_*.lua` step by step (ranks,
//! ghosts, the index's lifetime), so both stores evict the same entries for the same operations.

use super::MemoryStore;
use crate::store::ranked::{Evict, RankedSpace as Space, RankedStore, Spec, Touch};
use crate::store::{KeySpace, Lookup, Store, StoreFuture};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// *(uses, stamp)*, compared in that order.
type Rank = (u64, u64);

/// The bounded namespaces of one [`MemoryStore`].
#[derive(Default)]
pub(super) struct Registry {
    state: Mutex<State>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("namespaces", &self.lock().spaces.len())
            .finish()
    }
}

#[derive(Default)]
struct State {
    spaces: HashMap<String, Ns>,
    ops: u32,
}

#[derive(Default)]
struct Ns {
    index: Index,
    /// Values of a standalone namespace (a route's live in the `MemoryStore` itself).
    values: HashMap<String, (Bytes, Option<Instant>)>,
    /// When the index expires, like the Valkey index key's TTL; None: never.
    expires: Option<Instant>,
}

#[derive(Default)]
struct Index {
    seq: u64,
    ranks: HashMap<String, Rank>,
    order: BTreeSet<(Rank, String)>,
}

impl Index {
    fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    fn len(&self) -> usize {
        self.ranks.len()
    }

    fn rank(&self, key: &str) -> Option<Rank> {
        self.ranks.get(key).copied()
    }

    fn remove(&mut self, key: &str) -> Option<Rank> {
        let r = self.ranks.remove(key)?;
        self.order.remove(&(r, key.to_owned()));
        Some(r)
    }

    fn put(&mut self, key: &str, rank: Rank) {
        if let Some(old) = self.ranks.insert(key.to_owned(), rank) {
            self.order.remove(&(old, key.to_owned()));
        }
        self.order.insert((rank, key.to_owned()));
    }

    fn pop(&mut self, evict: Evict) -> Option<String> {
        let (_, key) = match evict {
            Evict::Lowest => self.order.pop_first()?,
            Evict::Highest => self.order.pop_last()?,
        };
        self.ranks.remove(&key);
        Some(key)
    }

    /// The rank after `touch` of an entry ranked `old` (None: a new entry).
    fn rescore(&mut self, old: Option<Rank>, touch: Touch, spec: &Spec) -> Rank {
        let Some((uses, stamp)) = old else {
            self.seq += 1;
            return (1, self.seq);
        };
        match touch {
            Touch::Keep => (uses, stamp),
            Touch::Stamp => {
                self.seq += 1;
                (uses, self.seq)
            }
            Touch::Count => {
                self.seq += 1;
                ((uses + 1).min(spec.max_uses()), self.seq)
            }
        }
    }

    /// Evicts until there is room for one more; `unlink` removes a value and says whether it was
    /// live (ghosts are dropped without counting as evictions).
    fn make_room(&mut self, spec: &Spec, mut unlink: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.len() >= spec.capacity {
            let Some(k) = self.pop(spec.scoring.evict) else {
                break;
            };
            if unlink(&k) {
                evicted.push(k);
            }
        }
        evicted
    }
}

impl Ns {
    fn value(&self, key: &str, now: Instant) -> Option<&Bytes> {
        self.values
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v)
    }

    /// Removes a value; true if it was live.
    fn unlink(
        values: &mut HashMap<String, (Bytes, Option<Instant>)>,
        key: &str,
        now: Instant,
    ) -> bool {
        values
            .remove(key)
            .is_some_and(|(_, exp)| exp.is_none_or(|e| e > now))
    }

    /// Adds `key` at `rank` and keeps the index alive as long as its longest-lived entry.
    fn add(&mut self, key: &str, rank: Rank, ttl: Option<Duration>, now: Instant) {
        let fresh = self.index.is_empty();
        self.index.put(key, rank);
        match ttl {
            None => self.expires = None,
            Some(ttl) => {
                let until = now + ttl;
                if fresh || self.expires.is_some_and(|e| e < until) {
                    self.expires = Some(until);
                }
            }
        }
    }
}

impl State {
    /// The namespace, unless it does not exist or its index expired (then it is dropped).
    fn live(&mut self, name: &str, now: Instant) -> Option<&mut Ns> {
        self.ops = self.ops.wrapping_add(1);
        if self.ops.is_multiple_of(1024) {
            self.spaces
                .retain(|_, ns| ns.expires.is_none_or(|e| e > now));
        }
        if self
            .spaces
            .get(name)
            .is_some_and(|ns| ns.expires.is_some_and(|e| e <= now))
        {
            self.spaces.remove(name);
        }
        self.spaces.get_mut(name)
    }

    fn live_or_new(&mut self, name: &str, now: Instant) -> &mut Ns {
        // `live` drops an expired namespace; then reuse what is left or start a new one.
        let _ = self.live(name, now);
        self.spaces.entry(name.to_owned()).or_default()
    }

    /// Drops a namespace whose index emptied (Valkey deletes the empty sorted set and the counter).
    fn drop_if_drained(&mut self, name: &str) {
        if self.spaces.get(name).is_some_and(|ns| ns.index.is_empty()) {
            self.spaces.remove(name);
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the maps consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, space: &Space, key: &str, spec: Spec) -> Option<Bytes> {
        let now = Instant::now();
        let mut s = self.lock();
        let ns = s.live(&space.index, now)?;
        match ns.value(key, now).cloned() {
            None => {
                ns.values.remove(key);
                if ns.index.remove(key).is_some() {
                    s.drop_if_drained(&space.index);
                }
                None
            }
            Some(v) => {
                if spec.scoring.on_get != Touch::Keep {
                    if let Some(old) = ns.index.rank(key) {
                        let rank = ns.index.rescore(Some(old), spec.scoring.on_get, &spec);
                        ns.index.put(key, rank);
                    }
                }
                Some(v)
            }
        }
    }

    fn set(
        &self,
        space: &Space,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> Vec<String> {
        let now = Instant::now();
        let mut s = self.lock();
        let ns = s.live_or_new(&space.index, now);
        // A member whose value expired is a ghost: the key starts over as a new entry.
        let old = ns
            .index
            .remove(key)
            .filter(|_| ns.value(key, now).is_some());
        let values = &mut ns.values;
        let evicted = ns.index.make_room(&spec, |k| Ns::unlink(values, k, now));
        ns.values
            .insert(key.to_owned(), (value, ttl.map(|t| now + t)));
        let rank = ns.index.rescore(old, spec.scoring.on_set, &spec);
        ns.add(key, rank, ttl, now);
        evicted
    }

    fn delete(&self, space: &Space, key: &str) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(ns) = s.live(&space.index, now) else {
            return false;
        };
        let live = Ns::unlink(&mut ns.values, key, now);
        if ns.index.remove(key).is_some() {
            s.drop_if_drained(&space.index);
        }
        live
    }

    fn len(&self, space: &Space) -> usize {
        let now = Instant::now();
        self.lock()
            .live(&space.index, now)
            .map_or(0, |ns| ns.index.len())
    }

    fn keys(&self, space: &Space, spec: Spec) -> Vec<String> {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(ns) = s.live(&space.index, now) else {
            return Vec::new();
        };
        let ordered: Vec<String> = match spec.scoring.evict {
            Evict::Lowest => ns.index.order.iter().map(|(_, k)| k.clone()).collect(),
            Evict::Highest => ns
                .index
                .order
                .iter()
                .rev()
                .map(|(_, k)| k.clone())
                .collect(),
        };
        let (live, gone): (Vec<String>, Vec<String>) = ordered
            .into_iter()
            .partition(|k| ns.value(k, now).is_some());
        for k in &gone {
            ns.index.remove(k);
            ns.values.remove(k);
        }
        if !gone.is_empty() {
            s.drop_if_drained(&space.index);
        }
        live
    }

    fn clear(&self, space: &Space) -> u64 {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(ns) = s.spaces.remove(&space.index) else {
            return 0;
        };
        ns.index
            .ranks
            .keys()
            .filter(|k| ns.value(k, now).is_some())
            .count() as u64
    }

    /// After a route read of `key` that found (`found`) or did not find its entry.
    fn route_touch(&self, store: &MemoryStore, space: &Space, key: &str, found: bool, spec: Spec) {
        let now = Instant::now();
        let mut s = self.lock();
        if !found {
            if let Some(ns) = s.live(&space.index, now) {
                if ns.index.remove(key).is_some() {
                    s.drop_if_drained(&space.index);
                }
            }
            return;
        }
        let ns = s.live_or_new(&space.index, now);
        match ns.index.rank(key) {
            Some(old) => {
                if spec.scoring.on_get != Touch::Keep {
                    let rank = ns.index.rescore(Some(old), spec.scoring.on_get, &spec);
                    ns.index.put(key, rank);
                }
            }
            None => {
                // Stored but not indexed: index it now, as its write would have.
                ns.index
                    .make_room(&spec, |k| store.evict_entry(&space.value(k)));
                let ttl = store.live_ttl(&space.value(key)).filter(|t| !t.is_zero());
                let rank = ns.index.rescore(None, spec.scoring.on_set, &spec);
                ns.add(key, rank, ttl, now);
            }
        }
    }

    /// After a route write stored `key`: ranks it and evicts to stay within capacity.
    fn route_record(
        &self,
        store: &MemoryStore,
        space: &Space,
        key: &str,
        ttl: Duration,
        spec: Spec,
    ) -> Vec<String> {
        let now = Instant::now();
        let mut s = self.lock();
        let ns = s.live_or_new(&space.index, now);
        let old = ns.index.remove(key);
        if store.live_ttl(&space.value(key)).is_none() {
            // Invalidated since it was written.
            s.drop_if_drained(&space.index);
            return Vec::new();
        }
        let evicted = ns
            .index
            .make_room(&spec, |k| store.evict_entry(&space.value(k)));
        let rank = ns.index.rescore(old, spec.scoring.on_set, &spec);
        ns.add(key, rank, Some(ttl), now);
        evicted
    }
}

impl RankedStore for MemoryStore {
    fn get<'a>(
        &'a self,
        space: &'a Space,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(std::future::ready(Ok(self.bounded.get(space, key, spec))))
    }

    fn set<'a>(
        &'a self,
        space: &'a Space,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        let evicted = self.bounded.set(space, key, value, ttl, spec);
        Box::pin(std::future::ready(Ok(evicted)))
    }

    fn delete<'a>(&'a self, space: &'a Space, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(self.bounded.delete(space, key))))
    }

    fn len<'a>(&'a self, space: &'a Space) -> StoreFuture<'a, usize> {
        Box::pin(std::future::ready(Ok(self.bounded.len(space))))
    }

    fn keys<'a>(&'a self, space: &'a Space, spec: Spec) -> StoreFuture<'a, Vec<String>> {
        Box::pin(std::future::ready(Ok(self.bounded.keys(space, spec))))
    }

    fn clear<'a>(&'a self, space: &'a Space) -> StoreFuture<'a, u64> {
        Box::pin(std::future::ready(Ok(self.bounded.clear(space))))
    }

    fn route_read<'a>(
        &'a self,
        keys: &'a KeySpace,
        space: &'a Space,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Lookup> {
        Box::pin(async move {
            let lookup = Store::read(self, keys, key).await?;
            self.bounded
                .route_touch(self, space, key, lookup.value.is_some(), spec);
            Ok(lookup)
        })
    }

    fn route_record<'a>(
        &'a self,
        space: &'a Space,
        key: &'a str,
        ttl: Duration,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        let evicted = self.bounded.route_record(self, space, key, ttl, spec);
        Box::pin(std::future::ready(Ok(evicted)))
    }
}
