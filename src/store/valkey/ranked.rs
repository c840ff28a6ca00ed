//! Bounded namespaces on Valkey ([`RankedStore`] for [`ValkeyStore`]): one Lua script per
//! operation (`EVALSHA`, reloaded when missing).
//!
//! Every scoring script includes `ranked_rank.lua`, which reads the policy from `KEYS[1..3]`
//! (index, counter, expiry index) and `ARGV[1..7]`; each script's own keys and arguments follow.
//! Writes (and a route read that indexes an entry) also include `ranked_trim.lua` (the clock and
//! the trimming of expired members) and `ranked_write.lua` (eviction, the keys' lifetime); a get
//! includes neither, so reads cost what they did before the expiry index. Scripts that remove
//! members (delete, keys, the invalidations in `super::Store::invalidate`) include
//! `ranked_forget.lua`.

use super::ValkeyStore;
use crate::store::ranked::{Evict, RankedSpace as Space, RankedStore, Spec, Touch, TRIM_BATCH};
use crate::store::{KeySpace, Lookup, Shard, StoreError, StoreFuture};
use bytes::Bytes;
use deadpool_redis::redis;
use std::sync::OnceLock;
use std::time::Duration;

const TRIM: &str = include_str!("lua/ranked_trim.lua");

const RANK: &str = include_str!("lua/ranked_rank.lua");

const WRITE: &str = include_str!("lua/ranked_write.lua");

/// `forget(idx, seq, exp, members)`: removes members from a bounded namespace's indexes.
pub(super) const FORGET: &str = include_str!("lua/ranked_forget.lua");

const LEN: &str = include_str!("lua/ranked_len.lua");

const GET_FAST: &str = include_str!("lua/ranked_get_fast.lua");

const GET_SLOW: &str = include_str!("lua/ranked_get_slow.lua");

const SET: &str = include_str!("lua/ranked_set.lua");

const ROUTE_READ_FAST: &str = include_str!("lua/ranked_route_read_fast.lua");

const ROUTE_READ_SLOW: &str = include_str!("lua/ranked_route_read_slow.lua");

const ROUTE_RECORD: &str = include_str!("lua/ranked_route_record.lua");

const DELETE: &str = include_str!("lua/ranked_delete.lua");

const KEYS_SCRIPT: &str = include_str!("lua/ranked_keys_script.lua");

const CLEAR: &str = include_str!("lua/ranked_clear.lua");

const CLEAR_BATCH: usize = 1000;

struct Scripts {
    get: redis::Script,
    set: redis::Script,
    route_read: redis::Script,
    route_record: redis::Script,
    delete: redis::Script,
    len: redis::Script,
    keys: redis::Script,
    clear: redis::Script,
}

fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        get: redis::Script::new(&format!("{GET_FAST}{RANK}{GET_SLOW}")),
        set: redis::Script::new(&format!("{TRIM}{RANK}{WRITE}{SET}")),
        route_read: redis::Script::new(&format!(
            "{ROUTE_READ_FAST}{TRIM}{RANK}{WRITE}{ROUTE_READ_SLOW}"
        )),
        route_record: redis::Script::new(&format!("{TRIM}{RANK}{WRITE}{ROUTE_RECORD}")),
        delete: redis::Script::new(&format!("{FORGET}{DELETE}")),
        len: redis::Script::new(&format!("{TRIM}{LEN}")),
        keys: redis::Script::new(&format!("{FORGET}{KEYS_SCRIPT}")),
        clear: redis::Script::new(CLEAR),
    })
}

fn touch_code(t: Touch) -> u8 {
    match t {
        Touch::Keep => 0,
        Touch::Stamp => 1,
        Touch::Count => 2,
    }
}

fn high(spec: &Spec) -> u8 {
    u8::from(spec.scoring.evict == Evict::Highest)
}

/// Adds the keys and arguments [`RANK`] reads.
fn policy_args(inv: &mut redis::ScriptInvocation<'_>, space: &Space, spec: &Spec) {
    inv.key(&space.index)
        .key(&space.seq)
        .key(&space.expiry)
        .arg(touch_code(spec.scoring.on_set))
        .arg(touch_code(spec.scoring.on_get))
        .arg(high(spec))
        .arg(spec.capacity)
        .arg(spec.stamp_bits)
        .arg(&space.value_prefix)
        .arg(TRIM_BATCH);
}

/// Adds the keys of `shard`'s route index (index, counter, expiry index) to an invalidation
/// script that includes [`FORGET`]: it removes the members of the entries it deletes.
pub(super) fn route_index_keys(inv: &mut redis::ScriptInvocation<'_>, shard: &Shard) {
    let route = Space::route(shard);
    inv.key(route.index).key(route.seq).key(route.expiry);
}

/// After a pattern invalidation unlinked `entries` (full store keys of `space`): removes their
/// members from the route index and the expiry index: two single-key `ZREM`s, neither a script
/// nor a pipeline, so on a cluster whose slot is migrating each follows its own redirect (a
/// multi-key script is refused with `TRYAGAIN`, a cluster pipeline does not follow `MOVED`). The
/// counter is left to its TTL (route entries always have one).
pub(super) async fn forget_unlinked(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    space: &Space,
    entries: &[String],
) -> redis::RedisResult<()> {
    let members: Vec<&str> = entries
        .iter()
        .filter_map(|k| k.strip_prefix(space.value_prefix.as_str()))
        .collect();
    if members.is_empty() {
        return Ok(());
    }
    for key in [&space.index, &space.expiry] {
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(key).arg(&members);
        let _: u64 = super::conn::query_redirected(conn, &zrem).await?;
    }
    Ok(())
}

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| (d.as_millis() as u64).max(1))
}

async fn get(
    store: &ValkeyStore,
    space: &Space,
    key: &str,
    spec: Spec,
) -> Result<Option<Bytes>, StoreError> {
    let mut inv = scripts().get.prepare_invoke();
    policy_args(&mut inv, space, &spec);
    inv.key(space.value(key)).arg(key);
    store.run(async |c| inv.invoke_async(c).await).await
}

async fn set(
    store: &ValkeyStore,
    space: &Space,
    key: &str,
    value: Bytes,
    ttl: Option<Duration>,
    spec: Spec,
) -> Result<Vec<String>, StoreError> {
    let mut inv = scripts().set.prepare_invoke();
    policy_args(&mut inv, space, &spec);
    inv.key(space.value(key))
        .arg(key)
        .arg(value.as_ref())
        .arg(ttl_ms(ttl));
    store.run(async |c| inv.invoke_async(c).await).await
}

async fn delete(store: &ValkeyStore, space: &Space, key: &str) -> Result<bool, StoreError> {
    let mut inv = scripts().delete.prepare_invoke();
    inv.key(&space.index)
        .key(&space.seq)
        .key(&space.expiry)
        .key(space.value(key))
        .arg(key);
    let n: u64 = store.run(async |c| inv.invoke_async(c).await).await?;
    Ok(n > 0)
}

async fn len(store: &ValkeyStore, space: &Space) -> Result<usize, StoreError> {
    let mut inv = scripts().len.prepare_invoke();
    inv.key(&space.index).key(&space.expiry);
    store.run(async |c| inv.invoke_async(c).await).await
}

async fn keys(store: &ValkeyStore, space: &Space, spec: Spec) -> Result<Vec<String>, StoreError> {
    let mut inv = scripts().keys.prepare_invoke();
    inv.key(&space.index)
        .key(&space.seq)
        .key(&space.expiry)
        .arg(high(&spec))
        .arg(&space.value_prefix);
    store.run(async |c| inv.invoke_async(c).await).await
}

async fn clear(store: &ValkeyStore, space: &Space) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    let mut rounds_left: Option<u64> = None;
    loop {
        let mut inv = scripts().clear.prepare_invoke();
        inv.key(&space.index)
            .key(&space.seq)
            .key(&space.expiry)
            .arg(&space.value_prefix)
            .arg(CLEAR_BATCH);
        let (n, left): (u64, u64) = store.run(async |c| inv.invoke_async(c).await).await?;
        removed += n;
        // Writers racing with the clear could keep it going forever: stop after the rounds the
        // first answer called for, plus a few.
        let rounds = rounds_left.get_or_insert(left / CLEAR_BATCH as u64 + 4);
        if left == 0 || *rounds == 0 {
            return Ok(removed);
        }
        *rounds -= 1;
    }
}

async fn route_read(
    store: &ValkeyStore,
    keys: &KeySpace,
    space: &Space,
    key: &str,
    spec: Spec,
) -> Result<Lookup, StoreError> {
    let mut inv = scripts().route_read.prepare_invoke();
    policy_args(&mut inv, space, &spec);
    let shard = keys.shard_for(key);
    inv.key(shard.entry(key)).key(shard.clock()).arg(key);
    let (value, clock): (Option<Bytes>, Option<u64>) =
        store.run(async |c| inv.invoke_async(c).await).await?;
    Ok(Lookup {
        value,
        clock: clock.unwrap_or(0),
    })
}

/// The expiry index records the entry's remaining lifetime (`PTTL`), so `_ttl` is not sent.
async fn route_record(
    store: &ValkeyStore,
    space: &Space,
    key: &str,
    _ttl: Duration,
    spec: Spec,
) -> Result<Vec<String>, StoreError> {
    let mut inv = scripts().route_record.prepare_invoke();
    policy_args(&mut inv, space, &spec);
    inv.key(space.value(key)).arg(key);
    store.run(async |c| inv.invoke_async(c).await).await
}

impl RankedStore for ValkeyStore {
    fn get<'a>(
        &'a self,
        space: &'a Space,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(get(self, space, key, spec))
    }

    fn set<'a>(
        &'a self,
        space: &'a Space,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        Box::pin(set(self, space, key, value, ttl, spec))
    }

    fn delete<'a>(&'a self, space: &'a Space, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(delete(self, space, key))
    }

    fn len<'a>(&'a self, space: &'a Space) -> StoreFuture<'a, usize> {
        Box::pin(len(self, space))
    }

    fn keys<'a>(&'a self, space: &'a Space, spec: Spec) -> StoreFuture<'a, Vec<String>> {
        Box::pin(keys(self, space, spec))
    }

    fn clear<'a>(&'a self, space: &'a Space) -> StoreFuture<'a, u64> {
        Box::pin(clear(self, space))
    }

    fn route_read<'a>(
        &'a self,
        keys: &'a KeySpace,
        space: &'a Space,
        key: &'a str,
        spec: Spec,
    ) -> StoreFuture<'a, Lookup> {
        Box::pin(route_read(self, keys, space, key, spec))
    }

    fn route_record<'a>(
        &'a self,
        space: &'a Space,
        key: &'a str,
        ttl: Duration,
        spec: Spec,
    ) -> StoreFuture<'a, Vec<String>> {
        Box::pin(route_record(self, space, key, ttl, spec))
    }
}
