-- sluice.router — which service and protocol a request speaks, and which
-- supplier (and upstream model) serves it.
--
-- The paths are each protocol's `endpoints` and `models` facts (see
-- protocols/README.md), bare or under a service prefix — today (DESIGN §5):
--   POST /v1/messages, /v1/messages/count_tokens        anthropic        (claude)
--   POST /v1/chat/completions                           openai-chat      (chat)
--   POST /v1/responses (also /codex/responses)          openai-responses (codex)
--   POST /v1beta/models/{model}:generateContent         gemini           (gemini)
--        /v1beta/models/{model}:streamGenerateContent
--   GET  /v1/models, /v1beta/models                     model list
-- A prefix (a service of the registry, sluice.protocols) names the service
-- whose routes apply; without one the service is the protocol's own. Routes
-- are tried in order; `match` is a case-insensitive wildcard on the
-- client's model.
--
-- R.classify(method, path) -> info | nil, status, message
--   info = { service, protocol, kind = "generate"|"count_tokens"|"models", model?, stream? }
--   (read-only: the info of a fixed endpoint is one table for all its requests)
--   (a models path several protocols share leaves `protocol` nil: the host
--   decides from the request's headers)
-- R.route(cfg, service, model) -> entry | nil, message
--   `match` globs are matched in time linear in the model name (see
--   config.glob_match), never as Lua patterns.

local config = require("sluice.config")
local protocols = require("sluice.protocols")

local glob_match = config.glob_match
local ipairs, error = ipairs, error

local R = {}

-- Derived from the registry: PREFIXES[service] = true; HOME[protocol] = its
-- service; SERVICES in registry order.
local PREFIXES, HOME, SERVICES = {}, {}, {}
for i, e in ipairs(protocols.list) do
    PREFIXES[e.service], HOME[e.name], SERVICES[i] = true, e.service, e.service
end

-- Derived from each protocol's endpoints and models facts, when the first
-- request needs them (the codecs load then, as they always have):
-- EXACT[path] = { protocol, ep }; MATCHERS = { { protocol, ep }... };
-- MODELS[path] = protocol, or false when several protocols share the path.
local EXACT, MATCHERS, MODELS

local function derive()
    EXACT, MATCHERS, MODELS = {}, {}, {}
    for _, m in ipairs(protocols.all()) do
        for _, ep in ipairs(m.endpoints) do
            if ep.path then
                if EXACT[ep.path] then
                    error("endpoint " .. ep.path .. " claimed by " .. EXACT[ep.path].protocol .. " and " .. m.name)
                end
                EXACT[ep.path] = { protocol = m.name, ep = ep }
            else
                MATCHERS[#MATCHERS + 1] = { protocol = m.name, ep = ep }
            end
        end
        local mp = m.models and m.models.path
        if mp then
            if MODELS[mp] == nil then MODELS[mp] = m.name else MODELS[mp] = false end
        end
    end
end

-- POST paths of fixed endpoints (a finite set: EXACT's paths, bare or under
-- a prefix) -> their info, shared by every request to them: callers only
-- read it.
local FIXED = {}

function R.classify(method, path)
    if method == "POST" then
        local info = FIXED[path]
        if info then return info end
    end
    if not EXACT then derive() end
    local service, rest = path:match("^/(%a+)(/.*)$")
    if not (service and PREFIXES[service]) then
        service, rest = nil, path
    end
    local owner = MODELS[rest]
    if owner ~= nil then
        if method ~= "GET" then return nil, 405, "use GET for " .. path end
        return { service = service, kind = "models", protocol = owner or nil }
    end
    local hit = EXACT[rest]
    if hit then
        local p, ep = hit.protocol, hit.ep
        -- `prefixed`: only under the protocol's own prefix (/codex/responses)
        if ep.prefixed and service ~= HOME[p] then return nil, 404, "unknown path " .. path end
        if method ~= "POST" then return nil, 405, "use POST for " .. path end
        local info = { service = service or HOME[p], protocol = p, kind = ep.kind }
        FIXED[path] = info
        return info
    end
    for i = 1, #MATCHERS do
        local p, ep = MATCHERS[i].protocol, MATCHERS[i].ep
        local model = rest:match(ep.match)
        if model then
            if method ~= "POST" and not ep.any_method then return nil, 405, "use POST for " .. path end
            return { service = service or HOME[p], protocol = p, kind = ep.kind, model = model, stream = ep.stream }
        end
    end
    return nil, 404, "unknown path " .. path
end

-- The route a (service, model) found, remembered per config: requests ask
-- for a handful of models, so the globs run once per model (at most
-- MEMO_MAX per service; then that service's memo starts over). Weak keys:
-- a reloaded config's memo goes with it.
local MEMO_MAX = 1024
local memos = setmetatable({}, { __mode = "k" })

local function memo_of(cfg, service)
    local by_service = memos[cfg]
    if not by_service then
        by_service = {}
        memos[cfg] = by_service
    end
    local m = by_service[service]
    if not m or m.n == MEMO_MAX then
        m = { n = 0, routes = {} }
        by_service[service] = m
    end
    return m
end

function R.route(cfg, service, model)
    local memo = memo_of(cfg, service)
    local hit = model and memo.routes[model]
    if hit then return hit end
    local list = cfg.routes[service]
    if not list or #list == 0 then
        return nil, "no routes are configured for service '" .. service .. "'"
    end
    local m = (model or ""):lower()
    if #m > config.MODEL_MAX then -- the host answers 400 before this; never match unbounded input
        return nil, "model name longer than " .. config.MODEL_MAX .. " bytes"
    end
    for i = 1, #list do
        local e = list[i]
        if glob_match(e.pattern, m) then
            if model then memo.routes[model], memo.n = e, memo.n + 1 end
            return e
        end
    end
    return nil, "no route for model '" .. tostring(model) .. "' in service '" .. service .. "'"
end

-- The models a client can ask for: suppliers' model lists plus route
-- patterns that contain no wildcard, in a stable order.
function R.models(cfg, service)
    local seen, out = {}, {}
    local function add(id)
        if id and not seen[id] then seen[id] = true; out[#out + 1] = id end
    end
    local services = service and { service } or SERVICES
    for _, s in ipairs(services) do
        for _, e in ipairs(cfg.routes[s] or {}) do
            if not e.match:find("[%*%?]") then add(e.match) end
            for _, sid in ipairs(e.suppliers) do
                for _, m in ipairs(cfg.suppliers[sid].models) do add(m) end
            end
        end
    end
    table.sort(out)
    return out
end

R.glob = config.glob
R.glob_match = config.glob_match
-- R.check_model(name) -> true | nil, why: the model names sluice accepts.
R.check_model = config.check_model
R.MODEL_MAX = config.MODEL_MAX

return R
