-- sluice.protocols.openai_chat — the OpenAI Chat Completions codec.
--
-- Turns /v1/chat/completions requests, responses, errors and SSE chunk
-- streams into the IR (lua/sluice/ir.lua) and back. Chat has a separate
-- `tool` role and JSON-string tool arguments; the IR keeps tool results in
-- user messages and arguments decoded, so both are converted here. Chat
-- carries no reasoning text or signatures: thinking is dropped on the way
-- out, except reasoning_content going back to the supplier it came from
-- (see REASONING below).
-- Usage arrives in a usage-only chunk after finish_reason, so the request
-- encoder always asks for it (stream_options.include_usage) and the stream
-- encoder sends one to the client only if the client asked for it.
--
-- IR extensions used here (additive): req.stream_usage (the client asked for
-- usage chunks), encode opts.include_usage / opts.created / opts.origin.

local json = require("sluice.json")
local ir = require("sluice.ir")
local S = require("sluice.ir_stream")
local common = require("sluice.protocols.common")

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local setmetatable, getmetatable, concat = setmetatable, getmetatable, table.concat
local buffer = require("string.buffer")
local encode, decode = json.encode, json.decode
local array = json.array
local null = json.null
local time = os.time

local M = { name = "openai-chat" }

-- A Chat client has nowhere to keep reasoning state, yet Gemini 3 refuses
-- the next turn of a tool loop unless each step's first functionCall comes
-- back with its thoughtSignature ("Function call is missing a
-- thought_signature", https://ai.google.dev/gemini-api/docs/thought-signatures).
-- The only thing a Chat client reliably sends back is the tool-call id, so
-- the signature of a call (an IR signature-only thinking part just before
-- it) rides in the id given to the client: "<id>#sluice1:<origin>:sig:<v>".
-- Decoding a request splits it off again into that thinking part, on the
-- assistant's call and on the tool message's tool_call_id alike, so every
-- supplier sees the original id and only the signature's origin gets it.
local SIG_SEP = "#"

-- REASONING. Compatible servers (DeepSeek's thinking mode, Kimi) answer
-- with `reasoning_content` next to the tool calls and require it back on
-- that assistant message in the next turn ("the reasoning_content ... must
-- be passed back to the API" in tool-call loops,
-- https://api-docs.deepseek.com/guides/thinking_mode), while other servers
-- refuse the unknown field. So decoded reasoning is a thinking part whose
-- signature is "rc@<supplier id>" (decode opts.supplier); clients keep it as
-- any other provider's opaque state, and the encoder sends the text back as
-- reasoning_content only to that same supplier (encode opts.supplier).
local function reasoning_sig(opts)
    return "rc@" .. tostring(opts and opts.supplier or "")
end

local function id_with_sig(id, origin, sig)
    return id .. SIG_SEP .. ir.wrap_opaque(origin, "sig", sig)
end

-- -> id, signature part | nil
local function split_id(id)
    if type(id) ~= "string" then return id end
    local base, env = id:match("^(.-)" .. SIG_SEP .. "(" .. ir.OPAQUE_PREFIX:gsub("%p", "%%%0") .. ".*)$")
    if not base then return id end
    local o, k, v = ir.unwrap_opaque(env)
    if not o or k ~= "sig" then return id end
    return base, { type = "thinking", text = "", signature = v, origin = o }
end

-- ================================================================= facts
-- What sluice knows about this protocol outside its codec: the registry
-- (protocols/init.lua) checks these and config, router, upstream,
-- toolnames and host read them. Their meaning: protocols/README.md.

M.title = "OpenAI Chat"

M.endpoints = { { path = "/v1/chat/completions", kind = "generate" } }
-- GET /v1/models (shared with Anthropic). As the default protocol, this is
-- also the list shape for a models path whose protocol has none.
M.models = {
    path = "/v1/models",
    list = function(ids)
        local data = {}
        for i, id in ipairs(ids) do data[i] = { id = id, object = "model", created = 0, owned_by = "sluice" } end
        return { object = "list", data = array(data) }
    end,
}

-- Where a request asks for its output limit (a configured cap lowers it on passthrough).
M.output_limit = { "max_completion_tokens", "max_tokens" }
M.credential = { header = "authorization", scheme = "Bearer" }
M.tool_names = { max = 64, pattern = "^[a-zA-Z0-9_-]+$", bad = "[^a-zA-Z0-9_-]" }

M.terminal = { { data = "[DONE]" } }
-- Chunks that carry a usage object (every other chunk says "usage":null):
-- the core keeps the first and the latest on a passthrough stream.
M.usage_events = { { data_has = "\"usage\":{" }, { data_has = "\"usage\": {" } }
-- The top-level member of a whole answer that carries its usage.
M.answer_usage = "usage"
-- The body field OpenAI routes its prompt cache by (sluice.sticky sets it).
M.cache_key = "prompt_cache_key"

function M.path(model, stream)
    return "/chat/completions"
end
-- ============================================================ end of facts

-- ---------------------------------------------------------------- helpers

local function nonnull(v)
    if v == null then return nil end
    return v
end

local parse_data_url, data_url = common.parse_data_url, common.data_url
local decode_args, encode_args = common.decode_args, common.encode_args

-- Chat content (string or parts) -> IR parts.
local function decode_content(c)
    local parts = {}
    if type(c) == "string" then
        if c ~= "" then parts[1] = { type = "text", text = c } end
        return parts
    end
    if type(c) ~= "table" then return parts end
    for _, p in ipairs(c) do
        local t = type(p) == "table" and p.type
        if t == "text" or t == "refusal" then
            local text = p[t]
            if text ~= nil and type(text) ~= "string" then return nil, t .. ": must be a string" end
            parts[#parts + 1] = { type = "text", text = text or "" }
        elseif t == "image_url" then
            local url = type(p.image_url) == "table" and p.image_url.url or p.image_url
            if type(url) == "string" then
                local detail = type(p.image_url) == "table" and nonnull(p.image_url.detail) or nil
                parts[#parts + 1] = { type = "image", source = common.source_from_url(url),
                                      detail = type(detail) == "string" and detail or nil }
            end
        elseif t == "file" then
            -- file_data: a data URL or bare base64 (PDFs stay documents, text
            -- files become text); file_id: carried to suppliers that take one,
            -- a 400 from those that cannot (their encoder says so).
            local f = type(p.file) == "table" and p.file or {}
            local title = nonnull(f.filename)
            if type(f.file_data) == "string" then
                local src, err = common.file_source(f.file_data, title)
                if not src then return nil, "file: " .. err end
                parts[#parts + 1] = { type = "document", title = title, source = src }
            elseif type(f.file_id) == "string" then
                parts[#parts + 1] = { type = "document", title = title,
                                      source = { kind = "file", file_id = f.file_id, store = "openai" } }
            else
                return nil, "file: needs file_data or file_id"
            end
        end
        -- input_audio has no IR equivalent and is dropped.
    end
    return parts
end

local STOP_IN = { stop = "end_turn", length = "max_tokens", tool_calls = "tool_use",
                  function_call = "tool_use", content_filter = "content_filter" }
local STOP_OUT = { end_turn = "stop", stop_sequence = "stop", max_tokens = "length",
                   tool_use = "tool_calls", content_filter = "content_filter",
                   refusal = "content_filter", pause_turn = "stop", error = "stop" }

local function usage_in(u)
    if type(u) ~= "table" then return nil end
    local n = ir.tokens
    local r = { input_tokens = n(u.prompt_tokens), output_tokens = n(u.completion_tokens) }
    local pd = nonnull(u.prompt_tokens_details)
    if type(pd) == "table" then
        r.cache_read_tokens = n(pd.cached_tokens)
        r.cache_write_tokens = n(pd.cache_write_tokens)
    end
    local cd = nonnull(u.completion_tokens_details)
    if type(cd) == "table" then r.reasoning_tokens = n(cd.reasoning_tokens) end
    return r
end
M.decode_usage = usage_in

local function usage_out(u)
    u = u or {}
    local i, o = u.input_tokens or 0, u.output_tokens or 0
    local r = { prompt_tokens = i, completion_tokens = o, total_tokens = i + o,
                prompt_tokens_details = { cached_tokens = u.cache_read_tokens or 0 } }
    if u.cache_write_tokens then r.prompt_tokens_details.cache_write_tokens = u.cache_write_tokens end
    if u.reasoning_tokens then r.completion_tokens_details = { reasoning_tokens = u.reasoning_tokens } end
    return r
end

-- ---------------------------------------------------------------- request

local EFFORTS = { minimal = true, low = true, medium = true, high = true, xhigh = true, max = true }

local function decode_tool_choice(tc)
    if tc == "auto" or tc == "none" or tc == "required" then return { type = tc } end
    if type(tc) ~= "table" then return nil end
    if tc.type == "function" and type(tc["function"]) == "table" then
        return { type = "tool", name = tc["function"].name }
    elseif tc.type == "allowed_tools" and type(tc.allowed_tools) == "table" then
        -- The subset cannot be expressed in the IR; keep the mode.
        return { type = tc.allowed_tools.mode == "required" and "required" or "auto" }
    end
    return nil
end

function M.decode_request(body, info)
    if type(body) ~= "table" then return nil, "request body must be a JSON object" end
    if type(body.model) ~= "string" then return nil, "model: required string" end
    if type(body.messages) ~= "table" then return nil, "messages: required array" end
    local n = nonnull(body.n)
    if n and n ~= 1 then return nil, "n: only 1 choice can be translated" end
    local req = {
        model = body.model, stream = body.stream == true,
        max_tokens = nonnull(body.max_completion_tokens) or nonnull(body.max_tokens),
        temperature = nonnull(body.temperature), top_p = nonnull(body.top_p),
        parallel_tool_calls = nonnull(body.parallel_tool_calls),
        user = nonnull(body.safety_identifier) or nonnull(body.user),
        session_hint = nonnull(body.prompt_cache_key),
    }
    local so = nonnull(body.stream_options)
    req.stream_usage = type(so) == "table" and so.include_usage == true
    local msgs, names = {}, {}
    local system
    for i, m in ipairs(body.messages) do
        if type(m) ~= "table" then return nil, "messages[" .. (i - 1) .. "]: must be an object" end
        local role = m.role
        if role == "system" or role == "developer" then
            -- A part that cannot be decoded is refused as in a user message,
            -- not left out in silence.
            local content, cerr = decode_content(m.content)
            if not content then return nil, "messages[" .. (i - 1) .. "].content: " .. cerr end
            system = system or {}
            for _, p in ipairs(content) do system[#system + 1] = p end
        elseif role == "user" then
            local content, cerr = decode_content(m.content)
            if not content then return nil, "messages[" .. (i - 1) .. "].content: " .. cerr end
            msgs[#msgs + 1] = { role = "user", content = content }
        elseif role == "assistant" then
            local content, cerr = decode_content(nonnull(m.content))
            if not content then return nil, "messages[" .. (i - 1) .. "].content: " .. cerr end
            local refusal = nonnull(m.refusal)
            if type(refusal) == "string" and refusal ~= "" then
                content[#content + 1] = { type = "text", text = refusal }
            end
            for _, tc in ipairs(type(m.tool_calls) == "table" and m.tool_calls or {}) do
                if type(tc) ~= "table" then
                    return nil, "messages[" .. (i - 1) .. "].tool_calls: each call must be an object"
                end
                local f = type(tc["function"]) == "table" and tc["function"] or {}
                local id, sig = split_id(tc.id)
                names[id or ""] = f.name
                if sig then content[#content + 1] = sig end
                content[#content + 1] = { type = "tool_call", id = id, name = f.name,
                                          arguments = decode_args(f.arguments) }
            end
            msgs[#msgs + 1] = { role = "assistant", content = content }
        elseif role == "tool" then
            local call_id = split_id(m.tool_call_id)
            local part = { type = "tool_result", tool_call_id = call_id,
                           name = names[call_id or ""], content = decode_content(m.content) or {},
                           is_error = false }
            local last = msgs[#msgs]
            -- A run of tool messages answers one assistant turn: one user message.
            if last and last.role == "user" and last.tool_results then
                last.content[#last.content + 1] = part
            else
                msgs[#msgs + 1] = { role = "user", content = { part }, tool_results = true }
            end
        else
            return nil, "messages[" .. (i - 1) .. "].role: unknown role " .. tostring(role)
        end
    end
    for _, m in ipairs(msgs) do m.tool_results = nil end
    req.system, req.messages = system, msgs
    if type(body.tools) == "table" then
        local tools = {}
        for _, t in ipairs(body.tools) do
            local f = type(t) == "table" and t.type == "function" and t["function"]
            if type(f) == "table" then
                tools[#tools + 1] = { name = f.name, description = nonnull(f.description),
                                      parameters = nonnull(f.parameters), strict = nonnull(f.strict) }
            end
        end
        req.tools = tools
    end
    req.tool_choice = decode_tool_choice(nonnull(body.tool_choice))
    local stop = nonnull(body.stop)
    if type(stop) == "string" then req.stop = { stop }
    elseif type(stop) == "table" and #stop > 0 then req.stop = stop end
    local effort = nonnull(body.reasoning_effort)
    if type(effort) == "string" then
        req.thinking = { enabled = effort ~= "none", effort = EFFORTS[effort] and effort or nil }
    end
    local rf = nonnull(body.response_format)
    if type(rf) == "table" then
        if rf.type == "json_object" then
            req.response_format = { type = "json_object" }
        elseif rf.type == "json_schema" and type(rf.json_schema) == "table" then
            local js = rf.json_schema
            req.response_format = { type = "json_schema", name = nonnull(js.name),
                                    schema = nonnull(js.schema), strict = nonnull(js.strict) }
        end
    end
    return req
end

-- IR user part -> Chat content part (nil when Chat cannot carry it).
local function encode_user_part(p)
    local t = p.type
    if t == "text" then
        if p.text == nil or p.text == "" then return nil end
        return { type = "text", text = p.text }
    elseif t == "image" then
        local s = p.source or {}
        if s.kind == "base64" then return { type = "image_url", image_url = { url = data_url(s), detail = p.detail } } end
        if s.kind == "url" then return { type = "image_url", image_url = { url = s.url, detail = p.detail } } end
    elseif t == "document" then
        local s = p.source or {}
        if s.kind == "base64" then
            return { type = "file", file = { file_data = data_url(s), filename = p.title or "document.pdf" } }
        elseif s.kind == "text" then
            local text = s.data or ""
            if p.title then text = p.title .. "\n\n" .. text end
            return { type = "text", text = text }
        elseif s.kind == "file" then
            return { type = "file", file = { file_id = s.file_id } }
        elseif s.kind == "url" then
            return { type = "text", text = "Document: " .. tostring(s.url) }
        end
    end
    return nil
end

-- The parts' non-empty texts joined by sep. (Not a string.buffer: its
-- tostring ends LuaJIT 2.1's trace, and this runs for every tool result.)
local function text_of(parts, sep)
    local first, texts
    for _, p in ipairs(parts or {}) do
        local t = p.type == "text" and p.text
        if t and t ~= "" then
            if not first then
                first = t
            else
                texts = texts or { first }
                texts[#texts + 1] = t
            end
        end
    end
    if texts then return concat(texts, sep or "\n") end
    return first or ""
end

-- One IR user message -> tool messages (first: they answer the previous
-- assistant turn) then a user message with the rest. Images in tool results
-- cannot ride in a tool message; they move to the user message.
local function encode_user(m, out)
    local rest = array()
    for _, p in ipairs(m.content or {}) do
        if p.type == "tool_result" then
            local text = text_of(p.content)
            if p.is_error then text = "Error: " .. text end
            out[#out + 1] = { role = "tool", tool_call_id = p.tool_call_id, content = text }
            for _, c in ipairs(p.content or {}) do
                if c.type ~= "text" then
                    local cp = encode_user_part(c)
                    if cp then rest[#rest + 1] = cp end
                end
            end
        else
            local cp = encode_user_part(p)
            if cp then rest[#rest + 1] = cp end
        end
    end
    if #rest == 1 and rest[1].type == "text" then
        out[#out + 1] = { role = "user", content = rest[1].text }
    elseif #rest > 0 then
        out[#out + 1] = { role = "user", content = rest }
    end
end

-- Assistant content -> its text (a buffer) and tool_calls (Chat carries
-- neither thinking nor signatures). origin: set for an answer to a client,
-- whose call ids then carry their signatures (see id_with_sig).
local function text_and_calls(content, origin)
    local text = buffer.new()
    local calls = array()
    local sig
    for _, p in ipairs(content or {}) do
        if p.type == "text" and p.text then
            text:put(p.text)
            sig = nil
        elseif p.type == "thinking" then
            sig = origin and (p.text == nil or p.text == "") and p.signature ~= "" and p.signature
                and { p.origin or origin, p.signature } or nil
        elseif p.type == "tool_call" then
            local id = p.id
            if sig and id then id = id_with_sig(id, sig[1], sig[2]) end
            sig = nil
            calls[#calls + 1] = { id = id, type = "function",
                                  ["function"] = { name = p.name, arguments = encode_args(p.arguments) } }
        end
    end
    return text, calls
end

local function encode_assistant(m, out, opts)
    local text, calls = text_and_calls(m.content)
    local reasoning = buffer.new()
    local mine = reasoning_sig(opts)
    for _, p in ipairs(m.content) do
        if p.type == "thinking" and p.origin == M.name and p.signature == mine and p.text then
            reasoning:put(p.text)
        end
    end
    if #text == 0 and #calls == 0 then return end
    local msg = { role = "assistant", content = #text > 0 and text:tostring() or null }
    if #calls > 0 then msg.tool_calls = calls end
    if #reasoning > 0 then msg.reasoning_content = reasoning:tostring() end
    out[#out + 1] = msg
end

local function budget_effort(n)
    if not n then return "medium" end
    if n <= 2048 then return "low" end
    if n <= 12288 then return "medium" end
    return "high"
end

function M.encode_request(req, opts)
    opts = opts or {}
    -- file_id names a file in OpenAI's Files API; an Anthropic file id is unknown there
    -- (https://platform.openai.com/docs/api-reference/files).
    local ok, ferr = common.check_file_ids(req, "openai", "an OpenAI Chat")
    if not ok then return nil, ferr end
    local msgs = array()
    if req.system and #req.system > 0 then
        -- Several system parts become one message; blank lines keep them apart.
        local s = text_of(req.system, "\n\n")
        if s ~= "" then msgs[1] = { role = "system", content = s } end
    end
    for _, m in ipairs(req.messages or {}) do
        if m.role == "user" then encode_user(m, msgs) else encode_assistant(m, msgs, opts) end
    end
    local stream = opts.stream
    if stream == nil then stream = req.stream end
    local body = {
        model = opts.model or req.model, messages = msgs, stream = stream,
        temperature = req.temperature, top_p = req.top_p,
    }
    -- OpenAI's own API takes max_completion_tokens (max_tokens is deprecated
    -- and refused by reasoning models: https://platform.openai.com/docs/
    -- api-reference/chat/create); vLLM, DeepSeek and older deployments want
    -- max_tokens — the supplier's compat.max_tokens_field says which.
    local compat = opts.compat or {}
    body[compat.max_tokens_field or "max_completion_tokens"] = req.max_tokens
    if stream then body.stream_options = { include_usage = true } end
    if req.tools and #req.tools > 0 then
        local tools = array()
        for _, t in ipairs(req.tools) do
            local params = t.parameters
            if type(params) ~= "table" or getmetatable(params) == json.array_mt then
                params = { type = "object", properties = {} }
            end
            tools[#tools + 1] = { type = "function", ["function"] = {
                name = t.name, description = t.description, parameters = params, strict = t.strict } }
        end
        body.tools = tools
        if req.parallel_tool_calls ~= nil then body.parallel_tool_calls = req.parallel_tool_calls end
        local tc = req.tool_choice
        if tc then
            if tc.type == "tool" then
                body.tool_choice = { type = "function", ["function"] = { name = tc.name } }
            else
                body.tool_choice = tc.type
            end
        end
    end
    if req.stop and #req.stop > 0 then
        local s = array()
        for i = 1, math.min(4, #req.stop) do s[i] = req.stop[i] end
        body.stop = s
    end
    local th = req.thinking
    if th and th.enabled then
        body.reasoning_effort = th.effort or budget_effort(th.budget_tokens)
    end
    local rf = req.response_format
    if rf then
        if rf.type == "json_object" then
            body.response_format = { type = "json_object" }
        elseif rf.type == "json_schema" then
            body.response_format = { type = "json_schema", json_schema = {
                name = rf.name or "response", schema = rf.schema, strict = rf.strict } }
        end
    end
    if req.user then body.user = req.user end
    if req.session_hint then body.prompt_cache_key = req.session_hint end
    -- Chat has no hosted web search: the client is told it was left out.
    if req.web_search and opts.dropped then opts.dropped[#opts.dropped + 1] = "tool web_search" end
    return body
end

-- ---------------------------------------------------------------- response

function M.decode_response(body, opts)
    if type(body) ~= "table" then return nil, "response body must be a JSON object" end
    if type(body.error) == "table" then return nil, "upstream returned an error object" end
    if type(body.choices) ~= "table" or type(body.choices[1]) ~= "table" then
        return nil, "the answer has no choices"
    end
    local choice = body.choices[1]
    local content = {}
    local fr
    if type(choice) == "table" then
        local msg = type(choice.message) == "table" and choice.message or {}
        local reasoning = nonnull(msg.reasoning_content) or nonnull(msg.reasoning)
        if type(reasoning) == "string" and reasoning ~= "" then
            content[#content + 1] = { type = "thinking", text = reasoning, origin = "openai-chat",
                                      signature = reasoning_sig(opts) }
        end
        for _, p in ipairs(decode_content(nonnull(msg.content)) or {}) do content[#content + 1] = p end
        local refusal = nonnull(msg.refusal)
        if type(refusal) == "string" and refusal ~= "" then
            content[#content + 1] = { type = "text", text = refusal }
            fr = "refusal"
        end
        local calls = 0
        for _, tc in ipairs(type(msg.tool_calls) == "table" and msg.tool_calls or {}) do
            local f = type(tc["function"]) == "table" and tc["function"] or {}
            calls = calls + 1
            content[#content + 1] = { type = "tool_call", id = tc.id or ir.new_id("call_"),
                                      name = f.name, arguments = decode_args(f.arguments) }
        end
        fr = fr or STOP_IN[nonnull(choice.finish_reason) or "stop"] or "end_turn"
        if calls > 0 and fr == "end_turn" then fr = "tool_use" end
    end
    return { id = nonnull(body.id), model = nonnull(body.model), content = content,
             stop_reason = fr or "end_turn", usage = usage_in(body.usage) or {} }
end

local function response_id(id, opts)
    if opts.id then return opts.id end
    if type(id) == "string" and id:sub(1, 9) == "chatcmpl-" then return id end
    return ir.new_id("chatcmpl-")
end

function M.encode_response(resp, opts)
    opts = opts or {}
    local text, calls = text_and_calls(resp.content, opts.origin or "unknown")
    local msg = { role = "assistant", content = #text > 0 and text:tostring() or null, refusal = null }
    if #calls > 0 then msg.tool_calls = calls end
    local fr = STOP_OUT[resp.stop_reason or "end_turn"] or "stop"
    if #calls > 0 and fr == "stop" then fr = "tool_calls" end
    return {
        id = response_id(resp.id, opts), object = "chat.completion",
        created = opts.created or time(), model = opts.model or resp.model,
        choices = array({ { index = 0, message = msg, logprobs = null, finish_reason = fr } }),
        usage = usage_out(resp.usage),
    }
end

-- ---------------------------------------------------------------- errors

-- The OpenAI error envelope and its type map are shared with Responses
-- (sluice.protocols.common).
M.decode_error = common.openai_decode_error
M.encode_error = common.openai_encode_error

-- ---------------------------------------------------------------- stream decoder
--
-- Chunks interleave text and tool-call fragments; tool calls are keyed by
-- their Chat index and may be in flight together. A call starts in the IR
-- only once its id and name are known (fragments before that are buffered).
-- An open text block is closed when a tool call starts, so Anthropic clients
-- see the text finished instead of waiting for the end of the stream.

local Decoder = S.decoder()

function M.stream_decoder(opts)
    return setmetatable({
        started = false, blocks = S.blocks(),
        text = nil, thinking = nil,  -- IR index of the open text / reasoning block
        calls = {},                  -- chat index -> { ir = idx|nil, id, name, pending = buffer }
        order = {},                  -- the call records in first-seen order
        any_call = false, stop_reason = nil, errored = false,
        sig = reasoning_sig(opts),
    }, Decoder)
end

-- The reasoning block ends with its signature (see REASONING).
function Decoder:stop_thinking(out)
    if self.thinking then
        out[#out + 1] = { type = "signature", index = self.thinking, signature = self.sig }
        self.blocks:stop(out, self.thinking)
        self.thinking = nil
    end
end

function Decoder:close_text(out)
    self.blocks:stop(out, self.text)
    self:stop_thinking(out)
    self.text = nil
end

function Decoder:start_call(out, c)
    self:close_text(out)
    c.ir = self.blocks:start(out, "tool_call", { id = c.id, name = c.name })
    self.any_call = true
    if #c.pending > 0 then
        out[#out + 1] = { type = "tool_args", index = c.ir, json = c.pending:tostring() }
        c.pending:reset()
    end
end

function Decoder:tool_delta(out, tc)
    local k = tonumber(tc.index) or 0
    local c = self.calls[k]
    local id = nonnull(tc.id)
    if type(id) ~= "string" or id == "" then id = nil end
    -- Some compatible servers repeat `index: 0` for every parallel call; a
    -- fragment with a new id at a known index is the start of another call,
    -- not more of the one before (that one is complete: close it).
    if c and id and c.id and id ~= c.id then
        if not c.ir and c.name then self:start_call(out, c) end
        self.blocks:stop(out, c.ir)
        c.closed = true
        c = nil
    end
    if not c then
        c = { pending = buffer.new() }
        self.calls[k] = c
        self.order[#self.order + 1] = c
    end
    if id then c.id = c.id or id end
    local f = nonnull(tc["function"])
    local args
    if type(f) == "table" then
        local name = nonnull(f.name)
        if type(name) == "string" and name ~= "" then c.name = c.name or name end
        args = nonnull(f.arguments)
    end
    if c.ir then
        if type(args) == "string" and args ~= "" then
            out[#out + 1] = { type = "tool_args", index = c.ir, json = args }
        end
    else
        if type(args) == "string" then c.pending:put(args) end
        if c.id and c.name then self:start_call(out, c) end
    end
end

-- Start calls that never got an id (some compatible servers omit it) and
-- close everything open, calls in the order the upstream numbered them.
function Decoder:close_all(out)
    self:close_text(out)
    for _, c in ipairs(self.order) do
        if not c.ir and c.name and not c.closed then
            c.id = c.id or ir.new_id("call_")
            self:start_call(out, c)
        end
        self.blocks:stop(out, c.ir)
    end
end

-- What a chunk is read for (S.fields): nothing else of it is decoded.
local CHUNK = json.selector({ "id", "model", "error", "choices.1.delta.reasoning_content",
    "choices.1.delta.reasoning", "choices.1.delta.content", "choices.1.delta.refusal",
    "choices.1.delta.tool_calls", "choices.1.finish_reason", "usage" })

function Decoder:feed(ev)
    local out = {}
    local ok, id, model, err, rc, rs, c, refusal, tcs, fr, u = S.fields(self, ev, out, CHUNK)
    if not ok then return out end
    if ev.event == "error" or type(err) == "table" then
        -- (an error event without an `error` member is the error itself)
        local e = type(err) == "table" and err or decode(ev.data)
        self.errored = true
        out[1] = { type = "error", error = common.openai_error_from_object(nil, e) }
        return out
    end
    if not self.started then
        self.started = true
        out[#out + 1] = { type = "start", id = nonnull(id), model = nonnull(model) }
    end
    local r = nonnull(rc) or nonnull(rs)
    if type(r) == "string" and r ~= "" then
        if not self.thinking then self.thinking = self.blocks:start(out, "thinking") end
        out[#out + 1] = { type = "thinking", index = self.thinking, text = r }
    end
    c = nonnull(c)
    if type(c) ~= "string" or c == "" then c = nonnull(refusal) end
    if type(c) == "string" and c ~= "" then
        self:stop_thinking(out)
        if not self.text then self.text = self.blocks:start(out, "text") end
        out[#out + 1] = { type = "text", index = self.text, text = c }
    end
    tcs = nonnull(tcs)
    if type(tcs) == "table" then
        for _, tc in ipairs(tcs) do
            if type(tc) == "table" then self:tool_delta(out, tc) end
        end
    end
    fr = nonnull(fr)
    if fr and not self.stop_reason then
        self:close_all(out)
        local sr = STOP_IN[fr] or "end_turn"
        if sr == "end_turn" and self.any_call then sr = "tool_use" end
        self.stop_reason = sr
        out[#out + 1] = { type = "finish", stop_reason = sr }
    end
    u = nonnull(u)
    if type(u) == "table" then
        out[#out + 1] = { type = "usage", usage = usage_in(u) }
    end
    return out
end

-- ---------------------------------------------------------------- stream encoder
--
-- Chat has no blocks: text, tool-call starts and argument fragments are
-- chunks; the finish chunk goes out when the IR finish comes, the usage
-- chunk (if the client asked for one) and [DONE] at the clean end.

local Encoder = S.encoder()

function M.stream_encoder(opts)
    opts = opts or {}
    return setmetatable({
        model = opts.model, id = opts.id, created = opts.created or time(), origin = opts.origin,
        include_usage = opts.include_usage == true,
        thinking_text = false, sig = nil, -- a signature-only thinking block's, for the next call
        started = false, ended = false, stop_reason = nil,
        tools = {},      -- IR index -> chat tool_calls index
        ntools = 0, usage = nil,
    }, Encoder)
end

-- The client already has this stream's opening (a passthrough stream, sent
-- by the upstream itself): carry on from there, e.g. to close it on failure.
function Encoder:resume(seen)
    self.started = true
    self.id = self.id or seen.id or ir.new_id("chatcmpl-")
end

-- Chunk skeleton: field order does not matter on the wire.
function Encoder:chunk(b, delta, finish_reason)
    b:put("data: ", encode({
        id = self.id, object = "chat.completion.chunk", created = self.created, model = self.model,
        choices = array({ { index = 0, delta = delta, logprobs = null, finish_reason = finish_reason or null } }),
    }), "\n\n")
end

-- The first chunk; the upstream's id is kept only when it is a Chat one.
function Encoder:begin(b, ev)
    self.started = true
    if not self.id then
        local up = ev and ev.id
        self.id = (type(up) == "string" and up:sub(1, 9) == "chatcmpl-") and up or ir.new_id("chatcmpl-")
    end
    self:chunk(b, { role = "assistant", content = "" })
end

function Encoder:on_text(b, ev)
    if ev.text and ev.text ~= "" then
        -- The hot path: a text chunk is written from a cached prefix.
        local pre = self.text_prefix
        if not pre then
            pre = 'data: {"id":' .. encode(self.id) .. ',"object":"chat.completion.chunk","created":'
                .. encode(self.created) .. (self.model and (',"model":' .. encode(self.model)) or "")
                .. ',"choices":[{"index":0,"delta":{"content":'
            self.text_prefix = pre
        end
        b:put(pre, encode(ev.text), '},"logprobs":null,"finish_reason":null}]}\n\n')
    end
end

function Encoder:on_block_start(b, ev)
    if ev.kind == "thinking" then self.thinking_text, self.sig = false, nil end
    if ev.kind == "text" then self.sig = nil end
    if ev.kind ~= "tool_call" then return end
    local k = self.ntools
    self.ntools = k + 1
    self.tools[ev.index] = k
    local id = ev.id or ir.new_id("call_")
    if self.sig then id = id_with_sig(id, self.origin or "unknown", self.sig) end
    self.sig = nil
    self:chunk(b, { tool_calls = array({ { index = k, id = id, type = "function",
                                            ["function"] = { name = ev.name, arguments = "" } } }) })
end

function Encoder:on_thinking(b, ev)
    if ev.text and ev.text ~= "" then self.thinking_text = true end
end

function Encoder:on_signature(b, ev)
    if not self.thinking_text and ev.signature and ev.signature ~= "" then self.sig = ev.signature end
end

function Encoder:on_tool_args(b, ev)
    local k = self.tools[ev.index]
    if k and ev.json ~= "" then
        self:chunk(b, { tool_calls = array({ { index = k, ["function"] = { arguments = ev.json } } }) })
    end
end

-- The first finish only (stop_reason is kept after this call).
function Encoder:on_finish(b, ev)
    if self.stop_reason then return end
    local fr = STOP_OUT[ev.stop_reason] or "stop"
    if fr == "stop" and self.ntools > 0 then fr = "tool_calls" end
    self:chunk(b, {}, fr)
end
-- thinking, signatures and block stops have no Chat representation.

function Encoder:fail(b, message, err)
    b:put("data: ", encode(common.openai_error_body(err or { type = "api_error" }, message)),
          "\n\ndata: [DONE]\n\n")
end

function Encoder:finish(b)
    if self.include_usage and self.usage then
        b:put("data: ", encode({
            id = self.id, object = "chat.completion.chunk", created = self.created, model = self.model,
            choices = array(), usage = usage_out(self.usage),
        }), "\n\n")
    end
    b:put("data: [DONE]\n\n")
end

return M
