-- After [`CLOCK`] and [`FORGET`]. KEYS: clock, clock origin, the route index, its counter, its
-- expiry index, then (entry, tombstone) pairs. ARGV: tombstone ttl ms, then the keys (the route
-- index's members).
local c, n = advance(KEYS[1], KEYS[2]), 0
for i = 6, #KEYS, 2 do
  n = n + redis.call('UNLINK', KEYS[i])
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
end
local members = {}
for i = 2, #ARGV do members[#members + 1] = ARGV[i] end
forget(KEYS[3], KEYS[4], KEYS[5], members)
return n
