-- After [`FORGET`]. KEYS: clock, the route index, its counter, its expiry index, then (tag set,
-- tombstone) pairs. ARGV: tombstone ttl ms, entry prefix.
local c, n = redis.call('INCR', KEYS[1]), 0
local prefix, members = ARGV[2], {}
for i = 5, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
  local ms = redis.call('SMEMBERS', KEYS[i])
  for j = 1, #ms, 1000 do
    n = n + redis.call('UNLINK', unpack(ms, j, math.min(j + 999, #ms)))
  end
  for _, m in ipairs(ms) do
    if m:sub(1, #prefix) == prefix then members[#members + 1] = m:sub(#prefix + 1) end
  end
  redis.call('UNLINK', KEYS[i])
end
forget(KEYS[2], KEYS[3], KEYS[4], members)
return n
