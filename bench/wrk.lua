-- wrk requests for one endpoint (BENCH_ENDPOINT), each for a random seeded todo and its owner.
-- bench/__main__.py seeds todo n (1..BENCH_TODOS) for user (n - 1) % BENCH_USERS + 1, with
-- ids BENCH_TODO_PREFIX and BENCH_USER_PREFIX followed by n as 12 digits.
local endpoint = os.getenv("BENCH_ENDPOINT")
local todos = tonumber(os.getenv("BENCH_TODOS"))
local users = tonumber(os.getenv("BENCH_USERS"))
local todo_prefix = os.getenv("BENCH_TODO_PREFIX")
local user_prefix = os.getenv("BENCH_USER_PREFIX")

-- BENCH_TOKENS, when set, names a file of bearer tokens: line n for user n.
local tokens = {}
local tokens_file = os.getenv("BENCH_TOKENS")
if tokens_file and tokens_file ~= "" then
   for line in io.lines(tokens_file) do
      tokens[#tokens + 1] = line
   end
end

function init(args)
   math.randomseed(os.time())
end

local function caller(user)
   if #tokens > 0 then
      return { ["Authorization"] = "Bearer " .. tokens[user] }
   end
   return { ["X-User-ID"] = string.format("%s%012d", user_prefix, user) }
end

function request()
   local n = math.random(todos)
   local todo = string.format("/api/v1/todos/%s%012d", todo_prefix, n)
   local headers = caller((n - 1) % users + 1)
   if endpoint == "trivial" then
      return wrk.format("GET", "/healthz")
   elseif endpoint == "get" then
      return wrk.format("GET", todo, headers)
   elseif endpoint == "list" then
      return wrk.format("GET", "/api/v1/todos?limit=50", headers)
   elseif endpoint == "create" then
      headers["Content-Type"] = "application/json"
      return wrk.format("POST", "/api/v1/todos", headers, '{"title": "Benchmark", "description": "under load"}')
   elseif endpoint == "patch" then
      headers["Content-Type"] = "application/json"
      return wrk.format("PATCH", todo, headers, '{"is_completed": true}')
   end
   error("unknown BENCH_ENDPOINT " .. tostring(endpoint))
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      errors.connect + errors.read + errors.write + errors.timeout + errors.status))
end
