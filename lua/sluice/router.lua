-- sluice.router — which service and protocol a request speaks, and which
-- supplier (and upstream model) serves it.
--
-- Paths (DESIGN §5), bare or under a service prefix:
--   POST /v1/messages, /v1/messages/count_tokens        anthropic        (claude)
--   POST /v1/chat/completions                           openai-chat      (chat)
--   POST /v1/responses (also /codex/responses)          openai-responses (codex)
--   POST /v1beta/models/{model}:generateContent         gemini           (gemini)
--        /v1beta/models/{model}:streamGenerateContent
--   GET  /v1/models                                     model list
-- A prefix (/claude, /chat, /codex, /gemini) names the service whose routes
-- apply; without one the service is the protocol's own. Routes are tried in
-- order; `match` is a case-insensitive wildcard on the client's model.
--
-- R.classify(method, path) -> info | nil, status, message
--   info = { service, protocol, kind = "generate"|"count_tokens"|"models", model?, stream? }
-- R.route(cfg, service, model) -> entry | nil, message
--   `match` globs are matched in time linear in the model name (see
--   config.glob_match), never as Lua patterns.

local config = require("sluice.config")

local glob_match = config.glob_match

local R = {}

-- Service prefixes and each protocol's own service, from config.SERVICES.
local PREFIXES, DEFAULT_SERVICE = {}, {}
for service, protocol in pairs(config.SERVICES) do
    PREFIXES[service] = true
    DEFAULT_SERVICE[protocol] = service
end

local ENDPOINTS = {
    ["/v1/messages"] = { protocol = "anthropic", kind = "generate" },
    ["/v1/messages/count_tokens"] = { protocol = "anthropic", kind = "count_tokens" },
    ["/v1/chat/completions"] = { protocol = "openai-chat", kind = "generate" },
    ["/v1/responses"] = { protocol = "openai-responses", kind = "generate" },
    ["/responses"] = { protocol = "openai-responses", kind = "generate", codex_only = true },
}

function R.classify(method, path)
    local service, rest = path:match("^/(%a+)(/.*)$")
    if not (service and PREFIXES[service]) then
        service, rest = nil, path
    end
    if rest == "/v1/models" or rest == "/v1beta/models" then
        if method ~= "GET" then return nil, 405, "use GET for " .. path end
        return { service = service, kind = "models",
                 protocol = rest == "/v1beta/models" and "gemini" or nil }
    end
    local ep = ENDPOINTS[rest]
    if ep then
        if ep.codex_only and service ~= "codex" then return nil, 404, "unknown path " .. path end
        if method ~= "POST" then return nil, 405, "use POST for " .. path end
        return { service = service or DEFAULT_SERVICE[ep.protocol], protocol = ep.protocol,
                 kind = ep.kind }
    end
    local model, action = rest:match("^/v1beta/models/([^/:]+):(%a+)$")
    if model and (action == "generateContent" or action == "streamGenerateContent") then
        if method ~= "POST" then return nil, 405, "use POST for " .. path end
        return { service = service or "gemini", protocol = "gemini", kind = "generate",
                 model = model, stream = action == "streamGenerateContent" }
    end
    if model and action == "countTokens" then
        return { service = service or "gemini", protocol = "gemini", kind = "count_tokens",
                 model = model }
    end
    return nil, 404, "unknown path " .. path
end

function R.route(cfg, service, model)
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
        if glob_match(e.pattern, m) then return e end
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
    local services = service and { service } or { "claude", "chat", "codex", "gemini" }
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
