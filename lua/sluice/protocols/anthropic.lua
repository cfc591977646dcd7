-- sluice.protocols.anthropic — the Anthropic Messages codec.
--
-- Turns /v1/messages requests, responses, errors and SSE streams into the
-- IR (lua/sluice/ir.lua) and back. It knows nothing about other protocols:
-- translate.lua composes it with another codec. Anthropic reports input
-- tokens exclusive of cache reads/writes; the IR is inclusive, so usage is
-- converted at both edges.
--
-- Thinking signatures and redacted thinking are bound to their provider.
-- Towards an Anthropic upstream only parts whose origin is Anthropic are
-- sent. Towards an Anthropic client, another provider's opaque state (a
-- Gemini thoughtSignature, a Responses encrypted_content) rides in the
-- signature/data field inside the envelope "sluice1:<origin>:<kind>:<value>"
-- shared with the other codecs, so it comes back on the next turn and is
-- unwrapped to its origin; thinking without any signature is shown with an
-- empty one and dropped when the history comes back.
--
-- IR extensions used here (additive, see the report): parts may carry
-- `origin = "<protocol>"` (set on thinking parts decoded here); image and
-- document sources may be { kind = "file", file_id = s }; tools may carry
-- `strict`; encode opts may carry `origin` (the upstream protocol) and
-- `created`.

local json = require("sluice.json")
local ir = require("sluice.ir")
local S = require("sluice.ir_stream")
local common = require("sluice.protocols.common")

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local setmetatable, getmetatable = setmetatable, getmetatable
local buffer = require("string.buffer")
local encode = json.encode
local array = json.array
local null = json.null

local M = { name = "anthropic" }

-- ================================================================= facts
-- What sluice knows about this protocol outside its codec: the registry
-- (protocols/init.lua) checks these and config, router, upstream,
-- toolnames and host read them. Their meaning: protocols/README.md.

M.title = "Anthropic"

M.endpoints = {
    { path = "/v1/messages", kind = "generate" },
    { path = "/v1/messages/count_tokens", kind = "count_tokens" },
}
-- Upstream path for count_tokens: the only protocol sluice counts tokens
-- for (other suppliers get sluice.estimate's answer, in this shape).
M.count_tokens = "/v1/messages/count_tokens"

-- GET /v1/models is shared with OpenAI: a client that sends
-- anthropic-version is an Anthropic client and gets this list.
M.models = {
    path = "/v1/models",
    header = "anthropic-version",
    list = function(ids)
        local data = {}
        for i, id in ipairs(ids) do
            data[i] = { type = "model", id = id, display_name = id, created_at = "1970-01-01T00:00:00Z" }
        end
        return { data = array(data), has_more = false, first_id = ids[1] or null,
                 last_id = ids[#ids] or null }
    end,
}
-- A path sluice cannot classify that contains this answers in this shape.
M.guess = { contains = "/messages", rank = 1 }

M.credential = { header = "x-api-key" }
-- Where a request asks for its output limit (a configured cap lowers it on passthrough).
M.output_limit = { "max_tokens" }

-- Extended thinking: budget_tokens must be at least 1024 and below
-- max_tokens, or Anthropic answers 400
-- (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking).
-- Under an output cap the budget keeps 1024 tokens of the cap for the answer
-- itself (a budget of cap - 1 is valid but leaves the answer one token);
-- nil when that leaves less than the minimum budget: no thinking then.
local MIN_BUDGET = 1024
local function budget_under_cap(budget, cap)
    if budget > cap - MIN_BUDGET then budget = cap - MIN_BUDGET end
    if budget < MIN_BUDGET then return nil end
    return budget
end

-- A passthrough body whose max_tokens the cap just lowered (a copy, see
-- upstream): a thinking budget sized for the client's max_tokens (Claude
-- Code sends 32000 with budget_tokens 31999) must shrink with it.
function M.fit_output(body, cap)
    local th = body.thinking
    if type(th) ~= "table" or type(th.budget_tokens) ~= "number" then return body end
    local budget = budget_under_cap(th.budget_tokens, cap)
    if not budget then
        body.thinking = nil
    elseif budget ~= th.budget_tokens then
        local copy = {}
        for k, v in pairs(th) do copy[k] = v end
        copy.budget_tokens = budget
        body.thinking = copy
    end
    return body
end
-- Sent upstream unless a same-protocol client sent its own value.
M.upstream_headers = { { "anthropic-version", "2023-06-01" } }
M.tool_names = { max = 128, pattern = "^[a-zA-Z0-9_-]+$", bad = "[^a-zA-Z0-9_-]" }
-- tool_use ids: how sluice makes one. No pattern: any id may reach this
-- codec, which maps ids outside Anthropic's alphabet reversibly (id_out /
-- unmap_id below), so a model's own id (Kimi's functions.f:0) survives the
-- round trip instead of being replaced.
M.tool_call_ids = { prefix = "toolu_" }

M.terminal = { { event = "message_stop" } }
-- The events that carry a usage object (input in message_start, output in
-- message_delta): the core keeps the first and the latest of them on a
-- passthrough stream, for the record, without reading the rest.
M.usage_events = { { event = "message_start" }, { event = "message_delta" } }
-- The top-level member of a whole answer that carries its usage.
M.answer_usage = "usage"

function M.path(model, stream)
    return "/v1/messages"
end
-- ============================================================ end of facts

local DEFAULT_MAX_TOKENS = 8192

-- ---------------------------------------------------------------- helpers

local function nonnull(v)
    if v == null then return nil end
    return v
end

local as_object, unwrap = common.as_object, common.unwrap

-- Tool-call ids Anthropic accepts ("^[a-zA-Z0-9_-]+$", tool_use.id in
-- https://docs.anthropic.com/en/api/messages): others' ids are mapped into
-- that alphabet on every id sluice writes (requests to an Anthropic
-- supplier, answers to an Anthropic client) and mapped back on every id it
-- reads, so a Kimi "functions.Bash:0" survives a round trip (common.map_id).
local ID_OK = "^[a-zA-Z0-9_-]+$"
local function id_out(id) return common.map_id(id, ID_OK) end
local unmap_id = common.unmap_id

-- Anthropic refuses text blocks that are empty or only whitespace ("text
-- content blocks must contain non-whitespace text"); a "\n\n" before tool
-- calls is common in other providers' answers.
local function blank(s)
    return s == nil or not s:find("%S")
end

-- Opaque state towards a client: another provider's in the envelope (see top).
local function wrap(origin, kind, value)
    return common.wrap(M.name, origin, kind, value)
end

-- A thinking or redacted_thinking block from a client -> IR part.
local function decode_thinking(b)
    local opaque = b.type == "thinking" and nonnull(b.signature) or nonnull(b.data)
    local o, k, v = unwrap(opaque)
    if o then
        if k == "data" then return { type = "redacted_thinking", data = v, origin = o } end
        return { type = "thinking", text = b.thinking or "", signature = v, origin = o }
    end
    if b.type == "redacted_thinking" then
        return { type = "redacted_thinking", data = b.data, origin = "anthropic" }
    end
    return { type = "thinking", text = b.thinking or "", signature = opaque, origin = "anthropic" }
end

local function str(v) return type(v) == "string" and v or nil end

-- A source whose fields are not strings is unusable: nil, as for an unknown kind.
local function decode_source(src)
    if type(src) ~= "table" then return nil end
    local k = src.type
    if k == "base64" then
        if not (str(src.data) and str(src.media_type)) then return nil end
        return { kind = "base64", media_type = src.media_type, data = src.data }
    elseif k == "url" then
        if not str(src.url) then return nil end
        return { kind = "url", url = src.url }
    elseif k == "text" then
        if not str(src.data) then return nil end
        return { kind = "text", media_type = str(src.media_type) or "text/plain", data = src.data }
    elseif k == "file" then
        if not str(src.file_id) then return nil end
        return { kind = "file", file_id = src.file_id, store = "anthropic" }
    elseif k == "content" then
        -- A document made of blocks: keep its text.
        local b = buffer.new()
        if type(src.content) == "string" then
            b:put(src.content)
        elseif type(src.content) == "table" then
            for _, c in ipairs(src.content) do
                if type(c) == "table" and c.type == "text" and str(c.text) then b:put(c.text, "\n") end
            end
        end
        return { kind = "text", media_type = "text/plain", data = b:tostring() }
    end
    return nil
end

local function encode_source(src, is_document)
    if not src then return nil end
    local k = src.kind
    if k == "base64" then
        return { type = "base64", media_type = src.media_type, data = src.data }
    elseif k == "url" then
        return { type = "url", url = src.url }
    elseif k == "text" then
        if is_document then
            return { type = "text", media_type = "text/plain", data = src.data }
        end
        return nil
    elseif k == "file" then
        return { type = "file", file_id = src.file_id }
    end
    return nil
end

-- Content blocks (text/image/document) -> IR parts; used for messages,
-- system and tool_result content.
local decode_block

local function decode_blocks(content, origin_role)
    local parts = {}
    if type(content) == "string" then
        parts[1] = { type = "text", text = content }
        return parts
    end
    if type(content) ~= "table" then return parts end
    for _, b in ipairs(content) do
        local p = decode_block(b, origin_role)
        if p then parts[#parts + 1] = p end
    end
    return parts
end

function decode_block(b, role)
    if type(b) ~= "table" then return nil end
    local t = b.type
    if t == "text" then
        -- text that is not a string counts as missing (the encoders write it as is)
        return { type = "text", text = type(b.text) == "string" and b.text or "",
                 cache_control = nonnull(b.cache_control) }
    elseif t == "image" then
        local src = decode_source(b.source)
        if not src then return nil end
        return { type = "image", source = src }
    elseif t == "document" then
        local src = decode_source(b.source)
        if not src then return nil end
        return { type = "document", source = src, title = nonnull(b.title) }
    elseif t == "tool_use" then
        return { type = "tool_call", id = unmap_id(b.id), name = b.name, arguments = as_object(b.input) }
    elseif t == "tool_result" then
        return {
            type = "tool_result", tool_call_id = unmap_id(b.tool_use_id),
            content = decode_blocks(b.content), is_error = b.is_error == true,
        }
    elseif t == "thinking" or t == "redacted_thinking" then
        return decode_thinking(b)
    end
    -- server_tool_use, web_search_tool_result, container_upload...: no IR
    -- equivalent; they cannot be translated.
    return nil
end

local STOP_IN = {
    end_turn = "end_turn", max_tokens = "max_tokens", tool_use = "tool_use",
    stop_sequence = "stop_sequence", pause_turn = "pause_turn", refusal = "refusal",
    model_context_window_exceeded = "max_tokens",
}
local STOP_OUT = {
    end_turn = "end_turn", max_tokens = "max_tokens", tool_use = "tool_use",
    stop_sequence = "stop_sequence", pause_turn = "pause_turn", refusal = "refusal",
    content_filter = "refusal", error = "end_turn",
}

local function usage_in(u)
    if type(u) ~= "table" then return nil end
    local n = ir.tokens
    local r = ir.usage_from_exclusive(n(u.input_tokens), n(u.output_tokens),
        n(u.cache_read_input_tokens), n(u.cache_creation_input_tokens))
    local d = nonnull(u.output_tokens_details)
    if type(d) == "table" then r.reasoning_tokens = n(d.thinking_tokens) end
    return r
end
M.decode_usage = usage_in

local function usage_out(u)
    u = u or {}
    return {
        input_tokens = ir.usage_to_exclusive(u) or 0,
        cache_creation_input_tokens = u.cache_write_tokens or 0,
        cache_read_input_tokens = u.cache_read_tokens or 0,
        output_tokens = u.output_tokens or 0,
    }
end

-- ---------------------------------------------------------------- request

local TOOL_CHOICE_IN = { auto = "auto", any = "required", none = "none", tool = "tool" }

function M.decode_request(body, info)
    if type(body) ~= "table" then return nil, "request body must be a JSON object" end
    if type(body.model) ~= "string" then return nil, "model: required string" end
    if type(body.messages) ~= "table" then return nil, "messages: required array" end
    local req = {
        model = body.model, stream = body.stream == true,
        max_tokens = nonnull(body.max_tokens), temperature = nonnull(body.temperature),
        top_p = nonnull(body.top_p), top_k = nonnull(body.top_k),
    }
    if body.system ~= nil and body.system ~= null then
        req.system = decode_blocks(body.system)
        -- Claude Code's per-request billing line (a new value every time):
        -- marked so translation can leave it out (translate, compat.billing_header).
        for _, p in ipairs(req.system) do
            if p.type == "text" and type(p.text) == "string" and p.text:find("^x%-anthropic%-billing%-header:") then p.billing_header = true end
        end
    end
    local msgs = {}
    for i, m in ipairs(body.messages) do
        if type(m) ~= "table" then return nil, "messages." .. (i - 1) .. ": must be an object" end
        if m.role == "system" then
            -- Mid-conversation system prompt: the IR has one system; append.
            req.system = req.system or {}
            for _, p in ipairs(decode_blocks(m.content)) do req.system[#req.system + 1] = p end
        elseif m.role == "user" or m.role == "assistant" then
            msgs[#msgs + 1] = { role = m.role, content = decode_blocks(m.content) }
        else
            return nil, "messages." .. (i - 1) .. ".role: unknown role " .. tostring(m.role)
        end
    end
    req.messages = msgs
    if type(body.tools) == "table" then
        local tools = {}
        for i, t in ipairs(body.tools) do
            if type(t) ~= "table" then return nil, "tools." .. (i - 1) .. ": must be an object" end
            -- Versioned server tools (web_search_20250305, bash_...) have no
            -- schema and cannot run anywhere else.
            if t.input_schema ~= nil and (t.type == nil or t.type == "custom") then
                tools[#tools + 1] = { name = t.name, description = nonnull(t.description),
                                      parameters = t.input_schema, strict = nonnull(t.strict) }
            elseif type(t.type) == "string" and t.type:find("^web_search_") then
                req.web_search = true
            elseif t.type ~= nil then
                req.dropped = req.dropped or {}
                req.dropped[#req.dropped + 1] = "tool " .. tostring(t.type)
            end
        end
        req.tools = tools
    end
    local tc = nonnull(body.tool_choice)
    if type(tc) == "table" and TOOL_CHOICE_IN[tc.type] then
        req.tool_choice = { type = TOOL_CHOICE_IN[tc.type], name = tc.name }
        if tc.disable_parallel_tool_use == true then req.parallel_tool_calls = false end
    end
    if type(body.stop_sequences) == "table" and #body.stop_sequences > 0 then
        req.stop = body.stop_sequences
    end
    local th = nonnull(body.thinking)
    if type(th) == "table" then
        if th.type == "enabled" then
            req.thinking = { enabled = true, budget_tokens = type(th.budget_tokens) == "number" and th.budget_tokens or nil }
        elseif th.type == "adaptive" then
            req.thinking = { enabled = true }
        elseif th.type == "disabled" then
            req.thinking = { enabled = false }
        end
    end
    local oc = nonnull(body.output_config)
    if type(oc) == "table" then
        if oc.effort and oc.effort ~= null then
            req.thinking = req.thinking or { enabled = true }
            req.thinking.effort = oc.effort
        end
        local f = nonnull(oc.format)
        if type(f) == "table" and f.type == "json_schema" then
            req.response_format = { type = "json_schema", schema = f.schema, name = nonnull(f.name) }
        end
    end
    -- The structured-outputs beta (header structured-outputs-2025-11-13) put
    -- the same object at the top level as `output_format`
    -- (https://docs.anthropic.com/en/docs/build-with-claude/structured-outputs);
    -- clients still send it.
    local of = nonnull(body.output_format)
    if not req.response_format and type(of) == "table" and of.type == "json_schema" then
        req.response_format = { type = "json_schema", schema = nonnull(of.schema), name = nonnull(of.name) }
    end
    local md = nonnull(body.metadata)
    if type(md) == "table" and type(md.user_id) == "string" then req.user = md.user_id end
    return req
end

local function thinking_allowed(p, opts)
    return p.origin == "anthropic" or (opts and opts.origin == "anthropic" and p.origin == nil)
end

-- Thinking towards a client: own signatures as they are, others wrapped.
local function client_thinking(p, opts)
    local origin = p.origin or opts.origin
    if p.type == "redacted_thinking" then
        return { type = "redacted_thinking", data = wrap(origin, "data", p.data or "") }
    end
    local sig = p.signature and p.signature ~= "" and wrap(origin, "sig", p.signature) or ""
    return { type = "thinking", thinking = p.text or "", signature = sig }
end

local function encode_part(p, opts)
    local t = p.type
    if t == "text" then
        if blank(p.text) then return nil end -- rejected by Anthropic (see blank)
        return { type = "text", text = p.text, cache_control = p.cache_control }
    elseif t == "image" then
        local src = encode_source(p.source, false)
        if not src then return nil end
        return { type = "image", source = src }
    elseif t == "document" then
        local src = encode_source(p.source, true)
        if not src then return nil end
        return { type = "document", source = src, title = p.title }
    elseif t == "tool_call" then
        local args = p.arguments
        if type(args) == "string" then args = json.decode(args) end
        return { type = "tool_use", id = id_out(p.id), name = p.name, input = as_object(args) }
    elseif t == "tool_result" then
        local content = array()
        for _, c in ipairs(p.content or {}) do
            local b = encode_part(c, opts)
            if b then content[#content + 1] = b end
        end
        local r = { type = "tool_result", tool_use_id = id_out(p.tool_call_id) }
        if #content > 0 then r.content = content end
        if p.is_error then r.is_error = true end
        return r
    elseif t == "thinking" then
        if not thinking_allowed(p, opts) or not p.signature or p.signature == "" then return nil end
        return { type = "thinking", thinking = p.text or "", signature = p.signature }
    elseif t == "redacted_thinking" then
        if not thinking_allowed(p, opts) then return nil end
        return { type = "redacted_thinking", data = p.data }
    end
    return nil
end

-- Messages: results without their call become text (common.pair_tool_results),
-- merge same-role runs (so every tool_use is answered in the very next user
-- message), put tool_result blocks first in a user message, drop empty
-- messages (an all-whitespace assistant turn among them).
local function encode_messages(req, opts)
    local out = array()
    local last
    for _, m in ipairs(common.pair_tool_results(req.messages)) do
        local blocks = {}
        for _, p in ipairs(m.content or {}) do
            local b = encode_part(p, opts)
            if b then blocks[#blocks + 1] = b end
        end
        if #blocks > 0 then
            if last and last.role == m.role then
                for _, b in ipairs(blocks) do last.content[#last.content + 1] = b end
            else
                last = { role = m.role, content = array(blocks) }
                out[#out + 1] = last
            end
        end
    end
    for _, m in ipairs(out) do
        if m.role == "user" then
            local results, rest = array(), {}
            for _, b in ipairs(m.content) do
                if b.type == "tool_result" then results[#results + 1] = b else rest[#rest + 1] = b end
            end
            if #results > 0 and #rest > 0 then
                for _, b in ipairs(rest) do results[#results + 1] = b end
                m.content = results
            end
        end
    end
    return out
end

-- Effort buckets (PROTOCOLS §6.6 convention) -> a thinking budget.
local EFFORT_BUDGET = { minimal = 1024, low = 2048, medium = 8192, high = 16384, xhigh = 32768,
                        max = 32768 }

-- With thinking on, Anthropic wants the last assistant turn of an active
-- tool loop to start with a thinking block. A history produced elsewhere
-- cannot satisfy that, so thinking is turned off for such a request.
local function tool_loop_without_thinking(messages)
    local last = messages[#messages]
    if not last or last.role ~= "user" or last.content[1].type ~= "tool_result" then return false end
    local prev = messages[#messages - 1]
    if not prev or prev.role ~= "assistant" then return false end
    local first = prev.content[1].type
    return first ~= "thinking" and first ~= "redacted_thinking"
end

function M.encode_request(req, opts)
    opts = opts or {}
    -- Anthropic's Files API cannot resolve an OpenAI file id
    -- (https://docs.anthropic.com/en/docs/build-with-claude/files).
    local ok, ferr = common.check_file_ids(req, "anthropic", "an Anthropic")
    if not ok then return nil, ferr end
    local body = {
        model = opts.model or req.model,
        messages = encode_messages(req, opts),
        max_tokens = req.max_tokens or math.min(DEFAULT_MAX_TOKENS, opts.max_output_tokens or DEFAULT_MAX_TOKENS),
        top_p = req.top_p, top_k = req.top_k,
    }
    if opts.stream ~= nil then body.stream = opts.stream else body.stream = req.stream end
    if req.temperature then
        local t = req.temperature
        body.temperature = t > 1 and 1 or (t < 0 and 0 or t)
    end
    if req.system and #req.system > 0 then
        local sys = array()
        for _, p in ipairs(req.system) do
            if p.type == "text" and not blank(p.text) then
                sys[#sys + 1] = { type = "text", text = p.text, cache_control = p.cache_control }
            end
        end
        if #sys > 0 then body.system = sys end
    end
    if req.tools and #req.tools > 0 then
        local tools = array()
        for _, t in ipairs(req.tools) do
            local schema = common.object_schema(t.parameters)
            tools[#tools + 1] = { name = t.name, description = t.description, input_schema = schema }
        end
        body.tools = tools
    end
    if req.web_search then
        -- The hosted web search server tool
        -- (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool).
        body.tools = body.tools or array()
        body.tools[#body.tools + 1] = { type = "web_search_20250305", name = "web_search" }
    end
    local tc = req.tool_choice
    if tc and body.tools then
        if tc.type == "auto" then body.tool_choice = { type = "auto" }
        elseif tc.type == "required" then body.tool_choice = { type = "any" }
        elseif tc.type == "none" then body.tool_choice = { type = "none" }
        elseif tc.type == "tool" then body.tool_choice = { type = "tool", name = tc.name } end
    end
    if req.parallel_tool_calls == false and body.tools then
        body.tool_choice = body.tool_choice or { type = "auto" }
        if body.tool_choice.type ~= "none" then body.tool_choice.disable_parallel_tool_use = true end
    end
    if req.stop and #req.stop > 0 then body.stop_sequences = req.stop end
    local th = req.thinking
    if th and th.enabled then
        local forced = body.tool_choice and (body.tool_choice.type == "any" or body.tool_choice.type == "tool")
        if not forced and not tool_loop_without_thinking(body.messages) then
            local budget = th.budget_tokens or EFFORT_BUDGET[th.effort or "medium"] or 8192
            if budget < MIN_BUDGET then budget = MIN_BUDGET end
            if body.max_tokens <= budget then body.max_tokens = budget + 4096 end
            -- Under a configured output cap, the budget shrinks to fit below
            -- it with room left for the answer; no room, no thinking.
            local cap = opts.max_output_tokens
            if cap and body.max_tokens > cap then
                body.max_tokens = cap
                budget = budget_under_cap(budget, cap)
            end
            if budget then
                body.thinking = { type = "enabled", budget_tokens = budget }
                -- Thinking forbids changing temperature and top_k.
                body.temperature, body.top_k = nil, nil
                if body.top_p and body.top_p < 0.95 then body.top_p = nil end
            end
        end
    end
    local rf = req.response_format
    if rf and rf.type == "json_schema" and rf.schema then
        body.output_config = { format = { type = "json_schema", schema = rf.schema } }
    end
    if req.user then body.metadata = { user_id = req.user } end
    return body
end

-- ---------------------------------------------------------------- response

function M.decode_response(body)
    if type(body) ~= "table" then return nil, "response body must be a JSON object" end
    if body.type == "error" then return nil, "upstream returned an error object" end
    if type(body.content) ~= "table" then return nil, "the answer has no content array" end
    local content = {}
    for _, b in ipairs(type(body.content) == "table" and body.content or {}) do
        local p = decode_block(b, "assistant")
        if p and p.type ~= "tool_result" then content[#content + 1] = p end
    end
    return {
        id = nonnull(body.id), model = nonnull(body.model), content = content,
        stop_reason = STOP_IN[nonnull(body.stop_reason) or "end_turn"] or "end_turn",
        stop_sequence = nonnull(body.stop_sequence), usage = usage_in(body.usage) or {},
    }
end

local function response_id(resp, opts)
    if opts.id then return opts.id end
    if type(resp.id) == "string" and resp.id:sub(1, 4) == "msg_" then return resp.id end
    return ir.new_id("msg_")
end

function M.encode_response(resp, opts)
    opts = opts or {}
    local content = array()
    for _, p in ipairs(resp.content or {}) do
        local b
        if p.type == "thinking" or p.type == "redacted_thinking" then
            b = client_thinking(p, opts)
        else
            b = encode_part(p, opts)
        end
        if b then content[#content + 1] = b end
    end
    return {
        id = response_id(resp, opts), type = "message", role = "assistant",
        model = opts.model or resp.model, content = content,
        stop_reason = STOP_OUT[resp.stop_reason or "end_turn"] or "end_turn",
        stop_sequence = resp.stop_reason == "stop_sequence" and resp.stop_sequence or null,
        usage = usage_out(resp.usage),
    }
end

-- ---------------------------------------------------------------- errors

local ERR_IN = {
    invalid_request_error = "invalid_request", authentication_error = "authentication",
    permission_error = "permission", not_found_error = "not_found",
    request_too_large = "request_too_large", rate_limit_error = "rate_limit",
    api_error = "api_error", overloaded_error = "overloaded", timeout_error = "timeout",
    billing_error = "permission",
}
local ERR_OUT = {
    invalid_request = "invalid_request_error", authentication = "authentication_error",
    permission = "permission_error", not_found = "not_found_error",
    request_too_large = "request_too_large", rate_limit = "rate_limit_error",
    api_error = "api_error", overloaded = "overloaded_error", timeout = "timeout_error",
}

local function error_from_object(status, e)
    local etype = ERR_IN[e.type] or ir.error_type_for_status(status or 500)
    local msg = type(e.message) == "string" and e.message or "upstream error"
    return ir.error(status or ir.ERROR_STATUS[etype] or 500, msg, etype)
end

function M.decode_error(status, body)
    if type(body) == "string" then
        local v = json.decode(body)
        if type(v) == "table" then
            body = v
        else
            local msg = body ~= "" and body:sub(1, 2000) or ("upstream returned HTTP " .. tostring(status))
            return ir.error(status or 502, msg)
        end
    end
    if type(body) == "table" and type(body.error) == "table" then
        return error_from_object(status, body.error)
    end
    return ir.error(status or 502, "upstream returned HTTP " .. tostring(status))
end

function M.encode_error(err)
    local etype = ERR_OUT[err.type] and err.type or ir.error_type_for_status(err.status or 500)
    local status = err.status or ir.ERROR_STATUS[etype] or 500
    if etype == "overloaded" then status = 529 end
    return status, { type = "error", error = { type = ERR_OUT[etype], message = err.message or "" } }
end

-- ---------------------------------------------------------------- stream decoder

local Decoder = S.decoder()

function M.stream_decoder(opts)
    return setmetatable({
        map = {},       -- anthropic block index -> IR index (false: untranslatable block)
        blocks = S.blocks(),
        u = {},         -- exclusive counts as last reported
        errored = false,
    }, Decoder)
end

function Decoder:usage_event()
    local u = self.u
    local r = ir.usage_from_exclusive(u.input, u.output, u.cache_read, u.cache_write)
    r.reasoning_tokens = u.reasoning
    return r
end

-- Later reports replace earlier ones per field (message_delta repeats them).
function Decoder:take_usage(x)
    if type(x) ~= "table" then return end
    local u, n = self.u, ir.tokens
    local v = n(x.input_tokens); if v then u.input = v end
    v = n(x.output_tokens); if v then u.output = v end
    v = n(x.cache_read_input_tokens); if v then u.cache_read = v end
    v = n(x.cache_creation_input_tokens); if v then u.cache_write = v end
    local d = nonnull(x.output_tokens_details)
    if type(d) == "table" and n(d.thinking_tokens) then u.reasoning = d.thinking_tokens end
end

local BLOCK_KIND = { text = "text", thinking = "thinking", redacted_thinking = "redacted_thinking",
                     tool_use = "tool_call" }

-- A content block's delta, the event nearly every one of a stream is: read
-- through a selector (S.fields), no table made for it.
local DELTA = json.selector({ "type", "index", "delta.type", "delta.text", "delta.partial_json",
                              "delta.thinking", "delta.signature" })

function Decoder:delta(out, index, dt, text, partial_json, thinking, signature)
    local idx = self.map[index]
    if idx == nil or idx == false then return out end
    if dt == "text_delta" then
        out[1] = { type = "text", index = idx, text = text }
    elseif dt == "input_json_delta" then
        if partial_json and partial_json ~= "" then
            out[1] = { type = "tool_args", index = idx, json = partial_json }
        end
    elseif dt == "thinking_delta" then
        out[1] = { type = "thinking", index = idx, text = thinking }
    elseif dt == "signature_delta" then
        out[1] = { type = "signature", index = idx, signature = signature }
    end
    return out
end

function Decoder:feed(ev)
    local out = {}
    if ev.event == "content_block_delta" then
        local ok, t, index, dt, text, pj, thinking, sig = S.fields(self, ev, out, DELTA)
        if not ok then return out end
        -- (the data's own type wins over the event name: then it is read whole below)
        if t == nil or t == "content_block_delta" then
            return self:delta(out, index, dt, text, pj, thinking, sig)
        end
    end
    local obj = S.json(self, ev, out)
    if obj == nil then return out end
    local t = obj.type or ev.event
    if t == "content_block_delta" then
        local delta = obj.delta
        if type(delta) ~= "table" then return out end
        self:delta(out, obj.index, delta.type, delta.text, delta.partial_json, delta.thinking, delta.signature)
    elseif t == "content_block_start" then
        local b = obj.content_block
        local kind = type(b) == "table" and BLOCK_KIND[b.type]
        if not kind then
            self.map[obj.index] = false
            return out
        end
        local idx = self.blocks:start(out, kind, { id = unmap_id(b.id), name = b.name, data = b.data })
        self.map[obj.index] = idx
        if kind == "text" and type(b.text) == "string" and b.text ~= "" then
            out[2] = { type = "text", index = idx, text = b.text }
        elseif kind == "thinking" and type(b.thinking) == "string" and b.thinking ~= "" then
            out[2] = { type = "thinking", index = idx, text = b.thinking }
        end
    elseif t == "content_block_stop" then
        local idx = self.map[obj.index]
        if idx then self.blocks:stop(out, idx) end
    elseif t == "message_start" then
        local m = obj.message or {}
        self:take_usage(m.usage)
        out[1] = { type = "start", id = nonnull(m.id), model = nonnull(m.model),
                   usage = self:usage_event() }
    elseif t == "message_delta" then
        self:take_usage(obj.usage)
        out[1] = { type = "usage", usage = self:usage_event() }
        local delta = obj.delta
        local sr = type(delta) == "table" and nonnull(delta.stop_reason)
        if sr then
            out[2] = { type = "finish", stop_reason = STOP_IN[sr] or "end_turn",
                       stop_sequence = nonnull(delta.stop_sequence) }
        end
    elseif t == "error" then
        local e = type(obj.error) == "table" and obj.error or {}
        self.errored = true
        out[1] = { type = "error", error = error_from_object(nil, e) }
    end
    -- message_stop, ping and unknown events carry nothing for the IR.
    return out
end

-- ---------------------------------------------------------------- stream encoder
--
-- Anthropic clients accept one open content block at a time, numbered from 0
-- in start order. IR blocks may overlap (parallel OpenAI tool calls), so the
-- encoder serialises them (ir_stream's one-open-block queue): the head block
-- streams live, later blocks keep their events until every block before
-- them has stopped.

local Encoder = S.encoder()

function M.stream_encoder(opts)
    opts = opts or {}
    local enc = setmetatable({
        model = opts.model, id = opts.id, origin = opts.origin,
        started = false, ended = false,
        next_out = 0,        -- the next client block index
        usage = nil, stop_reason = nil, stop_sequence = nil,
    }, Encoder)
    enc.serial = S.serializer(enc)
    return enc
end

-- The client already has this stream's opening (a passthrough stream, sent
-- by the upstream itself): carry on from there, e.g. to close it on failure.
-- Blocks open one at a time, so the latest event says which one is open: a
-- start or delta of block i (its data may be cut short: only "index" is read).
function Encoder:resume(seen)
    self.started = true
    self.id = self.id or seen.id
    local name, data = (seen.last or ""):match("^([^\n]*)\n(.*)$")
    if name == "content_block_start" or name == "content_block_delta" then
        self.resumed_open = tonumber(data:match('"index"%s*:%s*(%d+)'))
    end
end

local function sse(b, name, obj)
    b:put("event: ", name, "\ndata: ", encode(obj), "\n\n")
end

-- message_start; the upstream's id is kept only when it is an Anthropic one.
function Encoder:begin(b, ev)
    self.started = true
    local usage
    if ev then
        self.id = self.id or ev.id
        if self.id and self.id:sub(1, 4) ~= "msg_" then self.id = nil end
        usage = ev.usage
    end
    sse(b, "message_start", {
        type = "message_start",
        message = {
            id = self.id or ir.new_id("msg_"), type = "message", role = "assistant",
            model = self.model, content = array(), stop_reason = null, stop_sequence = null,
            usage = usage_out(usage),
        },
    })
end

-- Write one IR event of the live block.
function Encoder:write(b, blk, ev)
    local t = ev.type
    if t == "text" then
        -- The hot path: deltas are written without building a table.
        b:put('event: content_block_delta\ndata: {"type":"content_block_delta","index":', blk.out,
              ',"delta":{"type":"text_delta","text":', encode(ev.text or ""), '}}\n\n')
    elseif t == "tool_args" then
        b:put('event: content_block_delta\ndata: {"type":"content_block_delta","index":', blk.out,
              ',"delta":{"type":"input_json_delta","partial_json":', encode(ev.json or ""), '}}\n\n')
    elseif t == "thinking" then
        sse(b, "content_block_delta", { type = "content_block_delta", index = blk.out,
                                        delta = { type = "thinking_delta", thinking = ev.text } })
    elseif t == "signature" then
        sse(b, "content_block_delta", { type = "content_block_delta", index = blk.out,
            delta = { type = "signature_delta", signature = wrap(self.origin, "sig", ev.signature) } })
    end
end

-- The serializer's callbacks: a block's start (and what it kept while it
-- waited) once it is live; its stop.
function Encoder:open_block(b, blk)
    blk.out = self.next_out
    self.next_out = blk.out + 1
    local ev = blk.start
    local cb
    if ev.kind == "text" then cb = { type = "text", text = "" }
    elseif ev.kind == "thinking" then cb = { type = "thinking", thinking = "", signature = "" }
    elseif ev.kind == "redacted_thinking" then
        cb = { type = "redacted_thinking", data = wrap(self.origin, "data", ev.data or "") }
    else cb = { type = "tool_use", id = id_out(ev.id) or ir.new_id("toolu_"), name = ev.name, input = {} } end
    sse(b, "content_block_start", { type = "content_block_start", index = blk.out, content_block = cb })
    local kept = blk.kept
    for i = 1, #kept do self:write(b, blk, kept[i]) end
    blk.kept = nil
end

function Encoder:stop_block(b, blk)
    sse(b, "content_block_stop", { type = "content_block_stop", index = blk.out })
end

function Encoder:on_block_start(b, ev)
    self.serial:start(b, ev.index, { start = ev, kept = {} })
end

function Encoder:on_delta(b, ev)
    local blk = self.serial:get(ev.index)
    if not blk then return end
    if blk.live then self:write(b, blk, ev) else blk.kept[#blk.kept + 1] = ev end
end
Encoder.on_text, Encoder.on_tool_args = Encoder.on_delta, Encoder.on_delta
Encoder.on_thinking, Encoder.on_signature = Encoder.on_delta, Encoder.on_delta

function Encoder:on_block_stop(b, ev)
    local blk = self.serial:get(ev.index)
    if blk then self.serial:stop(b, blk) end
end

function Encoder:fail(b, message, err)
    if not self.started then self:begin(b, nil) end
    self.serial:stop_all(b)
    if self.resumed_open then
        sse(b, "content_block_stop", { type = "content_block_stop", index = self.resumed_open })
        self.resumed_open = nil
    end
    local etype = "api_error"
    if err and ERR_OUT[err.type] then etype = ERR_OUT[err.type] end
    sse(b, "error", { type = "error", error = { type = etype, message = message } })
    sse(b, "message_stop", { type = "message_stop" })
end

function Encoder:finish(b)
    self.serial:stop_all(b)
    sse(b, "message_delta", {
        type = "message_delta",
        delta = { stop_reason = STOP_OUT[self.stop_reason] or "end_turn",
                  stop_sequence = self.stop_reason == "stop_sequence" and self.stop_sequence or null },
        usage = usage_out(self.usage),
    })
    sse(b, "message_stop", { type = "message_stop" })
end

return M
