-- example — a worked adapter for "Acme Cloud", a fictional supplier that
-- speaks OpenAI Chat Completions with a few quirks. Use it as a template:
--
--   suppliers = {
--     acme = { protocol = "openai-chat", base_url = "https://api.acme.example",
--              auth = { type = "bearer", token = os.getenv("ACME_KEY") },
--              adapter = "example" },     -- this file: config/adapters/example.lua
--   }
--
-- Acme's quirks, and the hook that absorbs each one:
--   request         the endpoint is /acme/v2/chat (not /chat/completions), it
--                   wants `max_output_tokens` instead of `max_tokens`, rejects
--                   `stream_options`, and traces calls by `x-acme-trace`;
--   classify_error  errors come back as HTTP 200 with
--                   {"status":"error","error":{"code":"quota_exceeded","message":"..."}};
--   response        good answers are wrapped: {"status":"ok","result":{<chat completion>}};
--   session_id      each answer names a session (body `session`, or the
--                   `x-acme-session` header on streams) to send back next turn;
--   event           streams carry `event: heartbeat` keep-alives (dropped) and
--                   report errors mid-stream in the same wrapped shape.
--
-- Everything here works on the supplier's wire format (OpenAI chat); sluice
-- translates to and from the client's protocol around it. The spec is
-- spec/adapters/example_spec.lua.

local json = require("sluice.json")
local adapters = require("sluice.adapters")

local type = type

local A = {}

-- Acme error codes -> the HTTP status and error type clients should see.
A.errors = {
    quota_exceeded = { 429, "rate_limit" },
    model_not_found = { 404, "not_found" },
    bad_request = { 400, "invalid_request" },
    unauthorized = { 401, "authentication" },
    overloaded = { 503, "overloaded" },
}

local OPENAI_TYPE = {
    rate_limit = "rate_limit_error", invalid_request = "invalid_request_error",
    not_found = "invalid_request_error", authentication = "invalid_request_error",
}

local function acme_error(e)
    e = type(e) == "table" and e or {}
    local code = type(e.code) == "string" and e.code or "unknown"
    local known = A.errors[code] or { 502, "api_error" }
    local msg = type(e.message) == "string" and e.message or "Acme reported an error"
    return { status = known[1], type = known[2], message = "acme " .. code .. ": " .. msg }
end

function A.request(ctx, plan, body)
    plan.path = "/acme/v2/chat"
    adapters.set_header(plan.headers, "x-acme-trace", ctx.id)
    if body.max_tokens ~= nil then
        body.max_output_tokens, body.max_tokens = body.max_tokens, nil
    end
    body.stream_options = nil
    -- The session Acme gave us last turn, if the session store kept one.
    if ctx.upstream_session_id then body.session = ctx.upstream_session_id end
    return body
end

function A.classify_error(ctx, status, body)
    if type(body) == "table" and body.status == "error" then return acme_error(body.error) end
    return nil
end

function A.response(ctx, status, headers, body)
    if type(body) == "table" and body.status == "ok" and type(body.result) == "table" then
        return status, body.result
    end
    return nil
end

function A.session_id(ctx, headers, body)
    if headers and headers["x-acme-session"] then return headers["x-acme-session"] end
    if type(body) == "table" and type(body.session) == "string" then return body.session end
    return nil
end

function A.event(ctx, ev)
    if ev.event == "heartbeat" then return nil end
    if ev.data:find('"status"', 1, true) then
        local obj = json.decode(ev.data)
        if type(obj) == "table" and obj.status == "error" then
            local e = acme_error(obj.error)
            -- An OpenAI chat error chunk, which is what clients of this stream expect.
            local wire = OPENAI_TYPE[e.type] or "server_error"
            return { data = json.encode({ error = { message = e.message, type = wire,
                                                    code = wire == "rate_limit_error" and "rate_limit_exceeded" or e.type } }) }
        end
    end
    return ev
end

return A
