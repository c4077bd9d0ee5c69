-- wrk script: POST pre-built CDS Hooks bodies in turn, each with its own pre-signed JWT.
--
-- wrk -s bench/cycle.lua URL -- BODIES TOKENS PATH NTHREADS MODE
--   BODIES  one JSON request body per line (cycled)
--   TOKENS  one JWT per line; thread i uses lines i, i+N, i+2N... (never the same jti twice)
--   MODE    "unique": a thread stops when it runs out of tokens (counted as exhausted);
--           "reuse":  tokens are cycled (the baseline ignores them)
-- done() prints one JSON line prefixed with "BENCH ".

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local bodies, tokens = {}, {}
local path, mode
local i_body, i_tok = 0, 0
local headers = {}
exhausted = 0
bad = 0
degraded = 0
first_bad = ""

function init(args)
  local bodies_file, tokens_file = args[1], args[2]
  path, mode = args[3], args[5]
  local nthreads = tonumber(args[4])
  for line in io.lines(bodies_file) do
    if #line > 0 then table.insert(bodies, line) end
  end
  local n = 0
  for line in io.lines(tokens_file) do
    if #line > 0 then
      if n % nthreads == id then table.insert(tokens, line) end
      n = n + 1
    end
  end
  i_body = id % #bodies
  headers["Content-Type"] = "application/json"
  headers["Accept"] = "application/json"
end

function request()
  i_tok = i_tok + 1
  local token = tokens[i_tok]
  if token == nil then
    if mode == "unique" then
      exhausted = 1
      wrk.thread:stop()
      token = tokens[1]
    else
      i_tok = 1
      token = tokens[1]
    end
  end
  i_body = i_body % #bodies + 1
  headers["Authorization"] = "Bearer " .. token
  return wrk.format("POST", path, headers, bodies[i_body])
end

function response(status, hdrs, body)
  if status ~= 200 then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 300) end
  elseif string.find(body, "could not be read", 1, true) then
    degraded = degraded + 1 -- a card saying some data could not be fetched
  end
end

local function esc(s)
  return (string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

function done(summary, latency, requests)
  local ex, nbad, ndeg, fb = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    ex = ex + (t:get("exhausted") or 0)
    nbad = nbad + (t:get("bad") or 0)
    ndeg = ndeg + (t:get("degraded") or 0)
    if fb == "" then fb = t:get("first_bad") or "" end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"timeouts":%d,"non2xx":%d,"bad":%d,"degraded":%d,"exhausted":%d,"first_bad":"%s"}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.timeout, e.status, nbad, ndeg, ex, esc(fb)))
end
