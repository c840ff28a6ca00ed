-- KEYS: +entry (just written). ARGV: +member, ttl ms. Returns the evicted members.
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
