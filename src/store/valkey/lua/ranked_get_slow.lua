-- After [`GET_FAST`] and [`LIB`]: a touch that counts uses.
local old = redis.call('ZSCORE', IDX, ARGV[7])
if old then redis.call('ZADD', IDX, rescore(tonumber(old), ON_GET), ARGV[7]) end
return v
