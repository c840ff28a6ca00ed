-- KEYS: clock, patterns. ARGV: tombstone ttl ms, full pattern.
local c = redis.call('INCR', KEYS[1])
local now, ttl = now_ms(), tonumber(ARGV[1])
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, 31)) do
  local exp = tonumber(m:match('^(%d+)|'))
  if exp and exp <= now then redis.call('ZREM', KEYS[2], m) else break end
end
redis.call('ZADD', KEYS[2], c, (now + ttl) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
return c
