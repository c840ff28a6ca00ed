-- After [`TRIM`]. KEYS: index, expiry index. Returns how many live entries the index holds: its
-- members less the expired ones still indexed (every member of the expiry index is one of the
-- index's). Read-only.
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return 0 end
return math.max(0, n - redis.call('ZCOUNT', KEYS[2], '-inf', due()))
