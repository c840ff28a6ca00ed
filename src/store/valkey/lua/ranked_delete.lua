-- KEYS: index, counter, value. ARGV: member. Returns whether a value was removed.
local n = redis.call('UNLINK', KEYS[3])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
return n
