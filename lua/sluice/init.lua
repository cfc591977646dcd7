-- sluice — the public API for ops-written code: the config's on_request
-- hook, adapters and auth modules. `local sluice = require("sluice")`.
--
--   sluice.http(req)        -> status, headers (map, lower-case names), body | nil, err
--       req = { url, method?, headers? ({{name, value}...} or map), body? (string,
--               or a table sent as JSON), timeout? (seconds, default 10) }
--   sluice.sleep(seconds)
--   sluice.now()            -> wall-clock seconds (fractional)
--   sluice.monotonic()      -> seconds on a clock that never jumps
--   sluice.log(level, msg)  -- level: "debug" | "info" | "warn" | "error"
--   sluice.count(name, label_k?, label_v?) -- one more on a counter of /_sluice/metrics
--   sluice.json             -- the lossless JSON codec (DESIGN §9)
--   sluice.shared           -- the store shared by every worker thread:
--       get(key) -> value, ttl_left (0: never expires) | nil ; set(key, value, ttl?) ;
--       add(key, value, ttl?) -> true | false ; delete(key) ; incr(key, delta, ttl?) ;
--       keys(prefix, max?) -> { key... } (live keys with that prefix, at most max, default 1000)
--
-- http and sleep suspend the request until the answer or the timer is there,
-- which only the request phase can do: the host runs that phase in a
-- coroutine and registers it here (enter_request). Called anywhere else (a
-- streaming hook, config load time, a coroutine of the script's own) they
-- raise an error that says so, instead of yielding into the wrong place.
--
-- Inside the binary `sluice.core` (C) does the work. Under plain busted it
-- is missing: http/sleep raise, `shared` is the in-process store below, and
-- specs hand modules their own fakes.

local json = require("sluice.json")

local has_core, core = pcall(require, "sluice.core")
if not has_core then core = nil end

local type, pairs, error, tostring = type, pairs, error, tostring
local yield, running = coroutine.yield, coroutine.running

local M = { json = json }

-- The request coroutines currently alive (weak: a finished one just goes).
local request_threads = setmetatable({}, { __mode = "k" })

-- Called by sluice.host at the start of every request phase.
function M.enter_request()
    local co = running()
    if co then request_threads[co] = true end
end

local function need_request_phase(what)
    local co = running()
    if not co or not request_threads[co] then
        error("sluice." .. what .. " can only be called during the request phase " ..
              "(on_request, an adapter's request function, auth), not here", 3)
    end
    if not core then error("sluice." .. what .. " needs the sluice binary", 3) end
end

function M.in_request_phase()
    local co = running()
    return co ~= nil and request_threads[co] == true
end

function M.http(req)
    need_request_phase("http")
    if type(req) ~= "table" or type(req.url) ~= "string" then
        error("sluice.http: expected a table with a url", 2)
    end
    local r = req
    if type(req.body) == "table" then
        r = {}
        for k, v in pairs(req) do r[k] = v end
        r.body = json.encode(req.body)
        local h = {}
        local has_ct = false
        if req.headers then
            for k, v in pairs(req.headers) do
                local name = type(k) == "number" and v[1] or k
                if type(name) == "string" and name:lower() == "content-type" then has_ct = true end
                h[#h + 1] = type(k) == "number" and v or { k, v }
            end
        end
        if not has_ct then h[#h + 1] = { "content-type", "application/json" } end
        r.headers = h
    end
    return yield(core.HTTP, r)
end

-- sluice.redis: the worker's connection to the session store's Redis
-- (sessions.redis; core/redis.c). Every call is bounded by sessions.redis.timeout.
--   redis.pipeline({ { "GET", k }, { "PEXPIRE", k, 5000 } }) -> { reply... } | nil, err
--       (request phase only: it waits for the replies, one round trip)
--   redis.command("GET", k) -> reply | nil, err            (request phase only)
--   redis.send({ { "SET", k, v } }) -> true | nil, err      (any hook: does not wait)
--   redis.up() -> true while this process has a live connection
-- Replies: strings, numbers, false for nil, { err = "..." } for an error reply.
M.redis = {}

function M.redis.pipeline(cmds)
    need_request_phase("redis")
    return yield(core.REDIS, cmds)
end

function M.redis.command(...)
    local replies, err = M.redis.pipeline({ { ... } })
    if not replies then return nil, err end
    return replies[1]
end

function M.redis.send(cmds)
    if not core then return nil, "no core" end
    return core.redis_send(cmds)
end

function M.redis.up()
    return core ~= nil and core.redis_up() > 0
end

-- configure(nil): no connection (closes this worker's, if any).
function M.redis.configure(host, port, password, db, timeout)
    if not core then return false end
    return core.redis_configure(host, port, password, db, timeout)
end

function M.sleep(seconds)
    need_request_phase("sleep")
    yield(core.SLEEP, tonumber(seconds) or 0)
end

function M.now()
    if core then return core.now() end
    return os.time()
end

function M.monotonic()
    if core then return core.monotonic() end
    return os.clock()
end

-- One more on counter `name` of /_sluice/metrics, with one optional label
-- (a no-op without the core).
function M.count(name, label_k, label_v)
    if core then core.count(name, label_k, label_v) end
end

function M.log(level, msg)
    if core then return core.log(tostring(level), tostring(msg)) end
    io.stderr:write("[", tostring(level), "] ", tostring(msg), "\n")
end

-- ------------------------------------------------------------------ shared

-- A per-VM stand-in with the C store's API, used when sluice.shared is not
-- compiled in (plain busted, or a core without core/shared.c). It is only
-- shared by the coroutines of one worker.
local function local_store(clock)
    local values, expires = {}, {}
    local S = {}
    local function live(key)
        local e = expires[key]
        if e and e <= clock() then values[key], expires[key] = nil, nil end
        return values[key]
    end
    function S.get(key)
        local v = live(key)
        if v == nil then return nil end
        local e = expires[key]
        return v, e and (e - clock()) or 0
    end
    function S.set(key, value, ttl)
        values[key] = value
        expires[key] = (ttl and ttl > 0) and clock() + ttl or nil
        return true
    end
    function S.add(key, value, ttl)
        if live(key) ~= nil then return false, "exists" end
        S.set(key, value, ttl)
        return true
    end
    function S.delete(key)
        values[key], expires[key] = nil, nil
        return true
    end
    function S.incr(key, delta, ttl)
        local v = tonumber(live(key)) or 0
        v = v + (delta or 1)
        if values[key] == nil then S.set(key, v, ttl) else values[key] = v end
        return v
    end
    function S.keys(prefix, max)
        local out = {}
        for k in pairs(values) do
            if #out < (max or 1000) and k:sub(1, #prefix) == prefix and live(k) ~= nil then out[#out + 1] = k end
        end
        return out
    end
    function S.count()
        local n = 0
        for k in pairs(values) do if live(k) ~= nil then n = n + 1 end end
        return n
    end
    return S
end
M.local_store = local_store

local has_shared, shared = pcall(require, "sluice.shared")
M.shared = has_shared and shared or local_store(M.monotonic)
M.shared_is_local = not has_shared

return M
