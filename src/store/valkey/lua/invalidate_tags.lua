-- KEYS: clock, then (tag set, tombstone) pairs. ARGV: tombstone ttl ms.
local c, n = redis.call('INCR', KEYS[1]), 0
for i = 2, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
  local members = redis.call('SMEMBERS', KEYS[i])
  for j = 1, #members, 1000 do
    n = n + redis.call('UNLINK', unpack(members, j, math.min(j + 999, #members)))
  end
  redis.call('UNLINK', KEYS[i])
end
return n
