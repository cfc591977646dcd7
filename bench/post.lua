-- wrk script for scripts/bench: POSTs one fixed request body, with the headers
-- a real client of that protocol sends, and prints a machine-readable summary.
--
-- Configured through the environment because wrk hands script arguments only
-- to init(), and setting the request at load time keeps wrk on its static
-- (pre-formatted) request path — wrk must stay cheap next to the proxy it
-- measures.
--   BENCH_BODY   path of the request body file
--   BENCH_PROTO  "openai-chat" or "anthropic" (selects the auth headers)

local body_path = os.getenv("BENCH_BODY")
local proto = os.getenv("BENCH_PROTO") or "openai-chat"

local f = assert(io.open(body_path, "rb"), "BENCH_BODY: cannot open " .. tostring(body_path))
wrk.body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["User-Agent"] = "sluice-bench/1 (wrk)"
if proto == "anthropic" then
    wrk.headers["x-api-key"] = "sk-ant-bench-0000000000000000"
    wrk.headers["anthropic-version"] = "2023-06-01"
else
    wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000000"
end

-- One line, key=value, parsed by scripts/bench. Latencies are in µs.
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d bytes=%d rps=%.1f p50_us=%d p99_us=%d " ..
        "err_connect=%d err_read=%d err_write=%d err_timeout=%d err_status=%d\n",
        summary.requests, summary.duration, summary.bytes,
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(99),
        e.connect, e.read, e.write, e.timeout, e.status))
end
