-- After [`FORGET`]. KEYS: index, counter, expiry index, value. ARGV: member. Returns whether a
-- value was removed.
local n = redis.call('UNLINK', KEYS[4])
forget(KEYS[1], KEYS[2], KEYS[3], {ARGV[1]})
return n
