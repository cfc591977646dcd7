-- sluice.ir — the internal representation every protocol codec speaks.
--
-- Translation is decode_A -> IR -> encode_B; no codec knows any other
-- protocol. This file is the contract between codecs: the shapes below are
-- what decoders must produce and what encoders must accept. It also holds the
-- few helpers every codec shares (stop reasons, usage, ids). It is pure Lua
-- and loads without the C core.
--
-- REQUEST  (decode_request(body) -> req | nil, err ; encode_request(req, opts) -> body)
--   req = {
--     model       = "client's model string",
--     stream      = true|false,
--     system      = { part... } | nil        -- text parts only (cache_control kept on part)
--     messages    = { { role = "user"|"assistant", content = { part... } }... },
--     tools       = { { name=, description=, parameters = <JSON schema table> }... } | nil,
--     tool_choice = { type = "auto"|"required"|"none"|"tool", name = <for "tool"> } | nil,
--     parallel_tool_calls = bool|nil,
--     max_tokens  = n|nil, temperature = n|nil, top_p = n|nil, top_k = n|nil,
--     stop        = { "seq"... } | nil,
--     thinking    = { enabled = bool, budget_tokens = n|nil, effort = "low"|"medium"|"high"|nil } | nil,
--     response_format = { type = "json_object" } | { type = "json_schema", name=, schema=, strict= } | nil,
--     user        = "end-user / session hint" | nil,   -- metadata.user_id, user, safety_identifier
--     session_hint = string|nil,                        -- prompt_cache_key, session_id ...
--   }
--   part (content of messages and system):
--     { type = "text", text = s, cache_control = t|nil }
--     { type = "image", source = { kind = "base64", media_type = s, data = s } | { kind = "url", url = s } }
--     { type = "document", source = <as image, or { kind = "text", media_type=, data = s }>, title = s|nil }
--     { type = "thinking", text = s, signature = s|nil }        -- assistant only
--     { type = "redacted_thinking", data = s }                  -- assistant only, opaque
--     { type = "tool_call", id = s, name = s, arguments = <decoded table> }   -- assistant only
--     { type = "tool_result", tool_call_id = s, name = s|nil, content = { part... (text/image) },
--       is_error = bool }                                       -- user only
--   Additive fields the codecs rely on:
--     part.origin  = protocol name that produced an opaque value (thinking
--                    signatures, redacted thinking, encrypted reasoning);
--                    encoders send opaque values only to their origin. Across
--                    protocols they travel wrapped as "sluice1:<origin>:<kind>:<value>".
--     source = { kind = "file", file_id = s, store = "openai"|"anthropic" }: store is
--                    the vendor Files API the id belongs to (encoders refuse
--                    another's); source.media_type on URL sources;
--     tool.strict; req.stream_usage; Responses-only request fields
--     (previous_response_id, conversation, store, include) kept for Responses upstreams;
--     a thinking part with empty text and a signature carries the signature
--     of the part that follows (Gemini).
--     encode opts may carry origin, created, include_usage.
--     image parts may carry detail ("low"|"high"|"auto", OpenAI's).
--     A system text part may carry billing_header = true (Claude Code's
--     per-request billing line; translate leaves it out unless the
--     supplier's compat.billing_header is "keep").
--     Request encode opts may also carry supplier (its config id), compat
--     (its compat table: max_tokens_field...), max_output_tokens (a cap the
--     encoder keeps its own defaults under) and dropped (see below); an
--     encoder may return nil, err for a request its supplier cannot be sent
--     (a 400 to the client). decode_response and stream_decoder opts may
--     carry supplier, for state bound to one supplier (Chat's
--     reasoning_content).
--     req.web_search = true: the client offered its vendor's hosted web
--     search tool (Responses web_search, Anthropic web_search_*, Gemini
--     googleSearch); encoders whose supplier has one send it.
--     req.dropped = { "what"... }: what the decoder could not carry (a
--     Codex namespace tool, a hosted tool without an equivalent); encoders
--     append to opts.dropped what their supplier cannot take (web search on
--     Chat). translate keeps the list as state.dropped; the host tells the
--     client (x-sluice-dropped) and the record.
--   Tool results live in *user* messages (Anthropic's model). Encoders for
--   protocols with a separate tool role (OpenAI chat "tool", Gemini
--   functionResponse) split or move them. A codec that needs the tool name of
--   a result (Gemini) finds it from the earlier tool_call with that id.
--   Consecutive messages of the same role are allowed; encoders merge them
--   where the target protocol requires alternation.
--
-- RESPONSE (decode_response(body) -> resp | nil, err ; encode_response(resp, opts) -> body)
--   resp = { id = s|nil, model = s|nil, content = { part... (text/thinking/redacted_thinking/tool_call) },
--            stop_reason = <STOP below>, stop_sequence = s|nil, usage = <USAGE> }
--
-- USAGE    { input_tokens = n,          -- ALL prompt tokens, cache reads and writes included (OpenAI style)
--            output_tokens = n,         -- all generated tokens, reasoning included
--            cache_read_tokens = n|nil, -- subset of input_tokens served from cache
--            cache_write_tokens = n|nil,-- subset of input_tokens written to cache
--            reasoning_tokens = n|nil } -- subset of output_tokens
--   Anthropic reports input_tokens EXCLUSIVE of cache; its codec converts
--   both ways (M.usage_from_exclusive / M.usage_to_exclusive below).
--   Fields are nil when the upstream did not report them; never estimate.
--
-- STOP     "end_turn" | "max_tokens" | "tool_use" | "stop_sequence" | "content_filter"
--          | "refusal" | "pause_turn" | "error"
--
-- ERROR    { status = http status, type = <ERROR TYPE>, message = s }
--   ERROR TYPE: "invalid_request" | "authentication" | "permission" | "not_found"
--             | "request_too_large" | "rate_limit" | "api_error" | "overloaded" | "timeout"
--   decode_error(status, body_or_string) -> err ; encode_error(err) -> status, body
--
-- STREAM   Decoders: dec = M.stream_decoder(opts); dec:feed(ev) -> { ir_event... }
--            where ev = { event = s|nil, data = s } is one whole SSE event as
--            framed by the core; dec:finish() -> { ir_event... } at upstream EOF.
--          Encoders: enc = M.stream_encoder(opts); enc:feed(ir_event) -> bytes (string, maybe "");
--            enc:put(b, ir_event) appends the same bytes to a string.buffer
--            enc:close(outcome) -> bytes: the closing bytes. outcome = nil or
--            { complete = true } for a clean end; otherwise
--            { complete = false, reason = "UPSTREAM_EOF_EARLY", message = s } and
--            the encoder must close open blocks, report the error the way its
--            protocol does, and end the stream validly (DESIGN §6). close()
--            after a "finish" event with complete = true just ends the stream.
--          opts for both: { model = client-facing model, id = response id }.
--          The machinery every codec shares (block allocation, one open block
--          at a time, this close policy with its one wording, usage/stop
--          bookkeeping, the non-JSON policy: an event that is not JSON is one
--          IR error) is sluice.ir_stream; usage per request is sluice.accounting.
--   IR stream events (`index` is the IR block index, 0-based, in start order):
--     { type = "start", id = s|nil, model = s|nil, usage = USAGE|nil }
--     { type = "block_start", index = i, kind = "text"|"thinking"|"redacted_thinking"|"tool_call",
--       id = s|nil, name = s|nil, data = s|nil }         -- id+name for tool_call; data for redacted
--     { type = "text", index = i, text = s }
--     { type = "thinking", index = i, text = s }
--     { type = "signature", index = i, signature = s }
--     { type = "tool_args", index = i, json = s }       -- a fragment of the arguments JSON text
--     { type = "block_stop", index = i }
--     { type = "usage", usage = USAGE }                 -- may come more than once; later values win per field
--     { type = "finish", stop_reason = STOP, stop_sequence = s|nil }
--     { type = "error", error = ERROR }
--   Decoders emit blocks properly nested (block_start before its deltas,
--   block_stop after); several blocks MAY be open at once (parallel OpenAI
--   tool calls). Encoders for protocols that allow one open block at a time
--   (Anthropic) serialise them. A decoder that sees tool arguments before the
--   tool's id and name buffers them until both are known.

local M = {}

M.STOP = {
    end_turn = true, max_tokens = true, tool_use = true, stop_sequence = true,
    content_filter = true, refusal = true, pause_turn = true, error = true,
}

-- HTTP status for each IR error type, used when a codec must pick one.
M.ERROR_STATUS = {
    invalid_request = 400, authentication = 401, permission = 403, not_found = 404,
    request_too_large = 413, rate_limit = 429, api_error = 500, overloaded = 529,
    timeout = 504,
}

-- IR error type for an HTTP status from any upstream.
function M.error_type_for_status(status)
    if status == 400 or status == 422 then return "invalid_request" end
    if status == 401 then return "authentication" end
    if status == 403 then return "permission" end
    if status == 404 then return "not_found" end
    if status == 413 then return "request_too_large" end
    if status == 429 then return "rate_limit" end
    if status == 503 or status == 529 then return "overloaded" end
    if status == 504 or status == 408 then return "timeout" end
    return "api_error"
end

function M.error(status, message, etype)
    return { status = status, type = etype or M.error_type_for_status(status), message = message }
end

-- A token count from an upstream, or nil when it is not one: only plain
-- non-negative numbers up to 2^53 (the lossless JSON decoder keeps larger
-- integers as opaque boxed values, which arithmetic would choke on — such a
-- number is unknown, not a reason to break the answer).
function M.tokens(v)
    if type(v) == "number" and v >= 0 and v <= 9007199254740992 then return v end
    return nil
end

-- Anthropic-style usage (input exclusive of cache) -> IR usage.
function M.usage_from_exclusive(input, output, cache_read, cache_write)
    local total = nil
    if input or cache_read or cache_write then
        total = (input or 0) + (cache_read or 0) + (cache_write or 0)
    end
    return { input_tokens = total, output_tokens = output,
             cache_read_tokens = cache_read, cache_write_tokens = cache_write }
end

-- IR usage -> input tokens exclusive of cache reads and writes (never negative).
function M.usage_to_exclusive(u)
    if not u or not u.input_tokens then return nil end
    local n = u.input_tokens - (u.cache_read_tokens or 0) - (u.cache_write_tokens or 0)
    return n < 0 and 0 or n
end

-- Merge a later usage report into an accumulated one (later values win per
-- field). The USAGE fields by name: a fixed walk LuaJIT compiles, where
-- pairs() left the trace on every usage report.
local USAGE_FIELDS = { "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                       "reasoning_tokens" }
function M.merge_usage(into, from)
    if not from then return into end
    into = into or {}
    for i = 1, #USAGE_FIELDS do
        local k = USAGE_FIELDS[i]
        local v = from[k]
        if v ~= nil then into[k] = v end
    end
    return into
end

-- The envelope of opaque reasoning state crossing protocols (see
-- part.origin above): "sluice1:<origin>:<kind>:<value>", kind "sig" for a
-- thinking signature, "data" for redacted thinking / encrypted content.
-- Codecs use it through sluice.protocols.common (wrap only what is foreign).
M.OPAQUE_PREFIX = "sluice1:"

function M.wrap_opaque(origin, kind, value)
    return M.OPAQUE_PREFIX .. origin .. ":" .. kind .. ":" .. value
end

-- -> origin, kind, value; nil when s is not an envelope.
function M.unwrap_opaque(s)
    if type(s) ~= "string" then return nil end
    return s:match("^sluice1:([%w%-]+):(%a+):(.*)$")
end

local random, floor = math.random, math.floor
local ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

-- A random id with the given prefix ("msg_", "chatcmpl-", "resp_", "call_", "toolu_").
function M.new_id(prefix, len)
    local t = {}
    for i = 1, len or 24 do
        local k = floor(random() * 62) + 1
        t[i] = ALNUM:sub(k, k)
    end
    return prefix .. table.concat(t)
end

return M
