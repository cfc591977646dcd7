-- sluice.ir_stream — the stream machinery every codec shares, beside the IR
-- (lua/sluice/ir.lua documents the events). Codecs keep only what their
-- wire format needs; what is the same in all four lives here once:
--
--   decoders   S.decoder() makes a decoder class (finish() at EOF invents
--              nothing); S.blocks() allocates IR block indices in start
--              order and knows which blocks are open (start/stop/stop_all);
--              S.json(dec, ev, out) reads one event's JSON under the one
--              non-JSON policy (below); S.fields(dec, ev, out, selector)
--              reads only the fields a json.selector names, under the same
--              policy, building nothing else (a chat chunk's delta text
--              without a table for the chunk around it).
--   bookkeeping S.note(t, ev) keeps usage (later values win per field),
--              stop_reason / stop_sequence and error of an IR event stream
--              in t: encoders, translate's Pipe and assemble, and the
--              request's accountant (sluice.accounting) all use it.
--   encoders   S.encoder() makes an encoder class whose feed/close are the
--              shared ones: nothing after the end (`ended`), the opening
--              written once before anything else (`begin`), usage and stop
--              kept by S.note, an IR error reported the protocol's way
--              (`fail`), and close(outcome) deciding between the clean end
--              (`finish`) and the failure (`fail`) by one policy (S.verdict);
--              S.serializer(enc) is the one-open-block queue (Anthropic
--              content blocks, Responses output items).
--
-- Vocabulary, in every codec: `started` (the opening is written/seen),
-- `ended` (nothing more is written/read), `stop_reason` (the finish seen),
-- `errored` (an IR error was emitted).
--
-- Non-JSON policy: an event whose data is not a JSON object or array (other
-- than empty data and OpenAI's "[DONE]") is the upstream breaking its protocol. The decoder
-- emits one IR error for it (502 api_error, "malformed event from upstream:
-- not a JSON object"), so the client's stream ends as failed instead of silently
-- missing a piece (a dropped tool-argument chunk would otherwise pass as a
-- whole call). A supplier with non-JSON keep-alives gets an adapter whose
-- `event` hook drops them (sluice.adapters).

local ir = require("sluice.ir")
local json = require("sluice.json")
local buffer = require("string.buffer")

local type, ipairs, setmetatable, remove, fmt = type, ipairs, setmetatable, table.remove, string.format
local merge_usage = ir.merge_usage
local json_decode, json_select = json.decode, json.select

local S = {}

-- ---------------------------------------------------------------- bookkeeping

-- Usage, stop reason and error of one IR event, kept in t.
local function note(t, ev)
    local k = ev.type
    if k == "usage" or k == "start" then
        if ev.usage then t.usage = merge_usage(t.usage, ev.usage) end
    elseif k == "finish" then
        t.stop_reason, t.stop_sequence = ev.stop_reason, ev.stop_sequence
    elseif k == "error" then
        t.error, t.stop_reason = ev.error, "error"
    end
end
S.note = note

-- ---------------------------------------------------------------- decoders

local Blocks = {}
Blocks.__index = Blocks

-- IR block indices, 0-based in start order, and which are open.
function S.blocks()
    return setmetatable({ next = 0, open = {} }, Blocks)
end

-- Appends block_start (ev, or a new event, gets type, index and kind) to
-- out; returns the index.
function Blocks:start(out, kind, ev)
    local i = self.next
    self.next = i + 1
    ev = ev or {}
    ev.type, ev.index, ev.kind = "block_start", i, kind
    out[#out + 1] = ev
    self.open[i] = true
    return i
end

-- Appends block_stop for block i if it is open.
function Blocks:stop(out, i)
    if i ~= nil and self.open[i] then
        self.open[i] = nil
        out[#out + 1] = { type = "block_stop", index = i }
    end
end

function Blocks:stop_all(out)
    for i = 0, self.next - 1 do self:stop(out, i) end
end

-- A new decoder class (instances: setmetatable(state, Class)). Its
-- finish() at upstream EOF returns nothing unless the class says otherwise:
-- a stream without its end is reported cut by the host, never completed
-- by an invented finish.
local Decoder = {}

function Decoder:finish()
    return {}
end

function S.decoder()
    local C = setmetatable({}, { __index = Decoder })
    C.__index = C
    return C
end

local NOT_JSON = "malformed event from upstream: not a JSON object"

-- Appends the stream's one IR error for an event that breaks the protocol.
function S.malformed(dec, out)
    if not dec.errored then
        dec.errored = true
        out[#out + 1] = { type = "error", error = ir.error(502, NOT_JSON, "api_error") }
    end
end

-- The JSON (a table) of one upstream event, or nil: nothing to decode (no
-- data, "[DONE]"), or not JSON, which appends the stream's one IR error.
function S.json(dec, ev, out)
    local d = ev.data
    if d == nil or d == "" or d == "[DONE]" then return nil end
    local obj = json_decode(d)
    if type(obj) ~= "table" then
        S.malformed(dec, out)
        return nil
    end
    return obj
end

local function checked(dec, out, ok, ...)
    if ok then return true, ... end
    S.malformed(dec, out)
    return false
end

-- S.json's reading of one event, for the fields `selector` names only:
-- true and their values (nil where absent), or false when there is nothing
-- to read or the data is not JSON (then with the stream's one IR error).
function S.fields(dec, ev, out, selector)
    local d = ev.data
    if d == nil or d == "" or d == "[DONE]" then return false end
    return checked(dec, out, json_select(selector, d))
end

-- ---------------------------------------------------------------- close policy

local NO_STOP = "upstream stream ended without a stop reason"
local CUT = "upstream stream ended before the response was complete (%s)"

-- How a stream closed with `outcome` after the finish `stop_reason` (nil:
-- none came) ends: true for the clean end; false and the message the client
-- is told otherwise. outcome = nil or { complete = true } is a clean close,
-- which without a stop reason (or after an error) is still a failure: a cut
-- answer is never passed off as whole (DESIGN §6).
function S.verdict(outcome, stop_reason)
    if outcome == nil or outcome.complete ~= false then
        if stop_reason and stop_reason ~= "error" then return true end
        return false, NO_STOP
    end
    return false, outcome.message or fmt(CUT, outcome.reason or "UPSTREAM_EOF_EARLY")
end

-- ---------------------------------------------------------------- encoders

-- An encoder class provides
--   begin(b, start_ev|nil)     the stream's opening; sets self.started
--   on_<type>(b, ev)           per IR event type (absent: nothing to write)
--   fail(b, message, err|nil, outcome|nil)  close what is open and report
--                              the error the protocol's way
--   finish(b)                  the clean end (stop reason, usage)
-- and gets feed/close from here. fail and finish write the opening first
-- when the protocol needs one and it is not written yet.
local Encoder = {}

local ON = {
    start = "on_start", block_start = "on_block_start", text = "on_text", thinking = "on_thinking",
    signature = "on_signature", tool_args = "on_tool_args", block_stop = "on_block_stop",
    usage = "on_usage", finish = "on_finish",
}

-- Appends the client's bytes for one IR event to the string.buffer b: a
-- stream's pipe gives every event of a batch the same buffer, so no event
-- makes a buffer or a string of its own.
function Encoder:put(b, ev)
    if self.ended then return end
    local t = ev.type
    if not self.started then self:begin(b, t == "start" and ev or nil) end
    if t == "error" then
        note(self, ev)
        local e = ev.error
        self:fail(b, e and e.message or "upstream error", e)
        self.ended = true
    else
        local h = self[ON[t] or "on_unknown"]
        if h then h(self, b, ev) end
        note(self, ev)
    end
end

function Encoder:feed(ev)
    local b = buffer.new()
    self:put(b, ev)
    return b:tostring()
end

function Encoder:close(outcome)
    if self.ended then return "" end
    local b = buffer.new()
    local clean, message = S.verdict(outcome, self.stop_reason)
    if clean then self:finish(b) else self:fail(b, message, nil, outcome) end
    self.ended = true
    return b:tostring()
end

-- A new encoder class (its instances: setmetatable(state, Class)).
function S.encoder()
    local C = setmetatable({}, { __index = Encoder })
    C.__index = C
    return C
end

-- ---------------------------------------------------------------- one open block

-- Protocols whose clients take one block at a time (Anthropic content
-- blocks, Responses output items) serialise IR blocks, which may overlap
-- (parallel OpenAI tool calls): blocks queue in start order, the head is
-- live, the rest wait until every block before them has stopped. The
-- encoder keeps what a waiting block receives (rec.live says whether to
-- write or keep) and is called back:
--   enc:open_block(b, rec)           rec became live: its start and what it kept
--   enc:stop_block(b, rec, status)   the live rec stopped
local Serial = {}
Serial.__index = Serial

function S.serializer(enc)
    return setmetatable({ enc = enc, blocks = {}, queue = {} }, Serial)
end

-- The record of IR block `index`, or nil.
function Serial:get(index)
    return self.blocks[index]
end

function Serial:drain(b, status)
    local q, enc = self.queue, self.enc
    while q[1] do
        local rec = q[1]
        if not rec.live then
            rec.live = true
            enc:open_block(b, rec)
        end
        if not rec.stopped then return end
        enc:stop_block(b, rec, status)
        remove(q, 1)
    end
end

-- A new block (rec, for IR block `index`): live at once when none is ahead.
function Serial:start(b, index, rec)
    self.blocks[index] = rec
    local q = self.queue
    q[#q + 1] = rec
    if #q == 1 then self:drain(b, "completed") end
end

function Serial:stop(b, rec, status)
    rec.stopped = true
    if rec == self.queue[1] then self:drain(b, status) end
end

-- Stop every block still live or waiting, in order.
function Serial:stop_all(b, status)
    for _, rec in ipairs(self.queue) do rec.stopped = true end
    self:drain(b, status)
end

return S
