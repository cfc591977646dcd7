-- sluice.protocols.common — wire helpers more than one codec needs, kept
-- once: the opaque-state envelope (its format is sluice.ir's), tool
-- arguments as JSON text <-> IR object, tool schemas as objects, tool
-- call/result pairing, tool-call ids in a target's alphabet, data URLs, and
-- the OpenAI error
-- envelope shared by Chat Completions and Responses. Pure Lua over tables
-- and strings; knows no protocol's stream.

local ir = require("sluice.ir")
local json = require("sluice.json")

local type, tonumber, tostring, pairs, ipairs, next = type, tonumber, tostring, pairs, ipairs, next
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

-- ---------------------------------------------------------------- tool schemas

-- A tool's parameters as an object schema, for targets that take nothing
-- else (Anthropic: "input_schema ... type: object" is required —
-- https://docs.anthropic.com/en/api/messages, tools[].input_schema). OpenAI-
-- style clients send `{}` for a tool without parameters, schemas without
-- `type`, and top-level `anyOf`/`oneOf` unions: the union's object
-- branches are merged into one object (a property any branch has; required
-- only what every branch requires), so every valid input stays valid.
function C.object_schema(schema)
    if type(schema) ~= "table" or is_array(schema) then
        return { type = "object", properties = {} }
    end
    local union = schema.anyOf or schema.oneOf
    if schema.type == nil and type(union) == "table" and is_array(union) and #union > 0 then
        local out = {}
        for k, v in pairs(schema) do
            if k ~= "anyOf" and k ~= "oneOf" then out[k] = v end
        end
        local props, required = {}, nil
        for _, branch in ipairs(union) do
            if type(branch) == "table" then
                if type(branch.properties) == "table" then
                    for k, v in pairs(branch.properties) do
                        if props[k] == nil then props[k] = v end
                    end
                end
                local set = {}
                for _, r in ipairs(type(branch.required) == "table" and branch.required or {}) do set[r] = true end
                if required == nil then
                    required = set
                else
                    for r in pairs(required) do if not set[r] then required[r] = nil end end
                end
            end
        end
        out.type, out.properties = "object", props
        if type(schema.properties) == "table" then
            for k, v in pairs(schema.properties) do props[k] = v end
        end
        local req = {}
        for _, r in ipairs(type(schema.required) == "table" and schema.required or {}) do req[#req + 1] = r end
        for r in pairs(required or {}) do req[#req + 1] = r end
        table.sort(req)
        if #req > 0 then out.required = req else out.required = nil end
        if next(props) == nil then out.properties = {} end
        return out
    end
    if schema.type == nil or schema.type ~= "object" then
        -- No type (or an upper-case OpenAPI one): the input is an object.
        local out = {}
        for k, v in pairs(schema) do out[k] = v end
        out.type = "object"
        if out.properties == nil then out.properties = {} end
        return out
    end
    return schema
end

-- ---------------------------------------------------------------- call/result pairing

-- Text that stands for a tool result nothing in the previous turn asked for.
local answer_every_call, orphans_to_text

local function orphan_text(p)
    local b = {}
    for _, c in ipairs(p.content or {}) do
        if c.type == "text" and c.text then b[#b + 1] = c.text end
    end
    return "[result of tool call " .. tostring(p.tool_call_id) .. (p.is_error and " (error)" or "")
        .. "]: " .. table.concat(b, "\n")
end

-- IR messages whose every tool_result answers a tool_call of the assistant
-- turn just before it (consecutive messages of one role are one turn), as
-- Anthropic ("each tool_result block must have a corresponding tool_use
-- block in the previous message" — https://docs.anthropic.com/en/docs/
-- agents-and-tools/tool-use/implement-tool-use) and Gemini (a
-- functionResponse answers a functionCall of the previous model turn —
-- https://ai.google.dev/gemini-api/docs/function-calling) require. A result
-- without its call (a Responses client continuing with previous_response_id,
-- a trimmed history) or a second result for one call becomes a user text part
-- naming the call id, so the model still sees it. The other half of the rule
-- (every call answered in the next turn: Anthropic's "tool_use ids were found
-- without tool_result blocks immediately after", Gemini's "number of function
-- response parts is equal to the number of function call parts") is kept by
-- an error result saying none was recorded, for a call a later turn left
-- unanswered; a call in the last turn (awaiting its result) stays as it is.
-- Returns the input when nothing changes.
function C.pair_tool_results(messages)
    return answer_every_call(orphans_to_text(messages))
end

-- A result for each call of an assistant turn that a user turn follows.
function answer_every_call(messages)
    local out, changed, i, n = {}, false, 1, #messages
    while i <= n do
        local m = messages[i]
        out[#out + 1] = m
        i = i + 1
        if m.role == "assistant" then
            -- the rest of this assistant run, then the user run after it
            local calls, order = {}, {}
            for _, p in ipairs(m.content or {}) do
                if p.type == "tool_call" and p.id then calls[p.id] = true; order[#order + 1] = p.id end
            end
            while i <= n and messages[i].role == "assistant" do
                for _, p in ipairs(messages[i].content or {}) do
                    if p.type == "tool_call" and p.id then calls[p.id] = true; order[#order + 1] = p.id end
                end
                out[#out + 1] = messages[i]
                i = i + 1
            end
            if i <= n and #order > 0 then
                local answered = {}
                local j = i
                while j <= n and messages[j].role ~= "assistant" do
                    for _, p in ipairs(messages[j].content or {}) do
                        if p.type == "tool_result" then answered[p.tool_call_id or ""] = true end
                    end
                    j = j + 1
                end
                local missing = {}
                for _, id in ipairs(order) do
                    if not answered[id] then
                        answered[id] = true
                        missing[#missing + 1] = { type = "tool_result", tool_call_id = id, is_error = true,
                            content = { { type = "text", text = "(no result was recorded for this call)" } } }
                    end
                end
                if #missing > 0 then
                    changed = true
                    local first = messages[i]
                    local copy = {}
                    for k, v in pairs(first) do copy[k] = v end
                    copy.content = missing
                    for _, p in ipairs(first.content or {}) do copy.content[#copy.content + 1] = p end
                    out[#out + 1] = copy
                    i = i + 1
                end
            end
        end
    end
    if not changed then return messages end
    return out
end

function orphans_to_text(messages)
    local calls, answered, prev_role = {}, {}, nil
    local out, changed = {}, false
    for i, m in ipairs(messages or {}) do
        if m.role == "assistant" then
            if prev_role ~= "assistant" then calls, answered = {}, {} end
            for _, p in ipairs(m.content or {}) do
                if p.type == "tool_call" and p.id then calls[p.id] = true end
            end
            out[i] = m
        else
            local content, mine = nil, false
            for j, p in ipairs(m.content or {}) do
                if p.type == "tool_result" then
                    local id = p.tool_call_id
                    if id and calls[id] and not answered[id] then
                        answered[id] = true
                    else
                        if not mine then
                            content, mine = {}, true
                            for k = 1, j - 1 do content[k] = m.content[k] end
                        end
                        p = { type = "text", text = orphan_text(p) }
                    end
                end
                if mine then content[#content + 1] = p end
            end
            if mine then
                changed = true
                local copy = {}
                for k, v in pairs(m) do copy[k] = v end
                copy.content = content
                out[i] = copy
            else
                out[i] = m
            end
        end
        prev_role = m.role
    end
    if not changed then return messages end
    return out
end

-- ---------------------------------------------------------------- tool-call ids

-- Ids in a target's alphabet, reversibly. Anthropic ids must match
-- ^[a-zA-Z0-9_-]+$ (tool_use.id, https://docs.anthropic.com/en/api/messages);
-- other suppliers (Kimi's "functions.Bash:0") use more. An id outside the
-- alphabet (or one that already looks mapped) becomes ID_PREFIX followed by
-- the id with every byte but [A-Za-z0-9-] written as _XX (hex); unmap_id
-- turns it back. The same mapping serves requests and answers, so a history
-- a client keeps maps back to the supplier's own ids.
local ID_PREFIX = "slid_"

-- (The gsub callbacks live out here: a function that makes a closure
-- cannot be compiled by LuaJIT 2.1, and these run for every tool id of a
-- conversation, which kept the codecs' message loops interpreted.)
local function hex_escape(c) return ("_%02X"):format(c:byte()) end
local function hex_unescape(h) return string.char(tonumber(h, 16)) end

function C.map_id(id, ok_pattern)
    if type(id) ~= "string" then return id end
    if id:match(ok_pattern) and id:sub(1, #ID_PREFIX) ~= ID_PREFIX then return id end
    return ID_PREFIX .. id:gsub("[^A-Za-z0-9%-]", hex_escape)
end

function C.unmap_id(id)
    if type(id) ~= "string" or id:sub(1, #ID_PREFIX) ~= ID_PREFIX then return id end
    return (id:sub(#ID_PREFIX + 1):gsub("_(%x%x)", hex_unescape))
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

-- ---------------------------------------------------------------- files

local STORE_TITLE = { openai = "an OpenAI", anthropic = "an Anthropic" }

-- A file by id belongs to the Files API that issued it (source.store:
-- "openai" for Chat and Responses, "anthropic"); no other vendor can
-- resolve it. -> nil, the 400 message naming the first file of req whose
-- id is from a store other than `store` (any store when `store` is nil), for
-- a supplier called `supplier_title`; true when there is none.
local NONE = {}

-- The 400 message for src when it is a file of a store other than `store`.
local function foreign_file(src, store, supplier_title)
    if type(src) == "table" and src.kind == "file" and (store == nil or (src.store and src.store ~= store)) then
        return "file " .. tostring(src.file_id) .. ": " .. (STORE_TITLE[src.store] or "a")
            .. " file_id cannot be sent to " .. supplier_title .. " supplier, whose Files API "
            .. "does not know it; send the file's data instead"
    end
end

-- The first such file among parts and the parts of their tool results.
local function first_foreign_file(parts, store, supplier_title)
    for _, p in ipairs(parts or NONE) do
        local why = foreign_file(p.source, store, supplier_title)
        if why then return why end
        if p.type == "tool_result" and type(p.content) == "table" then
            for _, c in ipairs(p.content) do
                why = foreign_file(c.source, store, supplier_title)
                if why then return why end
            end
        end
    end
end

function C.check_file_ids(req, store, supplier_title)
    local why = first_foreign_file(req.system, store, supplier_title)
    if why then return nil, why end
    for _, m in ipairs(req.messages or NONE) do
        why = first_foreign_file(m.content, store, supplier_title)
        if why then return nil, why end
    end
    return true
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VAL = {}
for i = 1, 64 do B64_VAL[B64:byte(i)] = i - 1 end

-- Standard base64 -> bytes; nil when s is not base64 (whitespace is skipped).
function C.base64_decode(s)
    if type(s) ~= "string" then return nil end
    s = s:gsub("%s", "")
    if #s % 4 ~= 0 or s:find("[^%w%+/=]") or s:find("=[^=]") then return nil end
    local out, n = {}, 0
    for i = 1, #s, 4 do
        local a, b, c, d = s:byte(i, i + 3)
        local va, vb, vc, vd = B64_VAL[a], B64_VAL[b], B64_VAL[c], B64_VAL[d]
        if not va or not vb then return nil end
        local v = va * 262144 + vb * 4096 + (vc or 0) * 64 + (vd or 0)
        n = n + 1
        out[n] = string.char(math.floor(v / 65536) % 256)
        if c ~= 61 then n = n + 1; out[n] = string.char(math.floor(v / 256) % 256) end
        if d ~= 61 then n = n + 1; out[n] = string.char(v % 256) end
    end
    return table.concat(out)
end

-- Media types by file extension, for files that come without one.
local EXT_MIME = { pdf = "application/pdf", txt = "text/plain", md = "text/markdown", markdown = "text/markdown",
                   csv = "text/csv", html = "text/html", htm = "text/html", json = "application/json",
                   xml = "text/xml", py = "text/x-python", js = "text/javascript", c = "text/x-c",
                   png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
                   webp = "image/webp" }

local function is_text_mime(m)
    return m:find("^text/") ~= nil or m == "application/json" or m == "application/xml"
end

-- An OpenAI file's `file_data` (a data URL, or — as the Chat API also
-- takes it — bare base64 named by `filename`) -> an IR document source.
-- Text files become text (Anthropic takes documents only as PDF or plain
-- text, and Gemini text parts); nil, err when file_data is neither.
function C.file_source(file_data, filename)
    local mime, data = C.parse_data_url(file_data)
    if not mime then
        if type(file_data) ~= "string" or file_data == "" or file_data:find("[^%w%+/=%s]") then
            return nil, "file_data must be a data URL or base64"
        end
        local ext = type(filename) == "string" and filename:lower():match("%.(%w+)$")
        mime, data = EXT_MIME[ext] or "application/pdf", file_data
    end
    if is_text_mime(mime) then
        local text = C.base64_decode(data)
        if text then return { kind = "text", media_type = mime, data = text } end
    end
    return { kind = "base64", media_type = mime, data = data }
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
