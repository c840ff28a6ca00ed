-- Shared by the scripts that read a bounded namespace's expiry index: a sorted set of the
-- members whose values have a TTL, scored by when they expire (server ms), a subset of the
-- index's members.
local NOW
-- The server's clock in ms, read once per script (and only by scripts that need it).
local function now()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end
-- The expiry index's bound for "expired by now" (exclusive).
local function due()
  return string.format('(%d', now())
end
-- Drops up to `limit` members of index `idx` whose expiry in `exp` has passed. Returns how many.
local function trim(idx, exp, limit)
  local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', due(), 'LIMIT', 0, limit)
  if #dead > 0 then
    redis.call('ZREM', idx, unpack(dead))
    redis.call('ZREM', exp, unpack(dead))
  end
  return #dead
end
