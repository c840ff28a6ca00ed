-- After [`TRIM`] and [`RANK`]: what writes need (and a route read that indexes an entry).
-- Whether expired members may remain past what this script trimmed (unknown: true).
local MORE_DEAD = true
-- Whether the expiry index existed when this script started, and whether the trim may have
-- emptied (so deleted) it. Unknown: the safe answers.
local EXP_LIVE, TRIMMED = true, true

-- The start of every write: drops up to a batch of expired members. A namespace whose earliest
-- expiry is still to come (or that has no expiry index) costs one `ZRANGE`.
local function trim_batch()
  local first = redis.call('ZRANGE', EXP, 0, 0, 'WITHSCORES')
  EXP_LIVE, TRIMMED, MORE_DEAD = #first > 0, false, false
  if EXP_LIVE and tonumber(first[2]) < now() then
    TRIMMED = true
    MORE_DEAD = trim(IDX, EXP, TRIM) >= TRIM
  end
end
-- Evicts until there is room for one more. An expired member goes before any live one (looked
-- up in the expiry index, at most a batch more of them); ghosts (values already gone) popped
-- from the victim end are dropped silently.
local function make_room(evicted)
  local pop = HIGH and 'ZPOPMAX' or 'ZPOPMIN'
  local looks = TRIM
  while redis.call('ZCARD', IDX) >= CAP do
    if MORE_DEAD and looks > 0 and trim(IDX, EXP, 1) == 1 then
      looks = looks - 1
    else
      MORE_DEAD = false
      local p = redis.call(pop, IDX)
      if #p == 0 then break end
      if EXP_LIVE then redis.call('ZREM', EXP, p[1]) end
      if redis.call('UNLINK', PREFIX .. p[1]) == 1 then evicted[#evicted + 1] = p[1] end
    end
  end
end
-- The index, counter and expiry index live as long as the longest-lived entry (forever if one
-- has no TTL). `exp_new`: the expiry index may have just been created (it has no TTL yet).
local function keep_alive(ttl, fresh, exp_new)
  if ttl <= 0 then
    redis.call('PERSIST', IDX)
    redis.call('PERSIST', SEQ)
    if EXP_LIVE then redis.call('PERSIST', EXP) end
  else
    local t = fresh and -2 or redis.call('PTTL', IDX)
    if fresh or (t >= 0 and t < ttl) then
      redis.call('PEXPIRE', IDX, ttl)
      redis.call('PEXPIRE', SEQ, ttl)
      redis.call('PEXPIRE', EXP, ttl)
    elseif t > 0 and exp_new then
      redis.call('PEXPIRE', EXP, t)
    end
  end
end
local function drained()
  if redis.call('EXISTS', IDX) == 0 then redis.call('DEL', SEQ, EXP) end
end
-- Indexes `m` at `score`; its value lives `ttl` ms (0: forever).
local function add(m, score, ttl)
  local fresh = redis.call('EXISTS', IDX) == 0
  redis.call('ZADD', IDX, score, m)
  if ttl > 0 then
    redis.call('ZADD', EXP, now() + ttl, m)
  elseif EXP_LIVE then
    redis.call('ZREM', EXP, m)
  end
  keep_alive(ttl, fresh, ttl > 0 and (TRIMMED or not EXP_LIVE))
end
