-- KEYS: clock, then (entry, tombstone) pairs. ARGV: tombstone ttl ms.
local c, n = redis.call('INCR', KEYS[1]), 0
for i = 2, #KEYS, 2 do
  n = n + redis.call('UNLINK', KEYS[i])
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
end
return n
