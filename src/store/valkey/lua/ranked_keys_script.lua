-- After [`FORGET`]. KEYS: index, counter, expiry index. ARGV: highest first (0/1), value
-- prefix. Returns the live members, next victim first, and drops the ghosts.
local ms = redis.call(ARGV[1] == '1' and 'ZREVRANGE' or 'ZRANGE', KEYS[1], 0, -1)
local live, gone = {}, {}
for _, m in ipairs(ms) do
  if redis.call('EXISTS', ARGV[2] .. m) == 1 then live[#live + 1] = m else gone[#gone + 1] = m end
end
forget(KEYS[1], KEYS[2], KEYS[3], gone)
return live
