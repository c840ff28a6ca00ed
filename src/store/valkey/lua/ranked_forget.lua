-- Removes `members` (a table) from a bounded namespace's index `idx` and expiry index `exp`, in
-- batches; drops the counter `seq` and the expiry index once the index is empty. Returns how
-- many members left the index. On a namespace that is not bounded, a few no-op commands.
local function forget(idx, seq, exp, members)
  local n = 0
  for i = 1, #members, 1000 do
    local j = math.min(i + 999, #members)
    n = n + redis.call('ZREM', idx, unpack(members, i, j))
    redis.call('ZREM', exp, unpack(members, i, j))
  end
  if n > 0 and redis.call('EXISTS', idx) == 0 then redis.call('DEL', seq, exp) end
  return n
end
