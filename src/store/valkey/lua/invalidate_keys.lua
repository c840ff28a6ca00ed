-- After [`FORGET`]. KEYS: clock, the route index, its counter, its expiry index, then (entry,
-- tombstone) pairs. ARGV: tombstone ttl ms, then the keys (the route index's members).
local c, n = redis.call('INCR', KEYS[1]), 0
for i = 5, #KEYS, 2 do
  n = n + redis.call('UNLINK', KEYS[i])
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
end
local members = {}
for i = 2, #ARGV do members[#members + 1] = ARGV[i] end
forget(KEYS[2], KEYS[3], KEYS[4], members)
return n
