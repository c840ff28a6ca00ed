-- KEYS: index, counter. ARGV: highest first (0/1), value prefix. Returns the live members, next
-- victim first, and drops the ghosts.
local ms = redis.call(ARGV[1] == '1' and 'ZREVRANGE' or 'ZRANGE', KEYS[1], 0, -1)
local live, gone = {}, {}
for _, m in ipairs(ms) do
  if redis.call('EXISTS', ARGV[2] .. m) == 1 then live[#live + 1] = m else gone[#gone + 1] = m end
end
for i = 1, #gone, 1000 do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
end
if #gone > 0 and redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return live
