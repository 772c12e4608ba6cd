-- wrk script: POST the JSON in BODY_FILE. With VARY_ID=1 the body is a template whose "__ID__"
-- is replaced by a counter, so single assignments go to many customers (as in production).
local file = assert(io.open(os.getenv("BODY_FILE"), "r"))
local template = file:read("*a")
file:close()
local vary = os.getenv("VARY_ID") == "1"
-- RUN_ID is new for every wrk run: wrk's Lua starts each run with the same random sequence, so
-- without it a run would resend an earlier run's ids (retries, not new customers or events)
local run = os.getenv("RUN_ID") or ""
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = template

-- IDEMPOTENCY=1: every request carries an Idempotency-Key of its own (a new request, not a retry)
local keyed = os.getenv("IDEMPOTENCY") == "1"

request = function()
  counter = counter + 1
  local body = template
  if vary then
    body = template:gsub("__ID__", run .. tostring(counter) .. "-" .. tostring(math.random(1, 1000000000)))
  end
  if keyed then
    local headers = {["Content-Type"] = "application/json"}
    headers["Idempotency-Key"] = run .. "-" .. tostring(counter) .. "-" .. tostring(math.random(1, 1000000000))
    return wrk.format(nil, nil, headers, body)
  end
  return wrk.format(nil, nil, nil, body)
end
