-- After [`TRIM`], [`RANK`] and [`WRITE`]. KEYS: +entry (just written). ARGV: +member. Returns
-- the evicted members.
local m = ARGV[8]
-- An expired member is dropped, so a key rewritten after its entry expired starts over as a new
-- entry; past a batch, this key is looked up on its own.
trim_batch()
if MORE_DEAD then
  local e = redis.call('ZSCORE', EXP, m)
  if e and tonumber(e) < now() then
    redis.call('ZREM', IDX, m)
    redis.call('ZREM', EXP, m)
  end
end
local old = redis.call('ZSCORE', IDX, m)
if old then redis.call('ZREM', IDX, m) end
-- The entry's own remaining lifetime: what the expiry index records.
local t = redis.call('PTTL', KEYS[4])
if t == -2 then
  -- Invalidated since it was written.
  if EXP_LIVE then redis.call('ZREM', EXP, m) end
  drained()
  return {}
end
local evicted = {}
make_room(evicted)
add(m, rescore(old and tonumber(old), ON_SET), t > 0 and t or 0)
return evicted
