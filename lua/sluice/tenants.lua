-- sluice.tenants — gateway keys that name a tenant, and the limits they
-- carry. A `keys` entry written as a table (`{ id = "alice", key = ..., models,
-- services, rate, budget, expires }`) makes its `id` the tenant: the history's
-- `key` column, the access log, the usage view, the session scope and the
-- metrics say `alice` instead of `key#N`. Plain string keys carry no tenant
-- logic at all: the host only asks this module about a request whose key
-- is a table (ctx.tenant_key), so they pay one table check.
--
-- Limits are fixed windows. A counter's name holds its window's index
-- (`tenant:alice:requests_per_minute:29447310`), so a new window starts at
-- zero without anyone resetting anything, and its TTL lets the store drop
-- it once the window is over. The window of a "per minute" limit is
-- `rate.window` seconds (60 by default), the day and month of a budget are
-- the UTC calendar day and month unless `budget.day_window` /
-- `budget.month_window` give seconds (tests use 2 s windows; nobody sleeps
-- for minutes). Retry-After is the time left in the window that refused.
--
-- Requests are counted when admitted (an atomic increment that is taken
-- back when it went past the limit, so concurrent requests never get more
-- than the limit between them). Tokens (input + output, as recorded) and
-- cost (sluice.prices) are charged when the request is over — the log hook,
-- where the usage is known; a request in flight is never cut, so one
-- admitted under the limit may end above it and the next one is refused.
--
-- Counters live in sluice.shared (every worker of the process) and, with
-- `sessions.store = "redis"`, in Redis too (every instance). Admission reads
-- Redis in the request's one round trip, pipelined with the session's
-- reads (INCR of the request counters, GET of the token and cost ones);
-- charges are sent and forgotten. The process's own
-- counters mirror what Redis last said, so /_sluice/keys (which cannot wait
-- on Redis) shows it, and when Redis is down or slow the process carries
-- on counting alone from there (sluice_tenant_counters_fallback_total counts
-- those requests; core/redis.c logs the connection going down and up) —
-- a request never fails because Redis did.
--
--   T.check_entry(k, field, check, services) -> normalised key entry (config time;
--       check: sluice.config's validators { bad, only_fields, positive })
--   T.expired(tk, now) -> nil | refusal                 (401)
--   T.refuse_service(tk, service) -> nil | refusal      (403)
--   T.refuse_model(tk, model) -> nil | refusal          (403)
--   T.admission(cfg, tk, rt, round) -> a; a:verdict() -> nil | refusal
--                                                       (429; waits once on Redis, with the session's reads)
--   T.admit(cfg, tk, rt) -> nil | refusal               (the same on its own round trip)
--   T.charge(cfg, tk, fields, rt)                       (log hook: tokens and cost)
--   T.filter_models(tk, ids) -> ids the key may use
--   T.report(cfg, rt) -> the document of GET /_sluice/keys
-- A refusal is { status, type, message, limit?, retry_after? }.

local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local floor, ceil, fmt, concat = math.floor, math.ceil, string.format, table.concat

local session_store = require("sluice.session_store")
local ms = session_store.ms

local T = {}

T.ID_MAX = 64
T.SHA256_HEX = 64

local rt_of = require("sluice.runtime")
-- sluice.config requires this module at load, so its glob matcher is
-- looked up on first use (once per VM).
local glob_match_fn
local function glob_match(g, s)
    glob_match_fn = glob_match_fn or require("sluice.config").glob_match
    return glob_match_fn(g, s)
end

-- ------------------------------------------------------------------ calendar

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
-- days_from_civil): the calendar windows and `expires` need UTC midnights,
-- and os.time() reads its table as local time.
local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local doy = floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end
T.days_from_civil = days_from_civil

local function days_in_month(y, m)
    if m == 12 then return 31 end
    return days_from_civil(y, m + 1, 1) - days_from_civil(y, m, 1)
end

-- "2027-01-01" (that UTC midnight) or "2027-01-01T12:00:00Z" -> unix seconds.
function T.parse_time(s)
    if type(s) ~= "string" then return nil end
    local y, m, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
    if not y then return nil end
    y, m, d = tonumber(y), tonumber(m), tonumber(d)
    if m < 1 or m > 12 or d < 1 or d > days_in_month(y, m) then return nil end
    local hh, mm, ss = 0, 0, 0
    if rest ~= "" then
        hh, mm, ss = rest:match("^[T ](%d%d):(%d%d):(%d%d)Z$")
        hh, mm, ss = tonumber(hh), tonumber(mm), tonumber(ss)
        if not hh or hh > 23 or mm > 59 or ss > 59 then return nil end
    end
    return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

local function utc(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(t)) end

-- The window `now` is in, for a window of `w` seconds or "day" / "month"
-- (UTC calendar): its index and the time it ends.
function T.window(w, now)
    if type(w) == "number" then
        local i = floor(now / w)
        return i, (i + 1) * w
    end
    local day = floor(now / 86400)
    if w == "day" then return day, (day + 1) * 86400 end
    local t = os.date("!*t", floor(now))
    local ny, nm = t.year, t.month + 1
    if nm == 13 then ny, nm = ny + 1, 1 end
    return t.year * 12 + t.month - 1, days_from_civil(ny, nm, 1) * 86400
end

-- ------------------------------------------------------------------ config

local ENTRY_FIELDS = { id = true, key = true, key_sha256 = true, models = true, services = true,
                       rate = true, budget = true, expires = true }
local RATE_FIELDS = { requests_per_minute = true, tokens_per_minute = true, window = true }
local BUDGET_FIELDS = { usd_per_day = true, usd_per_month = true, day_window = true, month_window = true }

local function string_list(v, field, bad)
    if type(v) ~= "table" then bad(field, "expected a list of strings, got %s", type(v)) end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n ~= #v or n == 0 then bad(field, "expected a non-empty list of strings") end
    for i = 1, #v do
        if type(v[i]) ~= "string" or v[i] == "" then
            bad(fmt("%s[%d]", field, i), "expected a non-empty string, got %s", tostring(v[i]))
        end
    end
    return v
end

-- One limit: what it counts ("requests", "tokens", "usd"), the most the
-- window allows, the window.
local function limit(name, counts, max, window)
    return { name = name, counts = counts, max = max, window = window }
end

-- A `keys` entry written as a table, checked (errors name the field, e.g.
-- keys[2].rate.requests_per_minute) and normalised. `services` is the set
-- of known service names.
function T.check_entry(k, field, check, services)
    local bad, only, positive = check.bad, check.only_fields, check.positive
    only(k, ENTRY_FIELDS, field)
    local id = k.id
    if type(id) ~= "string" or id == "" then bad(field .. ".id", "expected a non-empty string") end
    if #id > T.ID_MAX or not id:match("^[%w][%w%._%-]*$") then
        -- the id is a history value, a metrics label and part of counter
        -- names (`:` separates their parts): a tame charset keeps all three simple
        bad(field .. ".id", "expected at most %d letters, digits, '.', '_' or '-' (starting with a letter or digit)",
            T.ID_MAX)
    end
    local out = { id = id, limits = {} }
    if (k.key == nil) == (k.key_sha256 == nil) then
        bad(field, "give exactly one of key or key_sha256 (if it comes from os.getenv, is the variable set?)")
    end
    if k.key ~= nil then
        if type(k.key) ~= "string" or #k.key < 8 then bad(field .. ".key", "expected a string of at least 8 characters") end
        out.key = k.key
    else
        local h = k.key_sha256
        if type(h) ~= "string" or #h ~= T.SHA256_HEX or h:find("[^%x]") then
            bad(field .. ".key_sha256", "expected the SHA-256 of the key as 64 hex digits")
        end
        out.key_sha256 = h:lower()
    end
    if k.models ~= nil then
        local list = string_list(k.models, field .. ".models", bad)
        out.models, out.model_globs = {}, {}
        for i = 1, #list do
            out.models[i] = list[i]
            out.model_globs[i] = list[i]:lower()
        end
    end
    if k.services ~= nil then
        local list = string_list(k.services, field .. ".services", bad)
        out.services, out.service_set = {}, {}
        for i = 1, #list do
            if not services[list[i]] then
                local known = {}
                for s in pairs(services) do known[#known + 1] = s end
                table.sort(known)
                bad(fmt("%s.services[%d]", field, i), "unknown service %s (known: %s)", list[i], concat(known, ", "))
            end
            out.services[i], out.service_set[list[i]] = list[i], true
        end
    end
    if k.rate ~= nil then
        local f = field .. ".rate"
        if type(k.rate) ~= "table" then bad(f, "expected a table, got %s", type(k.rate)) end
        only(k.rate, RATE_FIELDS, f)
        local w = k.rate.window == nil and 60 or positive(k.rate.window, f .. ".window")
        local r = k.rate
        if r.requests_per_minute ~= nil then
            out.limits[#out.limits + 1] = limit("requests_per_minute", "requests",
                positive(r.requests_per_minute, f .. ".requests_per_minute", true), w)
        end
        if r.tokens_per_minute ~= nil then
            out.limits[#out.limits + 1] = limit("tokens_per_minute", "tokens",
                positive(r.tokens_per_minute, f .. ".tokens_per_minute", true), w)
        end
    end
    if k.budget ~= nil then
        local f = field .. ".budget"
        local b = k.budget
        if type(b) ~= "table" then bad(f, "expected a table, got %s", type(b)) end
        only(b, BUDGET_FIELDS, f)
        local dw = b.day_window == nil and "day" or positive(b.day_window, f .. ".day_window")
        local mw = b.month_window == nil and "month" or positive(b.month_window, f .. ".month_window")
        if b.usd_per_day ~= nil then
            out.limits[#out.limits + 1] = limit("usd_per_day", "usd", positive(b.usd_per_day, f .. ".usd_per_day"), dw)
        end
        if b.usd_per_month ~= nil then
            out.limits[#out.limits + 1] = limit("usd_per_month", "usd",
                positive(b.usd_per_month, f .. ".usd_per_month"), mw)
        end
    end
    if k.expires ~= nil then
        out.expires = T.parse_time(k.expires)
        if not out.expires then
            bad(field .. ".expires", "expected a UTC date \"YYYY-MM-DD\" or \"YYYY-MM-DDTHH:MM:SSZ\", got %s",
                tostring(k.expires))
        end
        out.expires_text = k.expires
    end
    -- Whether the log hook has anything to charge (tokens or cost).
    for _, l in ipairs(out.limits) do
        if l.counts ~= "requests" then out.charges = true end
    end
    return out
end

-- What the config view (/_sluice/config) shows of an entry: never the key
-- nor its hash.
function T.redacted(tk)
    local rate, budget
    for _, l in ipairs(tk.limits) do
        if l.counts == "usd" then
            budget = budget or {}
            budget[l.name] = l.max
            budget[l.name == "usd_per_day" and "day_window" or "month_window"] = l.window
        else
            rate = rate or {}
            rate[l.name], rate.window = l.max, l.window
        end
    end
    return { id = tk.id, [tk.key and "key" or "key_sha256"] = "[redacted]", models = tk.models,
             services = tk.services, rate = rate, budget = budget, expires = tk.expires_text }
end

-- ------------------------------------------------------------------ refusals before any counting

local function refusal(status, etype, message, lim, retry_after)
    return { status = status, type = etype, message = message, limit = lim, retry_after = retry_after }
end

function T.expired(tk, now)
    if tk.expires and now >= tk.expires then
        return refusal(401, "authentication", fmt("gateway key %s expired at %s", tk.id, utc(tk.expires)))
    end
    return nil
end

function T.refuse_service(tk, service)
    local set = tk.service_set
    if set and not set[service] then
        return refusal(403, "permission", fmt("gateway key %s may not use service %s (allowed: %s)",
            tk.id, tostring(service), concat(tk.services, ", ")))
    end
    return nil
end

local function model_allowed(tk, model)
    local globs = tk.model_globs
    if not globs then return true end
    local m = model:lower()
    for i = 1, #globs do
        if glob_match(globs[i], m) then return true end
    end
    return false
end

function T.refuse_model(tk, model)
    if not model_allowed(tk, model) then
        return refusal(403, "permission", fmt("gateway key %s may not use model %s (allowed: %s)",
            tk.id, model, concat(tk.models, ", ")))
    end
    return nil
end

-- A models list (GET /v1/models) with only what the key may use.
function T.filter_models(tk, ids)
    if not tk.model_globs then return ids end
    local out = {}
    for i = 1, #ids do
        if model_allowed(tk, ids[i]) then out[#out + 1] = ids[i] end
    end
    return out
end

-- ------------------------------------------------------------------ counters

-- The counter of limit `l` for `now`: its name (relative: the process store
-- uses it as it is, Redis with sessions.prefix before it), when its window
-- ends, and the TTL that keeps it a little past that end.
local function counter(tk, l, now)
    local idx, reset = T.window(l.window, now)
    return "tenant:" .. tk.id .. ":" .. l.name .. ":" .. fmt("%d", idx), reset, reset - now + 5
end

local function redis_on(cfg) return cfg.sessions.store == "redis" end

local function fmt_amount(l, v)
    if l.counts == "usd" then return fmt("$%.4g", v) end
    return fmt("%d", v)
end

local function over(tk, l, now, reset)
    local per = type(l.window) == "number" and (l.window == 60 and "" or fmt(" (a window of %g s)", l.window)) or ""
    local wait = reset - now
    local retry_after = ceil(wait)
    if retry_after < 1 then retry_after = 1 end
    return refusal(429, "rate_limit",
        fmt("gateway key %s reached its %s limit of %s%s; it resets in %d s, at %s",
            tk.id, l.name, fmt_amount(l, l.max), per, retry_after, utc(reset)), l.name, retry_after)
end

-- The process's own counting: used when sessions are in memory, and when
-- Redis cannot answer.
local function admit_local(tk, now, shared)
    -- tokens and cost first: a request refused for them must not use up a request
    for _, l in ipairs(tk.limits) do
        if l.counts ~= "requests" then
            local name, reset = counter(tk, l, now)
            if (tonumber((shared.get(name))) or 0) >= l.max then return over(tk, l, now, reset) end
        end
    end
    local taken = {}
    for _, l in ipairs(tk.limits) do
        if l.counts == "requests" then
            local name, reset, ttl = counter(tk, l, now)
            local n = shared.incr(name, 1, ttl)
            taken[#taken + 1] = name
            if n and n > l.max then
                for i = 1, #taken do shared.incr(taken[i], -1) end
                return over(tk, l, now, reset)
            end
        end
    end
    return nil
end

-- The Redis reads of an admission: INCR + PEXPIRE per request counter, GET
-- per token/cost counter; plan[i].at is where its reply will be.
local function redis_reads(cfg, tk, now)
    local prefix, cmds, plan = cfg.sessions.prefix, {}, {}
    for _, l in ipairs(tk.limits) do
        local name, reset, ttl = counter(tk, l, now)
        plan[#plan + 1] = { l = l, name = name, reset = reset, ttl = ttl, at = #cmds + 1 }
        if l.counts == "requests" then
            cmds[#cmds + 1] = { "INCR", prefix .. name }
            cmds[#cmds + 1] = { "PEXPIRE", prefix .. name, ms(ttl) }
        else
            cmds[#cmds + 1] = { "GET", prefix .. name }
        end
    end
    return cmds, plan
end

-- The verdict from Redis's replies: a refusal, false (admitted), or nil
-- when Redis could not say (the caller then counts alone).
local function redis_verdict(cfg, tk, now, plan, replies, rt)
    if type(replies) ~= "table" then return nil end
    for _, p in ipairs(plan) do
        local r = replies[p.at]
        if type(r) == "table" then return nil end -- an error reply: not an answer to count on
        p.value = tonumber(r) or 0
    end
    -- The verdict, then what this process remembers of it (the mirror).
    local refused
    for _, p in ipairs(plan) do
        if p.l.counts ~= "requests" and p.value >= p.l.max then
            refused = refused or over(tk, p.l, now, p.reset)
        end
    end
    for _, p in ipairs(plan) do
        if p.l.counts == "requests" and p.value > p.l.max then refused = refused or over(tk, p.l, now, p.reset) end
    end
    local back, prefix = {}, cfg.sessions.prefix
    for _, p in ipairs(plan) do
        if refused and p.l.counts == "requests" then
            -- this request is not admitted: its increment is taken back
            back[#back + 1] = { "DECR", prefix .. p.name }
            p.value = p.value - 1
        end
        rt.shared.set(p.name, tostring(p.value), p.ttl)
    end
    if #back > 0 then rt.redis.send(back) end
    return refused or false
end

local Admission = {}
Admission.__index = Admission

-- Counts the request against the key's limits. With Redis, the reads join
-- the request's round (sluice.session_store.round: one round trip for the
-- session and the tenant together) and the verdict waits for it; give no
-- round and the admission makes its own. Only the request phase may ask
-- for the verdict (it may wait on Redis).
function T.admission(cfg, tk, rt, round)
    rt = rt_of(rt)
    local a = setmetatable({ cfg = cfg, tk = tk, rt = rt }, Admission)
    if #tk.limits > 0 then
        a.now = rt.now()
        if redis_on(cfg) then
            local cmds
            cmds, a.plan = redis_reads(cfg, tk, a.now)
            a.round = round or session_store.round(cfg, rt)
            a.reads = a.round:add(cmds)
        end
    end
    return a
end

-- nil when admitted, else the refusal.
function Admission:verdict()
    local tk, rt, verdict = self.tk, self.rt, nil
    if self.now then
        if self.round then
            self.round:run()
            verdict = redis_verdict(self.cfg, tk, self.now, self.plan, self.round:replies(self.reads), rt)
            if verdict == nil then rt.count("sluice_tenant_counters_fallback_total") end
        end
        if verdict == nil then verdict = admit_local(tk, self.now, rt.shared) end
    end
    if verdict then return verdict end
    rt.count("sluice_tenant_requests_total", "tenant", tk.id)
    return nil
end

-- The admission on its own round trip: T.admission(cfg, tk, rt):verdict().
function T.admit(cfg, tk, rt)
    return T.admission(cfg, tk, rt):verdict()
end

-- The request is over: its recorded tokens (input + output) and its cost go
-- on the key's counters. `fields` are the log hook's (input_tokens,
-- output_tokens, cost). Never waits: Redis writes are sent and forgotten.
function T.charge(cfg, tk, fields, rt)
    if not tk.charges then return end
    rt = rt_of(rt)
    local tokens = (tonumber(fields.input_tokens) or 0) + (tonumber(fields.output_tokens) or 0)
    local cost = tonumber(fields.cost) or 0
    local now = rt.now()
    local prefix, cmds = redis_on(cfg) and cfg.sessions.prefix, {}
    for _, l in ipairs(tk.limits) do
        local amount = l.counts == "tokens" and tokens or l.counts == "usd" and cost or 0
        if amount > 0 then
            local name, _, ttl = counter(tk, l, now)
            rt.shared.incr(name, amount, ttl)
            if prefix then
                local n = fmt(l.counts == "usd" and "%.17g" or "%d", amount)
                cmds[#cmds + 1] = { l.counts == "usd" and "INCRBYFLOAT" or "INCRBY", prefix .. name, n }
                cmds[#cmds + 1] = { "PEXPIRE", prefix .. name, ms(ttl) }
            end
        end
    end
    if #cmds > 0 then rt.redis.send(cmds) end -- Redis down: this process counted it above
end

-- ------------------------------------------------------------------ GET /_sluice/keys

-- Every key by id (plain string keys by their place, key#N), and each
-- limit's use in the current window, as this process knows it (with Redis:
-- what Redis said at this process's latest admission, plus what it charged
-- since). Never a key, never a hash.
function T.report(cfg, rt)
    rt = rt_of(rt)
    local now = rt.now()
    local items = {}
    for i, k in ipairs(cfg.keys) do
        if type(k) ~= "table" then
            items[#items + 1] = { id = "key#" .. i }
        else
            local item = { id = k.id, models = k.models, services = k.services, expires = k.expires_text,
                           expired = k.expires ~= nil and now >= k.expires, limits = {} }
            for _, l in ipairs(k.limits) do
                local name, reset = counter(k, l, now)
                local used = tonumber((rt.shared.get(name))) or 0
                item.limits[l.name] = { limit = l.max, used = used, remaining = math.max(0, l.max - used),
                                        window = l.window, resets_at = utc(reset), resets_in = ceil(reset - now) }
            end
            items[#items + 1] = item
        end
    end
    local counted = "process"
    if redis_on(cfg) then counted = rt.redis.up() and "redis" or "process (redis down)" end
    return { counted = counted, items = items }
end

return T
