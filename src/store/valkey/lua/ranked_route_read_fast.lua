-- KEYS: +entry, clock. ARGV: +member. Returns {entry, clock} like the route cache's MGET.
-- Common cases finish before [`LIB`], as in [`GET_FAST`].
local r = redis.call('MGET', KEYS[3], KEYS[4])
if not r[1] then
  if redis.call('ZREM', KEYS[1], ARGV[7]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2])
  end
  return r
end
if ARGV[2] == '1' and ARGV[1] ~= '2' then
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', redis.call('INCR', KEYS[2]), ARGV[7]) == 1 then
    return r
  end
elseif ARGV[2] == '0' then
  if redis.call('ZSCORE', KEYS[1], ARGV[7]) then return r end
end
