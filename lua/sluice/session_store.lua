-- sluice.session_store — where sluice.sticky keeps sessions, key cool-downs
-- and key/supplier use stamps: Redis when `sessions.store = "redis"` (shared
-- by every sluice instance using it), else the in-process store every
-- worker shares (sluice.shared). With Redis down, refusing or slower than
-- sessions.redis.timeout, a request uses the in-process store instead
-- (counted in sluice_session_store_fallback_total; core/redis.c logs the
-- transitions and drives sluice_redis_connections and /_sluice/health).
--
-- A request opens a store once, naming everything it may read: with Redis
-- that is one round trip (MGET of the names plus PEXPIRE of the session
-- entry: the idle TTL refreshed on use), and later reads come from that
-- snapshot. Writes never wait: they are sent and forgotten (the finish hook,
-- which writes the binding, cannot wait anyway).
--
--   M.configure(cfg, rt)                         -- at VM start: this worker's Redis connection
--   M.round(cfg, rt) -> round | nil              -- the request's one Redis round trip (below)
--   M.open(cfg, names, refresh, rt, round?) -> store  -- request phase (runs the round: waits once)
--   M.memory(cfg, rt) -> store                   -- the in-process store alone
--   store:get(name) -> value | nil ; store:set(name, value, ttl?) ; store:delete(name)
--   store.kind = "redis" | "memory"
-- Names are relative ("sess:<hash>"); the store adds sessions.prefix.

local type, tostring, tonumber, pcall, floor = type, tostring, tonumber, pcall, math.floor

local M = {}

local rt_of = require("sluice.runtime")

-- ------------------------------------------------------------------ memory

local Memory = {}
Memory.__index = Memory

function Memory:get(name)
    local v = self.shared.get(self.prefix .. name)
    return v
end

function Memory:set(name, value, ttl)
    self.shared.set(self.prefix .. name, value, ttl)
end

function Memory:delete(name)
    self.shared.delete(self.prefix .. name)
end

function M.memory(cfg, rt)
    rt = rt_of(rt)
    return setmetatable({ kind = "memory", shared = rt.shared, prefix = "sluice:" }, Memory)
end

-- ------------------------------------------------------------------ redis

local Redis = {}
Redis.__index = Redis

function Redis:get(name)
    local v = self.snap[name]
    if v == nil and not self.fetched[name] then
        return nil -- not named when the store was opened: unknown here, treated as absent
    end
    return v or nil
end

-- Seconds as the whole milliseconds Redis's PX / PEXPIRE take.
local function ms(ttl) return tostring(floor(ttl * 1000 + 0.5)) end
M.ms = ms

-- Every write also goes to the in-process store: if Redis goes away, this
-- instance carries on from what it last saw, and /_sluice/sessions can list
-- the sessions this instance served.
function Redis:send(cmd, name, value, ttl)
    self.rt.redis.send({ cmd })
    if value == nil then self.fallback:delete(name) else self.fallback:set(name, value, ttl) end
end

function Redis:set(name, value, ttl)
    self.snap[name], self.fetched[name] = value, true
    local k = self.prefix .. name
    local cmd = (ttl and ttl > 0) and { "SET", k, value, "PX", ms(ttl) } or { "SET", k, value }
    self:send(cmd, name, value, ttl)
end

function Redis:delete(name)
    self.snap[name], self.fetched[name] = false, true
    self:send({ "DEL", self.prefix .. name }, name, nil)
end

function M.configure(cfg, rt)
    local s = cfg.sessions
    rt = rt_of(rt)
    if s.store ~= "redis" then
        rt.redis.configure(nil) -- a reload away from Redis closes the connection
        return
    end
    local r = s.redis
    rt.redis.configure(r.host, r.port, r.password, r.db, r.timeout)
end

-- ------------------------------------------------------------------ the request's round

-- Everything a request reads from Redis goes in one pipeline, whoever
-- needs it (the session here, a tenant's counters in sluice.tenants): one
-- round trip per request. Readers add their commands, the first to need
-- the answers runs it, each reads its own replies.
local Round = {}
Round.__index = Round

-- nil without Redis.
function M.round(cfg, rt)
    if cfg.sessions.store ~= "redis" then return nil end
    return setmetatable({ rt = rt_of(rt), cmds = {}, ran = false }, Round)
end

-- Queues cmds; returns the handle replies() takes.
function Round:add(cmds)
    assert(not self.ran, "session_store: a round that has run takes no more commands")
    local at = #self.cmds
    for i = 1, #cmds do self.cmds[at + i] = cmds[i] end
    return { at = at, n = #cmds }
end

-- Sends what was queued and waits, once; later calls do nothing.
function Round:run()
    if self.ran then return end
    self.ran = true
    if #self.cmds == 0 then return end
    local ok, replies = pcall(self.rt.redis.pipeline, self.cmds)
    if ok and type(replies) == "table" then self.all = replies end
end

-- The replies to one add(), in order; nil when Redis did not answer.
function Round:replies(h)
    local all = self.all
    if not all then return nil end
    local out = {}
    for i = 1, h.n do out[i] = all[h.at + i] end
    return out
end

-- round: the request's (M.round); none, and the store makes its own.
function M.open(cfg, names, refresh, rt, round)
    rt = rt_of(rt)
    local s = cfg.sessions
    if s.store ~= "redis" then return M.memory(cfg, rt) end
    local prefix = s.prefix
    local mget = { "MGET" }
    for i = 1, #names do mget[i + 1] = prefix .. names[i] end
    local cmds = { mget }
    if refresh then cmds[2] = { "PEXPIRE", prefix .. refresh, ms(s.ttl) } end
    round = round or M.round(cfg, rt)
    local h = round:add(cmds)
    round:run()
    local replies = round:replies(h)
    local values = replies and replies[1]
    if type(values) ~= "table" or values.err then
        -- core/redis.c logs the connection's ups and downs; this counts the requests
        rt.count("sluice_session_store_fallback_total")
        return M.memory(cfg, rt)
    end
    local snap, fetched = {}, {}
    for i = 1, #names do
        snap[names[i]] = values[i] or false
        fetched[names[i]] = true
    end
    return setmetatable({ kind = "redis", rt = rt, prefix = prefix, snap = snap, fetched = fetched,
                          fallback = M.memory(cfg, rt) }, Redis)
end

-- ------------------------------------------------------------------ managed-auth tokens

-- The runtime sluice.auth.managed runs with when sessions use Redis: its
-- `shared` keeps tokens in this process's store and in Redis, so a token
-- one instance fetched serves every instance, and its fetch lock is a
-- Redis SET NX with a TTL, so concurrent fetches across instances are
-- single flight. Reads look in the process first (no round trip while a
-- local copy is fresh), then Redis, copying what they find with its TTL.
-- Anything Redis cannot answer in time is done in the process alone
-- (per-process fetching, as without Redis).
function M.token_runtime(cfg, rt)
    rt = rt_of(rt)
    local s = cfg.sessions
    if s.store ~= "redis" then return nil end
    local local_shared, redis, prefix = rt.shared, rt.redis, s.prefix .. "token:"
    local shared = {}
    function shared.get(key)
        local v, ttl = local_shared.get(key)
        if v ~= nil then return v, ttl end
        local ok, r = pcall(redis.pipeline, { { "GET", prefix .. key }, { "PTTL", prefix .. key } })
        if not ok or type(r) ~= "table" or type(r[1]) ~= "string" then return nil end
        local left = tonumber(r[2]) or -1
        if left == -2 then return nil end -- expired between the two
        -- a lock or a failure note belongs to another flight: read, never copied
        if not (key:find(":lock$") or key:find(":error$")) then
            local_shared.set(key, r[1], left > 0 and left / 1000 or nil)
        end
        return r[1], left > 0 and left / 1000 or 0
    end
    function shared.set(key, value, ttl)
        local_shared.set(key, value, ttl)
        local cmd = (ttl and ttl > 0) and { "SET", prefix .. key, value, "PX", ms(ttl) } or { "SET", prefix .. key, value }
        redis.send({ cmd })
        return true
    end
    function shared.add(key, value, ttl)
        local ok, r = pcall(redis.pipeline, { { "SET", prefix .. key, value, "NX", "PX", ms(ttl or 60) } })
        if ok and type(r) == "table" and r[1] ~= nil and type(r[1]) ~= "table" then
            if r[1] == false then return false, "exists" end
            local_shared.set(key, value, ttl)
            return true
        end
        return local_shared.add(key, value, ttl) -- Redis cannot say: this process decides alone
    end
    function shared.delete(key)
        local_shared.delete(key)
        redis.send({ { "DEL", prefix .. key } })
        return true
    end
    return { http = rt.http, sleep = rt.sleep, monotonic = rt.monotonic, shared = shared }
end

return M
