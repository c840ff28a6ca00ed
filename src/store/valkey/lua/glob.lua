-- glob_match(pattern, key): whether SCAN MATCH pattern selects key. A port of the crate's
-- src/store/glob.rs (itself Valkey's stringmatchlen): read that file for the rules. Byte by byte,
-- iterative; only the last '*' is ever retried. tests/glob.rs runs it against SCAN MATCH.
local function within(a, b, x)
  if a > b then a, b = b, a end
  return x >= a and x <= b
end
local function s8(b) if b >= 128 then return b - 256 end return b end
local function glob_match(pat, key)
  local m, n = #pat, #key
  if pat == '*' then return true end
  if n == 0 then return m == 0 end
  local byte = string.byte
  local p, t, sp, st, groups = 1, 1, 0, 0, 0
  while t <= n do
    local c, k, ok = byte(pat, p), byte(key, t), false
    if c == 42 then -- '*'
      while p < m and byte(pat, p + 1) == 42 do p = p + 1 end
      if p == m then return true end
      groups = groups + 1
      if groups > 1000 then return false end
      sp, st, p = p, t, p + 1
      ok = nil -- nothing consumed
    elseif c == 63 then ok = true; p = p + 1 -- '?'
    elseif c == 91 then -- '[': q walks the class body; hu / hs: hit reading bytes unsigned / signed
      local q, hu, hs = p + 1, false, false
      local neg = byte(pat, q) == 94
      if neg then q = q + 1 end
      while true do
        local d = byte(pat, q)
        if d == 92 and q < m then q = q + 1; if byte(pat, q) == k then hu = true; hs = true end
        elseif d == 93 then break
        elseif d == nil then q = q - 1; break -- never closed: ends with the pattern
        elseif q + 2 <= m and byte(pat, q + 1) == 45 then
          local e = byte(pat, q + 2)
          if within(d, e, k) then hu = true end
          if within(s8(d), s8(e), s8(k)) then hs = true end
          q = q + 2
        elseif d == k then hu = true; hs = true end
        q = q + 1
      end
      ok = (hu ~= neg) or (hs ~= neg)
      p = q + 1
    elseif c == 92 then -- '\\'
      if p < m then p = p + 1 end
      ok = byte(pat, p) == k; p = p + 1
    elseif c ~= nil then ok = c == k; p = p + 1
    end
    if ok then t = t + 1
    elseif ok == false then
      if sp > 0 and st < n then st = st + 1; t = st; p = sp + 1 else return false end
    end
  end
  while p <= m and byte(pat, p) == 42 do p = p + 1 end
  return p > m
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
