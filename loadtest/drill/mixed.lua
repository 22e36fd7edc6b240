-- The drills' HTTP load for wrk: POST $DRILL_WRK_POST (body $DRILL_WRK_BODY, JSON) and GET $DRILL_WRK_GET in
-- turn on every connection; POSTs only when $DRILL_WRK_GET is empty.
-- Each request carries X-Request-ID drill-<post|get>-<thread>-<n>; nginx echoes that header on every
-- response, its own errors included, so response() counts statuses per method. done() writes the counts,
-- wrk's socket errors and its latency percentiles as JSON to $DRILL_WRK_OUT.
-- $DRILL_WRK_DELAY_MS > 0 paces each connection (wrk's delay() hook): at most connections / delay req/s.

local out = os.getenv("DRILL_WRK_OUT")
local pace = tonumber(os.getenv("DRILL_WRK_DELAY_MS") or "0") or 0
local post_path = os.getenv("DRILL_WRK_POST") or "/api/echo"
local post_body = os.getenv("DRILL_WRK_BODY") or '{"text":"drill"}'
local get_path = os.getenv("DRILL_WRK_GET") or ""
local threads = {}
local thread_id = 0
local sent = 0

counts = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

function init(args)
   thread_id = wrk.thread:get("thread_id") or 0
end

function request()
   sent = sent + 1
   if sent % 2 == 0 or get_path == "" then
      return wrk.format("POST", post_path, {
         ["Content-Type"] = "application/json",
         ["X-Request-ID"] = "drill-post-" .. thread_id .. "-" .. sent,
      }, post_body)
   end
   return wrk.format("GET", get_path, {["X-Request-ID"] = "drill-get-" .. thread_id .. "-" .. sent})
end

function response(status, headers, body)
   local id = headers["X-Request-ID"] or headers["x-request-id"] or ""
   local method = string.upper(string.match(id, "^drill%-(%a+)%-") or "unknown")
   local key = method .. " " .. status
   counts[key] = (counts[key] or 0) + 1
end

if pace > 0 then
   function delay()
      return pace
   end
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      for key, n in pairs(thread:get("counts") or {}) do
         merged[key] = (merged[key] or 0) + n
      end
   end
   local statuses = {}
   for key, n in pairs(merged) do
      table.insert(statuses, string.format('"%s": %d', key, n))
   end
   local e = summary.errors
   local json = string.format(
      '{"responses": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"statuses": {%s}, "latency_ms": {"p50": %.3f, "p99": %.3f, "max": %.3f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      table.concat(statuses, ", "),
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000)
   if out then
      local file = assert(io.open(out, "w"))
      file:write(json)
      file:close()
   else
      io.write(json)
   end
end
