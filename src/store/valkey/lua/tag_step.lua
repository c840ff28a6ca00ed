-- After [`FORGET`]. A tag invalidation removes the entries of a tag in bounded steps: its set is
-- moved to the tag's drain (`KeySpace::tag_drain`) and the drain is emptied a batch per step, so
-- no step holds the server for more than a batch of `UNLINK`s, and members a fill adds to the
-- tag's new set meanwhile (fills the tombstone allowed) are not waited for.
--
-- step(set, drain, budget, rename, prefix, idx, seq, exp): removes up to `budget` members of
-- `drain` (their entries, and their members of the route index `idx`, `seq`, `exp`); when the
-- drain is empty and `rename` is set, moves `set` there first (a drain left by an earlier attempt
-- is emptied before). Returns: entries removed, members handled, whether work is left, whether
-- the move is still to do.
local function step(set, drain, budget, rename, prefix, idx, seq, exp)
  local removed, handled = 0, 0
  while budget > 0 do
    if redis.call('EXISTS', drain) == 0 then
      if rename and redis.call('EXISTS', set) == 1 then
        redis.call('RENAME', set, drain)
        rename = false
      else
        return removed, handled, false, false
      end
    end
    local ms = redis.call('SPOP', drain, budget)
    if #ms == 0 then break end
    removed = removed + redis.call('UNLINK', unpack(ms))
    local members = {}
    for _, m in ipairs(ms) do
      if m:sub(1, #prefix) == prefix then members[#members + 1] = m:sub(#prefix + 1) end
    end
    forget(idx, seq, exp, members)
    handled, budget = handled + #ms, budget - #ms
  end
  local more = redis.call('EXISTS', drain) == 1 or (rename and redis.call('EXISTS', set) == 1)
  return removed, handled, more, rename and more
end
