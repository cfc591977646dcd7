-- sluice.protocols.common — wire helpers more than one codec needs, kept
-- once: the opaque-state envelope (its format is sluice.ir's), tool
-- arguments as JSON text <-> IR object, data URLs, and the OpenAI error
-- envelope shared by Chat Completions and Responses. Pure Lua over tables
-- and strings; knows no protocol's stream.

local ir = require("sluice.ir")
local json = require("sluice.json")

local type, tonumber, tostring = type, tonumber, tostring
local json_decode, json_encode, is_array, null = json.decode, json.encode, json.is_array, json.null

local C = {}

-- ---------------------------------------------------------------- opaque state

-- Opaque reasoning state towards a client of protocol `own`: its own as it
-- is, another provider's (origin) inside ir's envelope so it comes back on
-- the next turn and can be unwrapped to its origin. No origin: own.
function C.wrap(own, origin, kind, value)
    if origin == nil or origin == own then return value end
    return ir.wrap_opaque(origin, kind, value)
end

-- origin, kind, value of an envelope; nil when s is not one.
C.unwrap = ir.unwrap_opaque

-- ---------------------------------------------------------------- tool arguments

-- Tool arguments (JSON text, or already a table) -> the IR's object: "",
-- invalid JSON and anything but an object become {} (never a string or an
-- array; PROTOCOLS §6.4).
function C.decode_args(s)
    if type(s) == "table" then return s end
    if type(s) ~= "string" or s == "" then return {} end
    local v = json_decode(s)
    if type(v) ~= "table" or is_array(v) then return {} end
    return v
end

-- An object that must stay an object on the wire: anything but a table,
-- and an empty array (what `{}` may decode to), become {}.
function C.as_object(t)
    if type(t) ~= "table" or (is_array(t) and #t == 0) then return {} end
    return t
end

-- IR arguments -> JSON text for the wire; text passes as it is, nothing
-- (or an empty array) is "{}".
function C.encode_args(args)
    if type(args) == "string" then return args end
    if type(args) ~= "table" or (is_array(args) and #args == 0) then return "{}" end
    return json_encode(args) or "{}"
end

-- ---------------------------------------------------------------- data URLs

-- "data:<mime>;base64,<payload>" -> mime, payload; nil when not a data URL.
function C.parse_data_url(url)
    if type(url) ~= "string" then return nil end
    return url:match("^data:([^;,]*);base64,(.*)$")
end

-- An IR base64 source -> its data URL.
function C.data_url(src)
    return "data:" .. (src.media_type or "application/octet-stream") .. ";base64," .. (src.data or "")
end

-- A URL (data URL or not) -> an IR source.
function C.source_from_url(url)
    local mime, data = C.parse_data_url(url)
    if mime then return { kind = "base64", media_type = mime, data = data } end
    return { kind = "url", url = url }
end

-- ---------------------------------------------------------------- OpenAI errors

-- IR error type -> OpenAI error `type` and `code` (PROTOCOLS §2.5, §6.11).
-- OpenAI reports client errors as invalid_request_error (a bad key, an
-- unknown model, a refused permission alike) with the detail in `code`, and
-- rate limits as type "requests" (or "tokens", which the IR cannot tell
-- apart) with code rate_limit_exceeded.
C.OPENAI_ERROR = {
    invalid_request = { "invalid_request_error", null },
    authentication = { "invalid_request_error", "invalid_api_key" },
    permission = { "invalid_request_error", "permission_denied" },
    not_found = { "invalid_request_error", "not_found" },
    request_too_large = { "invalid_request_error", "request_too_large" },
    rate_limit = { "requests", "rate_limit_exceeded" },
    api_error = { "server_error", null },
    overloaded = { "server_error", "overloaded" },
    timeout = { "server_error", "timeout" },
}

-- IR error -> the OpenAI error body (message replaces err.message if given).
function C.openai_error_body(err, message)
    local m = C.OPENAI_ERROR[err.type or ir.error_type_for_status(err.status or 500)] or C.OPENAI_ERROR.api_error
    return { error = { message = message or err.message or "", type = m[1], param = null, code = m[2] } }
end

-- IR error -> HTTP status, body for an OpenAI client (no 529 there, §6.11).
function C.openai_encode_error(err)
    local status = err.status or ir.ERROR_STATUS[err.type] or 500
    if status == 529 then status = 503 end
    return status, C.openai_error_body(err)
end

-- OpenAI error `type` / `code` -> IR error type, for error objects that
-- come without an HTTP status (inside a stream).
local TYPE_IN = {
    invalid_request_error = "invalid_request", requests = "rate_limit", tokens = "rate_limit",
    rate_limit_error = "rate_limit", insufficient_quota = "rate_limit",
}
local CODE_IN = { rate_limit_exceeded = "rate_limit", insufficient_quota = "rate_limit",
                  invalid_api_key = "authentication" }

-- An OpenAI error object ({message, type, code}) -> IR error.
function C.openai_error_from_object(status, e)
    local msg = type(e.message) == "string" and e.message or "upstream error"
    local etype
    if status then
        etype = ir.error_type_for_status(status)
    else
        etype = CODE_IN[e.code] or TYPE_IN[e.type] or "api_error"
    end
    return ir.error(status or ir.ERROR_STATUS[etype], msg, etype)
end

-- An upstream OpenAI error answer (decoded JSON or raw text) -> IR error.
function C.openai_decode_error(status, body)
    status = tonumber(status) or 502
    if type(body) == "string" then
        local v = json_decode(body)
        if type(v) ~= "table" then
            local msg = body ~= "" and body:sub(1, 2000) or ("upstream returned HTTP " .. tostring(status))
            return ir.error(status, msg)
        end
        body = v
    end
    if type(body) == "table" then
        local e = body.error
        if type(e) == "table" then return C.openai_error_from_object(status, e) end
        if type(e) == "string" then return ir.error(status, e) end
        if type(body.message) == "string" then return ir.error(status, body.message) end
    end
    return ir.error(status, "upstream returned HTTP " .. tostring(status))
end

return C
