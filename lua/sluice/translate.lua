-- sluice.translate — the only place that composes protocol codecs.
--
-- A request from a client speaking protocol `from` goes to a supplier
-- speaking protocol `to` as decode_from -> IR -> encode_to; the answer comes
-- back as decode_to -> IR -> encode_from. Every function takes (from, to) in
-- that order: `from` is always the CLIENT's protocol, `to` the SUPPLIER's.
-- The state returned by T.request carries what later phases need (client
-- model, tool-name map, whether the client wants usage chunks, which tools
-- are Responses custom tools) and is plain data owned by the request.
--
--   T.protocol(name) -> module | nil, err
--   T.request(from, to, body, info, opts) -> upstream_body, state | nil, err
--       opts = { model = upstream model, stream = bool|nil, id = client response id|nil,
--                supplier = id|nil, compat = the supplier's compat table|nil,
--                max_output_tokens = cap|nil, tool_text = the supplier's tool_text config|nil }
--       state.tool_text is set when tool calls written as text are parsed
--       (sluice.tooltext): every answer path below then runs through it.
--   T.response(from, to, upstream_body, state) -> client_body | nil, err
--   T.answer(from, to, resp, state) -> client_body | nil, err   (resp: the upstream answer as IR,
--       from U.decode_response; its tool names are given back here)
--   T.error(from, to, status, upstream_body) -> client_status, client_body
--   T.stream(from, to, state, acct) -> pipe
--       pipe:feed(ev) -> bytes ; pipe:feed_batch({ev...}) -> bytes ; pipe:close(outcome) -> bytes
--       pipe.acct: the request's accountant (sluice.accounting; a new one
--       when acct is nil) gets the stream's usage, stop reason and error
--   T.collect(from, to, state, acct) -> collector   (non-streaming client, streamed upstream)
--       c:feed(ev) ; c:feed_batch(evs) ; c:finish(outcome) -> client_body | nil, ir_error
--   T.response_stream(from, to, upstream_body, state) -> bytes | nil, err
--   T.answer_stream(from, to, resp, state) -> bytes | nil, err
--       (streaming client, non-streamed upstream answer)
--   T.assemble(ir_events) -> resp ; T.explode(resp) -> { ir_event... }

local json = require("sluice.json")
local ir = require("sluice.ir")
local toolnames = require("sluice.toolnames")
local protocols = require("sluice.protocols")
local S = require("sluice.ir_stream")
local accounting = require("sluice.accounting")
local tooltext = require("sluice.tooltext")
local emulate = require("sluice.tools.emulate")

local type, ipairs, pairs, next, setmetatable = type, ipairs, pairs, next, setmetatable
local buffer = require("string.buffer")

local T = {}

-- The protocols and their modules come from the registry (sluice.protocols).
T.PROTOCOLS = protocols.names()
T.protocol = protocols.get

local function codecs(from, to)
    local c, err = T.protocol(from)
    if not c then return nil, nil, err end
    local u
    u, err = T.protocol(to)
    if not u then return nil, nil, err end
    return c, u
end

-- ---------------------------------------------------------------- request

-- Claude Code's first system block, `x-anthropic-billing-header: ...`,
-- changes on every request; a translated request goes to a supplier whose
-- prefix cache it would defeat (the decoder marks it: part.billing_header).
local function drop_billing_header(req)
    local sys = req.system
    if not sys then return end
    local kept = {}
    for _, p in ipairs(sys) do
        if not p.billing_header then kept[#kept + 1] = p end
    end
    req.system = #kept > 0 and kept or nil
end

function T.request(from, to, body, info, opts)
    opts = opts or {}
    local C, U, err = codecs(from, to)
    if not C then return nil, err end
    -- Codecs may keep protocol-only state (Responses' store/include...) when
    -- the supplier speaks the same protocol; tell them which one it is.
    local dinfo = { upstream = to }
    if info then for k, v in pairs(info) do dinfo[k] = v end end
    local req
    req, err = C.decode_request(body, dinfo)
    if not req then return nil, err end
    local names = toolnames.new(to)
    toolnames.apply_request(req, names)
    local compat = opts.compat or {}
    if compat.billing_header ~= "keep" then drop_billing_header(req) end
    -- A client's output limit that is not a number is refused here, before
    -- the cap compares it or an encoder writes it.
    if req.max_tokens ~= nil and type(req.max_tokens) ~= "number" then
        return nil, "the output limit (max_tokens) must be a number"
    end
    local cap = opts.max_output_tokens
    if cap and req.max_tokens and req.max_tokens > cap then req.max_tokens = cap end
    local stream = opts.stream
    if stream == nil then stream = req.stream end
    local upstream_model = opts.model or req.model
    -- The tools as the supplier sees them (upstream names): only they can
    -- become calls when the answer writes calls as text.
    local tt = tooltext.setup(opts.tool_text, req.tools, C.tool_call_ids)
    -- A supplier without tool support: the tools go into the prompt instead.
    if opts.tool_text and opts.tool_text.emulate then emulate.apply(req, opts.tool_text.emulate) end
    local dropped = req.dropped or {}
    local out, eerr = U.encode_request(req, { model = upstream_model, stream = stream, names = names,
                                              supplier = opts.supplier, compat = compat, max_output_tokens = cap,
                                              dropped = dropped })
    -- An encoder refuses what its supplier cannot be sent (a file by id to Gemini).
    if out == nil then return nil, eerr end
    local state = {
        from = from, to = to,
        client_model = req.model, upstream_model = upstream_model,
        client_stream = req.stream, upstream_stream = stream,
        include_usage = req.stream_usage == true,
        custom_tools = req.custom_tools,
        names = names, id = opts.id, supplier = opts.supplier, tool_text = tt,
        dropped = #dropped > 0 and dropped or nil, -- what the supplier was not sent (ir.lua: req.dropped)
    }
    return out, state
end

-- ---------------------------------------------------------------- responses

local function client_opts(state, to)
    return {
        model = state.client_model, id = state.id, origin = to,
        include_usage = state.include_usage, created = state.created,
        custom_tools = state.custom_tools,
    }
end

-- The upstream's answer as IR (nil, err when it is not a usable one).
local function decode_answer(to, upstream_body, state)
    local U, err = T.protocol(to)
    if not U then return nil, err end
    return U.decode_response(upstream_body, { supplier = state and state.supplier })
end

-- The client's codec, with the answer's tool names given back to it.
local function for_client(from, resp, state)
    local C, err = T.protocol(from)
    if C and state.names then toolnames.restore_response(resp, state.names) end
    return C, err
end

function T.answer(from, to, resp, state)
    if state.tool_text then tooltext.answer(state.tool_text, resp) end
    local C, err = for_client(from, resp, state)
    if not C then return nil, err end
    return C.encode_response(resp, client_opts(state, to))
end

function T.response(from, to, upstream_body, state)
    local resp, err = decode_answer(to, upstream_body, state)
    if not resp then return nil, err end
    return T.answer(from, to, resp, state)
end

function T.error(from, to, status, upstream_body)
    local C, U, err = codecs(from, to)
    if not C then
        return 500, { error = { message = err, type = "server_error" } }
    end
    -- Hosts hand over the raw body; decode it once here so every codec sees
    -- a table when the upstream sent JSON (and the raw text otherwise).
    if type(upstream_body) == "string" then
        local v = json.decode(upstream_body)
        if v ~= nil then upstream_body = v end
    end
    return C.encode_error(U.decode_error(status, upstream_body))
end

-- ---------------------------------------------------------------- streams

local Pipe = {}
Pipe.__index = Pipe

function T.stream(from, to, state, acct)
    local C, U, err = codecs(from, to)
    if not C then error(err) end -- a programming error: T.request succeeded first
    return setmetatable({
        dec = U.stream_decoder({ model = state.upstream_model, supplier = state.supplier }),
        enc = C.stream_encoder(client_opts(state, to)),
        names = state.names, acct = acct or accounting.new(), closed = false,
        tt = state.tool_text and tooltext.filter(state.tool_text),
    }, Pipe)
end

function Pipe:push(events, b)
    local enc, names, acct = self.enc, self.names, self.acct
    for i = 1, #events do
        local e = events[i]
        local t = e.type
        if t == "block_start" then
            if e.name and names then e.name = names:down(e.name) end
        elseif t ~= "text" and t ~= "tool_args" and t ~= "thinking" then
            acct:note(e)
        end
        enc:put(b, e)
    end
end

-- The supplier's decoder, then the text tool-call filter when it is on.
local function decoded(self, ev)
    local evs = self.dec:feed(ev)
    if self.tt then evs = self.tt:feed_list(evs) end
    return evs
end

local function decoded_end(self)
    local evs = self.dec:finish()
    if self.tt then
        evs = self.tt:feed_list(evs)
        local rest = self.tt:finish()
        for i = 1, #rest do evs[#evs + 1] = rest[i] end
    end
    return evs
end

function Pipe:feed(ev)
    local b = buffer.new()
    self:push(decoded(self, ev), b)
    return b:tostring()
end

function Pipe:feed_batch(evs)
    local b = buffer.new()
    for i = 1, #evs do self:push(decoded(self, evs[i]), b) end
    return b:tostring()
end

-- outcome: nil / { complete = true } for a clean end, else
-- { complete = false, reason = "UPSTREAM_EOF_EARLY", message = s }.
function Pipe:close(outcome)
    if self.closed then return "" end
    self.closed = true
    local b = buffer.new()
    self:push(decoded_end(self), b)
    b:put(self.enc:close(outcome))
    return b:tostring()
end

-- ---------------------------------------------------------------- assemble / explode

-- IR stream events -> IR response (blocks in start order, tool arguments
-- joined and decoded).
function T.assemble(events)
    local resp = { content = {}, usage = nil, stop_reason = nil }
    local blocks, args = {}, {}
    for _, e in ipairs(events) do
        local t = e.type
        S.note(resp, e) -- usage, stop_reason, stop_sequence, error
        if t == "start" then
            resp.id, resp.model = e.id, e.model
        elseif t == "block_start" then
            local p
            if e.kind == "text" then p = { type = "text", text = "" }
            elseif e.kind == "thinking" then p = { type = "thinking", text = "" }
            elseif e.kind == "redacted_thinking" then p = { type = "redacted_thinking", data = e.data }
            else
                p = { type = "tool_call", id = e.id, name = e.name }
                args[e.index] = buffer.new()
            end
            blocks[e.index] = p
            resp.content[#resp.content + 1] = p
        elseif t == "text" or t == "thinking" then
            local p = blocks[e.index]
            if p then p.text = p.text .. (e.text or "") end
        elseif t == "signature" then
            local p = blocks[e.index]
            if p then p.signature = (p.signature or "") .. e.signature end
        elseif t == "tool_args" then
            local a = args[e.index]
            if a then a:put(e.json) end
        end
    end
    for idx, a in pairs(args) do
        local s = a:tostring()
        local v = s ~= "" and json.decode(s) or nil
        if type(v) ~= "table" or json.is_array(v) then v = {} end
        blocks[idx].arguments = v
    end
    resp.usage = resp.usage or {}
    resp.stop_reason = resp.stop_reason or "end_turn"
    return resp
end

-- IR response -> the IR stream events that would have produced it.
function T.explode(resp)
    local ev = { { type = "start", id = resp.id, model = resp.model } }
    for i, p in ipairs(resp.content or {}) do
        local idx = i - 1
        local t = p.type
        if t == "text" then
            ev[#ev + 1] = { type = "block_start", index = idx, kind = "text" }
            if p.text and p.text ~= "" then ev[#ev + 1] = { type = "text", index = idx, text = p.text } end
        elseif t == "thinking" then
            ev[#ev + 1] = { type = "block_start", index = idx, kind = "thinking" }
            if p.text and p.text ~= "" then ev[#ev + 1] = { type = "thinking", index = idx, text = p.text } end
            if p.signature then ev[#ev + 1] = { type = "signature", index = idx, signature = p.signature } end
        elseif t == "redacted_thinking" then
            ev[#ev + 1] = { type = "block_start", index = idx, kind = "redacted_thinking", data = p.data }
        elseif t == "tool_call" then
            ev[#ev + 1] = { type = "block_start", index = idx, kind = "tool_call", id = p.id, name = p.name }
            local a = p.arguments
            if type(a) ~= "string" then a = json.encode(a == nil and {} or a) end
            ev[#ev + 1] = { type = "tool_args", index = idx, json = a }
        end
        if t == "text" or t == "thinking" or t == "redacted_thinking" or t == "tool_call" then
            ev[#ev + 1] = { type = "block_stop", index = idx }
        end
    end
    if resp.usage and next(resp.usage) then ev[#ev + 1] = { type = "usage", usage = resp.usage } end
    ev[#ev + 1] = { type = "finish", stop_reason = resp.stop_reason or "end_turn",
                    stop_sequence = resp.stop_sequence }
    return ev
end

-- ---------------------------------------------------------------- cross modes

local Collector = {}
Collector.__index = Collector

-- A non-streaming client whose supplier only streams: gather the IR events,
-- answer one body at the end.
function T.collect(from, to, state, acct)
    local C, U, err = codecs(from, to)
    if not C then error(err) end
    return setmetatable({ C = C, to = to, state = state, events = {}, acct = acct or accounting.new(),
                          dec = U.stream_decoder({ model = state.upstream_model, supplier = state.supplier }),
                          tt = state.tool_text and tooltext.filter(state.tool_text) },
        Collector)
end

function Collector:feed(ev)
    local evs, acct = decoded(self, ev), self.acct
    for i = 1, #evs do
        self.events[#self.events + 1] = evs[i]
        acct:note(evs[i])
    end
end

function Collector:feed_batch(list)
    for i = 1, #list do self:feed(list[i]) end
end

-- -> client_body, or nil, ir_error when the stream carried an error or did
-- not end cleanly (ir_stream's close policy; the host then answers
-- C.encode_error(ir_error)).
function Collector:finish(outcome)
    for _, e in ipairs(decoded_end(self)) do
        self.events[#self.events + 1] = e
        self.acct:note(e)
    end
    local resp = T.assemble(self.events)
    if resp.error then return nil, resp.error end
    local clean, message = S.verdict(outcome, self.acct.stop_reason)
    if not clean then return nil, ir.error(502, message) end
    if self.state.names then toolnames.restore_response(resp, self.state.names) end
    return self.C.encode_response(resp, client_opts(self.state, self.to))
end

-- The client's stream for an upstream answer already decoded to IR.
function T.answer_stream(from, to, resp, state)
    if state.tool_text then tooltext.answer(state.tool_text, resp) end
    local C, err = for_client(from, resp, state)
    if not C then return nil, err end
    local enc = C.stream_encoder(client_opts(state, to))
    local b = buffer.new()
    for _, e in ipairs(T.explode(resp)) do enc:put(b, e) end
    b:put(enc:close({ complete = true }))
    return b:tostring()
end

function T.response_stream(from, to, upstream_body, state)
    local resp, err = decode_answer(to, upstream_body, state)
    if not resp then return nil, err end
    return T.answer_stream(from, to, resp, state)
end

return T
