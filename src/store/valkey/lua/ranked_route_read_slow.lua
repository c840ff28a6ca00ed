-- After [`ROUTE_READ_FAST`], [`TRIM`], [`RANK`] and [`WRITE`]: a touch that counts, or an entry
-- to index.
local m = ARGV[8]
local old = redis.call('ZSCORE', IDX, m)
if old then
  if ON_GET ~= 0 then redis.call('ZADD', IDX, rescore(tonumber(old), ON_GET), m) end
else
  -- Stored but not indexed (its record failed): index it now, as its set would have.
  make_room({})
  local t = redis.call('PTTL', KEYS[4])
  add(m, rescore(nil, ON_SET), t > 0 and t or 0)
end
return r
