-- sluice.protocols — the registry: the only list of the wire protocols sluice
-- speaks, and of the service each one is the home of.
--
-- One line per protocol: its name (what a config says in
-- `protocol = "..."`), the module that holds its codec and declares its
-- facts, and its service (the `/<service>` path prefix and the
-- `routes.<service>` key; a bare path of the protocol is routed there). The
-- protocol marked `default` is the one a request speaks when nothing says
-- otherwise (`GET /v1/models` without a protocol's header, a path no
-- protocol claims). The order of the lines is the order sluice lists them
-- in (config errors, the models of every service).
--
-- Everything else about a protocol — endpoints, credentials, required
-- headers, tool-name rule, stream markers, models-list and error shapes —
-- is declared in the facts section at the top of its module (README.md
-- beside this file says what each fact means). config, router, translate,
-- upstream, toolnames and host derive their tables from this registry and
-- name no protocol.
--
--   P.list                  -> { entry... } in registry order, entry = { name, module, service, default? }
--   P.by_name[name]         -> entry ; P.by_service[service] -> entry
--   P.default               -> the default protocol's name
--   P.names()               -> { name... } (a fresh array, registry order)
--   P.get(name)             -> module | nil, err  (loaded on first use, its facts checked)
--   P.all()                 -> { module... } in registry order; raises if one cannot load
--   P.register(entry)       -> adds a protocol (the lines below; specs add fakes with it
--                              before loading the modules that derive from the registry)

local type, ipairs, pcall, require, tostring, error = type, ipairs, pcall, require, tostring, error
local fmt = string.format

local P = { list = {}, by_name = {}, by_service = {}, default = nil }

-- The facts and codec functions every protocol module must provide (see
-- README.md); the optional ones are checked for type when present.
local REQUIRED = {
    { "name", "string" }, { "title", "string" }, { "endpoints", "table" }, { "credential", "table" },
    { "tool_names", "table" }, { "terminal", "table" }, { "usage_events", "table" }, { "path", "function" },
    { "decode_request", "function" }, { "encode_request", "function" },
    { "decode_response", "function" }, { "encode_response", "function" },
    { "decode_error", "function" }, { "encode_error", "function" },
    { "stream_decoder", "function" }, { "stream_encoder", "function" },
}
local OPTIONAL = {
    { "models", "table" }, { "guess", "table" }, { "upstream_headers", "table" }, { "path_query", "table" },
    { "model_in_path", "boolean" }, { "count_tokens", "string" }, { "tool_call_ids", "table" },
    { "output_limit", "table" }, { "fit_output", "function" }, { "cache_key", "string" },
    { "answer_usage", "string" }, { "decode_usage", "function" },
}
P.REQUIRED, P.OPTIONAL = REQUIRED, OPTIONAL

function P.register(e)
    if type(e) ~= "table" or type(e.name) ~= "string" or type(e.module) ~= "string" then
        error("protocol registry: an entry needs a name and a module", 2)
    end
    if type(e.service) ~= "string" or not e.service:find("^%a+$") then
        error(fmt("protocol registry: %s: service must be letters only (it is a path prefix)", e.name), 2)
    end
    if P.by_name[e.name] then error("protocol registry: " .. e.name .. " registered twice", 2) end
    if P.by_service[e.service] then
        error(fmt("protocol registry: service %s already belongs to %s", e.service,
            P.by_service[e.service].name), 2)
    end
    if e.default and P.default then
        error(fmt("protocol registry: %s and %s both claim to be the default", P.default, e.name), 2)
    end
    P.list[#P.list + 1] = e
    P.by_name[e.name], P.by_service[e.service] = e, e
    if e.default then P.default = e.name end
end

-- ------------------------------------------------------------------ the protocols

local register = P.register
register { name = "anthropic",        module = "sluice.protocols.anthropic",        service = "claude" }
register { name = "openai-chat",      module = "sluice.protocols.openai_chat",      service = "chat", default = true }
register { name = "openai-responses", module = "sluice.protocols.openai_responses", service = "codex" }
register { name = "gemini",           module = "sluice.protocols.gemini",           service = "gemini" }

-- ------------------------------------------------------------------ lookups

function P.names()
    local out = {}
    for i, e in ipairs(P.list) do out[i] = e.name end
    return out
end

-- A module that does not declare what the generic modules read is a
-- programming mistake: say which fact is missing, once, at load.
local function check(name, m)
    if type(m) ~= "table" then return nil, "module is not a table" end
    for _, f in ipairs(REQUIRED) do
        local k, t = f[1], f[2]
        if type(m[k]) ~= t then return nil, fmt("fact %s: expected a %s, got %s", k, t, type(m[k])) end
    end
    for _, f in ipairs(OPTIONAL) do
        local k, t = f[1], f[2]
        if m[k] ~= nil and type(m[k]) ~= t then
            return nil, fmt("fact %s: expected a %s, got %s", k, t, type(m[k]))
        end
    end
    if m.name ~= name then return nil, "module says its name is " .. tostring(m.name) end
    if type(m.credential.header) ~= "string" then return nil, "fact credential.header: expected a string" end
    if m.answer_usage and not m.decode_usage then return nil, "fact answer_usage needs decode_usage" end
    return m
end

local loaded = {}

function P.get(name)
    local m = loaded[name]
    if m then return m end
    local e = P.by_name[name]
    if not e then return nil, "unknown protocol " .. tostring(name) end
    local ok, mod = pcall(require, e.module)
    if not ok then return nil, "protocol " .. name .. " unavailable: " .. tostring(mod) end
    local good, why = check(name, mod)
    if not good then return nil, "protocol " .. name .. " (" .. e.module .. "): " .. why end
    loaded[name] = mod
    return mod
end

function P.all()
    local out = {}
    for i, e in ipairs(P.list) do
        local m, err = P.get(e.name)
        if not m then error(err, 2) end
        out[i] = m
    end
    return out
end

return P
