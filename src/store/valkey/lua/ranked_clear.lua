-- KEYS: index, counter, expiry index. ARGV: value prefix, batch. Removes up to a batch of
-- entries; returns {values removed, members left}.
local ms = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local n = 0
for _, m in ipairs(ms) do n = n + redis.call('UNLINK', ARGV[1] .. m) end
if #ms > 0 then
  redis.call('ZREM', KEYS[1], unpack(ms))
  redis.call('ZREM', KEYS[3], unpack(ms))
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
return {n, left}
