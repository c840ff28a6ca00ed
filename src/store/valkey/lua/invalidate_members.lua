-- After [`FORGET`]. KEYS: the route index, its counter, its expiry index. ARGV: entry prefix,
-- then the store keys of entries a pattern invalidation just unlinked. Removes their members.
local prefix, members = ARGV[1], {}
for i = 2, #ARGV do
  local k = ARGV[i]
  if k:sub(1, #prefix) == prefix then members[#members + 1] = k:sub(#prefix + 1) end
end
return forget(KEYS[1], KEYS[2], KEYS[3], members)
