-- wrk script for `bench/run.py` scenario a: durable submits.
--   BENCH_TARGETS="127.0.0.1:8001,127.0.0.1:8002"  web processes; wrk's threads
--                                                   are spread over them in turn
--   BENCH_BODY='{"prompt": "..."}'                  the POST /api/v1/infer body
-- Counts responses by status (202 accepted, 503/429 refused, anything else an
-- error) and prints one line "BENCH_JSON {...}" that bench/wrk.py parses.

wrk.method = "POST"
wrk.path = "/api/v1/infer"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"

statuses = {}
local threads = {}
local turn = 0

function setup(thread)
  local targets = {}
  for target in string.gmatch(os.getenv("BENCH_TARGETS") or "", "[^,]+") do
    table.insert(targets, target)
  end
  if #targets > 0 then
    local host, port = targets[turn % #targets + 1]:match("([^:]+):(%d+)")
    thread.addr = wrk.lookup(host, port)[1]
    turn = turn + 1
  end
  table.insert(threads, thread)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(totals) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, '
      .. '"timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout))
end
