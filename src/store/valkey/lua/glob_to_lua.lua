local function glob_to_lua(g)
  local out, i, n = {'^'}, 1, #g
  local function lit(c) if c:match('%w') then return c end return '%' .. c end
  while i <= n do
    local c = g:sub(i, i)
    if c == '*' then out[#out + 1] = '.*'
    elseif c == '?' then out[#out + 1] = '.'
    elseif c == '\\' and i < n then i = i + 1; out[#out + 1] = lit(g:sub(i, i))
    elseif c == '[' then
      local j, cls = i + 1, {'['}
      if g:sub(j, j) == '^' then cls[#cls + 1] = '^'; j = j + 1 end
      while j <= n and g:sub(j, j) ~= ']' do
        local d = g:sub(j, j)
        if d == '\\' and j < n then j = j + 1; cls[#cls + 1] = lit(g:sub(j, j))
        elseif d == '-' then cls[#cls + 1] = '-'
        else cls[#cls + 1] = lit(d) end
        j = j + 1
      end
      if j > n then out[#out + 1] = '%[' else cls[#cls + 1] = ']'; out[#out + 1] = table.concat(cls); i = j end
    else out[#out + 1] = lit(c) end
    i = i + 1
  end
  out[#out + 1] = '$'
  return table.concat(out)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
