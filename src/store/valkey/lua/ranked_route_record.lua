-- KEYS: +entry (just written). ARGV: +member. Returns the evicted members.
local m = ARGV[8]
-- The entry this write replaced had expired: the key starts over as a new entry (the trim
-- below would keep its rank, since its value lives again).
local e = redis.call('ZSCORE', EXP, m)
if e and tonumber(e) < now() then
  redis.call('ZREM', IDX, m)
  redis.call('ZREM', EXP, m)
end
trim_batch()
local old = redis.call('ZSCORE', IDX, m)
if old then redis.call('ZREM', IDX, m) end
-- The entry's own remaining lifetime: what the expiry index records.
local t = redis.call('PTTL', KEYS[4])
if t == -2 then
  -- Invalidated since it was written.
  redis.call('ZREM', EXP, m)
  drained()
  return {}
end
local evicted = {}
make_room(evicted)
add(m, rescore(old and tonumber(old), ON_SET), t > 0 and t or 0)
return evicted
