-- KEYS: +entry, clock. ARGV: +member. Returns {entry, clock} like the route cache's MGET.
-- Common cases finish before [`RANK`], as in [`GET_FAST`].
local r = redis.call('MGET', KEYS[4], KEYS[5])
if not r[1] then
  if redis.call('ZREM', KEYS[1], ARGV[8]) == 1 then
    redis.call('ZREM', KEYS[3], ARGV[8])
    if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
  end
  return r
end
if ARGV[2] == '1' and ARGV[1] ~= '2' then
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', redis.call('INCR', KEYS[2]), ARGV[8]) == 1 then
    return r
  end
elseif ARGV[2] == '0' then
  if redis.call('ZSCORE', KEYS[1], ARGV[8]) then return r end
end
