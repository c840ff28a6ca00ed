-- Shared by every script that looks at a bounded namespace's expiry index (a sorted set of the
-- members whose values have a TTL, scored by when they expire, in server milliseconds).
local NOW
-- The server's clock in ms, read once per script (and only by scripts that need it).
local function now()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end
-- The expiry index's bound for "expired by now" (exclusive, as Valkey expires a key once the
-- clock is past its expiry).
local function due()
  return string.format('(%d', now())
end
-- Drops up to `limit` members of index `idx` whose expiry in `exp` has passed. A value that
-- was rewritten behind the index's back (a route entry stored by another path) and still lives
-- keeps its member, with its real expiry. Returns how many expired members it looked at.
local function trim(idx, exp, prefix, limit)
  local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', due(), 'LIMIT', 0, limit)
  local gone = {}
  for _, m in ipairs(dead) do
    local t = redis.call('PTTL', prefix .. m)
    if t == -2 then
      gone[#gone + 1] = m
    elseif t == -1 then
      redis.call('ZREM', exp, m)
    else
      redis.call('ZADD', exp, now() + math.max(t, 1), m)
    end
  end
  if #gone > 0 then
    redis.call('ZREM', idx, unpack(gone))
    redis.call('ZREM', exp, unpack(gone))
  end
  return #dead
end
