-- After [`TRIM`]. KEYS: index, counter, expiry index. ARGV: on_set, on_get (0 keep, 1 stamp,
-- 2 count), evict highest (0/1), capacity, stamp bits, value prefix, trim batch.
local IDX, SEQ, EXP = KEYS[1], KEYS[2], KEYS[3]
local ON_SET, ON_GET = tonumber(ARGV[1]), tonumber(ARGV[2])
local HIGH = ARGV[3] == '1'
local CAP = tonumber(ARGV[4])
local BITS = tonumber(ARGV[5])
local PREFIX = ARGV[6]
local TRIM = tonumber(ARGV[7])
local COUNTING = ON_SET == 2 or ON_GET == 2
local SB = 2 ^ BITS
local MAXC = 2 ^ (53 - BITS) - 1
-- Whether expired members may remain past what this script trimmed (unknown: true).
local MORE_DEAD = true

local function uses(score)
  if not COUNTING then return 1 end
  return math.floor(score / SB)
end
local function rank(c, st)
  if not COUNTING then return st end
  return c * SB + st
end
-- Gives every member a small stamp in rank order (order within a use count is what matters).
local function renumber()
  local all = redis.call('ZRANGE', IDX, 0, -1, 'WITHSCORES')
  local n = 0
  for i = 1, #all, 2 do
    n = n + 1
    redis.call('ZADD', IDX, rank(uses(tonumber(all[i + 1])), n), all[i])
  end
  return n
end
local function stamp()
  local s = redis.call('INCR', SEQ)
  if COUNTING and s >= SB then
    s = renumber() + 1
    redis.call('SET', SEQ, s, 'KEEPTTL')
  end
  return s
end
-- The rank after `touch` of an entry ranked `old` (nil: a new entry).
local function rescore(old, touch)
  if not old then return rank(1, stamp()) end
  if touch == 0 then return old end
  local c = uses(old)
  if touch == 2 and c < MAXC then c = c + 1 end
  return rank(c, stamp())
end
-- The start of every write: drops up to a batch of expired members.
local function trim_batch()
  MORE_DEAD = trim(IDX, EXP, PREFIX, TRIM) >= TRIM
end
-- Evicts until there is room for one more. An expired member goes before any live one (looked
-- up in the expiry index, at most a batch more of them); ghosts (values already gone) popped
-- from the victim end are dropped silently.
local function make_room(evicted)
  local pop = HIGH and 'ZPOPMAX' or 'ZPOPMIN'
  local looks = TRIM
  while redis.call('ZCARD', IDX) >= CAP do
    if MORE_DEAD and looks > 0 and trim(IDX, EXP, PREFIX, 1) == 1 then
      looks = looks - 1
    else
      MORE_DEAD = false
      local p = redis.call(pop, IDX)
      if #p == 0 then break end
      redis.call('ZREM', EXP, p[1])
      if redis.call('UNLINK', PREFIX .. p[1]) == 1 then evicted[#evicted + 1] = p[1] end
    end
  end
end
-- The index, counter and expiry index live as long as the longest-lived entry (forever if one
-- has no TTL).
local function keep_alive(ttl, fresh)
  if ttl <= 0 then
    redis.call('PERSIST', IDX)
    redis.call('PERSIST', SEQ)
    redis.call('PERSIST', EXP)
  else
    local t = fresh and -2 or redis.call('PTTL', IDX)
    if fresh or (t >= 0 and t < ttl) then
      redis.call('PEXPIRE', IDX, ttl)
      redis.call('PEXPIRE', SEQ, ttl)
      redis.call('PEXPIRE', EXP, ttl)
    elseif t > 0 and redis.call('ZCARD', EXP) == 1 then
      -- The expiry index was just created: it lives as long as the index.
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
  else
    redis.call('ZREM', EXP, m)
  end
  keep_alive(ttl, fresh)
end
