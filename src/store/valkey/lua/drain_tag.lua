-- After [`FORGET`] and [`TAG_STEP`]: one more step of a tag invalidation. KEYS: the route index,
-- its counter, its expiry index, the tag set, its drain. ARGV: entry prefix, batch, move still to
-- do (0/1). Returns {entries removed, work left 0/1, move still to do 0/1}.
local n, _, more, rename = step(KEYS[4], KEYS[5], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[1], KEYS[1], KEYS[2], KEYS[3])
return {n, more and 1 or 0, rename and 1 or 0}
