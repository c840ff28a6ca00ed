//! Bounded namespaces on Valkey: one Lua script per operation (`EVALSHA`, reloaded when missing).
//!
//! Every scoring script starts with [`LIB`], which reads the policy from `KEYS[1..2]` and
//! `ARGV[1..6]`; each script's own keys and arguments follow.

use super::{Evict, Space, Spec, Touch};
use crate::store::{KeySpace, Lookup, StoreError, ValkeyStore};
use bytes::Bytes;
use deadpool_redis::redis;
use std::sync::OnceLock;
use std::time::Duration;

/// KEYS: index, counter. ARGV: on_set, on_get (0 keep, 1 stamp, 2 count), evict highest (0/1),
/// capacity, stamp bits, value prefix.
const LIB: &str = r#"
local IDX, SEQ = KEYS[1], KEYS[2]
local ON_SET, ON_GET = tonumber(ARGV[1]), tonumber(ARGV[2])
local HIGH = ARGV[3] == '1'
local CAP = tonumber(ARGV[4])
local BITS = tonumber(ARGV[5])
local PREFIX = ARGV[6]
local COUNTING = ON_SET == 2 or ON_GET == 2
local SB = 2 ^ BITS
local MAXC = 2 ^ (53 - BITS) - 1

local function uses(score)
  if not COUNTING then return 1 end
  return math.floor(score / SB)
end
local function rank(c, st)
  if not COUNTING then return st end
  return c * SB + st
end
-- Gives every member a small stamp in rank order (order within a use count is what matters).
local function renumber()
  local all = redis.call('ZRANGE', IDX, 0, -1, 'WITHSCORES')
  local n = 0
  for i = 1, #all, 2 do
    n = n + 1
    redis.call('ZADD', IDX, rank(uses(tonumber(all[i + 1])), n), all[i])
  end
  return n
end
local function stamp()
  local s = redis.call('INCR', SEQ)
  if COUNTING and s >= SB then
    s = renumber() + 1
    redis.call('SET', SEQ, s, 'KEEPTTL')
  end
  return s
end
-- The rank after `touch` of an entry ranked `old` (nil: a new entry).
local function rescore(old, touch)
  if not old then return rank(1, stamp()) end
  if touch == 0 then return old end
  local c = uses(old)
  if touch == 2 and c < MAXC then c = c + 1 end
  return rank(c, stamp())
end
-- Evicts until there is room for one more; ghosts (values already gone) are dropped silently.
local function make_room(evicted)
  local pop = HIGH and 'ZPOPMAX' or 'ZPOPMIN'
  while redis.call('ZCARD', IDX) >= CAP do
    local p = redis.call(pop, IDX)
    if #p == 0 then break end
    if redis.call('UNLINK', PREFIX .. p[1]) == 1 then evicted[#evicted + 1] = p[1] end
  end
end
-- The index and counter live as long as the longest-lived entry (forever if one has no TTL).
local function keep_alive(ttl, fresh)
  if ttl <= 0 then
    redis.call('PERSIST', IDX)
    redis.call('PERSIST', SEQ)
  else
    local t = fresh and -2 or redis.call('PTTL', IDX)
    if fresh or (t >= 0 and t < ttl) then
      redis.call('PEXPIRE', IDX, ttl)
      redis.call('PEXPIRE', SEQ, ttl)
    end
  end
end
local function drained()
  if redis.call('EXISTS', IDX) == 0 then redis.call('DEL', SEQ) end
end
local function add(m, score, ttl)
  local fresh = redis.call('EXISTS', IDX) == 0
  redis.call('ZADD', IDX, score, m)
  keep_alive(ttl, fresh)
end
"#;

/// KEYS: +value. ARGV: +member. Returns the value (nil if absent).
///
/// The common cases (a miss, a policy that does not touch on reads, a plain stamp) finish before
/// [`LIB`] runs: defining its functions costs about as much as the bookkeeping itself.
const GET_FAST: &str = r#"
local v = redis.call('GET', KEYS[3])
if not v then
  if redis.call('ZREM', KEYS[1], ARGV[7]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2])
  end
  return false
end
if ARGV[2] == '0' then return v end
if ARGV[2] == '1' and ARGV[1] ~= '2' then
  redis.call('ZADD', KEYS[1], 'XX', redis.call('INCR', KEYS[2]), ARGV[7])
  return v
end
"#;

/// After [`GET_FAST`] and [`LIB`]: a touch that counts uses.
const GET_SLOW: &str = r#"
local old = redis.call('ZSCORE', IDX, ARGV[7])
if old then redis.call('ZADD', IDX, rescore(tonumber(old), ON_GET), ARGV[7]) end
return v
"#;

/// KEYS: +value. ARGV: +member, value, ttl ms (0: none). Returns the evicted members.
const SET: &str = r#"
local m, ttl = ARGV[7], tonumber(ARGV[9])
local old = redis.call('ZSCORE', IDX, m)
if old then
  redis.call('ZREM', IDX, m)
  -- A member whose value expired is a ghost: the key starts over as a new entry.
  if redis.call('EXISTS', KEYS[3]) == 1 then old = tonumber(old) else old = nil end
end
local evicted = {}
make_room(evicted)
if ttl > 0 then
  redis.call('SET', KEYS[3], ARGV[8], 'PX', ttl)
else
  redis.call('SET', KEYS[3], ARGV[8])
end
add(m, rescore(old, ON_SET), ttl)
return evicted
"#;

/// KEYS: +entry, clock. ARGV: +member. Returns {entry, clock} like the route cache's MGET.
/// Common cases finish before [`LIB`], as in [`GET_FAST`].
const ROUTE_READ_FAST: &str = r#"
local r = redis.call('MGET', KEYS[3], KEYS[4])
if not r[1] then
  if redis.call('ZREM', KEYS[1], ARGV[7]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2])
  end
  return r
end
if ARGV[2] == '1' and ARGV[1] ~= '2' then
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', redis.call('INCR', KEYS[2]), ARGV[7]) == 1 then
    return r
  end
elseif ARGV[2] == '0' then
  if redis.call('ZSCORE', KEYS[1], ARGV[7]) then return r end
end
"#;

/// After [`ROUTE_READ_FAST`] and [`LIB`]: a touch that counts, or an entry to index.
const ROUTE_READ_SLOW: &str = r#"
local m = ARGV[7]
local old = redis.call('ZSCORE', IDX, m)
if old then
  if ON_GET ~= 0 then redis.call('ZADD', IDX, rescore(tonumber(old), ON_GET), m) end
else
  -- Stored but not indexed (its record failed): index it now, as its set would have.
  make_room({})
  local t = redis.call('PTTL', KEYS[3])
  add(m, rescore(nil, ON_SET), t > 0 and t or 0)
end
return r
"#;

/// KEYS: +entry (just written). ARGV: +member, ttl ms. Returns the evicted members.
const ROUTE_RECORD: &str = r#"
local m, ttl = ARGV[7], tonumber(ARGV[8])
local old = redis.call('ZSCORE', IDX, m)
if old then redis.call('ZREM', IDX, m) end
if redis.call('EXISTS', KEYS[3]) == 0 then
  -- Invalidated since it was written.
  drained()
  return {}
end
local evicted = {}
make_room(evicted)
add(m, rescore(old and tonumber(old), ON_SET), ttl)
return evicted
"#;

/// KEYS: index, counter, value. ARGV: member. Returns whether a value was removed.
const DELETE: &str = r#"
local n = redis.call('UNLINK', KEYS[3])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
return n
"#;

/// KEYS: index, counter. ARGV: highest first (0/1), value prefix. Returns the live members, next
/// victim first, and drops the ghosts.
const KEYS_SCRIPT: &str = r#"
local ms = redis.call(ARGV[1] == '1' and 'ZREVRANGE' or 'ZRANGE', KEYS[1], 0, -1)
local live, gone = {}, {}
for _, m in ipairs(ms) do
  if redis.call('EXISTS', ARGV[2] .. m) == 1 then live[#live + 1] = m else gone[#gone + 1] = m end
end
for i = 1, #gone, 1000 do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
end
if #gone > 0 and redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return live
"#;

/// KEYS: index, counter. ARGV: value prefix, batch. Removes up to a batch of entries; returns
/// {values removed, members left}.
const CLEAR: &str = r#"
local ms = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local n = 0
for _, m in ipairs(ms) do n = n + redis.call('UNLINK', ARGV[1] .. m) end
if #ms > 0 then redis.call('ZREM', KEYS[1], unpack(ms)) end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[2]) end
return {n, left}
"#;

const CLEAR_BATCH: usize = 1000;

struct Scripts {
    get: redis::Script,
    set: redis::Script,
    route_read: redis::Script,
    route_record: redis::Script,
    delete: redis::Script,
    keys: redis::Script,
    clear: redis::Script,
}

fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        get: redis::Script::new(&format!("{GET_FAST}{LIB}{GET_SLOW}")),
        set: redis::Script::new(&format!("{LIB}{SET}")),
        route_read: redis::Script::new(&format!("{ROUTE_READ_FAST}{LIB}{ROUTE_READ_SLOW}")),
        route_record: redis::Script::new(&format!("{LIB}{ROUTE_RECORD}")),
        delete: redis::Script::new(DELETE),
        keys: redis::Script::new(KEYS_SCRIPT),
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

/// Adds the keys and arguments [`LIB`] reads.
fn policy_args(inv: &mut redis::ScriptInvocation<'_>, space: &Space, spec: &Spec) {
    inv.key(&space.index)
        .key(&space.seq)
        .arg(touch_code(spec.scoring.on_set))
        .arg(touch_code(spec.scoring.on_get))
        .arg(high(spec))
        .arg(spec.capacity)
        .arg(spec.stamp_bits)
        .arg(&space.value_prefix);
}

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| (d.as_millis() as u64).max(1))
}

pub(super) async fn get(
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

pub(super) async fn set(
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

pub(super) async fn delete(
    store: &ValkeyStore,
    space: &Space,
    key: &str,
) -> Result<bool, StoreError> {
    let mut inv = scripts().delete.prepare_invoke();
    inv.key(&space.index)
        .key(&space.seq)
        .key(space.value(key))
        .arg(key);
    let n: u64 = store.run(async |c| inv.invoke_async(c).await).await?;
    Ok(n > 0)
}

pub(super) async fn len(store: &ValkeyStore, space: &Space) -> Result<usize, StoreError> {
    store
        .run(async |c| redis::cmd("ZCARD").arg(&space.index).query_async(c).await)
        .await
}

pub(super) async fn keys(
    store: &ValkeyStore,
    space: &Space,
    spec: Spec,
) -> Result<Vec<String>, StoreError> {
    let mut inv = scripts().keys.prepare_invoke();
    inv.key(&space.index)
        .key(&space.seq)
        .arg(high(&spec))
        .arg(&space.value_prefix);
    store.run(async |c| inv.invoke_async(c).await).await
}

pub(super) async fn clear(store: &ValkeyStore, space: &Space) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    let mut rounds_left: Option<u64> = None;
    loop {
        let mut inv = scripts().clear.prepare_invoke();
        inv.key(&space.index)
            .key(&space.seq)
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

pub(super) async fn route_read(
    store: &ValkeyStore,
    keys: &KeySpace,
    space: &Space,
    key: &str,
    spec: Spec,
) -> Result<Lookup, StoreError> {
    let mut inv = scripts().route_read.prepare_invoke();
    policy_args(&mut inv, space, &spec);
    inv.key(keys.entry(key)).key(keys.clock()).arg(key);
    let (value, clock): (Option<Bytes>, Option<u64>) =
        store.run(async |c| inv.invoke_async(c).await).await?;
    Ok(Lookup {
        value,
        clock: clock.unwrap_or(0),
    })
}

pub(super) async fn route_record(
    store: &ValkeyStore,
    space: &Space,
    key: &str,
    ttl: Duration,
    spec: Spec,
) -> Result<Vec<String>, StoreError> {
    let mut inv = scripts().route_record.prepare_invoke();
    policy_args(&mut inv, space, &spec);
    inv.key(space.value(key)).arg(key).arg(ttl_ms(Some(ttl)));
    store.run(async |c| inv.invoke_async(c).await).await
}
