-- `make bench`'s wrk summary: no per-response hook (it would cost wrk CPU and lower every row), only
-- done(), which writes requests, socket errors, non-2xx/3xx answers and latency percentiles as JSON to
-- $BENCH_WRK_OUT.

local out = os.getenv("BENCH_WRK_OUT")

function done(summary, latency, requests)
   local e = summary.errors
   local json = string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "non_2xx": %d, ' ..
      '"latency_ms": {"p50": %.3f, "p90": %.3f, "p99": %.3f, "max": %.3f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      latency.max / 1000)
   local file = assert(io.open(out, "w"))
   file:write(json)
   file:close()
end
