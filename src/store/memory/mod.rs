//! The embedded in-process store.

mod ranked;

use super::bus::{InvalidationBus, LocalBus};
use super::ranked::{RankedSpace, RankedStore};
use super::{
    glob_match, KeySpace, Lookup, LookupMany, Shard, Store, StoreError, StoreFuture, Target, Write,
    Written,
};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An embedded, bounded, TTL-respecting store in this process's memory.
///
/// For development, demos, tests of applications and single-process services. It implements the
/// full [`Store`] contract (guarded fills, tags, patterns) with the same observable behaviour as
/// [`ValkeyStore`](super::ValkeyStore), but it is not shared between processes.
///
/// It holds at most [`max_entries`](Self::max_entries) entries and
/// [`max_bytes`](Self::max_bytes) bytes of values; past either, the oldest inserted entries go
/// first. Expired entries are never returned and are purged as new ones arrive.
///
/// ```
/// use tower_valkey_cache::{Cache, MemoryStore};
/// let cache = Cache::new(MemoryStore::new().max_entries(10_000));
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    max_entries: usize,
    max_bytes: usize,
    bounded: Arc<ranked::Registry>,
    /// Shared by the caches with an L1 tier on this store (and its clones).
    bus: Arc<LocalBus>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Slot>,
    order: VecDeque<(String, u64)>,
    bytes: usize,
    generation: u64,
    clocks: HashMap<String, u64>,
    /// Each clock's origin, by the clock's key ([`Shard::clock`]).
    origins: HashMap<String, u64>,
    tombstones: HashMap<String, (u64, Instant)>,
    /// The size past which expired tombstones are purged ([`State::purge_tombstones`]).
    tombstone_purge_at: usize,
    tags: HashMap<String, HashSet<String>>,
    patterns: HashMap<String, VecDeque<(u64, Instant, String)>>,
    locks: HashMap<String, (String, Instant)>,
    /// The size past which expired locks are purged (as for tombstones).
    lock_purge_at: usize,
    /// Each namespace's recorded key layout ([`Store::claim_layout`]), by its record's key.
    layouts: HashMap<String, String>,
}

#[derive(Debug)]
struct Slot {
    value: Bytes,
    expires: Instant,
    generation: u64,
    tag_sets: Vec<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store bounded to 10,000 entries and 64 MiB of values.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            max_entries: 10_000,
            max_bytes: 64 << 20,
            bounded: Arc::default(),
            bus: Arc::new(LocalBus::new()),
        }
    }

    /// Sets the maximum number of entries.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// Sets the maximum total size of stored values, in bytes.
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n.max(1);
        self
    }

    /// How many entries are stored (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entries are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes raw bytes under a full store key, bypassing the entry format (for tests of corrupt
    /// values and for tooling).
    pub fn put_raw(&self, store_key: &str, value: Bytes, ttl: Duration) {
        let mut s = self.lock();
        s.insert(
            store_key.to_owned(),
            value,
            Instant::now() + ttl,
            Vec::new(),
            self,
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that breaks
        // later operations, so a poisoned lock is recovered rather than propagated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn remove(&mut self, key: &str) -> bool {
        let Some(slot) = self.entries.remove(key) else {
            return false;
        };
        self.bytes -= slot.value.len();
        for set in &slot.tag_sets {
            if let Some(members) = self.tags.get_mut(set) {
                members.remove(key);
                if members.is_empty() {
                    self.tags.remove(set);
                }
            }
        }
        true
    }

    /// Removes `key`; true only if it held a live (unexpired) entry, as Valkey's `UNLINK` counts.
    fn remove_live(&mut self, key: &str, now: Instant) -> bool {
        let live = self.entries.get(key).is_some_and(|s| s.expires > now);
        self.remove(key) && live
    }

    fn live(&mut self, key: &str, now: Instant) -> Option<&Slot> {
        if self.entries.get(key).is_some_and(|s| s.expires <= now) {
            self.remove(key);
        }
        self.entries.get(key)
    }

    /// [`live`](Self::live)'s value, in one map lookup when it is live (a hit's read).
    fn live_value(&mut self, key: &str, now: Instant) -> Option<Bytes> {
        match self.entries.get(key) {
            Some(slot) if slot.expires > now => Some(slot.value.clone()),
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(
        &mut self,
        key: String,
        value: Bytes,
        expires: Instant,
        tag_sets: Vec<String>,
        limits: &MemoryStore,
    ) {
        self.remove(&key);
        self.generation += 1;
        let generation = self.generation;
        self.bytes += value.len();
        for set in &tag_sets {
            self.tags
                .entry(set.clone())
                .or_default()
                .insert(key.clone());
        }
        self.order.push_back((key.clone(), generation));
        self.entries.insert(
            key,
            Slot {
                value,
                expires,
                generation,
                tag_sets,
            },
        );
        let now = Instant::now();
        // Purge a few expired entries from the front, then evict the oldest while over a limit.
        let mut budget = 8;
        while let Some((k, g)) = self.order.front().cloned() {
            let over = self.entries.len() > limits.max_entries || self.bytes > limits.max_bytes;
            let stale_ref = self.entries.get(&k).is_none_or(|s| s.generation != g);
            let expired = self.entries.get(&k).is_some_and(|s| s.expires <= now);
            if stale_ref {
                self.order.pop_front();
            } else if over || (expired && budget > 0) {
                budget -= 1;
                self.order.pop_front();
                self.remove(&k);
            } else {
                break;
            }
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(k, g)| entries.get(k).is_some_and(|s| s.generation == *g));
        }
        self.purge_tombstones(now);
    }

    fn tombstone(&mut self, key: String, clock: u64, ttl: Duration) {
        let now = Instant::now();
        self.tombstones.insert(key, (clock, now + ttl));
        // Here too, not only on inserts: invalidations without fills (a change feed invalidating
        // rows nobody reads) must not grow the map either.
        self.purge_tombstones(now);
    }

    /// Drops expired tombstones once the map has doubled since the last purge (and holds more
    /// than 1024): amortised O(1) per tombstone, and never more than twice the live tombstones
    /// (those of the last invalidation window) plus 1024, whatever the mix of operations.
    fn purge_tombstones(&mut self, now: Instant) {
        if self.tombstones.len() > self.tombstone_purge_at.max(1024) {
            self.tombstones.retain(|_, (_, exp)| *exp > now);
            self.tombstone_purge_at = 2 * self.tombstones.len();
        }
    }

    fn invalidated_since(&self, key: &str, since: u64, now: Instant) -> bool {
        self.tombstones
            .get(key)
            .is_some_and(|(c, exp)| *c > since && *exp > now)
    }

    /// Advances a shard's clock past its last value and to at least the time in
    /// microseconds (see the [store docs](super#the-invalidation-clock)); a clock created here
    /// starts its origin there. As `advance` in `valkey/lua/clock.lua`.
    fn advance(&mut self, space: &Shard) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let last = self.clocks.get(space.clock()).copied();
        let c = (last.unwrap_or(0) + 1).max(now);
        self.clocks.insert(space.clock().to_owned(), c);
        if last.is_none() || !self.origins.contains_key(space.clock()) {
            self.origins.insert(space.clock().to_owned(), c);
        }
        c
    }

    /// A shard's clock (0 before its first invalidation).
    fn clock(&self, space: &Shard) -> u64 {
        self.clocks.get(space.clock()).copied().unwrap_or(0)
    }

    /// Whether the store lost state since a fill read clock value `since`: the clock is behind
    /// it, or began again after it. As `lost` in `valkey/lua/clock.lua`. (A `MemoryStore` never
    /// loses its state while it lives; the rule is kept identical to Valkey's.)
    fn lost(&self, space: &Shard, since: u64) -> bool {
        since > self.clock(space) || self.origins.get(space.clock()).is_some_and(|o| since < *o)
    }
}

/// Runs `f` on `space`'s store key for `key`, rendered into a per-thread buffer (a hit's read
/// allocates no key; a nested call finds the buffer taken and renders into a new one).
fn with_entry_key<T>(space: &Shard, key: &str, f: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static BUF: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
    }
    let mut buf = BUF.try_with(std::cell::Cell::take).unwrap_or_default();
    buf.clear();
    buf.push_str(space.entry_prefix());
    buf.push_str(key);
    let v = f(&buf);
    let _ = BUF.try_with(|b| b.set(buf));
    v
}

impl MemoryStore {
    /// A read: what both [`Store::read`] and [`Store::read_now`] answer.
    fn lookup(&self, space: &KeySpace, key: &str) -> Lookup {
        let now = Instant::now();
        let shard = space.shard_for(key);
        with_entry_key(shard, key, |full| {
            let mut s = self.lock();
            let value = s.live_value(full, now);
            Lookup {
                value,
                clock: s.clock(shard),
            }
        })
    }

    fn write_locked(&self, st: &mut State, space: &KeySpace, w: Write<'_>) -> Written {
        let space = space.shard_for(w.key);
        let full = space.entry(w.key);
        let now = Instant::now();
        if let Some(since) = w.since {
            let superseded = st.lost(space, since)
                || st.invalidated_since(&space.key_tombstone(w.key), since, now)
                || w.tags
                    .iter()
                    .any(|t| st.invalidated_since(&space.tag_tombstone(t), since, now))
                || st.patterns.get(&space.patterns()).is_some_and(|list| {
                    list.iter().any(|(c, exp, pat)| {
                        *c > since && *exp > now && glob_match(pat.as_bytes(), full.as_bytes())
                    })
                });
            if superseded {
                return Written::Superseded;
            }
        }
        let tag_sets = w.tags.iter().map(|t| space.tag_set(t)).collect();
        st.insert(full, w.value, now + w.ttl, tag_sets, self);
        Written::Stored
    }

    /// [`Store::invalidate`] on the entries: returns how many live entries it removed and the
    /// keys (relative to the namespace) of the entries it removed from the bounded routes'
    /// shard ([`KeySpace::bounded`]), whose members leave the route index. Keys advance the
    /// clocks of the shards they are in (and of the bounded shard:
    /// [`KeySpace::invalidation_groups`]); tags and patterns every shard's, as on Valkey.
    fn invalidate_locked(&self, space: &KeySpace, target: Target<'_>) -> (u64, Vec<String>) {
        let now = Instant::now();
        let ttl = space.tombstone_ttl();
        let mut s = self.lock();
        let mut removed = 0u64;
        let mut gone = Vec::new();
        let bounded = space.bounded();
        let mut relative = |full: &str| {
            if let Some(k) = bounded.relative(full) {
                gone.push(k.to_owned());
            }
        };
        match target {
            Target::Keys(keys) => {
                for (i, group) in space.invalidation_groups(keys) {
                    let shard = space.shard(i);
                    let clock = s.advance(shard);
                    for k in group {
                        s.tombstone(shard.key_tombstone(k), clock, ttl);
                        removed += s.remove_live(&shard.entry(k), now) as u64;
                    }
                }
                gone.extend(keys.iter().cloned());
            }
            Target::Tags([]) => {}
            Target::Tags(tags) => {
                for shard in space.shards() {
                    let clock = s.advance(shard);
                    for t in tags {
                        s.tombstone(shard.tag_tombstone(t), clock, ttl);
                        let members = s.tags.remove(&shard.tag_set(t)).unwrap_or_default();
                        for m in members {
                            removed += s.remove_live(&m, now) as u64;
                            relative(&m);
                        }
                    }
                }
            }
            Target::Pattern(p) => {
                for shard in space.shards() {
                    let clock = s.advance(shard);
                    let list = s.patterns.entry(shard.patterns()).or_default();
                    while list.front().is_some_and(|(_, exp, _)| *exp <= now) {
                        list.pop_front();
                    }
                    list.push_back((clock, now + ttl, shard.entry(p)));
                }
                let glob = space.entry_glob(p);
                let doomed: Vec<String> = s
                    .entries
                    .keys()
                    .filter(|k| glob_match(glob.as_bytes(), k.as_bytes()))
                    .cloned()
                    .collect();
                for k in doomed {
                    removed += s.remove_live(&k, now) as u64;
                    relative(&k);
                }
            }
        }
        (removed, gone)
    }
}

impl Store for MemoryStore {
    fn read<'a>(&'a self, space: &'a KeySpace, key: &'a str) -> StoreFuture<'a, Lookup> {
        Box::pin(std::future::ready(Ok(self.lookup(space, key))))
    }

    fn read_now(&self, space: &KeySpace, key: &str) -> Option<Result<Lookup, StoreError>> {
        Some(Ok(self.lookup(space, key)))
    }

    fn read_many<'a>(
        &'a self,
        space: &'a KeySpace,
        keys: &'a [String],
    ) -> StoreFuture<'a, LookupMany> {
        let now = Instant::now();
        let mut s = self.lock();
        let values = keys
            .iter()
            .map(|k| s.live(&space.entry(k), now).map(|slot| slot.value.clone()))
            .collect();
        let clocks = keys.iter().map(|k| s.clock(space.shard_for(k))).collect();
        drop(s);
        Box::pin(std::future::ready(Ok(LookupMany { values, clocks })))
    }

    fn write_many<'a>(
        &'a self,
        space: &'a KeySpace,
        writes: Vec<Write<'a>>,
    ) -> StoreFuture<'a, Vec<Written>> {
        let mut s = self.lock();
        let out = writes
            .into_iter()
            .map(|w| self.write_locked(&mut s, space, w))
            .collect();
        drop(s);
        Box::pin(std::future::ready(Ok(out)))
    }

    fn write<'a>(&'a self, space: &'a KeySpace, w: Write<'a>) -> StoreFuture<'a, Written> {
        let mut s = self.lock();
        let r = self.write_locked(&mut s, space, w);
        drop(s);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn invalidate<'a>(&'a self, space: &'a KeySpace, target: Target<'a>) -> StoreFuture<'a, u64> {
        // The members of the removed entries leave the namespace's route index in the same step
        // (a no-op when the namespace is not bounded), as on Valkey.
        let removed = self
            .bounded
            .invalidate(&RankedSpace::route(space.shard(0)), || {
                self.invalidate_locked(space, target)
            });
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn try_lock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut s = self.lock();
        let lock = space.shard_for(key).lock(key);
        let taken = match s.locks.get(&lock) {
            Some((_, until)) if *until > now => false,
            _ => {
                s.locks.insert(lock, (token.to_owned(), now + lease));
                true
            }
        };
        // Leases never released (a crashed holder) go once expired: amortised like tombstones,
        // at most twice the live leases plus 1024.
        if s.locks.len() > s.lock_purge_at.max(1024) {
            s.locks.retain(|_, (_, until)| *until > now);
            s.lock_purge_at = 2 * s.locks.len();
        }
        Box::pin(std::future::ready(Ok(taken)))
    }

    fn unlock<'a>(
        &'a self,
        space: &'a KeySpace,
        key: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, ()> {
        let mut s = self.lock();
        let lock = space.shard_for(key).lock(key);
        if s.locks.get(&lock).is_some_and(|(t, _)| t == token) {
            s.locks.remove(&lock);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn claim_layout<'a>(
        &'a self,
        key: &'a str,
        layout: &'a str,
    ) -> StoreFuture<'a, Option<String>> {
        let mut s = self.lock();
        let before = match s.layouts.get(key) {
            Some(recorded) => Some(recorded.clone()),
            None => {
                s.layouts.insert(key.to_owned(), layout.to_owned());
                None
            }
        };
        Box::pin(std::future::ready(Ok(before)))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn supports_shards(&self) -> bool {
        true
    }

    fn ranked(&self) -> Option<Arc<dyn RankedStore>> {
        Some(Arc::new(self.clone()))
    }

    fn bus(&self) -> Option<Arc<dyn InvalidationBus>> {
        Some(self.bus.clone())
    }
}

/// Hooks for bounded namespaces (`ranked.rs`).
impl MemoryStore {
    /// Removes the entry at a full store key; true if it was live.
    fn evict_entry(&self, store_key: &str) -> bool {
        let mut s = self.lock();
        let live = s.live(store_key, Instant::now()).is_some();
        s.remove(store_key);
        live
    }

    /// The time the live entry at a full store key has left; None if there is none.
    fn live_ttl(&self, store_key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        s.live(store_key, now)
            .map(|slot| slot.expires.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every map of the store, however long it runs: the bounds ARCHITECTURE.md › Bounds lists.
    fn assert_bounded(store: &MemoryStore, spaces: usize, tags_per_entry: usize) {
        let s = store.lock();
        assert!(
            s.entries.len() <= store.max_entries,
            "entries {}",
            s.entries.len()
        );
        assert!(
            s.order.len() <= 2 * s.entries.len() + 64 + 1,
            "order {} for {} entries",
            s.order.len(),
            s.entries.len()
        );
        // Every tombstone here is expired (a zero window), so at most the purge threshold.
        assert!(
            s.tombstones.len() <= 1024 + 1,
            "tombstones {}",
            s.tombstones.len()
        );
        assert!(s.locks.len() <= 1024 + 1, "locks {}", s.locks.len());
        assert!(s.clocks.len() <= spaces, "clocks {}", s.clocks.len());
        assert!(s.origins.len() <= spaces, "origins {}", s.origins.len());
        assert!(
            s.tags.len() <= s.entries.len() * tags_per_entry,
            "tag sets {} for {} entries",
            s.tags.len(),
            s.entries.len()
        );
        let members: usize = s.tags.values().map(HashSet::len).sum();
        assert!(
            members <= s.entries.len() * tags_per_entry,
            "tag members {members}"
        );
        for (ns, list) in &s.patterns {
            // A zero window: each new pattern prunes every expired one before it.
            assert!(list.len() <= 1, "pattern records of {ns}: {}", list.len());
        }
    }

    /// A long run of every operation with fresh keys, tags, patterns and lock names and a zero
    /// invalidation window (every tombstone expires at once), in any mix: invalidations alone,
    /// fills alone, locks alone, or all interleaved. No map grows past its bound. (Before the
    /// bound was enforced on invalidations too, 20,000 key invalidations without a fill left
    /// 20,000 tombstones.)
    #[tokio::test]
    async fn no_map_grows_without_bound_under_any_mix_of_operations() {
        for mix in ["invalidations", "fills", "locks", "all"] {
            let store = MemoryStore::new().max_entries(500);
            let spaces: Vec<KeySpace> = (0..3)
                .map(|i| KeySpace::new(&format!("ns{i}"), Duration::ZERO))
                .collect();
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for i in 0..20_000u64 {
                let space = &spaces[(next() % 3) as usize];
                let op = match mix {
                    "invalidations" => 1 + next() % 3,
                    "fills" => 0,
                    "locks" => 4,
                    _ => next() % 5,
                };
                let key = format!("k{i}");
                let tags = [format!("t{}", i % 97), format!("u{i}")];
                match op {
                    0 => {
                        let w = Write {
                            key: &key,
                            value: Bytes::from_static(b"v"),
                            ttl: Duration::from_secs(60),
                            tags: &tags,
                            since: Some(0),
                        };
                        store.write(space, w).await.expect("memory write");
                    }
                    1 => {
                        store
                            .invalidate(space, Target::Keys(std::slice::from_ref(&key)))
                            .await
                            .expect("memory invalidate");
                    }
                    2 => {
                        store
                            .invalidate(space, Target::Tags(&tags[1..]))
                            .await
                            .expect("memory invalidate");
                    }
                    3 => {
                        store
                            .invalidate(space, Target::Pattern(&format!("k{i}*")))
                            .await
                            .expect("memory invalidate");
                    }
                    _ => {
                        // Taken and never released, with a lease that has already run out.
                        store
                            .try_lock(space, &key, "token", Duration::ZERO)
                            .await
                            .expect("memory lock");
                    }
                }
                if i % 1000 == 999 {
                    assert_bounded(&store, spaces.len(), tags.len());
                }
            }
            assert_bounded(&store, spaces.len(), 2);
        }
    }
}
