-- KEYS: index, counter, expiry index. ARGV: on_set, on_get (0 keep, 1 stamp, 2 count), evict
-- highest (0/1), capacity, stamp bits, value prefix, trim batch. Ranks; what reads need.
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
