-- After [`GET_FAST`] and [`RANK`]: a touch that counts uses.
local old = redis.call('ZSCORE', IDX, ARGV[8])
if old then redis.call('ZADD', IDX, rescore(tonumber(old), ON_GET), ARGV[8]) end
return v
