-- sluice.protocols.openai_responses — the OpenAI Responses API (/v1/responses)
-- codec: request, response, error and stream translation to and from the IR
-- (lua/sluice/ir.lua). Codex CLI is the main client: it streams, uses flat
-- function tools with parallel calls, and sends `reasoning` items with
-- `encrypted_content` back on every turn, so those paths are the ones that
-- must be exact. Pure Lua over tables and strings; no C core needed.
--
-- Custom (freeform) tools, which Codex uses for apply_patch, take free text
-- rather than JSON arguments. No other protocol has them, so toward another
-- supplier one becomes a function tool with a single string parameter
-- `input` (its grammar quoted in the description), the request's
-- `custom_tools` set names them, and the encoders given that set (opts.
-- custom_tools) turn calls to those names back into custom_tool_call items.
--
-- Responses-only request fields that have no IR meaning (`store`,
-- `previous_response_id`, `conversation`, `include`) are kept on the IR
-- request under the same names only when the caller says the upstream is
-- Responses too (info.upstream == "openai-responses"); otherwise a request
-- that depends on OpenAI's stored state is rejected, because no stateless
-- supplier can resolve it (PROTOCOLS §7 item 23).

local ir = require("sluice.ir")
local json = require("sluice.json")
local S = require("sluice.ir_stream")
local common = require("sluice.protocols.common")

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local concat, os_time = table.concat, os.time
local json_encode, json_decode, json_array, json_null = json.encode, json.decode, json.array, json.null

local M = { name = "openai-responses" }

-- ================================================================= facts
-- What sluice knows about this protocol outside its codec: the registry
-- (protocols/init.lua) checks these and config, router, upstream,
-- toolnames and host read them. Their meaning: protocols/README.md.

M.title = "OpenAI Responses"

M.endpoints = {
    { path = "/v1/responses", kind = "generate" },
    -- Codex CLI's base URL ends in /codex: /codex/responses, and only there.
    { path = "/responses", kind = "generate", prefixed = true },
}
M.guess = { contains = "/responses", rank = 3 }

M.credential = { header = "authorization", scheme = "Bearer" }
-- Where a request asks for its output limit (a configured cap lowers it on passthrough).
M.output_limit = { "max_output_tokens" }
M.tool_names = { max = 64, pattern = "^[a-zA-Z0-9_-]+$", bad = "[^a-zA-Z0-9_-]" }

-- A stream is complete when one of these terminal events arrives (§3.4).
-- The event's name is in its `type` field, and some servers send only that
-- (`data:` lines without `event:`; the SSE framing in
-- https://platform.openai.com/docs/api-reference/responses-streaming puts the
-- type in the data): the quoted name is looked for in the data too, whatever
-- spacing the server puts after "type":. Quoted, only a text delta that is
-- exactly the name could look like it (JSON escapes quotes inside strings).
M.terminal = {
    { event = "response.completed" },
    { event = "response.incomplete" },
    { event = "response.failed" },
    { data_has = "\"response.completed\"" },
    { data_has = "\"response.incomplete\"" },
    { data_has = "\"response.failed\"" },
}
-- Usage comes only in the final response object; the core keeps that event
-- of a passthrough stream for the record.
M.usage_events = M.terminal
-- The top-level member of a whole answer that carries its usage.
M.answer_usage = "usage"
-- The body field OpenAI routes its prompt cache by (sluice.sticky sets it).
M.cache_key = "prompt_cache_key"

function M.path(model, stream)
    return "/responses"
end
-- ============================================================ end of facts

---------------------------------------------------------------------------
-- small shared helpers
---------------------------------------------------------------------------

local function is_str(v) return type(v) == "string" end

local source_from_url = common.source_from_url
local decode_args, encode_args = common.decode_args, common.encode_args

-- An image or file source as a URL (data URL for inline bytes).
local function data_url(src)
    if src.kind == "base64" then return common.data_url(src) end
    return src.url
end

local function invalid(msg) return nil, msg end

-- Opaque reasoning state of another provider (an Anthropic signature, a
-- Gemini thoughtSignature) rides to a Responses client inside
-- encrypted_content wrapped in the envelope, so it comes back on the next
-- turn and can be returned to its origin (PROTOCOLS §6.6). It is never sent
-- to an OpenAI upstream: only parts whose origin is Responses are.
local function wrap_opaque(origin, kind, value)
    return common.wrap(M.name, origin, kind, value)
end
local unwrap_opaque = common.unwrap

---------------------------------------------------------------------------
-- request: Responses -> IR
---------------------------------------------------------------------------

-- One content part of an input message (or of a function_call_output array).
local function decode_part(p)
    if is_str(p) then return { type = "text", text = p } end
    if type(p) ~= "table" then return nil, "a content part must be a string or an object" end
    local t = p.type
    if t == "input_text" or t == "output_text" or t == "text" or t == "refusal" then
        local text = t == "refusal" and p.refusal or p.text
        if text ~= nil and not is_str(text) then return nil, t .. ": text must be a string" end
        return { type = "text", text = text or "" }
    elseif t == "input_image" then
        if not is_str(p.image_url) then return nil, "input_image without image_url (file_id) cannot be translated" end
        -- detail (low/high/auto) is kept for Chat and Responses suppliers.
        return { type = "image", source = source_from_url(p.image_url),
                 detail = is_str(p.detail) and p.detail or nil }
    elseif t == "input_file" then
        local src
        if is_str(p.file_data) then
            local err
            src, err = common.file_source(p.file_data, p.filename)
            if not src then return nil, "input_file: " .. err end
        elseif is_str(p.file_url) then
            src = { kind = "url", url = p.file_url }
        elseif is_str(p.file_id) then
            -- Chat and Responses suppliers take the id; the others answer 400.
            src = { kind = "file", file_id = p.file_id, store = "openai" }
        else
            return nil, "input_file needs file_data, file_url or file_id"
        end
        return { type = "document", source = src, title = p.filename }
    end
    return nil, "unsupported content part type '" .. tostring(t) .. "'"
end

local function decode_content(c)
    local out = {}
    if c == nil or c == json_null then return out end
    if is_str(c) then
        out[1] = { type = "text", text = c }
        return out
    end
    if type(c) ~= "table" then return nil, "content must be a string or an array of parts" end
    for _, p in ipairs(c) do
        local part, err = decode_part(p)
        if not part then return nil, err end
        out[#out + 1] = part
    end
    return out
end

-- Append a part to the IR message list, merging into the last message when
-- the role matches, so an assistant turn made of reasoning + message +
-- function_call items becomes one IR assistant message.
local function push(msgs, role, part)
    local last = msgs[#msgs]
    if not last or last.role ~= role then
        last = { role = role, content = {} }
        msgs[#msgs + 1] = last
    end
    last.content[#last.content + 1] = part
end

-- A reasoning item -> a thinking part (summary text + encrypted_content as
-- its signature), or redacted_thinking when only opaque content is there.
local function decode_reasoning_item(item)
    local texts = {}
    if type(item.summary) == "table" then
        for _, s in ipairs(item.summary) do
            if type(s) == "table" and is_str(s.text) then texts[#texts + 1] = s.text end
        end
    end
    local text = concat(texts, "\n\n")
    local enc = is_str(item.encrypted_content) and item.encrypted_content ~= "" and item.encrypted_content or nil
    local origin, kind, value = M.name, "sig", enc
    if enc then
        local o, k, v = unwrap_opaque(enc)
        if o then origin, kind, value = o, k, v end
    end
    if kind == "data" then return { type = "redacted_thinking", data = value, origin = origin } end
    if #texts == 0 and origin == M.name then
        if not enc then return nil end
        return { type = "redacted_thinking", data = enc, origin = origin }
    end
    return { type = "thinking", text = text, signature = value, origin = origin }
end

local function decode_input(input, req, msgs)
    for i, item in ipairs(input) do
        if type(item) ~= "table" then return nil, "input." .. (i - 1) .. ": must be an object" end
        local t = item.type
        if t == nil or t == "message" then
            local role = item.role
            local content, err = decode_content(item.content)
            if not content then return nil, err end
            if role == "system" or role == "developer" then
                for _, p in ipairs(content) do
                    if p.type == "text" then req.system[#req.system + 1] = p end
                end
            elseif role == "user" or role == "assistant" then
                for _, p in ipairs(content) do push(msgs, role, p) end
            else
                return nil, "unsupported input message role '" .. tostring(role) .. "'"
            end
        elseif t == "function_call" then
            push(msgs, "assistant", { type = "tool_call", id = item.call_id, name = item.name,
                                      arguments = decode_args(item.arguments) })
        elseif t == "custom_tool_call" then
            push(msgs, "assistant", { type = "tool_call", id = item.call_id, name = item.name,
                                      arguments = { input = is_str(item.input) and item.input or "" } })
        elseif t == "function_call_output" or t == "custom_tool_call_output" then
            local content, err = decode_content(item.output)
            if not content then return nil, err end
            push(msgs, "user", { type = "tool_result", tool_call_id = item.call_id, content = content,
                                 is_error = false })
        elseif t == "reasoning" then
            local part = decode_reasoning_item(item)
            if part then push(msgs, "assistant", part) end
        elseif t == "item_reference" then
            return nil, "item_reference points at OpenAI's stored items and cannot be translated"
        end
        -- Built-in tool traffic (web_search_call, ...) has no IR equivalent: skipped.
    end
    return true
end

-- A custom tool -> an IR function tool taking its free text as `input`.
local function custom_tool(t)
    local desc = is_str(t.description) and t.description or ""
    local f = t.format
    if type(f) == "table" and f.type == "grammar" and is_str(f.definition) then
        desc = desc .. (desc ~= "" and "\n\n" or "") .. "The input is free text (not JSON) that must match this "
            .. (is_str(f.syntax) and f.syntax or "") .. " grammar:\n" .. f.definition
    end
    return { name = t.name, description = desc ~= "" and desc or nil,
             parameters = { type = "object", additionalProperties = false,
                            properties = { input = { type = "string",
                                description = "The tool's whole input, as free text." } },
                            required = json_array({ "input" }) } }
end

local EFFORT_IN = { minimal = "low", low = "low", medium = "medium", high = "high", xhigh = "high", max = "high" }

local function decode_tool_choice(tc)
    if tc == nil or tc == json_null then return nil end
    if is_str(tc) then
        if tc == "auto" or tc == "none" or tc == "required" then return { type = tc } end
        return nil
    end
    if type(tc) ~= "table" then return nil end
    if (tc.type == "function" or tc.type == "custom") and is_str(tc.name) then
        return { type = "tool", name = tc.name }
    end
    if tc.type == "allowed_tools" then return { type = tc.mode == "required" and "required" or "auto" } end
    return nil
end

function M.decode_request(body, info)
    if type(body) ~= "table" then return invalid("request body must be a JSON object") end
    local stateful = info and info.upstream == "openai-responses"
    if (body.previous_response_id ~= nil and body.previous_response_id ~= json_null
        or body.conversation ~= nil and body.conversation ~= json_null) and not stateful then
        return invalid("previous_response_id / conversation refer to state stored by OpenAI and cannot be "
            .. "used with this model's supplier; send the full conversation in 'input' (with store=false)")
    end
    local req = { model = body.model, stream = body.stream == true, system = {}, messages = {} }
    if is_str(body.instructions) and body.instructions ~= "" then
        req.system[1] = { type = "text", text = body.instructions }
    end
    local input = body.input
    if is_str(input) then
        req.messages[1] = { role = "user", content = { { type = "text", text = input } } }
    elseif type(input) == "table" then
        local ok, err = decode_input(input, req, req.messages)
        if not ok then return invalid(err) end
    end
    if #req.system == 0 then req.system = nil end

    if type(body.tools) == "table" then
        local tools = {}
        for i, t in ipairs(body.tools) do
            if type(t) ~= "table" then return invalid("tools." .. (i - 1) .. ": must be an object") end
            -- Built-in tools run at OpenAI: web search has equivalents at
            -- Anthropic and Gemini (req.web_search); the rest (a Codex
            -- `namespace`, file_search, ...) is reported as dropped.
            if t.type == "web_search" or t.type == "web_search_preview" then
                req.web_search = true
            elseif t.type ~= "function" and t.type ~= "custom" then
                req.dropped = req.dropped or {}
                req.dropped[#req.dropped + 1] = "tool " .. tostring(t.type)
                    .. (is_str(t.name) and (" " .. t.name) or "")
            elseif t.type == "function" then
                tools[#tools + 1] = { name = t.name, description = is_str(t.description) and t.description or nil,
                                      parameters = type(t.parameters) == "table" and t.parameters or nil }
            elseif t.type == "custom" and is_str(t.name) then
                tools[#tools + 1] = custom_tool(t)
                req.custom_tools = req.custom_tools or {}
                req.custom_tools[t.name] = true
            end
        end
        if #tools > 0 then req.tools = tools end
    end
    req.tool_choice = decode_tool_choice(body.tool_choice)
    if type(body.parallel_tool_calls) == "boolean" then req.parallel_tool_calls = body.parallel_tool_calls end
    if type(body.max_output_tokens) == "number" then req.max_tokens = body.max_output_tokens end
    if type(body.temperature) == "number" then req.temperature = body.temperature end
    if type(body.top_p) == "number" then req.top_p = body.top_p end

    local r = body.reasoning
    if type(r) == "table" and is_str(r.effort) then
        if r.effort == "none" then
            req.thinking = { enabled = false }
        else
            req.thinking = { enabled = true, effort = EFFORT_IN[r.effort] or "medium" }
        end
    end
    local fmt = type(body.text) == "table" and body.text.format
    if type(fmt) == "table" then
        if fmt.type == "json_object" then
            req.response_format = { type = "json_object" }
        elseif fmt.type == "json_schema" then
            req.response_format = { type = "json_schema", name = fmt.name, schema = fmt.schema,
                                    strict = fmt.strict == true or nil }
        end
    end
    local user = body.safety_identifier or body.user
    if is_str(user) then req.user = user end
    if is_str(body.prompt_cache_key) then req.session_hint = body.prompt_cache_key end
    if stateful then
        req.previous_response_id = is_str(body.previous_response_id) and body.previous_response_id or nil
        req.conversation = body.conversation ~= json_null and body.conversation or nil
        if type(body.store) == "boolean" then req.store = body.store end
        if type(body.include) == "table" then req.include = body.include end
    end
    return req
end

---------------------------------------------------------------------------
-- request: IR -> Responses
---------------------------------------------------------------------------

local function input_part(p)
    if p.type == "text" then return { type = "input_text", text = p.text } end
    if p.type == "image" then
        return { type = "input_image", image_url = data_url(p.source), detail = p.detail or "auto" }
    end
    if p.type == "document" then
        local s = p.source
        if s.kind == "text" then return { type = "input_text", text = s.data } end
        if s.kind == "url" then return { type = "input_file", file_url = s.url } end
        if s.kind == "file" then return { type = "input_file", file_id = s.file_id } end
        return { type = "input_file", file_data = data_url(s), filename = p.title or "document.pdf" }
    end
    return nil
end

-- function_call_output.output: a plain string when the result is text only,
-- otherwise an array of input parts (supported since 2025-09).
local function tool_output(content)
    if is_str(content) then return content end
    local texts, parts, only_text = {}, json_array({}), true
    for _, p in ipairs(content or {}) do
        local ip = input_part(p)
        if ip then
            parts[#parts + 1] = ip
            if ip.type == "input_text" then texts[#texts + 1] = ip.text else only_text = false end
        end
    end
    if only_text then return concat(texts, "\n") end
    return parts
end

local function flush_message(input, role, parts)
    if #parts > 0 then
        input[#input + 1] = { type = "message", role = role, content = parts }
    end
    return json_array({})
end

local function encode_user(msg, input)
    local parts = json_array({})
    for _, p in ipairs(msg.content) do
        if p.type == "tool_result" then
            parts = flush_message(input, "user", parts)
            input[#input + 1] = { type = "function_call_output", call_id = p.tool_call_id,
                                  output = tool_output(p.content) }
        else
            local ip = input_part(p)
            if ip then parts[#parts + 1] = ip end
        end
    end
    flush_message(input, "user", parts)
end

local function encode_assistant(msg, input)
    local parts = json_array({})
    for _, p in ipairs(msg.content) do
        local t = p.type
        if t == "text" then
            if p.text ~= "" then
                parts[#parts + 1] = { type = "output_text", text = p.text, annotations = json_array({}) }
            end
        else
            parts = flush_message(input, "assistant", parts)
            if t == "tool_call" then
                input[#input + 1] = { type = "function_call", call_id = p.id, name = p.name,
                                      arguments = encode_args(p.arguments) }
            elseif t == "thinking" and p.signature and p.origin == M.name then
                -- Reasoning travels back only with its own opaque state; a
                -- summary alone, or another provider's state, cannot be replayed.
                local summary = json_array({})
                if p.text ~= "" then summary[1] = { type = "summary_text", text = p.text } end
                input[#input + 1] = { type = "reasoning", summary = summary, encrypted_content = p.signature }
            elseif t == "redacted_thinking" and p.origin == M.name then
                input[#input + 1] = { type = "reasoning", summary = json_array({}), encrypted_content = p.data }
            end
        end
    end
    flush_message(input, "assistant", parts)
end

local function effort_for(th)
    if th.effort then return th.effort end
    local b = th.budget_tokens
    if not b then return "medium" end
    if b < 6144 then return "low" end
    if b < 12288 then return "medium" end
    return "high"
end

local function encode_tool_choice(tc)
    if not tc then return nil end
    if tc.type == "tool" then return { type = "function", name = tc.name } end
    return tc.type
end

function M.encode_request(req, opts)
    opts = opts or {}
    -- input_file.file_id names a file in OpenAI's Files API; an Anthropic
    -- file id is unknown there (https://platform.openai.com/docs/api-reference/files).
    local ok, ferr = common.check_file_ids(req, "openai", "an OpenAI Responses")
    if not ok then return nil, ferr end
    local body = { model = opts.model or req.model, stream = opts.stream and true or false }
    if req.system and #req.system > 0 then
        local t = {}
        for _, p in ipairs(req.system) do t[#t + 1] = p.text end
        body.instructions = concat(t, "\n\n")
    end
    local input = json_array({})
    for _, m in ipairs(req.messages or {}) do
        if m.role == "assistant" then encode_assistant(m, input) else encode_user(m, input) end
    end
    body.input = input
    if req.web_search and not (req.tools and #req.tools > 0) then
        body.tools = json_array({ { type = "web_search" } })
    end
    if req.tools and #req.tools > 0 then
        local tools = json_array({})
        for _, t in ipairs(req.tools) do
            -- strict=false explicitly: an omitted strict makes every property required (§7 item 19).
            tools[#tools + 1] = { type = "function", name = t.name, description = t.description,
                                  parameters = t.parameters or { type = "object", properties = {} },
                                  strict = false }
        end
        if req.web_search then tools[#tools + 1] = { type = "web_search" } end
        body.tools = tools
        body.tool_choice = encode_tool_choice(req.tool_choice)
        if req.parallel_tool_calls ~= nil then body.parallel_tool_calls = req.parallel_tool_calls end
    end
    if req.max_tokens then body.max_output_tokens = req.max_tokens < 16 and 16 or req.max_tokens end
    body.temperature = req.temperature
    body.top_p = req.top_p
    local th = req.thinking
    if th and th.enabled then
        body.reasoning = { effort = effort_for(th), summary = "auto" }
    end
    local rf = req.response_format
    if rf then
        if rf.type == "json_schema" then
            body.text = { format = { type = "json_schema", name = rf.name or "response", schema = rf.schema,
                                     strict = rf.strict or false } }
        else
            body.text = { format = { type = "json_object" } }
        end
    end
    body.safety_identifier = req.user
    body.prompt_cache_key = req.session_hint
    if req.previous_response_id or req.conversation then
        body.previous_response_id = req.previous_response_id
        body.conversation = req.conversation
        body.store = req.store
        body.include = req.include
    else
        -- The gateway replays full histories: nothing needs storing upstream,
        -- and reasoning must come back as encrypted content to be replayable.
        body.store = false
        if th and th.enabled then body.include = json_array({ "reasoning.encrypted_content" }) end
    end
    return body
end

---------------------------------------------------------------------------
-- response: Responses -> IR
---------------------------------------------------------------------------

local function usage_in(u)
    if type(u) ~= "table" then return nil end
    local itd = type(u.input_tokens_details) == "table" and u.input_tokens_details or {}
    local otd = type(u.output_tokens_details) == "table" and u.output_tokens_details or {}
    local num = ir.tokens
    return { input_tokens = num(u.input_tokens), output_tokens = num(u.output_tokens),
             cache_read_tokens = num(itd.cached_tokens), cache_write_tokens = num(itd.cache_write_tokens),
             reasoning_tokens = num(otd.reasoning_tokens) }
end
M.decode_usage = usage_in

local INCOMPLETE_IN = { max_output_tokens = "max_tokens", content_filter = "content_filter" }

-- The IR stop reason for a final Responses status (§6.8).
local function stop_in(status, incomplete, saw_call, saw_refusal)
    if status == "incomplete" then
        local reason = type(incomplete) == "table" and incomplete.reason or nil
        return INCOMPLETE_IN[reason] or "max_tokens"
    end
    if status == "failed" or status == "cancelled" then return "error" end
    if saw_call then return "tool_use" end
    if saw_refusal then return "refusal" end
    return "end_turn"
end

-- The error object inside a failed response or an `error` stream event,
-- flat ({code,message}) or nested ({error={code,message}}).
local CODE_STATUS = { rate_limit_exceeded = 429, server_error = 500, invalid_prompt = 400,
                      insufficient_quota = 429, vector_store_timeout = 504 }
local function error_in(e, fallback)
    if type(e) ~= "table" then return ir.error(500, fallback or "upstream response failed", "api_error") end
    if type(e.error) == "table" then e = e.error end
    local code = is_str(e.code) and e.code or nil
    local status = CODE_STATUS[code] or (code and code:match("^invalid_") and 400) or 500
    local msg = is_str(e.message) and e.message or fallback or "upstream response failed"
    return ir.error(status, msg)
end

function M.decode_response(body)
    if type(body) ~= "table" then return nil, ir.error(502, "upstream response is not a JSON object", "api_error") end
    if body.status == "failed" or body.status == "cancelled" then
        return nil, error_in(body.error, "upstream response " .. body.status)
    end
    -- An incomplete response may stop before any output; any other needs it.
    if type(body.output) ~= "table" and not (body.output == nil and body.status == "incomplete") then
        return nil, ir.error(502, "the answer has no output array", "api_error")
    end
    local content, saw_call, saw_refusal = {}, false, false
    for _, item in ipairs(type(body.output) == "table" and body.output or {}) do
        local t = item.type
        if t == "message" then
            for _, c in ipairs(type(item.content) == "table" and item.content or {}) do
                if c.type == "output_text" then
                    content[#content + 1] = { type = "text", text = c.text or "" }
                elseif c.type == "refusal" then
                    saw_refusal = true
                    content[#content + 1] = { type = "text", text = c.refusal or "" }
                end
            end
        elseif t == "function_call" then
            saw_call = true
            content[#content + 1] = { type = "tool_call", id = item.call_id, name = item.name,
                                      arguments = decode_args(item.arguments) }
        elseif t == "reasoning" then
            local part = decode_reasoning_item(item)
            if part then content[#content + 1] = part end
        end
    end
    return { id = body.id, model = body.model, content = content,
             stop_reason = stop_in(body.status, body.incomplete_details, saw_call, saw_refusal),
             usage = usage_in(body.usage) }
end

---------------------------------------------------------------------------
-- response: IR -> Responses
---------------------------------------------------------------------------

local function usage_out(u)
    if not u then return json_null end
    local i, o = u.input_tokens or 0, u.output_tokens or 0
    return { input_tokens = i, input_tokens_details = { cached_tokens = u.cache_read_tokens or 0 },
             output_tokens = o, output_tokens_details = { reasoning_tokens = u.reasoning_tokens or 0 },
             total_tokens = i + o }
end

-- IR stop -> status, incomplete_details (§6.8).
local function status_out(stop)
    if stop == "max_tokens" then return "incomplete", { reason = "max_output_tokens" } end
    if stop == "content_filter" then return "incomplete", { reason = "content_filter" } end
    if stop == "pause_turn" then return "incomplete", { reason = "max_output_tokens" } end
    if stop == "error" then return "failed", json_null end
    return "completed", json_null
end

-- Item ids derive from the response id so the same input gives the same output.
local function item_id(prefix, base, n)
    return prefix .. base .. "_" .. n
end

local function base_of(id) return (id:gsub("^resp_", "")) end

local function message_item(id, text, status)
    return { type = "message", id = id, status = status, role = "assistant",
             content = json_array({ { type = "output_text", text = text, annotations = json_array({}) } }) }
end

local function reasoning_item(id, text, enc)
    local summary = json_array({})
    if text and text ~= "" then summary[1] = { type = "summary_text", text = text } end
    return { type = "reasoning", id = id, summary = summary, encrypted_content = enc }
end

local function call_item(id, call_id, name, args, status)
    return { type = "function_call", id = id, call_id = call_id, name = name, arguments = args, status = status }
end

-- The free text of a call to a custom tool: the `input` string the function
-- form asks for, else the arguments as the model wrote them.
local function custom_input(args)
    if type(args) == "string" then
        local v = json_decode(args)
        if type(v) == "table" and is_str(v.input) then return v.input end
        return args
    end
    if type(args) == "table" and is_str(args.input) then return args.input end
    return encode_args(args)
end

local function custom_item(id, call_id, name, input, status)
    return { type = "custom_tool_call", id = id, call_id = call_id, name = name, input = input, status = status }
end

local function response_obj(id, model, created, status, output, usage, incomplete, err)
    return { id = id, object = "response", created_at = created, status = status, model = model,
             output = output, usage = usage, error = err or json_null, incomplete_details = incomplete or json_null,
             instructions = json_null, metadata = {}, parallel_tool_calls = true, tool_choice = "auto",
             tools = json_array({}) }
end

function M.encode_response(resp, opts)
    opts = opts or {}
    local id = opts.id or ir.new_id("resp_")
    local base = base_of(id)
    local output, n = json_array({}), 0
    local texts = nil
    local function flush_text()
        if texts then
            n = n + 1
            output[#output + 1] = message_item(item_id("msg_", base, n), concat(texts), "completed")
            texts = nil
        end
    end
    for _, p in ipairs(resp.content or {}) do
        if p.type == "text" then
            texts = texts or {}
            texts[#texts + 1] = p.text
        else
            flush_text()
            n = n + 1
            if p.type == "tool_call" and opts.custom_tools and opts.custom_tools[p.name] then
                output[#output + 1] = custom_item(item_id("ctc_", base, n), p.id, p.name,
                                                  custom_input(p.arguments), "completed")
            elseif p.type == "tool_call" then
                output[#output + 1] = call_item(item_id("fc_", base, n), p.id, p.name, encode_args(p.arguments),
                                                "completed")
            elseif p.type == "thinking" then
                local sig = p.signature and wrap_opaque(p.origin or opts.origin, "sig", p.signature)
                output[#output + 1] = reasoning_item(item_id("rs_", base, n), p.text, sig)
            elseif p.type == "redacted_thinking" then
                output[#output + 1] = reasoning_item(item_id("rs_", base, n), nil,
                                                     wrap_opaque(p.origin or opts.origin, "data", p.data))
            end
        end
    end
    flush_text()
    local status, incomplete = status_out(resp.stop_reason)
    return response_obj(id, opts.model or resp.model, opts.created or os_time(), status, output,
                        usage_out(resp.usage), incomplete)
end

---------------------------------------------------------------------------
-- errors
---------------------------------------------------------------------------

-- The OpenAI error envelope and its type map are shared with Chat
-- (sluice.protocols.common).
M.decode_error = common.openai_decode_error
M.encode_error = common.openai_encode_error

---------------------------------------------------------------------------
-- stream: Responses events -> IR events
---------------------------------------------------------------------------

-- State per upstream stream: output items by output_index, the text parts of
-- message items by "output_index:content_index", and the IR blocks still open.
local Decoder = S.decoder()

function M.stream_decoder(opts)
    return setmetatable({ blocks = S.blocks(), items = {}, parts = {}, started = false,
                          saw_call = false, saw_refusal = false, errored = false, ended = false }, Decoder)
end

function Decoder:ensure_started(out, r)
    if not self.started then
        self.started = true
        r = type(r) == "table" and r or {}
        out[#out + 1] = { type = "start", id = r.id, model = r.model }
    end
end

local function nonempty(s) return is_str(s) and s ~= "" end

-- A reasoning item's summary text (delta families: summary or raw reasoning
-- text; whichever comes first wins so the two are never mixed).
function Decoder:reasoning_delta(out, it, family, text)
    it.family = it.family or family
    if it.family ~= family then return end
    if it.ir == nil then
        it.ir = self.blocks:start(out, "thinking")
    elseif it.need_sep then
        out[#out + 1] = { type = "thinking", index = it.ir, text = "\n\n" }
    end
    it.need_sep = false
    out[#out + 1] = { type = "thinking", index = it.ir, text = text }
end

function Decoder:item_added(out, oi, item)
    local t = item.type
    if t == "function_call" then
        self.saw_call = true
        local it = { kind = "call" }
        self.items[oi] = it
        it.ir = self.blocks:start(out, "tool_call", { id = item.call_id, name = item.name })
        if nonempty(item.arguments) then
            it.args = true
            out[#out + 1] = { type = "tool_args", index = it.ir, json = item.arguments }
        end
    elseif t == "reasoning" then
        self.items[oi] = { kind = "reasoning" }
    elseif t == "message" then
        self.items[oi] = { kind = "message", parts = {} }
    end
end

function Decoder:item_done(out, oi, item)
    local it = self.items[oi]
    local t = item.type
    if t == "function_call" then
        if not it then self:item_added(out, oi, item); it = self.items[oi] end
        if not it.args and nonempty(item.arguments) then
            it.args = true
            out[#out + 1] = { type = "tool_args", index = it.ir, json = item.arguments }
        end
        self.blocks:stop(out, it.ir)
    elseif t == "reasoning" then
        it = it or { kind = "reasoning" }
        local enc = nonempty(item.encrypted_content) and item.encrypted_content or nil
        if it.ir == nil then
            -- Nothing streamed: take the summary from the finished item.
            local part = decode_reasoning_item(item)
            if part and part.type == "thinking" then
                self:reasoning_delta(out, it, "summary", part.text)
            elseif part then
                it.ir = self.blocks:start(out, "redacted_thinking", { data = part.data })
                enc = nil
            end
        end
        if it.ir ~= nil then
            if enc then out[#out + 1] = { type = "signature", index = it.ir, signature = enc } end
            self.blocks:stop(out, it.ir)
        end
    elseif it and it.parts then
        for _, i in ipairs(it.parts) do self.blocks:stop(out, i) end
    end
end

function Decoder:text_part(out, obj, create)
    local key = tostring(obj.output_index) .. ":" .. tostring(obj.content_index)
    local p = self.parts[key]
    if not p and create then
        p = { ir = self.blocks:start(out, "text") }
        self.parts[key] = p
        local it = self.items[obj.output_index]
        if it and it.parts then it.parts[#it.parts + 1] = p.ir end
    end
    return p
end

function Decoder:text_delta(out, obj, refusal)
    if refusal then self.saw_refusal = true end
    local p = self:text_part(out, obj, true)
    if nonempty(obj.delta) then
        p.seen = true
        out[#out + 1] = { type = "text", index = p.ir, text = obj.delta }
    end
end

function Decoder:terminal(out, r)
    r = type(r) == "table" and r or {}
    self:ensure_started(out, r)
    self.ended = true
    if r.status == "failed" or r.status == "cancelled" then
        -- Open blocks stay open: closing them would pass a cut tool call off as whole.
        if not self.errored then
            self.errored = true
            out[#out + 1] = { type = "error", error = error_in(r.error, "upstream response " .. r.status) }
        end
        return
    end
    self.blocks:stop_all(out)
    local u = usage_in(r.usage)
    if u then out[#out + 1] = { type = "usage", usage = u } end
    if not self.saw_call and type(r.output) == "table" then
        for _, item in ipairs(r.output) do
            if item.type == "function_call" then self.saw_call = true end
        end
    end
    out[#out + 1] = { type = "finish",
                      stop_reason = stop_in(r.status, r.incomplete_details, self.saw_call, self.saw_refusal) }
end

local HANDLERS = {
    ["response.created"] = function(self, out, obj) self:ensure_started(out, obj.response) end,
    ["response.in_progress"] = function(self, out, obj) self:ensure_started(out, obj.response) end,
    ["response.output_item.added"] = function(self, out, obj)
        self:ensure_started(out)
        if type(obj.item) == "table" then self:item_added(out, obj.output_index, obj.item) end
    end,
    ["response.output_item.done"] = function(self, out, obj)
        self:ensure_started(out)
        if type(obj.item) == "table" then self:item_done(out, obj.output_index, obj.item) end
    end,
    ["response.content_part.added"] = function(self, out, obj)
        local part = obj.part
        if type(part) == "table" and (part.type == "output_text" or part.type == "refusal") then
            if part.type == "refusal" then self.saw_refusal = true end
            local p = self:text_part(out, obj, true)
            local txt = part.text or part.refusal
            if nonempty(txt) then
                p.seen = true
                out[#out + 1] = { type = "text", index = p.ir, text = txt }
            end
        end
    end,
    ["response.output_text.delta"] = function(self, out, obj) self:text_delta(out, obj, false) end,
    ["response.refusal.delta"] = function(self, out, obj) self:text_delta(out, obj, true) end,
    ["response.content_part.done"] = function(self, out, obj)
        local p = self:text_part(out, obj, false)
        if p then self.blocks:stop(out, p.ir) end
    end,
    ["response.reasoning_summary_part.added"] = function(self, out, obj)
        local it = self.items[obj.output_index]
        if it and it.ir ~= nil then it.need_sep = true end
    end,
    ["response.reasoning_summary_text.delta"] = function(self, out, obj)
        local it = self.items[obj.output_index]
        if it and nonempty(obj.delta) then self:reasoning_delta(out, it, "summary", obj.delta) end
    end,
    ["response.reasoning_text.delta"] = function(self, out, obj)
        local it = self.items[obj.output_index]
        if it and nonempty(obj.delta) then self:reasoning_delta(out, it, "text", obj.delta) end
    end,
    ["response.function_call_arguments.delta"] = function(self, out, obj)
        local it = self.items[obj.output_index]
        if it and it.kind == "call" and nonempty(obj.delta) then
            it.args = true
            out[#out + 1] = { type = "tool_args", index = it.ir, json = obj.delta }
        end
    end,
    ["response.function_call_arguments.done"] = function(self, out, obj)
        local it = self.items[obj.output_index]
        if it and it.kind == "call" and not it.args and nonempty(obj.arguments) then
            it.args = true
            out[#out + 1] = { type = "tool_args", index = it.ir, json = obj.arguments }
        end
    end,
    ["response.completed"] = function(self, out, obj) self:terminal(out, obj.response) end,
    ["response.incomplete"] = function(self, out, obj) self:terminal(out, obj.response) end,
    ["response.failed"] = function(self, out, obj) self:terminal(out, obj.response) end,
    ["error"] = function(self, out, obj)
        if not self.errored then
            self.errored = true
            out[#out + 1] = { type = "error", error = error_in(obj, "upstream stream error") }
        end
    end,
}

-- The delta events, nearly every event of a stream: read through a selector
-- (S.fields), their handlers get a table of the three fields they use
-- instead of the whole event decoded (item id, sequence number, logprobs).
local DELTAS = { ["response.output_text.delta"] = true, ["response.refusal.delta"] = true,
                 ["response.reasoning_summary_text.delta"] = true, ["response.reasoning_text.delta"] = true,
                 ["response.function_call_arguments.delta"] = true }
local DELTA_FIELDS = json.selector({ "type", "output_index", "content_index", "delta" })

function Decoder:feed(ev)
    local out = {}
    if self.ended then return out end
    if DELTAS[ev.event] then
        local ok, t, oi, ci, delta = S.fields(self, ev, out, DELTA_FIELDS)
        if not ok then return out end
        -- (the data's own type wins over the event name: another type is read whole below)
        if t == nil or DELTAS[t] then
            HANDLERS[t or ev.event](self, out, { output_index = oi, content_index = ci, delta = delta })
            return out
        end
    end
    local obj = S.json(self, ev, out)
    if obj == nil then return out end
    local h = HANDLERS[obj.type or ev.event]
    if h then h(self, out, obj) end
    return out
end

---------------------------------------------------------------------------
-- stream: IR events -> Responses events
---------------------------------------------------------------------------

-- Output items are emitted one at a time, in IR block start order (the
-- one-open-block queue of ir_stream): a block that starts while another
-- item is open (parallel calls from a Chat upstream) waits and is replayed
-- when the open one is done. The whole output is kept because the terminal
-- event must carry it (§3.4).
local Encoder = S.encoder()

function M.stream_encoder(opts)
    opts = opts or {}
    local enc = setmetatable({ model = opts.model, id = opts.id, created = opts.created, origin = opts.origin,
                               seq = 0, custom = opts.custom_tools, output = json_array({}),
                               usage = nil, stop_reason = nil, started = false, ended = false }, Encoder)
    enc.serial = S.serializer(enc)
    return enc
end

-- The client already has this stream's opening (a passthrough stream, sent
-- by the upstream itself): carry on from there, e.g. to close it on failure.
-- Its events were numbered from 0, so ours continue after them.
function Encoder:resume(seen)
    self.started = true
    self.id = self.id or seen.id or ir.new_id("resp_")
    self.base = base_of(self.id)
    self.model = self.model or seen.model
    self.created = self.created or os_time()
    self.seq = seen.events or 0
end

function Encoder:emit(buf, name, obj)
    obj.type = name
    obj.sequence_number = self.seq
    self.seq = self.seq + 1
    buf:put("event: ", name, "\ndata: ", json_encode(obj), "\n\n")
end

function Encoder:begin(buf, ev)
    self.started = true
    self.id = self.id or ir.new_id("resp_")
    self.base = base_of(self.id)
    self.model = self.model or (ev and ev.model)
    self.created = self.created or os_time()
    local function r() return response_obj(self.id, self.model, self.created, "in_progress", json_array({}), json_null) end
    self:emit(buf, "response.created", { response = r() })
    self:emit(buf, "response.in_progress", { response = r() })
end

-- Deltas are the per-event hot path: written straight into the buffer,
-- without building a table per event.
local DELTA = {
    text = { "response.output_text.delta", ",\"content_index\":0,\"logprobs\":[]" },
    thinking = { "response.reasoning_summary_text.delta", ",\"summary_index\":0" },
    tool_call = { "response.function_call_arguments.delta", "" },
}

function Encoder:delta(buf, rec, piece)
    local d = DELTA[rec.kind]
    if not d then return end
    if rec.kind == "thinking" and not rec.summary_open then
        rec.summary_open = true
        self:emit(buf, "response.reasoning_summary_part.added", { item_id = rec.item_id, output_index = rec.oi,
            summary_index = 0, part = { type = "summary_text", text = "" } })
    end
    local seq = self.seq
    self.seq = seq + 1
    buf:put("event: ", d[1], "\ndata: {\"type\":\"", d[1], "\",\"sequence_number\":", seq, ",\"item_id\":",
            rec.qid, ",\"output_index\":", rec.oi, d[2], ",\"delta\":", json_encode(piece), "}\n\n")
end

-- "custom" (a call to a custom tool) has no delta entry: its JSON arguments
-- are not the client's text, so the input is sent whole when the call ends.
local ITEM_PREFIX = { text = "msg_", thinking = "rs_", redacted_thinking = "rs_", tool_call = "fc_", custom = "ctc_" }

-- The serializer's callbacks: an item becomes live (added, and what it
-- accumulated while it waited as one delta); the live item is done.
function Encoder:open_block(buf, rec)
    local oi = #self.output
    rec.oi = oi
    rec.item_id = item_id(ITEM_PREFIX[rec.kind], self.base, oi + 1)
    rec.qid = json_encode(rec.item_id)
    self.output[oi + 1] = json_null -- placeholder until the item is done
    local kind = rec.kind
    if kind == "text" then
        self:emit(buf, "response.output_item.added", { output_index = oi, item = { type = "message",
            id = rec.item_id, status = "in_progress", role = "assistant", content = json_array({}) } })
        self:emit(buf, "response.content_part.added", { item_id = rec.item_id, output_index = oi, content_index = 0,
            part = { type = "output_text", text = "", annotations = json_array({}) } })
    elseif kind == "tool_call" then
        self:emit(buf, "response.output_item.added", { output_index = oi,
            item = call_item(rec.item_id, rec.call_id, rec.name, "", "in_progress") })
    elseif kind == "custom" then
        self:emit(buf, "response.output_item.added", { output_index = oi,
            item = custom_item(rec.item_id, rec.call_id, rec.name, "", "in_progress") })
    else
        self:emit(buf, "response.output_item.added", { output_index = oi,
            item = { type = "reasoning", id = rec.item_id, summary = json_array({}) } })
    end
    if #rec.acc > 0 then self:delta(buf, rec, concat(rec.acc)) end
end

function Encoder:stop_block(buf, rec, status)
    local text, oi, id = concat(rec.acc), rec.oi, rec.item_id
    local kind, item = rec.kind, nil
    if kind == "text" then
        self:emit(buf, "response.output_text.done", { item_id = id, output_index = oi, content_index = 0,
            text = text, logprobs = json_array({}) })
        self:emit(buf, "response.content_part.done", { item_id = id, output_index = oi, content_index = 0,
            part = { type = "output_text", text = text, annotations = json_array({}) } })
        item = message_item(id, text, status)
    elseif kind == "tool_call" then
        self:emit(buf, "response.function_call_arguments.done", { item_id = id, output_index = oi,
            name = rec.name, arguments = text })
        item = call_item(id, rec.call_id, rec.name, text, status)
    elseif kind == "custom" then
        local input = text ~= "" and custom_input(text) or ""
        if input ~= "" then
            self:emit(buf, "response.custom_tool_call_input.delta", { item_id = id, output_index = oi,
                delta = input })
        end
        self:emit(buf, "response.custom_tool_call_input.done", { item_id = id, output_index = oi, input = input })
        item = custom_item(id, rec.call_id, rec.name, input, status)
    elseif kind == "thinking" then
        if rec.summary_open then
            self:emit(buf, "response.reasoning_summary_text.done", { item_id = id, output_index = oi,
                summary_index = 0, text = text })
            self:emit(buf, "response.reasoning_summary_part.done", { item_id = id, output_index = oi,
                summary_index = 0, part = { type = "summary_text", text = text } })
        end
        item = reasoning_item(id, text, rec.enc and wrap_opaque(self.origin, "sig", rec.enc))
    else
        item = reasoning_item(id, nil, rec.data and wrap_opaque(self.origin, "data", rec.data))
    end
    self.output[oi + 1] = item
    self:emit(buf, "response.output_item.done", { output_index = oi, item = item })
end

function Encoder:on_block_start(buf, ev)
    local kind = ev.kind
    if kind == "tool_call" and self.custom and self.custom[ev.name] then kind = "custom" end
    self.serial:start(buf, ev.index, { kind = kind, call_id = ev.id, name = ev.name, data = ev.data, acc = {} })
end

-- Every piece is kept (the done events carry the whole text); a live item
-- also streams it.
function Encoder:on_delta(buf, ev)
    local rec = self.serial:get(ev.index)
    local piece = ev.text or ev.json
    if rec and piece and piece ~= "" then
        rec.acc[#rec.acc + 1] = piece
        if rec.live then self:delta(buf, rec, piece) end
    end
end
Encoder.on_text, Encoder.on_thinking, Encoder.on_tool_args = Encoder.on_delta, Encoder.on_delta, Encoder.on_delta

function Encoder:on_signature(buf, ev)
    local rec = self.serial:get(ev.index)
    if rec then rec.enc = ev.signature end
end

function Encoder:on_block_stop(buf, ev)
    local rec = self.serial:get(ev.index)
    if rec then self.serial:stop(buf, rec, "completed") end
end

-- The code of a failed response (§3.3), by IR error type.
local FAIL_CODE = { rate_limit = "rate_limit_exceeded", invalid_request = "invalid_prompt" }

-- error (the OpenAI error envelope's type) + response.failed with the
-- partial output.
function Encoder:fail(buf, message, err)
    if not self.started then self:begin(buf, nil) end
    local etype = err and err.type or "api_error"
    local code = FAIL_CODE[etype] or "server_error"
    self.serial:stop_all(buf, "incomplete")
    local e = common.openai_error_body({ type = etype }, message).error
    self:emit(buf, "error", { error = { type = e.type, code = code, message = message, param = json_null } })
    self:emit(buf, "response.failed", { response = response_obj(self.id, self.model, self.created, "failed",
        self.output, self.usage and usage_out(self.usage) or json_null, json_null,
        { code = code, message = message }) })
end

function Encoder:finish(buf)
    self.serial:stop_all(buf, "completed")
    local status, incomplete = status_out(self.stop_reason)
    self:emit(buf, status == "completed" and "response.completed" or "response.incomplete",
        { response = response_obj(self.id, self.model, self.created, status, self.output,
                                  usage_out(self.usage), incomplete) })
end

return M
