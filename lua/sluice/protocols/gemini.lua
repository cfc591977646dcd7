-- sluice.protocols.gemini — the Google Gemini (Developer API, v1beta) codec:
-- generateContent / streamGenerateContent?alt=sse requests, responses, errors
-- and streams to and from the IR (lua/sluice/ir.lua).
--
-- Gemini differs from the others in ways that shape this file: the model and
-- streaming live in the URL (info.model / info.stream); tool calls usually
-- have no ids, so ids are synthesised deterministically and tool results are
-- matched back by id, else by name and order; tool schemas must be cut down
-- to Gemini's OpenAPI subset (never dropped whole); thought signatures sit on
-- arbitrary parts and are carried in the IR as thinking parts (an empty-text
-- thinking part whose signature belongs to the part after it); streams have
-- no terminal event, the last chunk carries finishReason.
--
-- Opaque reasoning state from another provider (an Anthropic signature, a
-- Responses encrypted_content) reaches a Gemini client inside
-- thoughtSignature in a tagged envelope "sluice1:<origin>:<kind>:<value>", and
-- is unwrapped when the client sends it back; it is never sent to a Gemini
-- upstream, which only receives signatures whose origin is Gemini.

local ir = require("sluice.ir")
local json = require("sluice.json")
local S = require("sluice.ir_stream")
local common = require("sluice.protocols.common")
local schema = require("sluice.protocols.gemini_schema")

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local concat, upper, lower = table.concat, string.upper, string.lower
local json_encode, json_decode, json_array, json_null, is_array = json.encode, json.decode, json.array, json.null,
    json.is_array

local M = { name = "gemini" }

-- ================================================================= facts
-- What sluice knows about this protocol outside its codec: the registry
-- (protocols/init.lua) checks these and config, router, upstream,
-- toolnames and host read them. Their meaning: protocols/README.md.

M.title = "Gemini"

-- The model and streaming live in the path.
M.endpoints = {
    { match = "^/v1beta/models/([^/:]+):generateContent$", kind = "generate", stream = false },
    { match = "^/v1beta/models/([^/:]+):streamGenerateContent$", kind = "generate", stream = true },
    -- Recognised on any method so its answer has Gemini's shape; sluice
    -- does not count tokens for Gemini clients (501, see M.count_tokens).
    { match = "^/v1beta/models/([^/:]+):countTokens$", kind = "count_tokens", any_method = true },
}
-- GET /v1beta/models answers in Gemini's list shape (models.list,
-- https://ai.google.dev/api/models#method:-models.list): Gemini clients read
-- `models[].name` ("models/<id>") and `supportedGenerationMethods`.
M.models = {
    path = "/v1beta/models",
    list = function(ids)
        local models = json_array({})
        for i, id in ipairs(ids) do
            models[i] = { name = "models/" .. id, baseModelId = id, version = "001", displayName = id,
                          supportedGenerationMethods = json_array({ "generateContent", "streamGenerateContent" }) }
        end
        return { models = models }
    end,
}
M.guess = { contains = "/v1beta/", rank = 2 }

-- A key may also come as ?key=; on passthrough it moves to the header.
M.credential = { header = "x-goog-api-key", query = "key" }
-- Where a request asks for its output limit (a configured cap lowers it on passthrough).
M.output_limit = { "generationConfig.maxOutputTokens", "generation_config.max_output_tokens" }
-- Query parameters path() sets itself: never forwarded from the client.
M.path_query = { "alt" }
-- The upstream model is in the path: a same-protocol body is sent as is.
M.model_in_path = true
-- A letter or _ first, then [A-Za-z0-9_.:-]; kept to 64 for older models.
M.tool_names = { max = 64, pattern = "^[a-zA-Z_][a-zA-Z0-9_.:-]*$", bad = "[^a-zA-Z0-9_.:-]",
                 first = "^[a-zA-Z_]" }

-- No terminal event: the chunk that carries finishReason ends the stream (§4.4).
M.terminal = { { data_has = "\"finishReason\":" } } -- with the colon: the key, not a text part saying it
-- Chunks that carry usage (cumulative): the core keeps the first and the
-- latest on a passthrough stream.
M.usage_events = { { data_has = "\"usageMetadata\":{" }, { data_has = "\"usageMetadata\": {" } }
-- The top-level member of a whole answer that carries its usage.
M.answer_usage = "usageMetadata"

local function strip_model(model)
    if type(model) ~= "string" then return model end
    return (model:gsub("^models/", ""))
end

-- The model is one path segment: everything but unreserved bytes (and `@`,
-- as in "claude@20240620") is percent-encoded, so no model name can add a
-- segment, a query or a fragment to the upstream URL.
function M.path(model, stream)
    model = tostring(strip_model(model)):gsub("[^%w%-%._~@]", function(c)
        return string.format("%%%02X", c:byte())
    end)
    if stream then return "/v1beta/models/" .. model .. ":streamGenerateContent?alt=sse" end
    return "/v1beta/models/" .. model .. ":generateContent"
end
-- ============================================================ end of facts

---------------------------------------------------------------------------
-- helpers
---------------------------------------------------------------------------

local function is_str(v) return type(v) == "string" end
local function is_obj(v) return type(v) == "table" and not is_array(v) end
local function nonempty(s) return is_str(s) and s ~= "" end

local as_object, decode_args = common.as_object, common.decode_args

local function wrap_opaque(origin, kind, value)
    return common.wrap(M.name, origin, kind, value)
end

-- A thoughtSignature -> origin, kind ("sig" | "data"), value.
local function unwrap_opaque(s)
    local o, k, v = common.unwrap(s)
    if o then return o, k, v end
    return M.name, "sig", s
end

-- Ids synthesised for calls Gemini left without one: call_<response id>_<n>,
-- so a replayed history maps to the same ids.
local function call_id(base, n)
    return "call_" .. base .. "_" .. n
end

local function id_base(rid)
    if not nonempty(rid) then return ir.new_id("", 16) end
    local b = rid:gsub("[^%w_-]", "")
    if b == "" then return ir.new_id("", 16) end
    return b:sub(1, 24)
end

---------------------------------------------------------------------------
-- request: Gemini -> IR
---------------------------------------------------------------------------

local function media_part(mime, source)
    if is_str(mime) and mime:find("^image/") then return { type = "image", source = source } end
    return { type = "document", source = source }
end

-- A user-side data part (text / inlineData / fileData) -> IR part or nil.
local function decode_data_part(p)
    if is_str(p.text) then
        if p.text == "" then return nil end
        return { type = "text", text = p.text }
    end
    local d = p.inlineData or p.inline_data
    if is_obj(d) and is_str(d.data) then
        local mime = d.mimeType or d.mime_type
        if not is_str(mime) then mime = nil end
        if is_str(mime) and mime:find("^text/") then
            return { type = "document", source = { kind = "base64", media_type = mime, data = d.data } }
        end
        return media_part(mime, { kind = "base64", media_type = mime, data = d.data })
    end
    local f = p.fileData or p.file_data
    if is_obj(f) then
        local mime = f.mimeType or f.mime_type
        return media_part(mime, { kind = "url", url = f.fileUri or f.file_uri, media_type = mime })
    end
    return nil
end

local function response_text(v)
    if is_str(v) then return v end
    return json_encode(v)
end

-- functionResponse -> tool_result content + is_error ({"output"}/{"error"}
-- convention; anything else is the output as a whole).
local function decode_function_response(fr)
    local r = fr.response
    local content, is_error = {}, false
    if is_obj(r) then
        if r.error ~= nil and r.error ~= json_null then
            is_error = true
            content[1] = { type = "text", text = response_text(r.error) }
        elseif r.output ~= nil then
            content[1] = { type = "text", text = response_text(r.output) }
        elseif next(r) ~= nil then
            content[1] = { type = "text", text = json_encode(r) }
        end
    elseif r ~= nil and r ~= json_null then
        content[1] = { type = "text", text = response_text(r) }
    end
    if type(fr.parts) == "table" then
        for _, p in ipairs(fr.parts) do
            local part = is_obj(p) and decode_data_part(p)
            if part then content[#content + 1] = part end
        end
    end
    return content, is_error
end

-- Calls are remembered in order so a response finds its call by id, else by
-- name among the calls not yet answered (Gemini links them by position).
local function match_by_id(st, fr)
    if not is_str(fr.id) then return nil end
    for _, c in ipairs(st.calls) do
        if c.id == fr.id and not c.done then c.done = true return c.id end
    end
    return nil
end

local function match_call(st, fr)
    for _, c in ipairs(st.calls) do
        if not c.done and c.name == fr.name then c.done = true return c.id end
    end
    st.n = st.n + 1
    return is_str(fr.id) and fr.id or call_id(st.base .. "r", st.n)
end

local function push_thinking(content, text, sig, thought)
    local origin, kind, value = M.name, "sig", nil
    if sig then origin, kind, value = unwrap_opaque(sig) end
    if kind == "data" then
        content[#content + 1] = { type = "redacted_thinking", data = value, origin = origin }
        return
    end
    local last = content[#content]
    -- Consecutive thought parts (streamed deltas kept by the client) are one block.
    if thought and last and last.type == "thinking" and last.signature == nil and last.merge then
        last.text = last.text .. text
        last.signature, last.origin = value, origin
    else
        content[#content + 1] = { type = "thinking", text = text, signature = value, origin = origin,
                                  merge = true }
    end
    if value then content[#content].merge = nil end
end

local function decode_model_parts(parts, st)
    local content = {}
    for _, p in ipairs(parts) do
        if is_obj(p) then
            local sig = nonempty(p.thoughtSignature) and p.thoughtSignature
                or nonempty(p.thought_signature) and p.thought_signature or nil
            if p.thought == true and is_str(p.text) then
                push_thinking(content, p.text, sig, true)
            else
                if sig then push_thinking(content, "", sig, false) end
                local fc = p.functionCall or p.function_call
                if is_obj(fc) then
                    st.n = st.n + 1
                    local id = nonempty(fc.id) and fc.id or call_id(st.base, st.n)
                    st.calls[#st.calls + 1] = { id = id, name = fc.name }
                    content[#content + 1] = { type = "tool_call", id = id, name = fc.name,
                                              arguments = as_object(fc.args) }
                elseif nonempty(p.text) then
                    content[#content + 1] = { type = "text", text = p.text }
                end
            end
        end
    end
    for _, c in ipairs(content) do c.merge = nil end
    return content
end

local function decode_user_parts(parts, st)
    local content = {}
    -- Responses whose id names an open call claim it first; the rest take
    -- the open calls of their name in order.
    local by_id = {}
    for i, p in ipairs(parts) do
        local fr = is_obj(p) and (p.functionResponse or p.function_response)
        if is_obj(fr) then by_id[i] = match_by_id(st, fr) end
    end
    for i, p in ipairs(parts) do
        if is_obj(p) then
            local fr = p.functionResponse or p.function_response
            if is_obj(fr) then
                local c, is_error = decode_function_response(fr)
                content[#content + 1] = { type = "tool_result", tool_call_id = by_id[i] or match_call(st, fr),
                                          name = fr.name, content = c, is_error = is_error }
            else
                local part = decode_data_part(p)
                if part then content[#content + 1] = part end
            end
        end
    end
    return content
end

local EFFORT_IN = { minimal = "low", low = "low", medium = "medium", high = "high" }

local function decode_thinking(tc)
    if not is_obj(tc) then return nil end
    local b = tonumber(tc.thinkingBudget or tc.thinking_budget)
    local level = tc.thinkingLevel or tc.thinking_level
    if b == 0 then return { enabled = false } end
    if b and b > 0 then return { enabled = true, budget_tokens = b } end
    if is_str(level) then return { enabled = true, effort = EFFORT_IN[lower(level)] or "medium" } end
    if b == -1 or tc.includeThoughts == true or tc.include_thoughts == true then return { enabled = true } end
    return nil
end

local function decode_tool_config(tc)
    local fcc = is_obj(tc) and (tc.functionCallingConfig or tc.function_calling_config)
    if not is_obj(fcc) then return nil end
    local mode = is_str(fcc.mode) and upper(fcc.mode) or "AUTO"
    local allowed = fcc.allowedFunctionNames or fcc.allowed_function_names
    if mode == "NONE" then return { type = "none" } end
    if mode == "ANY" then
        if type(allowed) == "table" and #allowed == 1 then return { type = "tool", name = allowed[1] } end
        return { type = "required" }
    end
    return { type = "auto" }
end

local function decode_generation(g, req)
    if not is_obj(g) then return end
    local function num(a, b) local v = g[a]; if v == nil then v = g[b] end return type(v) == "number" and v or nil end
    req.max_tokens = num("maxOutputTokens", "max_output_tokens")
    req.temperature = num("temperature", "temperature")
    req.top_p = num("topP", "top_p")
    req.top_k = num("topK", "top_k")
    local stop = g.stopSequences or g.stop_sequences
    if type(stop) == "table" and #stop > 0 then
        req.stop = {}
        for i, s in ipairs(stop) do req.stop[i] = s end
    end
    req.thinking = decode_thinking(g.thinkingConfig or g.thinking_config)
    local mime = g.responseMimeType or g.response_mime_type
    if mime == "application/json" then
        local js = g.responseJsonSchema or g.response_json_schema
        local gs = g.responseSchema or g.response_schema
        if is_obj(js) then
            -- JSON Schema by name, but Gemini CLI writes OpenAPI's upper-case
            -- types into it ("OBJECT"), which Gemini accepts and no one else
            -- does: the decoder hands on lower-case JSON Schema.
            req.response_format = { type = "json_schema", name = "response", schema = schema.from_gemini(js) }
        elseif is_obj(gs) then
            req.response_format = { type = "json_schema", name = "response", schema = schema.from_gemini(gs) }
        else
            req.response_format = { type = "json_object" }
        end
    end
end

local function decode_tools(tools)
    local out = {}
    for _, t in ipairs(tools) do
        local decls = is_obj(t) and (t.functionDeclarations or t.function_declarations)
        -- googleSearch has equivalents elsewhere (req.web_search, set by the
        -- caller); codeExecution, urlContext, ... run inside Gemini only.
        if type(decls) == "table" then
            for i, d in ipairs(decls) do
                if not is_obj(d) or not is_str(d.name) then
                    return nil, "functionDeclarations[" .. (i - 1) .. "]: must be an object with a name"
                end
                local params = d.parametersJsonSchema or d.parameters_json_schema
                if is_obj(params) then
                    params = schema.from_gemini(params) -- upper-case types, as for responseJsonSchema
                else
                    params = is_obj(d.parameters) and schema.from_gemini(d.parameters) or nil
                end
                out[#out + 1] = { name = d.name, description = is_str(d.description) and d.description or nil,
                                  parameters = params or { type = "object", properties = {} } }
            end
        end
    end
    return #out > 0 and out or nil
end

function M.decode_request(body, info)
    if not is_obj(body) then return nil, "request body must be a JSON object" end
    info = info or {}
    local model = strip_model(info.model or body.model)
    if not is_str(model) or model == "" then return nil, "model: missing from the URL" end
    local contents = body.contents
    if type(contents) ~= "table" then return nil, "contents: required array" end
    local req = { model = model, stream = info.stream == true, messages = {} }
    local si = body.systemInstruction or body.system_instruction
    if is_obj(si) and type(si.parts) == "table" then
        local sys = {}
        for _, p in ipairs(si.parts) do
            if is_obj(p) and nonempty(p.text) then sys[#sys + 1] = { type = "text", text = p.text } end
        end
        if #sys > 0 then req.system = sys end
    elseif is_str(si) and si ~= "" then
        req.system = { { type = "text", text = si } }
    end
    local st = { calls = {}, n = 0, base = "h" }
    for i, c in ipairs(contents) do
        if not is_obj(c) then return nil, "contents[" .. (i - 1) .. "]: must be an object" end
        local role = c.role or "user"
        local parts = type(c.parts) == "table" and c.parts or {}
        local content
        if role == "model" then
            content = decode_model_parts(parts, st)
        elseif role == "user" or role == "function" then
            content = decode_user_parts(parts, st)
        else
            return nil, "contents[" .. (i - 1) .. "].role: unknown role " .. tostring(role)
        end
        if #content > 0 then
            req.messages[#req.messages + 1] = { role = role == "model" and "assistant" or "user", content = content }
        end
    end
    if type(body.tools) == "table" then
        local tools, terr = decode_tools(body.tools)
        if terr then return nil, "tools: " .. terr end
        req.tools = tools
        for _, t in ipairs(body.tools) do
            -- googleSearchRetrieval is Gemini 1.5's name for the same search
            -- grounding (https://ai.google.dev/gemini-api/docs/grounding);
            -- an empty object asks for nothing, so nothing was dropped.
            if is_obj(t) and (t.googleSearch or t.google_search or t.googleSearchRetrieval
                              or t.google_search_retrieval) then
                req.web_search = true
            elseif is_obj(t) and next(t) ~= nil and not (t.functionDeclarations or t.function_declarations) then
                req.dropped = req.dropped or {}
                req.dropped[#req.dropped + 1] = "tool " .. tostring((next(t)))
            end
        end
    end
    req.tool_choice = decode_tool_config(body.toolConfig or body.tool_config)
    decode_generation(body.generationConfig or body.generation_config, req)
    return req
end

---------------------------------------------------------------------------
-- request: IR -> Gemini
---------------------------------------------------------------------------

local function guess_mime(url)
    local ext = is_str(url) and url:lower():match("%.(%w+)$") or nil
    local map = { png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
                  webp = "image/webp", pdf = "application/pdf" }
    return map[ext]
end

local function media_out(src, default_mime)
    if src.kind == "base64" then
        return { inlineData = { mimeType = src.media_type or default_mime, data = src.data } }
    elseif src.kind == "text" then
        return { text = src.data }
    elseif src.kind == "url" then
        -- Gemini takes files by URI (its Files API; arbitrary URLs are not reliable, §4.2).
        return { fileData = { mimeType = src.media_type or guess_mime(src.url) or default_mime, fileUri = src.url } }
    end
    return nil
end

local function data_part_out(p)
    if p.type == "text" then
        if nonempty(p.text) then return { text = p.text } end
    elseif p.type == "image" then
        return media_out(p.source, "image/jpeg")
    elseif p.type == "document" then
        return media_out(p.source, "application/pdf")
    end
    return nil
end

local function text_of(content)
    local t = {}
    for _, c in ipairs(content or {}) do
        if c.type == "text" then t[#t + 1] = c.text end
    end
    return concat(t, "\n")
end

-- An assistant message: a signature-only thinking part lends its signature
-- to the part after it, as Gemini itself sends them (§7 item 29).
local SKIP_SIGNATURE = "skip_thought_signature_validator"

local function model_parts(msg, names_by_id)
    local parts, pending, signed_call = json_array({}), nil, false
    local function add(gp)
        if pending then gp.thoughtSignature = pending; pending = nil end
        parts[#parts + 1] = gp
    end
    for _, p in ipairs(msg.content) do
        local t = p.type
        if t == "thinking" then
            if p.origin == M.name and nonempty(p.signature) then
                if nonempty(p.text) then
                    parts[#parts + 1] = { text = p.text, thought = true, thoughtSignature = p.signature }
                else
                    pending = p.signature
                end
            end
        elseif t == "text" then
            if nonempty(p.text) then add({ text = p.text }) end
        elseif t == "tool_call" then
            names_by_id[p.id or ""] = p.name
            if not pending and not signed_call then
                -- The first functionCall of a step must carry a signature
                -- (Gemini 3 answers 400 otherwise). A history from elsewhere
                -- has none: Google's documented placeholder for exactly that
                -- case ("dummy signatures", https://ai.google.dev/gemini-api/
                -- docs/thought-signatures#faqs).
                pending = SKIP_SIGNATURE
            end
            signed_call = true
            add({ functionCall = { name = p.name, args = as_object(p.arguments) } })
        end
    end
    if pending then parts[#parts + 1] = { text = "", thoughtSignature = pending } end
    return parts
end

-- A user message: functionResponse parts first (one per call, in order),
-- then the rest; images inside tool results follow as inline parts.
local function user_parts(msg, names_by_id)
    local parts, rest = json_array({}), {}
    for _, p in ipairs(msg.content) do
        if p.type == "tool_result" then
            local text = text_of(p.content)
            local response = p.is_error and { error = text } or { output = text }
            parts[#parts + 1] = { functionResponse = {
                name = names_by_id[p.tool_call_id or ""] or p.name or "unknown_function", response = response } }
            for _, c in ipairs(p.content or {}) do
                if c.type ~= "text" then rest[#rest + 1] = data_part_out(c) end
            end
        else
            rest[#rest + 1] = data_part_out(p)
        end
    end
    for _, gp in ipairs(rest) do parts[#parts + 1] = gp end
    return parts
end

local EFFORT_BUDGET = { low = 4096, medium = 8192, high = 24576 }

local function generation_out(req)
    local g = {}
    g.maxOutputTokens = req.max_tokens
    g.temperature = req.temperature
    g.topP = req.top_p
    g.topK = req.top_k
    if req.stop and #req.stop > 0 then
        local s = json_array({})
        for i = 1, math.min(#req.stop, 5) do s[i] = req.stop[i] end
        g.stopSequences = s
    end
    local th = req.thinking
    if th then
        if th.enabled == false then
            g.thinkingConfig = { thinkingBudget = 0 }
        else
            g.thinkingConfig = { includeThoughts = true,
                                 thinkingBudget = th.budget_tokens or EFFORT_BUDGET[th.effort] or -1 }
        end
    end
    local rf = req.response_format
    if rf then
        g.responseMimeType = "application/json"
        if rf.type == "json_schema" and is_obj(rf.schema) then
            local s = schema.to_gemini(rf.schema)
            if s then g.responseSchema = s end
        end
    end
    if next(g) == nil then return nil end
    return g
end

local function tool_config_out(tc)
    if not tc then return nil end
    local mode = ({ auto = "AUTO", required = "ANY", none = "NONE", tool = "ANY" })[tc.type] or "AUTO"
    local fcc = { mode = mode }
    if tc.type == "tool" and tc.name then fcc.allowedFunctionNames = json_array({ tc.name }) end
    return { functionCallingConfig = fcc }
end

function M.encode_request(req, opts)
    -- A file by id (OpenAI's or Anthropic's Files API) means nothing to
    -- Gemini: a clear 400 rather than a request that silently lacks the file.
    local ok, ferr = common.check_file_ids(req, nil, "a Gemini")
    if not ok then return nil, ferr end
    local body = {}
    if req.system and #req.system > 0 then
        local parts = json_array({})
        for _, p in ipairs(req.system) do
            if nonempty(p.text) then parts[#parts + 1] = { text = p.text } end
        end
        if #parts > 0 then body.systemInstruction = { parts = parts } end
    end
    local contents, names_by_id, last = json_array({}), {}, nil
    -- A functionResponse must answer a functionCall of the previous turn;
    -- results without one become text (common.pair_tool_results).
    for _, m in ipairs(common.pair_tool_results(req.messages)) do
        local role = m.role == "assistant" and "model" or "user"
        local parts = role == "model" and model_parts(m, names_by_id) or user_parts(m, names_by_id)
        if #parts > 0 then
            -- Gemini wants alternating turns: merge runs of one role.
            if last and last.role == role then
                for _, p in ipairs(parts) do last.parts[#last.parts + 1] = p end
            else
                last = { role = role, parts = parts }
                contents[#contents + 1] = last
            end
        end
    end
    body.contents = contents
    if req.tools and #req.tools > 0 then
        local decls = json_array({})
        for _, t in ipairs(req.tools) do
            decls[#decls + 1] = { name = t.name, description = t.description,
                                  parameters = schema.to_gemini(t.parameters) }
        end
        body.tools = json_array({ { functionDeclarations = decls } })
        if req.web_search then body.tools[2] = { googleSearch = {} } end
        body.toolConfig = tool_config_out(req.tool_choice)
    end
    if req.web_search and not body.tools then
        -- Grounding with Google Search (https://ai.google.dev/gemini-api/docs/google-search).
        body.tools = json_array({ { googleSearch = {} } })
    end
    body.generationConfig = generation_out(req)
    return body
end

---------------------------------------------------------------------------
-- response: Gemini -> IR
---------------------------------------------------------------------------

local function usage_in(u)
    if not is_obj(u) then return nil end
    local function num(k) return ir.tokens(u[k]) end
    local prompt, tool_prompt = num("promptTokenCount"), num("toolUsePromptTokenCount")
    local cand, thoughts = num("candidatesTokenCount"), num("thoughtsTokenCount")
    local input = prompt
    if tool_prompt then input = (input or 0) + tool_prompt end
    local output = nil
    if cand or thoughts then output = (cand or 0) + (thoughts or 0) end
    -- Gemini documents candidatesTokenCount without the thoughts
    -- (https://ai.google.dev/api/generate-content#UsageMetadata: total =
    -- prompt + candidates + thoughts + tool-use prompt), but some models and
    -- proxies report candidates with the thoughts already in them. The total
    -- says which: when the sum overshoots it, the output is what the total
    -- leaves after the prompt.
    local total = num("totalTokenCount")
    if total and input and output and input + output > total then
        output = math.max(total - input, cand or 0, thoughts or 0)
    end
    return { input_tokens = input, output_tokens = output, cache_read_tokens = num("cachedContentTokenCount"),
             reasoning_tokens = thoughts }
end
M.decode_usage = usage_in

local FILTERED = { SAFETY = true, RECITATION = true, BLOCKLIST = true, PROHIBITED_CONTENT = true, SPII = true,
                   IMAGE_SAFETY = true, IMAGE_PROHIBITED_CONTENT = true, IMAGE_RECITATION = true }

-- finishReason -> IR stop (§6.8). STOP with calls is tool_use; the tool-call
-- failures (MALFORMED_FUNCTION_CALL, ...) end the turn (lossy policy).
local function stop_in(reason, saw_call)
    if reason == "MAX_TOKENS" then return "max_tokens" end
    if FILTERED[reason] then return "content_filter" end
    if saw_call then return "tool_use" end
    return "end_turn"
end

function M.decode_response(body)
    if is_array(body) then body = body[#body] end -- a streamGenerateContent JSON array
    if not is_obj(body) then return nil, "response body must be a JSON object" end
    if is_obj(body.error) then return nil, "upstream returned an error object" end
    local cand = type(body.candidates) == "table" and body.candidates[1] or nil
    if not is_obj(cand) and not is_obj(body.promptFeedback) then
        return nil, "the answer has neither candidates nor promptFeedback"
    end
    local st = { calls = {}, n = 0, base = id_base(body.responseId) }
    local content = {}
    if is_obj(cand) and is_obj(cand.content) and type(cand.content.parts) == "table" then
        content = decode_model_parts(cand.content.parts, st)
    end
    local saw_call = #st.calls > 0
    local stop
    if not is_obj(cand) then
        local pf = body.promptFeedback
        stop = (is_obj(pf) and pf.blockReason) and "content_filter" or "end_turn"
    else
        stop = stop_in(cand.finishReason, saw_call)
    end
    return { id = body.responseId, model = body.modelVersion, content = content, stop_reason = stop,
             usage = usage_in(body.usageMetadata) }
end

---------------------------------------------------------------------------
-- response: IR -> Gemini
---------------------------------------------------------------------------

local function usage_out(u)
    if not u then return nil end
    local i, o, r = u.input_tokens or 0, u.output_tokens or 0, u.reasoning_tokens or 0
    local m = { promptTokenCount = i, candidatesTokenCount = o - r, totalTokenCount = i + o }
    if u.cache_read_tokens and u.cache_read_tokens > 0 then m.cachedContentTokenCount = u.cache_read_tokens end
    if r > 0 then m.thoughtsTokenCount = r end
    return m
end

local FINISH_OUT = { max_tokens = "MAX_TOKENS", content_filter = "SAFETY", refusal = "SAFETY", error = "OTHER" }

local function finish_out(stop) return FINISH_OUT[stop] or "STOP" end

-- IR content parts -> Gemini parts for a client; origin is the upstream's.
local function client_parts(content, origin)
    local parts, pending = json_array({}), nil
    local function add(gp)
        if pending then gp.thoughtSignature = pending; pending = nil end
        parts[#parts + 1] = gp
    end
    for _, p in ipairs(content) do
        local t = p.type
        local o = p.origin or origin
        if t == "text" then
            if nonempty(p.text) then add({ text = p.text }) end
        elseif t == "thinking" then
            local sig = nonempty(p.signature) and wrap_opaque(o, "sig", p.signature) or nil
            if nonempty(p.text) then
                parts[#parts + 1] = { text = p.text, thought = true, thoughtSignature = sig }
            elseif sig then
                pending = sig
            end
        elseif t == "redacted_thinking" then
            if o and o ~= M.name and nonempty(p.data) then
                parts[#parts + 1] = { text = "", thought = true, thoughtSignature = wrap_opaque(o, "data", p.data) }
            end
        elseif t == "tool_call" then
            add({ functionCall = { id = p.id, name = p.name, args = as_object(decode_args(p.arguments)) } })
        end
    end
    if pending then parts[#parts + 1] = { text = "", thoughtSignature = pending } end
    return parts
end

function M.encode_response(resp, opts)
    opts = opts or {}
    return {
        candidates = json_array({ { content = { role = "model", parts = client_parts(resp.content or {}, opts.origin) },
                                    finishReason = finish_out(resp.stop_reason), index = 0 } }),
        usageMetadata = usage_out(resp.usage),
        modelVersion = opts.model or resp.model,
        responseId = opts.id or resp.id or ir.new_id("", 22),
    }
end

---------------------------------------------------------------------------
-- errors
---------------------------------------------------------------------------

local STATUS_NAME = {
    invalid_request = "INVALID_ARGUMENT", authentication = "UNAUTHENTICATED", permission = "PERMISSION_DENIED",
    not_found = "NOT_FOUND", request_too_large = "INVALID_ARGUMENT", rate_limit = "RESOURCE_EXHAUSTED",
    api_error = "INTERNAL", overloaded = "UNAVAILABLE", timeout = "DEADLINE_EXCEEDED",
}

local function key_invalid(e)
    if type(e.details) ~= "table" then return false end
    for _, d in ipairs(e.details) do
        if is_obj(d) and d.reason == "API_KEY_INVALID" then return true end
    end
    return false
end

function M.decode_error(status, body)
    status = tonumber(status) or 500
    if is_array(body) then body = body[1] end -- the JSON-array form of streamGenerateContent
    local msg
    if is_obj(body) then
        local e = body.error
        if is_obj(e) then
            msg = is_str(e.message) and e.message or nil
            -- Gemini reports a bad API key as 400 INVALID_ARGUMENT (§7 item 33).
            if key_invalid(e) then return ir.error(401, msg or "API key not valid", "authentication") end
        end
    elseif is_str(body) and body ~= "" then
        msg = body
    end
    return ir.error(status, msg or ("upstream returned HTTP " .. status))
end

function M.encode_error(err)
    local etype = err.type or ir.error_type_for_status(err.status)
    local status = err.status or ir.ERROR_STATUS[etype] or 500
    if status == 529 then status = 503 end
    return status, { error = { code = status, message = err.message or "error",
                               status = STATUS_NAME[etype] or "INTERNAL" } }
end

---------------------------------------------------------------------------
-- stream: Gemini chunks -> IR events
---------------------------------------------------------------------------

-- Each chunk holds whole parts: text and thought deltas extend the open
-- block of their kind, a functionCall arrives complete (one args delta), a
-- signature on a non-thought part becomes a signature-only thinking block
-- right before that part.
local Decoder = S.decoder()

function M.stream_decoder(opts)
    return setmetatable({ blocks = S.blocks(), cur = nil, cur_kind = nil, started = false, ended = false,
                          errored = false, saw_call = false, n = 0, base = nil }, Decoder)
end

-- One block is open at a time (cur, of kind cur_kind).
function Decoder:close_block(out)
    if self.cur ~= nil then
        self.blocks:stop(out, self.cur)
        self.cur, self.cur_kind = nil, nil
    end
end

function Decoder:open_block(out, kind, ev)
    self:close_block(out)
    local i = self.blocks:start(out, kind, ev)
    self.cur, self.cur_kind = i, kind
    return i
end

-- A signature-only thinking block (the signature of the part after it).
function Decoder:signature(out, sig)
    local i = self:open_block(out, "thinking")
    out[#out + 1] = { type = "signature", index = i, signature = sig }
    self:close_block(out)
end

function Decoder:part(out, p)
    local sig = nonempty(p.thoughtSignature) and p.thoughtSignature or nil
    local text = p.text
    if p.thought == true and is_str(text) then
        if self.cur_kind ~= "thinking" then self:open_block(out, "thinking") end
        if text ~= "" then out[#out + 1] = { type = "thinking", index = self.cur, text = text } end
        if sig then
            out[#out + 1] = { type = "signature", index = self.cur, signature = sig }
            self:close_block(out)
        end
        return
    end
    local fc = p.functionCall
    if is_obj(fc) then
        if sig then self:signature(out, sig) end
        self.saw_call = true
        self.n = self.n + 1
        local i = self:open_block(out, "tool_call", { id = nonempty(fc.id) and fc.id or call_id(self.base, self.n),
                                                      name = fc.name })
        out[#out + 1] = { type = "tool_args", index = i, json = json_encode(as_object(fc.args)) }
        self:close_block(out)
        return
    end
    if is_str(text) then
        if sig then self:signature(out, sig) end
        if text ~= "" then
            if self.cur_kind ~= "text" then self:open_block(out, "text") end
            out[#out + 1] = { type = "text", index = self.cur, text = text }
        end
    end
end

function Decoder:feed(ev)
    local out = {}
    local obj = S.json(self, ev, out)
    if obj == nil then return out end
    if is_array(obj) then obj = obj[1] end -- the JSON-array form of streamGenerateContent
    if not is_obj(obj) then
        S.malformed(self, out)
        return out
    end
    if is_obj(obj.error) then
        if not self.errored then
            self.errored = true
            -- Open blocks stay open: closing them would pass a cut call off as whole.
            local e = obj.error
            out[#out + 1] = { type = "error", error = M.decode_error(tonumber(e.code) or 500, obj) }
        end
        return out
    end
    if self.ended then
        -- Usage reported after the finish chunk still counts.
        local u = usage_in(obj.usageMetadata)
        if u then out[#out + 1] = { type = "usage", usage = u } end
        return out
    end
    if not self.started then
        self.started = true
        self.base = id_base(obj.responseId)
        out[#out + 1] = { type = "start", id = obj.responseId, model = obj.modelVersion,
                          usage = usage_in(obj.usageMetadata) }
    end
    local cand = type(obj.candidates) == "table" and obj.candidates[1] or nil
    local stop
    if is_obj(cand) then
        local parts = is_obj(cand.content) and cand.content.parts
        if type(parts) == "table" then
            for _, p in ipairs(parts) do
                if is_obj(p) then self:part(out, p) end
            end
        end
        if is_str(cand.finishReason) then
            self:close_block(out)
            stop = stop_in(cand.finishReason, self.saw_call)
        end
    elseif is_obj(obj.promptFeedback) and obj.promptFeedback.blockReason then
        stop = "content_filter"
    end
    if stop then
        local u = usage_in(obj.usageMetadata)
        if u then out[#out + 1] = { type = "usage", usage = u } end
        out[#out + 1] = { type = "finish", stop_reason = stop }
        self.ended = true
    end
    return out
end

---------------------------------------------------------------------------
-- stream: IR events -> Gemini chunks
---------------------------------------------------------------------------

-- Text and thought deltas go out as they come; tool calls are buffered
-- until their block stops (Gemini sends whole functionCall parts); the last
-- chunk carries finishReason and usageMetadata. Gemini has no opening.
local Encoder = S.encoder()

function M.stream_encoder(opts)
    opts = opts or {}
    return setmetatable({ model = opts.model, id = opts.id, origin = opts.origin, blocks = {}, pending = nil,
                          usage = nil, stop_reason = nil, started = false, ended = false }, Encoder)
end

-- The client already has this stream's opening (a passthrough stream, sent
-- by the upstream itself). Gemini chunks stand alone: nothing to carry on.
function Encoder:resume(seen)
    self.id = self.id or seen.id
end

function Encoder:begin(buf, ev)
    self.started = true
    if ev then
        self.id = self.id or ev.id
        self.model = self.model or ev.model
    end
end

function Encoder:chunk(buf, parts, finish)
    local cand = { content = { role = "model", parts = parts }, index = 0 }
    local obj = { candidates = json_array({ cand }), modelVersion = self.model, responseId = self.id }
    if finish then
        cand.finishReason = finish
        obj.usageMetadata = usage_out(self.usage)
    end
    buf:put("data: ", json_encode(obj), "\n\n")
end

-- Text and thought deltas are the per-event hot path: written straight
-- into the buffer (the chunk tail with model and id is built once).
function Encoder:delta(buf, text, thought)
    local tail = self.tail
    if not tail then
        tail = "},\"index\":0}]" .. (self.model and (",\"modelVersion\":" .. json_encode(self.model)) or "")
            .. (self.id and (",\"responseId\":" .. json_encode(self.id)) or "") .. "}\n\n"
        self.tail = tail
    end
    buf:put("data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":", json_encode(text),
            thought and ",\"thought\":true}]" or "}]", tail)
end

-- A part that takes the signature a signature-only thinking block left.
function Encoder:part(buf, gp)
    if self.pending then
        gp.thoughtSignature = self.pending
        self.pending = nil
    end
    self:chunk(buf, json_array({ gp }))
end

function Encoder:on_block_start(buf, ev)
    self.id = self.id or ir.new_id("", 22)
    self.blocks[ev.index] = { kind = ev.kind, id = ev.id, name = ev.name, data = ev.data, acc = {} }
end

function Encoder:on_text(buf, ev)
    if self.blocks[ev.index] and nonempty(ev.text) then
        if self.pending then self:part(buf, { text = ev.text }) else self:delta(buf, ev.text, false) end
    end
end

function Encoder:on_thinking(buf, ev)
    local rec = self.blocks[ev.index]
    if rec and nonempty(ev.text) then
        rec.had_text = true
        self:delta(buf, ev.text, true)
    end
end

function Encoder:on_tool_args(buf, ev)
    local rec = self.blocks[ev.index]
    if rec then rec.acc[#rec.acc + 1] = ev.json end
end

function Encoder:on_signature(buf, ev)
    local rec = self.blocks[ev.index]
    if rec then rec.sig = ev.signature end
end

function Encoder:on_block_stop(buf, ev)
    local rec = self.blocks[ev.index]
    if not rec then return end
    self.blocks[ev.index] = nil
    local kind = rec.kind
    if kind == "tool_call" then
        local args = as_object(decode_args(concat(rec.acc)))
        self:part(buf, { functionCall = { id = rec.id, name = rec.name, args = args } })
    elseif kind == "thinking" and rec.sig then
        local sig = wrap_opaque(self.origin, "sig", rec.sig)
        if rec.had_text then
            self:chunk(buf, json_array({ { text = "", thought = true, thoughtSignature = sig } }))
        else
            self.pending = sig -- belongs to the next part, as Gemini places them
        end
    elseif kind == "redacted_thinking" and self.origin and self.origin ~= M.name and nonempty(rec.data) then
        self:chunk(buf, json_array({ { text = "", thought = true,
                                       thoughtSignature = wrap_opaque(self.origin, "data", rec.data) } }))
    end
end

function Encoder:finish(buf)
    self.id = self.id or ir.new_id("", 22)
    local gp = { text = "" }
    if self.pending then gp.thoughtSignature = self.pending; self.pending = nil end
    self:chunk(buf, json_array({ gp }), finish_out(self.stop_reason))
end

-- An error object and no finishReason: never a fake end (§6.12). An IR
-- error keeps its status; a cut stream is 504 after a timeout, else 502.
function Encoder:fail(buf, message, err, outcome)
    local status, name
    if err then
        local body
        status, body = M.encode_error(err)
        message, name = body.error.message, body.error.status
    elseif (outcome and outcome.reason or ""):find("TIMEOUT") then
        status, name = 504, "DEADLINE_EXCEEDED"
    else
        status, name = 502, "UNAVAILABLE"
    end
    buf:put("data: ", json_encode({ error = { code = status, message = message, status = name } }), "\n\n")
end

return M
