-- After [`GLOB`] and [`CLOCK`]. KEYS: patterns, clock, clock origin, then per write: entry, key
-- tombstone, its tag tombstones, its tag sets. ARGV: per write: value, ttl ms, since (-1:
-- unguarded), tag count. Each write is guarded and tagged exactly as fill.lua does it for one
-- entry. Returns one 1 (stored) or 0 (superseded) per write.
local out, pats, now = {}, nil, nil
local clock, origin = clock_state(KEYS[2], KEYS[3])
local k, a = 4, 1
while a <= #ARGV do
  local value, ttl, since, ntags = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local entry, tomb = KEYS[k], KEYS[k + 1]
  local ok = true
  if since >= 0 then
    if lost(since, clock, origin) then ok = false end
    local t = redis.call('GET', tomb)
    if t and tonumber(t) > since then ok = false end
    for i = 1, ntags do
      if ok then
        local tt = redis.call('GET', KEYS[k + 1 + i])
        if tt and tonumber(tt) > since then ok = false end
      end
    end
    if ok then
      if pats == nil then pats = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'); now = now_ms() end
      for p = 1, #pats, 2 do
        local exp, pat = pats[p]:match('^(%d+)|(.*)$')
        if tonumber(pats[p + 1]) > since and exp and tonumber(exp) > now and glob_match(pat, entry) then ok = false; break end
      end
    end
  end
  if ok then
    redis.call('SET', entry, value, 'PX', ttl)
    for i = 1, ntags do
      local set = KEYS[k + 1 + ntags + i]
      redis.call('SADD', set, entry)
      if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
      for _, m in ipairs(redis.call('SRANDMEMBER', set, 2)) do
        if redis.call('EXISTS', m) == 0 then redis.call('SREM', set, m) end
      end
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  k = k + 2 + 2 * ntags
  a = a + 4
end
return out
