-- sluice.config — loads the config file and validates every field.
--
-- The config is ops-written Lua returning a table. It is loaded with the JIT
-- off for the chunk and every function defined in it (so the instruction
-- budget can stop a runaway on_request hook; see core/luahost.c), then
-- checked field by field. A problem is reported as "<field.path>: <what is
-- wrong>" and sluice refuses to start (or keeps the old config on reload).
-- Unknown fields are errors too: a typo must not silently disable a limit.
--
-- config.load(path) -> cfg | nil, err
-- config.core_view(cfg) -> the flat table the C core reads (core/luahost.c)
-- config.redacted(cfg) -> a copy safe to show (secrets replaced)

local retry = require("sluice.retry")
local prices = require("sluice.prices")
local managed = require("sluice.auth.managed")
local adapters = require("sluice.adapters")
local tooltext = require("sluice.tooltext")
local protocols = require("sluice.protocols")
local tenants = require("sluice.tenants")
local session = require("sluice.session")

local M = {}

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local fmt, concat = string.format, table.concat

-- The protocols a supplier may speak and the services routes may name (each
-- a protocol's home), from the registry (sluice.protocols).
M.PROTOCOLS, M.SERVICES = {}, {}
local PROTOCOL_NAMES, SERVICE_NAMES = {}, {}
for i, e in ipairs(protocols.list) do
    M.PROTOCOLS[e.name], M.SERVICES[e.service] = true, e.name
    PROTOCOL_NAMES[i], SERVICE_NAMES[i] = e.name, e.service
end
-- "a, b, c or d" (last = " or ", the default) or "a, b and c": names in
-- a message (config and upstream say which protocols or headers they mean).
function M.one_of(names, last)
    if #names < 2 then return concat(names) end
    return concat(names, ", ", 1, #names - 1) .. (last or " or ") .. names[#names]
end
local EXPECTED_PROTOCOL = "expected " .. M.one_of(PROTOCOL_NAMES) .. "; got %s"
local UNKNOWN_SERVICE = "unknown service (known: " .. concat(SERVICE_NAMES, ", ") .. ")"
-- Off loopback the admin token guards reload, the history and the config:
-- long enough not to be guessed online (gateway keys need 8).
M.ADMIN_TOKEN_MIN = 16
M.AUTH_TYPES = { none = true, passthrough = true, bearer = true, header = true, managed = true }

local DEFAULTS = {
    listen = { "127.0.0.1:7070" },
    workers = "auto",
    limits = { max_body = 32 * 1024 * 1024, max_header = 64 * 1024, max_headers = 100,
               header_timeout = 10, body_timeout = 60, body_total_timeout = 300,
               keepalive_timeout = 60, max_connections = 4096,
               max_event = 4 * 1024 * 1024, max_response = 64 * 1024 * 1024 },
    timeouts = { connect = 10, first_byte = 120, idle = 300, total = 3600 },
    history = { path = "var/history.db", max = 1000, bodies = false },
    log = { access = "stderr", level = "info" },
    script_budget = 50000000,
    shutdown_timeout = 30,
    sessions = { store = "memory", ttl = 3600, cooldown = 30 },
}


local TOP_FIELDS = {
    listen = true, workers = true, limits = true, timeouts = true, suppliers = true, routes = true,
    on_request = true, log = true, admin = true, history = true, keys = true,
    script_budget = true, shutdown_timeout = true, lua_path = true, retry = true, sessions = true,
    prices = true,
}

-- A failed check: error() with a table so load() can tell it from a bug.
local function bad(field, msg, ...)
    error({ field = field, msg = fmt(msg, ...) }, 0)
end

local function check_type(v, want, field)
    if type(v) ~= want then bad(field, "expected a %s, got %s", want, type(v)) end
end

local function positive(v, field, integer)
    if type(v) ~= "number" or v <= 0 or v ~= v or v == math.huge then
        bad(field, "expected a positive number, got %s", tostring(v))
    end
    if integer and v % 1 ~= 0 then bad(field, "expected a whole number, got %s", tostring(v)) end
    return v
end

local function only_fields(t, allowed, field)
    for k in pairs(t) do
        if not allowed[k] then
            local names = {}
            for name in pairs(allowed) do names[#names + 1] = name end
            table.sort(names)
            bad(field .. "." .. tostring(k), "unknown field (known: %s)", concat(names, ", "))
        end
    end
end

-- The validators other modules check their parts of the config with
-- (sluice.tenants: the keys written as tables), so every message has one shape.
-- bad() raises { field, msg }; load() turns it into "field: msg".
local CHECK = { bad = bad, only_fields = only_fields, positive = positive }
M.CHECK = CHECK

-- Fills missing numeric fields of a section from its defaults and checks them.
local function numeric_section(t, defaults, field, integers)
    t = t == nil and {} or t
    check_type(t, "table", field)
    local allowed = {}
    for k in pairs(defaults) do allowed[k] = true end
    only_fields(t, allowed, field)
    local out = {}
    for k, d in pairs(defaults) do
        local v = t[k]
        if v == nil then v = d end
        out[k] = positive(v, field .. "." .. k, integers and integers[k])
    end
    return out
end

local function parse_listen(s, field)
    check_type(s, "string", field)
    local host, port = s:match("^%[([^%]]+)%]:(%d+)$")
    if not host then host, port = s:match("^([^:]+):(%d+)$") end
    port = tonumber(port)
    if not host or not port or port < 1 or port > 65535 then
        bad(field, "expected \"host:port\" (or \"[v6]:port\"), got %q", s)
    end
    return host
end

-- A listener is "host:port", or { addr = "host:port", tls = { cert, key } }
-- for HTTPS. The files are read here so `--check` names a missing or
-- unreadable one; whether they hold a matching pair is checked when the core
-- loads them (a failure names the listener too).
local function parse_listener(l, field)
    if type(l) ~= "table" then return l, parse_listen(l, field), false end
    only_fields(l, { addr = true, tls = true }, field)
    local host = parse_listen(l.addr, field .. ".addr")
    if l.tls == nil then return l.addr, host, false end
    check_type(l.tls, "table", field .. ".tls")
    only_fields(l.tls, { cert = true, key = true }, field .. ".tls")
    for _, k in ipairs({ "cert", "key" }) do
        local path = l.tls[k]
        check_type(path, "string", field .. ".tls." .. k)
        local f, err = io.open(path, "rb")
        if not f then bad(field .. ".tls." .. k, "cannot read %s", err) end
        f:close()
    end
    return l.addr, host, { cert = l.tls.cert, key = l.tls.key }
end

local function is_loopback(host)
    return host == "localhost" or host == "::1" or host:match("^127%.") ~= nil
end

-- Route globs. `match = "claude-*haiku*"` is kept lower-cased (M.glob) and
-- matched by M.glob_match, never turned into a Lua pattern: "^.*a.*b$"
-- backtracks polynomially in the number of stars, and the subject is a
-- model name a client chose (a 40 KB one stalled a worker for seconds, in
-- C code the script budget cannot interrupt). The matcher below is the
-- classic greedy two-pointer walk that, on a mismatch, resumes just after
-- the last `*` one byte further on: no recursion, at most #glob * #s steps
-- (linear in the name for a given route), and the name is capped at
-- MODEL_MAX bytes before routing anyway.
function M.glob(pattern)
    return pattern:lower()
end

local byte = string.byte
local STAR, QMARK = 42, 63

-- Does `s` match glob `g` (`*` any run, `?` any one byte)? Both are taken
-- as given: lower-case them first for a case-insensitive match.
function M.glob_match(g, s)
    local gi, si, ng, ns = 1, 1, #g, #s
    local star, mark = 0, 0 -- position of the last `*` in g, and where in s it began
    while si <= ns do
        local c = byte(g, gi)
        if c == STAR then
            star, mark, gi = gi, si, gi + 1
        elseif c ~= nil and (c == QMARK or c == byte(s, si)) then
            gi, si = gi + 1, si + 1
        elseif star > 0 then
            mark = mark + 1 -- let the last star swallow one more byte
            gi, si = star + 1, mark
        else
            return false
        end
    end
    while byte(g, gi) == STAR do gi = gi + 1 end
    return gi > ng
end

-- Model names, from clients (body or Gemini path) and from routes (`model`).
-- They end up in upstream URLs (Gemini puts the model in the path), so they
-- are held to what real model ids use: letters, digits and . _ - : @ /
-- ("meta-llama/Llama-3.1-8B", "anthropic.claude-v2:1", "claude@20240620"),
-- with `/` only between segments that are neither empty nor "." / "..".
M.MODEL_MAX = 256

-- Requests ask for a handful of models over and over: a name that passed is
-- remembered, so the checks below run once per name (at most MEMO_MAX names
-- are kept; then the memo starts over).
local MEMO_MAX = 1024
local accepted, n_accepted = {}, 0

function M.check_model(m)
    if accepted[m] then return true end
    if type(m) ~= "string" or m == "" then return nil, "expected a non-empty string" end
    if #m > M.MODEL_MAX then return nil, fmt("longer than %d bytes", M.MODEL_MAX) end
    if m:find("[^%w%.%-_:@/]") then
        return nil, "only letters, digits and . _ - : @ / may appear in a model name"
    end
    for seg in (m .. "/"):gmatch("([^/]*)/") do
        if seg == "" or seg == "." or seg == ".." then
            return nil, "a model name may not have empty, \".\" or \"..\" /-separated parts"
        end
    end
    if n_accepted == MEMO_MAX then accepted, n_accepted = {}, 0 end
    accepted[m], n_accepted = true, n_accepted + 1
    return true
end

-- A key pool: `tokens = { ... }` instead of the single `token` (bearer) or
-- `value` (header). Either way the auth gets `pool`, the list of secrets a
-- request picks one of by index (sluice.sticky); a single secret is a pool of one.
local function key_pool(a, single, field)
    if a.tokens == nil then
        if type(a[single]) ~= "string" or a[single] == "" then
            bad(field .. "." .. single, "missing (if it comes from os.getenv, is the variable set?)")
        end
        return { a[single] }
    end
    if a[single] ~= nil then bad(field, "give either %s or tokens (a key pool), not both", single) end
    check_type(a.tokens, "table", field .. ".tokens")
    if #a.tokens == 0 then bad(field .. ".tokens", "expected a non-empty list of keys") end
    local pool = {}
    for i, t in ipairs(a.tokens) do
        if type(t) ~= "string" or t == "" then
            bad(fmt("%s.tokens[%d]", field, i), "missing (if it comes from os.getenv, is the variable set?)")
        end
        pool[i] = t
    end
    return pool
end

local function check_auth(a, field)
    check_type(a, "table", field)
    if not M.AUTH_TYPES[a.type] then
        bad(field .. ".type", "expected one of none, passthrough, bearer, header, managed; got %s", tostring(a.type))
    end
    if a.type == "managed" then return managed.check(a, field, bad) end
    if a.type == "bearer" then
        only_fields(a, { type = true, token = true, tokens = true }, field)
        a.pool = key_pool(a, "token", field)
    elseif a.type == "header" then
        only_fields(a, { type = true, name = true, value = true, tokens = true }, field)
        if type(a.name) ~= "string" or not a.name:match("^[%w%-_]+$") then
            bad(field .. ".name", "expected a header name")
        end
        a.pool = key_pool(a, "value", field)
    else
        only_fields(a, { type = true }, field)
    end
    return a
end

local SUPPLIER_FIELDS = { protocol = true, base_url = true, auth = true, models = true,
                          timeouts = true, adapter = true, verify_tls = true, headers = true,
                          retry = true, tool_text = true, compat = true, max_output_tokens = true,
                          cache_key = true, prices = true }

-- What a translated request looks like for suppliers that differ from the
-- vendor's own API (README, Translation). max_tokens_field: the field an
-- openai-chat supplier takes the output limit in (OpenAI's own API wants
-- max_completion_tokens; vLLM, DeepSeek and older deployments max_tokens).
-- billing_header: "strip" (the default) removes Claude Code's per-request
-- `x-anthropic-billing-header: ...` system block when translating, so the
-- supplier's prefix cache can hit; "keep" sends it.
local MAX_TOKENS_FIELDS = { max_tokens = true, max_completion_tokens = true }
local BILLING_HEADER = { strip = true, keep = true }

local function check_compat(c, protocol, field)
    if c == nil then return { billing_header = "strip" } end
    check_type(c, "table", field)
    only_fields(c, { max_tokens_field = true, billing_header = true }, field)
    local out = { billing_header = c.billing_header or "strip" }
    if not BILLING_HEADER[out.billing_header] then
        bad(field .. ".billing_header", "expected \"strip\" or \"keep\", got %s", tostring(c.billing_header))
    end
    if c.max_tokens_field ~= nil then
        if not MAX_TOKENS_FIELDS[c.max_tokens_field] then
            bad(field .. ".max_tokens_field", "expected \"max_tokens\" or \"max_completion_tokens\", got %s",
                tostring(c.max_tokens_field))
        end
        if protocol ~= "openai-chat" then
            bad(field .. ".max_tokens_field", "only openai-chat suppliers have a choice of field (this one speaks %s)",
                tostring(protocol))
        end
        out.max_tokens_field = c.max_tokens_field
    end
    return out
end

local function check_supplier(id, s, defaults, retry_default)
    local field = "suppliers." .. id
    check_type(s, "table", field)
    only_fields(s, SUPPLIER_FIELDS, field)
    if not M.PROTOCOLS[s.protocol] then
        bad(field .. ".protocol", EXPECTED_PROTOCOL, tostring(s.protocol))
    end
    check_type(s.base_url, "string", field .. ".base_url")
    if not s.base_url:match("^https?://[^/]+") then
        bad(field .. ".base_url", "expected an http:// or https:// URL, got %q", s.base_url)
    end
    local out = {
        id = id, protocol = s.protocol, base_url = s.base_url:gsub("/+$", ""),
        auth = check_auth(s.auth or { type = "none" }, field .. ".auth"),
        models = {}, verify_tls = s.verify_tls ~= false, adapter = s.adapter,
        headers = s.headers or {},
    }
    -- Whether to send the session as the protocol's cache_key field
    -- (prompt_cache_key): OpenAI's own API routes its prompt cache by it;
    -- other servers of the same protocol may refuse an unknown field, so
    -- elsewhere it is opt-in.
    if s.cache_key ~= nil then check_type(s.cache_key, "boolean", field .. ".cache_key") end
    if s.cache_key == nil then
        out.cache_key = out.base_url:match("^https://api%.openai%.com[:/]") ~= nil
            or out.base_url == "https://api.openai.com"
    else
        out.cache_key = s.cache_key
    end
    if s.models ~= nil then
        check_type(s.models, "table", field .. ".models")
        for i, m in ipairs(s.models) do
            check_type(m, "string", fmt("%s.models[%d]", field, i))
            out.models[i] = m
        end
    end
    check_type(out.headers, "table", field .. ".headers")
    if s.adapter ~= nil and type(s.adapter) ~= "string" and type(s.adapter) ~= "table" then
        bad(field .. ".adapter", "expected an adapter name (config/adapters/<name>.lua) or a table")
    end
    out.timeouts = numeric_section(s.timeouts or {}, defaults, field .. ".timeouts")
    out.retry = retry.normalize(s.retry, field .. ".retry", retry_default, bad)
    out.tool_text = tooltext.check(s.tool_text, field .. ".tool_text", bad)
    out.compat = check_compat(s.compat, s.protocol, field .. ".compat")
    if s.max_output_tokens ~= nil then
        out.max_output_tokens = positive(s.max_output_tokens, field .. ".max_output_tokens", true)
    end
    if s.prices ~= nil then out.prices = prices.check(s.prices, field .. ".prices", bad) end
    return out
end

local function check_routes(routes, suppliers)
    check_type(routes, "table", "routes")
    local out = {}
    for service, list in pairs(routes) do
        local field = "routes." .. tostring(service)
        if not M.SERVICES[service] then
            bad(field, UNKNOWN_SERVICE)
        end
        check_type(list, "table", field)
        local entries = {}
        for i, r in ipairs(list) do
            local rf = fmt("%s[%d]", field, i)
            check_type(r, "table", rf)
            only_fields(r, { match = true, supplier = true, model = true, balance = true,
                             max_output_tokens = true }, rf)
            local balance = r.balance or "fallback"
            if balance ~= "fallback" and balance ~= "sticky" then
                bad(rf .. ".balance", "expected \"fallback\" (the list is an order) or \"sticky\" (a pool); got %s",
                    tostring(balance))
            end
            local match = r.match or "*"
            check_type(match, "string", rf .. ".match")
            local chain = type(r.supplier) == "table" and r.supplier or { r.supplier }
            for _, sid in ipairs(chain) do
                if type(sid) ~= "string" or not suppliers[sid] then
                    bad(rf .. ".supplier", "no supplier named %s", tostring(sid))
                end
            end
            if #chain == 0 then bad(rf .. ".supplier", "missing") end
            if r.model ~= nil then
                check_type(r.model, "string", rf .. ".model")
                local ok, why = M.check_model(r.model)
                if not ok then bad(rf .. ".model", "%s (got %q)", why, r.model:sub(1, 80)) end
            end
            if r.max_output_tokens ~= nil then positive(r.max_output_tokens, rf .. ".max_output_tokens", true) end
            entries[i] = { match = match, pattern = M.glob(match), suppliers = chain, model = r.model,
                           max_output_tokens = r.max_output_tokens, name = fmt("%s[%d]", service, i),
                           balance = balance }
        end
        out[service] = entries
    end
    return out
end

-- redis://[:password@]host[:port][/db]
local function parse_redis_url(url, field)
    if type(url) ~= "string" then bad(field, "expected a redis:// URL") end
    -- What an error may quote: never the password the URL may carry.
    local shown = url:gsub("^(%a+://)[^@/]*@", "%1[redacted]@"):sub(1, 80)
    local rest = url:match("^redis://(.+)$")
    if not rest then bad(field, "expected redis://host[:port][/db], got %q", shown) end
    local password, hostpart = rest:match("^:([^@]*)@(.+)$")
    hostpart = hostpart or rest
    local host, port, db = hostpart:match("^([%w%.%-]+):?(%d*)/?(%d*)$")
    if not host or host == "" then bad(field, "expected redis://host[:port][/db], got %q", shown) end
    port, db = tonumber(port) or 6379, tonumber(db) or 0
    if port < 1 or port > 65535 then bad(field, "port out of range in %q", shown) end
    return host, port, db, password ~= "" and password or nil
end

-- sessions = { store = "memory" | "redis", ttl = 3600, cooldown = 30,
--              redis = { url, password, prefix = "sluice:", timeout = 0.2 },
--              key = function(ctx) ... end | false }
-- (sluice.session, sluice.sticky, sluice.session_store). key = false turns
-- sessions off: no key, no binding, routes used in their own order. ttl: idle seconds
-- before a session is forgotten; cooldown: seconds a key that got a 429
-- without Retry-After rests.
local function check_sessions(t)
    local d = DEFAULTS.sessions
    if t == nil then return { store = d.store, ttl = d.ttl, cooldown = d.cooldown, prefix = "sluice:" } end
    check_type(t, "table", "sessions")
    only_fields(t, { store = true, ttl = true, cooldown = true, key = true, redis = true }, "sessions")
    local out = { store = t.store or d.store,
                  ttl = positive(t.ttl or d.ttl, "sessions.ttl"),
                  cooldown = positive(t.cooldown or d.cooldown, "sessions.cooldown"),
                  prefix = "sluice:" }
    if out.store ~= "memory" and out.store ~= "redis" then
        bad("sessions.store", "expected \"memory\" (the in-process store) or \"redis\"; got %s",
            tostring(out.store))
    end
    if out.store == "redis" then
        local r = t.redis or {}
        check_type(r, "table", "sessions.redis")
        only_fields(r, { url = true, password = true, prefix = true, timeout = true }, "sessions.redis")
        local host, port, db, url_password = parse_redis_url(r.url or "redis://127.0.0.1:6379/0", "sessions.redis.url")
        if r.password ~= nil then check_type(r.password, "string", "sessions.redis.password") end
        if r.prefix ~= nil then check_type(r.prefix, "string", "sessions.redis.prefix") end
        out.redis = { host = host, port = port, db = db, password = r.password or url_password,
                      timeout = positive(r.timeout or 0.2, "sessions.redis.timeout") }
        out.prefix = r.prefix or "sluice:"
    elseif t.redis ~= nil then
        bad("sessions.redis", "only used with sessions.store = \"redis\"")
    end
    if t.key ~= nil and t.key ~= false and type(t.key) ~= "function" then
        bad("sessions.key", "expected a function(ctx) or false, got %s", type(t.key))
    end
    out.key = t.key
    return out
end

local function validate(raw)
    check_type(raw, "table", "(config)")
    only_fields(raw, TOP_FIELDS, "config")
    local cfg = {}

    local listen = raw.listen or DEFAULTS.listen
    check_type(listen, "table", "listen")
    if #listen == 0 then bad("listen", "needs at least one address") end
    cfg.listen, cfg.listen_tls, cfg.public = {}, {}, false
    for i, l in ipairs(listen) do
        local addr, host, tls = parse_listener(l, fmt("listen[%d]", i))
        cfg.listen[i], cfg.listen_tls[i] = addr, tls
        if not is_loopback(host) then cfg.public = true end
    end

    local workers = raw.workers == nil and DEFAULTS.workers or raw.workers
    if workers == "auto" then
        cfg.workers = 0
    else
        cfg.workers = positive(workers, "workers", true)
        if workers > 256 then bad("workers", "at most 256") end
    end

    cfg.limits = numeric_section(raw.limits, DEFAULTS.limits, "limits",
        { max_body = true, max_header = true, max_headers = true, max_connections = true,
          max_event = true, max_response = true })
    cfg.timeouts = numeric_section(raw.timeouts, DEFAULTS.timeouts, "timeouts")

    cfg.retry = retry.normalize(raw.retry, "retry", retry.DEFAULT, bad)

    local suppliers = raw.suppliers or {}
    check_type(suppliers, "table", "suppliers")
    cfg.suppliers = {}
    for id, s in pairs(suppliers) do
        if type(id) ~= "string" then bad("suppliers", "supplier ids must be strings") end
        cfg.suppliers[id] = check_supplier(id, s, cfg.timeouts, cfg.retry)
    end
    cfg.routes = check_routes(raw.routes or {}, cfg.suppliers)
    cfg.prices = prices.check(raw.prices or {}, "prices", bad)

    if raw.on_request ~= nil then check_type(raw.on_request, "function", "on_request") end
    cfg.on_request = raw.on_request

    local log = raw.log or {}
    check_type(log, "table", "log")
    only_fields(log, { access = true, level = true }, "log")
    cfg.log = { access = log.access or DEFAULTS.log.access, level = log.level or DEFAULTS.log.level }
    check_type(cfg.log.access, "string", "log.access")
    if not ({ debug = 1, info = 1, warn = 1, error = 1 })[cfg.log.level] then
        bad("log.level", "expected debug, info, warn or error")
    end

    local admin = raw.admin or {}
    check_type(admin, "table", "admin")
    only_fields(admin, { token = true }, "admin")
    if admin.token ~= nil then check_type(admin.token, "string", "admin.token") end
    cfg.admin = { token = admin.token }

    -- A key is a string (>= 8 characters), or a table naming a tenant with
    -- its limits (sluice.tenants checks and normalises those).
    cfg.keys, cfg.key_scopes = {}, {}
    if raw.keys ~= nil then
        check_type(raw.keys, "table", "keys")
        local ids = {}
        for i, k in ipairs(raw.keys) do
            local field = fmt("keys[%d]", i)
            if type(k) == "table" then
                k = tenants.check_entry(k, field, CHECK, M.SERVICES)
                if ids[k.id] then bad(field .. ".id", "%s is also the id of keys[%d]", k.id, ids[k.id]) end
                ids[k.id] = i
                if k.key_sha256 then cfg.hashed_keys = true end
                if k.charges then cfg.charging_keys = true end
            elseif type(k) ~= "string" or #k < 8 then
                bad(field, "expected a string of at least 8 characters, or a table { id = ..., key = ... }")
            else
                cfg.key_scopes[i] = session.plain_key_scope(k)
            end
            cfg.keys[i] = k
        end
    end
    if #cfg.keys > 0 then
        for id, s in pairs(cfg.suppliers) do
            if s.auth.type == "passthrough" then
                bad("suppliers." .. id .. ".auth.type",
                    "passthrough cannot be combined with `keys`: the client's key is the gateway's key")
            end
        end
    end
    if cfg.public then
        if #cfg.keys == 0 then
            bad("keys", "required when listening on a non-loopback address")
        end
        if not cfg.admin.token then
            bad("admin.token", "required when listening on a non-loopback address")
        end
        if #cfg.admin.token < M.ADMIN_TOKEN_MIN then
            bad("admin.token", "must be at least %d characters when listening on a non-loopback address",
                M.ADMIN_TOKEN_MIN)
        end
    end

    if raw.history == false then
        cfg.history = false
    else
        local h = raw.history or {}
        check_type(h, "table", "history")
        only_fields(h, { path = true, max = true, bodies = true }, "history")
        cfg.history = { path = h.path or DEFAULTS.history.path,
                        max = positive(h.max or DEFAULTS.history.max, "history.max", true),
                        bodies = h.bodies == true }
        check_type(cfg.history.path, "string", "history.path")
    end

    cfg.sessions = check_sessions(raw.sessions)

    cfg.script_budget = positive(raw.script_budget or DEFAULTS.script_budget, "script_budget", true)
    cfg.shutdown_timeout = positive(raw.shutdown_timeout or DEFAULTS.shutdown_timeout, "shutdown_timeout")
    if raw.lua_path ~= nil then check_type(raw.lua_path, "string", "lua_path") end
    cfg.lua_path = raw.lua_path
    return cfg
end

-- Whether the config file defines a function (on_request, sessions.key,
-- an inline adapter, a helper, a library function replaced at load): its
-- chunk's constants hold a prototype for each function written at its top
-- level, and every other function is written inside one of those.
local function defines_functions(chunk)
    local ok, util = pcall(require, "jit.util")
    if not ok then return true end -- cannot look: assume it does
    for i = -1, -1e9, -1 do
        local k = util.funck(chunk, i)
        if k == nil then return false end
        if type(k) == "proto" then return true end
    end
    return true
end

-- Whether code ops wrote may run after the config is loaded: a function
-- the config file defines, a named adapter, or modules from lua_path. The
-- core counts Lua instructions against script_budget only then: the count
-- makes LuaJIT step every instruction through a hook, which cost the
-- built-in library half again its time per request, and the library,
-- mostly compiled, was never what the budget was for (core/luahost.c).
local function runs_ops_code(cfg, chunk)
    if cfg.lua_path or defines_functions(chunk) then return true end
    for _, s in pairs(cfg.suppliers) do
        if s.adapter ~= nil then return true end
    end
    return false
end

function M.load(path)
    local chunk, err = loadfile(path)
    if not chunk then return nil, "cannot load config: " .. tostring(err) end
    -- Ops code runs interpreted so the instruction budget applies to it.
    if jit then jit.off(chunk, true) end
    local ok, raw = pcall(chunk)
    if not ok then return nil, "config raised an error: " .. tostring(raw) end
    local cfg
    ok, cfg = pcall(validate, raw)
    if not ok then
        if type(cfg) == "table" then return nil, cfg.field .. ": " .. cfg.msg end
        return nil, "config: " .. tostring(cfg)
    end
    cfg.path = path
    cfg.dir = path:match("^(.*)/[^/]*$") or "."
    local aerr = M.load_adapters(cfg)
    if aerr then return nil, aerr end
    cfg.ops_code = runs_ops_code(cfg, chunk)
    return cfg
end

-- Replaces each supplier's adapter name by the loaded adapter table
-- (supplier.adapter_name keeps the name). Returns an error text or nil.
function M.load_adapters(cfg)
    for id, s in pairs(cfg.suppliers) do
        local a = s.adapter
        if a ~= nil then
            local ad, err
            if type(a) == "table" then
                ad, err = adapters.check(a, "suppliers." .. id .. ".adapter")
                s.adapter_name = "(inline)"
            else
                ad, err = adapters.load(a, cfg.dir)
                s.adapter_name = a
            end
            if not ad then return "suppliers." .. id .. ".adapter: " .. err end
            s.adapter = ad
        end
    end
    return nil
end

-- What the config looks like with every secret replaced, for display.
local SECRET_FIELDS = { token = true, value = true, client_secret = true, _key = true, password = true }
-- Key pools: shown as how many keys there are, never the keys.
local SECRET_LISTS = { tokens = true, pool = true }

local function redact(v, depth)
    if type(v) == "function" then return "(function)" end
    if type(v) ~= "table" then return v end
    if depth > 6 then return "[...]" end -- never show what was not looked at
    local out = {}
    for k, x in pairs(v) do
        if SECRET_FIELDS[k] and type(x) == "string" then
            out[k] = "[redacted]"
        elseif SECRET_LISTS[k] and type(x) == "table" then
            out[k] = {}
            for i = 1, #x do out[k][i] = "[redacted]" end
        elseif k == "headers" and type(x) == "table" then
            -- Extra supplier headers often carry keys: show the names only.
            out[k] = {}
            for name in pairs(x) do out[k][name] = "[redacted]" end
        elseif k == "request" and type(x) == "table" then
            out[k] = { url = x.url, method = x.method,
                       headers = x.headers and "[redacted]" or nil, body = x.body and "[redacted]" or nil }
        else
            out[k] = redact(x, depth + 1)
        end
    end
    return out
end

function M.redacted(cfg)
    local out = redact(cfg, 0)
    out.key_scopes = nil -- hashes of the plain keys: derived from secrets, shown nowhere
    if cfg.keys then
        out.keys = {}
        for i, k in ipairs(cfg.keys) do
            out.keys[i] = type(k) == "table" and tenants.redacted(k) or "[redacted]"
        end
    end
    if cfg.admin and cfg.admin.token then out.admin = { token = "[redacted]" } end
    for id, s in pairs(cfg.suppliers or {}) do
        if s.adapter then out.suppliers[id].adapter = s.adapter_name or "(adapter)" end
    end
    return out
end

-- The flat table the C core reads (core/luahost_config.c): every setting it
-- needs, defaults included — C has no default of its own and refuses a view
-- that lacks one, naming it. A setting that can be off is `false`, never nil.
function M.core_view(cfg)
    local l, t, h = cfg.limits, cfg.timeouts, cfg.history
    return {
        listen = cfg.listen, listen_tls = cfg.listen_tls, workers = cfg.workers,
        max_body = l.max_body, max_header = l.max_header, max_headers = l.max_headers,
        header_timeout = l.header_timeout, keepalive_timeout = l.keepalive_timeout,
        body_timeout = l.body_timeout, body_total_timeout = l.body_total_timeout,
        max_connections = l.max_connections, max_event = l.max_event, max_response = l.max_response,
        connect_timeout = t.connect, first_byte_timeout = t.first_byte, idle_timeout = t.idle,
        total_timeout = t.total, script_budget = cfg.script_budget,
        shutdown_timeout = cfg.shutdown_timeout,
        access_log = cfg.log.access, log_level = cfg.log.level, admin_token = cfg.admin.token or false,
        history_path = h and h.path or false,
        history_max = (h or DEFAULTS.history).max, -- unused while the history is off
        history_bodies = h and h.bodies or false,
        -- A tenant's token or cost limit needs every answer's usage, with or
        -- without a history (the core reads passthrough answers only then).
        watch_usage = cfg.charging_keys == true,
        ops_code = cfg.ops_code ~= false, -- not known: counted
    }
end

return M
