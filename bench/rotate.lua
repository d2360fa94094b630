-- wrk script: each thread walks its own share of a URL-path list in order, so a list of
-- unique paths gives one request per path (cold renders) and a short list cycles (cache hits).
-- Usage: wrk -t T ... -s rotate.lua http://host:port -- PATHS_FILE T
-- done() prints one line "BENCH_JSON {...}" for bench/run.py to parse.

local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local paths = {}
local position = 0

function init(args)
  local file = assert(io.open(args[1], "r"), "cannot open paths file " .. tostring(args[1]))
  local threads = tonumber(args[2]) or 1
  local index = 0
  for line in file:lines() do
    -- round-robin split: thread k takes lines k, k+T, k+2T, ... so no two threads share a path
    if line ~= "" then
      if index % threads == id then
        paths[#paths + 1] = line
      end
      index = index + 1
    end
  end
  file:close()
  assert(#paths > 0, "thread " .. id .. " got no paths")
end

-- (wrk calls thread 0's request() once to check the script, so its first path goes unused)
function request()
  position = position % #paths + 1
  return wrk.format("GET", paths[position])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"timeouts": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
