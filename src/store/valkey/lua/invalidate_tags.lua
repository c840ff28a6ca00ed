-- After [`CLOCK`], [`FORGET`] and [`TAG_STEP`]: the first step of a tag invalidation. KEYS:
-- clock, clock origin, the route index, its counter, its expiry index, then (tag set, tombstone,
-- drain) triples. ARGV: tombstone ttl ms, entry prefix, batch.
-- Advances the clock and leaves every tag's tombstone first (from here on no fill that read an
-- older clock is stored under these tags), then removes up to a batch of members. Returns
-- {entries removed, then (tag number, move still to do 0/1) for each tag with work left}:
-- `drain_tag.lua` continues those.
local c = advance(KEYS[1], KEYS[2])
for i = 6, #KEYS, 3 do
  redis.call('SET', KEYS[i + 1], c, 'PX', ARGV[1])
end
local out, budget = {0}, tonumber(ARGV[3])
for i = 6, #KEYS, 3 do
  local n, h, more, rename = step(KEYS[i], KEYS[i + 2], budget, true, ARGV[2], KEYS[3], KEYS[4], KEYS[5])
  out[1], budget = out[1] + n, budget - h
  if more then
    out[#out + 1] = (i - 3) / 3
    out[#out + 1] = rename and 1 or 0
  end
end
return out
