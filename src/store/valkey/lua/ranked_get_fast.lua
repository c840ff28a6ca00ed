-- KEYS: +value. ARGV: +member. Returns the value (nil if absent).
--
-- The common cases (a miss, a policy that does not touch on reads, a plain stamp) finish before
-- [`RANK`] runs: defining its functions costs about as much as the bookkeeping itself.
local v = redis.call('GET', KEYS[4])
if not v then
  if redis.call('ZREM', KEYS[1], ARGV[8]) == 1 then
    redis.call('ZREM', KEYS[3], ARGV[8])
    if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
  end
  return false
end
if ARGV[2] == '0' then return v end
if ARGV[2] == '1' and ARGV[1] ~= '2' then
  redis.call('ZADD', KEYS[1], 'XX', redis.call('INCR', KEYS[2]), ARGV[8])
  return v
end
