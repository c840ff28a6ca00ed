-- After [`GLOB`] and [`CLOCK`]. KEYS: entry, key tombstone, patterns, clock, clock origin, tag
-- tombstones..., tag sets... ARGV: value, ttl ms, since (-1: unguarded), tag count
local since, ntags = tonumber(ARGV[3]), tonumber(ARGV[4])
if since >= 0 then
  if lost(since, clock_state(KEYS[4], KEYS[5])) then return 0 end
  local t = redis.call('GET', KEYS[2])
  if t and tonumber(t) > since then return 0 end
  for i = 1, ntags do
    local tt = redis.call('GET', KEYS[5 + i])
    if tt and tonumber(tt) > since then return 0 end
  end
  local pats = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[3], '+inf')
  if #pats > 0 then
    local now = now_ms()
    for _, m in ipairs(pats) do
      local exp, pat = m:match('^(%d+)|(.*)$')
      if exp and tonumber(exp) > now and glob_match(pat, KEYS[1]) then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 1, ntags do
  local set = KEYS[5 + ntags + i]
  redis.call('SADD', set, KEYS[1])
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
  for _, m in ipairs(redis.call('SRANDMEMBER', set, 2)) do
    if redis.call('EXISTS', m) == 0 then redis.call('SREM', set, m) end
  end
end
return 1
