//! Bounded namespaces in a [`MemoryStore`] ([`RankedStore`]): the same rules as the Valkey
//! scripts, under one lock.
//!
//! Each function here mirrors a script in `store/valkey/lua/ranked_*.lua` step by step (ranks,
//! the expiry index and its trimming, ghosts, the index's lifetime), so both stores evict the
//! same entries for the same operations.

use super::MemoryStore;
use crate::store::ranked::{Evict, RankedSpace as Space, RankedStore, Spec, Touch, TRIM_BATCH};
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
    /// The expiry index (`ranked_trim.lua`): when the value of each member with a TTL expires.
    expiry: Expiry,
    /// Values of a standalone namespace (a route's live in the `MemoryStore` itself).
    values: HashMap<String, (Bytes, Option<Instant>)>,
    /// When the index expires, like the Valkey index key's TTL; None: never.
    expires: Option<Instant>,
    /// Whether this is a route's namespace: its values are the store's entries, not `values`.
    route: bool,
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
}

/// The members whose values have a TTL, by expiry (the Valkey `exp` sorted set).
#[derive(Default)]
struct Expiry {
    at: HashMap<String, Instant>,
    order: BTreeSet<(Instant, String)>,
}

impl Expiry {
    /// Records that `key`'s value expires `at` (None: never, so it leaves the expiry index).
    fn set(&mut self, key: &str, at: Option<Instant>) {
        self.remove(key);
        if let Some(at) = at {
            self.at.insert(key.to_owned(), at);
            self.order.insert((at, key.to_owned()));
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(at) = self.at.remove(key) {
            self.order.remove(&(at, key.to_owned()));
        }
    }

    /// Up to `limit` members whose expiry has passed, soonest first.
    fn due(&self, now: Instant, limit: usize) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// How many members' expiry has passed.
    fn count_due(&self, now: Instant) -> usize {
        self.order.iter().take_while(|(at, _)| *at <= now).count()
    }
}

/// Where a namespace's values live: in the namespace (standalone) or in the store (a route).
#[derive(Clone, Copy)]
enum Values<'a> {
    Own,
    Store(&'a MemoryStore, &'a Space),
}

/// A value's life: gone, or live until an instant (None: forever).
type Life = Option<Option<Instant>>;

impl Ns {
    /// Where this namespace's values live.
    fn values<'a>(&self, store: &'a MemoryStore, space: &'a Space) -> Values<'a> {
        if self.route {
            Values::Store(store, space)
        } else {
            Values::Own
        }
    }

    fn value(&self, key: &str, now: Instant) -> Option<&Bytes> {
        self.values
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v)
    }

    /// `PTTL`, as an instant.
    fn life(&self, key: &str, now: Instant, values: Values<'_>) -> Life {
        match values {
            Values::Own => self
                .values
                .get(key)
                .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                .map(|(_, exp)| *exp),
            Values::Store(store, space) => store.live_ttl(&space.value(key)).map(|t| Some(now + t)),
        }
    }

    /// `UNLINK` of a value; true if it was live.
    fn unlink(&mut self, key: &str, now: Instant, values: Values<'_>) -> bool {
        match values {
            Values::Own => self
                .values
                .remove(key)
                .is_some_and(|(_, exp)| exp.is_none_or(|e| e > now)),
            Values::Store(store, space) => store.evict_entry(&space.value(key)),
        }
    }

    /// Removes a member from both indexes (`forget` in `ranked_forget.lua`); true if it was
    /// indexed.
    fn forget(&mut self, key: &str) -> bool {
        self.expiry.remove(key);
        self.index.remove(key).is_some()
    }

    /// `trim` in `ranked_trim.lua`: drops up to `limit` members whose expiry passed; returns
    /// how many.
    fn trim(&mut self, limit: usize, now: Instant) -> usize {
        let due = self.expiry.due(now, limit);
        for k in &due {
            self.forget(k);
            if !self.route {
                self.values.remove(k);
            }
        }
        due.len()
    }

    /// `make_room` in `ranked_lib.lua`: evicts until there is room for one more, an expired
    /// member before any live one; ghosts popped from the victim end are dropped without
    /// counting as evictions.
    fn make_room(
        &mut self,
        spec: &Spec,
        now: Instant,
        values: Values<'_>,
        mut more_dead: bool,
    ) -> Vec<String> {
        let mut evicted = Vec::new();
        let mut looks = TRIM_BATCH;
        while self.index.len() >= spec.capacity {
            if more_dead && looks > 0 && self.trim(1, now) == 1 {
                looks -= 1;
                continue;
            }
            more_dead = false;
            let Some(k) = self.index.pop(spec.scoring.evict) else {
                break;
            };
            self.expiry.remove(&k);
            if self.unlink(&k, now, values) {
                evicted.push(k);
            }
        }
        evicted
    }

    /// `add` in `ranked_lib.lua`: indexes `key` at `rank`, records its expiry, and keeps the
    /// namespace alive as long as its longest-lived entry.
    fn add(&mut self, key: &str, rank: Rank, ttl: Option<Duration>, now: Instant) {
        let fresh = self.index.is_empty();
        self.index.put(key, rank);
        self.expiry.set(key, ttl.map(|t| now + t));
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

    /// The namespace, created if needed (`route`: a route's, whose values are store entries).
    fn live_or_new(&mut self, name: &str, now: Instant, route: bool) -> &mut Ns {
        // `live` drops an expired namespace; then reuse what is left or start a new one.
        let _ = self.live(name, now);
        self.spaces.entry(name.to_owned()).or_insert_with(|| Ns {
            route,
            ..Ns::default()
        })
    }

    /// Drops a namespace whose index emptied (Valkey deletes the empty sorted set, the counter
    /// and the expiry index).
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
                if ns.forget(key) {
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
        let ns = s.live_or_new(&space.index, now, false);
        let more_dead = ns.trim(TRIM_BATCH, now) >= TRIM_BATCH;
        // A member whose value expired is a ghost: the key starts over as a new entry.
        let old = ns
            .index
            .remove(key)
            .filter(|_| ns.value(key, now).is_some());
        let evicted = ns.make_room(&spec, now, Values::Own, more_dead);
        ns.values
            .insert(key.to_owned(), (value, ttl.map(|t| now + t)));
        let rank = ns.index.rescore(old, spec.scoring.on_set, &spec);
        ns.add(key, rank, ttl, now);
        evicted
    }

    fn delete(&self, store: &MemoryStore, space: &Space, key: &str) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(ns) = s.live(&space.index, now) else {
            return false;
        };
        let live = ns.unlink(key, now, ns.values(store, space));
        if ns.forget(key) {
            s.drop_if_drained(&space.index);
        }
        live
    }

    /// `ranked_len.lua`: the members less the expired ones still indexed.
    fn len(&self, space: &Space) -> usize {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(ns) = s.live(&space.index, now) else {
            return 0;
        };
        ns.index.len().saturating_sub(ns.expiry.count_due(now))
    }

    fn keys(&self, store: &MemoryStore, space: &Space, spec: Spec) -> Vec<String> {
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
        let values = ns.values(store, space);
        let (live, gone): (Vec<String>, Vec<String>) = ordered
            .into_iter()
            .partition(|k| ns.life(k, now, values).is_some());
        for k in &gone {
            ns.forget(k);
            ns.values.remove(k);
        }
        if !gone.is_empty() {
            s.drop_if_drained(&space.index);
        }
        live
    }

    fn clear(&self, store: &MemoryStore, space: &Space) -> u64 {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(mut ns) = s.spaces.remove(&space.index) else {
            return 0;
        };
        let values = ns.values(store, space);
        let members: Vec<String> = ns.index.ranks.keys().cloned().collect();
        members.iter().filter(|k| ns.unlink(k, now, values)).count() as u64
    }

    /// After a route read of `key` that found (`found`) or did not find its entry.
    fn route_touch(&self, store: &MemoryStore, space: &Space, key: &str, found: bool, spec: Spec) {
        let now = Instant::now();
        let mut s = self.lock();
        if !found {
            if let Some(ns) = s.live(&space.index, now) {
                if ns.forget(key) {
                    s.drop_if_drained(&space.index);
                }
            }
            return;
        }
        let ns = s.live_or_new(&space.index, now, true);
        match ns.index.rank(key) {
            Some(old) => {
                if spec.scoring.on_get != Touch::Keep {
                    let rank = ns.index.rescore(Some(old), spec.scoring.on_get, &spec);
                    ns.index.put(key, rank);
                }
            }
            None => {
                // Stored but not indexed: index it now, as its write would have.
                ns.make_room(&spec, now, Values::Store(store, space), true);
                let ttl = store.live_ttl(&space.value(key)).filter(|t| !t.is_zero());
                let rank = ns.index.rescore(None, spec.scoring.on_set, &spec);
                ns.add(key, rank, ttl, now);
            }
        }
    }

    /// After a route write stored `key`: ranks it and evicts to stay within capacity. The
    /// expiry index records the entry's remaining lifetime, as `PTTL` does on Valkey.
    fn route_record(
        &self,
        store: &MemoryStore,
        space: &Space,
        key: &str,
        spec: Spec,
    ) -> Vec<String> {
        let now = Instant::now();
        let mut s = self.lock();
        let ns = s.live_or_new(&space.index, now, true);
        let values = Values::Store(store, space);
        // An expired member is dropped, so a key rewritten after its entry expired starts over
        // as a new entry; past a batch, this key is looked up on its own.
        let more_dead = ns.trim(TRIM_BATCH, now) >= TRIM_BATCH;
        if more_dead && ns.expiry.at.get(key).is_some_and(|at| *at <= now) {
            ns.forget(key);
        }
        let old = ns.index.remove(key);
        let Some(ttl) = store.live_ttl(&space.value(key)) else {
            // Invalidated since it was written.
            ns.expiry.remove(key);
            s.drop_if_drained(&space.index);
            return Vec::new();
        };
        let evicted = ns.make_room(&spec, now, values, more_dead);
        let rank = ns.index.rescore(old, spec.scoring.on_set, &spec);
        ns.add(key, rank, Some(ttl).filter(|t| !t.is_zero()), now);
        evicted
    }

    /// Runs `invalidate` (which removes entries from the store and returns its result and the
    /// keys of the entries it removed) and removes those keys' members from the route index
    /// `space`, in one step under this registry's lock, as the Valkey invalidation scripts do.
    /// Lock order: this registry, then the store (as every route operation here).
    pub(super) fn invalidate<R>(
        &self,
        space: &Space,
        invalidate: impl FnOnce() -> (R, Vec<String>),
    ) -> R {
        let now = Instant::now();
        let mut s = self.lock();
        let (r, removed) = invalidate();
        if let Some(ns) = s.live(&space.index, now) {
            let mut forgot = false;
            for k in &removed {
                forgot |= ns.forget(k);
            }
            if forgot {
                s.drop_if_drained(&space.index);
            }
        }
        r
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
        Box::pin(std::future::ready(Ok(self
            .bounded
            .delete(self, space, key))))
    }

    fn len<'a>(&'a self, space: &'a Space) -> StoreFuture<'a, usize> {
        Box::pin(std::future::ready(Ok(self.bounded.len(space))))
    }

    fn keys<'a>(&'a self, space: &'a Space, spec: Spec) -> StoreFuture<'a, Vec<String>> {
        Box::pin(std::future::ready(Ok(self.bounded.keys(self, space, spec))))
    }

    fn clear<'a>(&'a self, space: &'a Space) -> StoreFuture<'a, u64> {
        Box::pin(std::future::ready(Ok(self.bounded.clear(self, space))))
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
        _ttl: Duration,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        let evicted = self.bounded.route_record(self, space, key, spec);
        Box::pin(std::future::ready(Ok(evicted)))
    }
}
