-- After [`GLOB`] and [`CLOCK`]. KEYS: clock, clock origin, patterns. ARGV: tombstone ttl ms,
-- full pattern.
local c = advance(KEYS[1], KEYS[2])
local now, ttl = now_ms(), tonumber(ARGV[1])
for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, 31)) do
  local exp = tonumber(m:match('^(%d+)|'))
  if exp and exp <= now then redis.call('ZREM', KEYS[3], m) else break end
end
redis.call('ZADD', KEYS[3], c, (now + ttl) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[3], ttl)
return c
