-- wrk script of scripts/bench --sweep: GET /item/{id} with id uniform in 1..N, so every key of
-- a BENCH_KEYS=N server is exercised (bench_server preloads them all).
--
--   wrk -t2 -c64 -d10s -s tools/bench/random-ids.lua http://127.0.0.1:PORT/ -- N
--
-- N is the first script argument (after `--`), else the BENCH_KEYS environment variable, else 1.
-- The request text is built once per thread around the id (what wrk.format would produce), so
-- a request costs wrk one random number and one string concatenation; no `response` callback
-- (it would make wrk parse every response's headers into Lua tables).

local n = 1
local head, tail

local threads = 0
function setup(thread)
  -- A seed per thread, or every thread would ask for the same sequence.
  threads = threads + 1
  thread:set("seed", os.time() * 1000 + threads * 7919)
end

function init(args)
  n = tonumber(args[1] or os.getenv("BENCH_KEYS") or "1") or 1
  if n < 1 then n = 1 end
  n = math.floor(n)
  math.randomseed(seed or os.time())
  -- wrk.format gives "GET /item/0 HTTP/1.1\r\nHost: ...\r\n\r\n": split it at the id.
  local req = wrk.format("GET", "/item/0")
  head, tail = req:match("^(GET /item/)0( HTTP/1%.1\r\n.*)$")
  if not head then error("unexpected wrk.format output: " .. req) end
end

function request()
  return head .. math.random(n) .. tail
end
