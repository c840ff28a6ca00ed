-- After [`TRIM`], [`RANK`] and [`WRITE`]. KEYS: +value. ARGV: +member, value, ttl ms (0: none).
-- Returns the evicted members.
local m, ttl = ARGV[8], tonumber(ARGV[10])
trim_batch()
local old = redis.call('ZSCORE', IDX, m)
if old then
  redis.call('ZREM', IDX, m)
  -- A member whose value expired is a ghost: the key starts over as a new entry.
  if redis.call('EXISTS', KEYS[4]) == 1 then old = tonumber(old) else old = nil end
end
local evicted = {}
make_room(evicted)
if ttl > 0 then
  redis.call('SET', KEYS[4], ARGV[9], 'PX', ttl)
else
  redis.call('SET', KEYS[4], ARGV[9])
end
add(m, rescore(old, ON_SET), ttl)
return evicted
