-- The namespace's invalidation clock (`KeySpace::clock`) and its origin
-- (`KeySpace::clock_origin`): the same rules as `State::advance` and `State::lost` in
-- src/store/memory/mod.rs (read there why).
--
-- advance(clock, origin): moves the clock past its last value and to at least the server's time
-- in microseconds; a clock created here (its key was missing) starts its origin there. Returns
-- the new value as a string: a Lua number would be sent to the server in exponent form.
local function advance(clock, origin)
  local last = redis.call('GET', clock)
  local t = redis.call('TIME')
  local c = math.max((tonumber(last) or 0) + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  local s = string.format('%.0f', c)
  redis.call('SET', clock, s)
  if not last or redis.call('EXISTS', origin) == 0 then redis.call('SET', origin, s) end
  return s
end
-- The clock and its origin (nil when unknown), for `lost`.
local function clock_state(clock, origin)
  return tonumber(redis.call('GET', clock)) or 0, tonumber(redis.call('GET', origin))
end
-- Whether the store lost state since a fill read clock value `since`: its clock is behind that
-- value (restarted empty, failed over to a replica that lagged) or began again after it.
local function lost(since, c, o)
  return since > c or (o ~= nil and since < o)
end
