-- sluice.accounting — one accountant per request: the usage the supplier
-- reported and how its answer ended (stop reason, error), whichever body
-- path ran. The host makes one per attempt and every path feeds it:
--
--   translated stream    translate's Pipe notes every IR event it passes on
--   adapted stream       the Relay watches the events with the protocol's own decoder
--   passthrough stream   H.observe watches the events the core kept
--   whole answer         acct:answer(resp) with the decoded IR response
--                        (translated), acct:answer_body with an adapted
--                        one's JSON, acct:answer_text for the bytes of a
--                        passthrough answer the core captured (its usage
--                        member alone, where the codec names it)
--
-- and the log hook reads only it (acct:log_fields). Usage fields follow the
-- IR (sluice.ir USAGE); counts the supplier did not report stay unknown,
-- never estimated. Observability must never fail a request: decoding here
-- does not raise.
--
--   A.new() -> acct
--   acct:note(ir_event) ; acct:answer(resp)
--   acct:answer_body(codec, decoded_json) ; acct:answer_text(codec, text)
--   A.watch(acct, codec, opts) -> watcher ; watcher:feed_batch(events)
--       watcher.seen = { id, model } of the stream's start, once seen
--   acct:log_fields(out) -> out with input/output/cache token counts

local json = require("sluice.json")
local ir = require("sluice.ir")
local S = require("sluice.ir_stream")

local type, pcall, setmetatable = type, pcall, setmetatable

local A = {}

local Acct = {}
Acct.__index = Acct

function A.new()
    return setmetatable({ usage = nil, stop_reason = nil, stop_sequence = nil, error = nil, fed = false }, Acct)
end

-- One IR stream event (usage, finish, error).
function Acct:note(ev)
    self.fed = true
    S.note(self, ev)
end

-- Usage read from an answer (later values win per field).
function Acct:add_usage(u)
    self.fed = true
    self.usage = ir.merge_usage(self.usage, u)
end

-- A whole IR response.
function Acct:answer(resp)
    self:add_usage(resp.usage)
    self.stop_reason, self.stop_sequence = resp.stop_reason, resp.stop_sequence
end

-- A whole answer in `codec`'s protocol, as decoded JSON (an adapted
-- answer): its usage when it is one of that protocol's answers.
function Acct:answer_body(codec, body)
    local ok, resp = pcall(codec.decode_response, body)
    if ok and type(resp) == "table" then self:answer(resp) end
end

-- The same from the answer's bytes (a passthrough answer the core kept).
-- Only the usage is wanted, so a codec that names where a whole answer
-- keeps it (its `answer_usage` fact) has just that member decoded, in one
-- pass that checks the rest (a json.selector, one per member name), never
-- building the rest into tables.
local usage_selectors = {}
function Acct:answer_text(codec, text)
    if type(text) ~= "string" or not text:find("^%s*{") then return end
    local field = codec.answer_usage
    if not field then
        local body = json.decode(text)
        if type(body) == "table" then self:answer_body(codec, body) end
        return
    end
    local sel = usage_selectors[field]
    if not sel then
        sel = json.selector({ field })
        usage_selectors[field] = sel
    end
    local ok, member = json.select(sel, text)
    if not ok or member == nil then return end
    local dok, u = pcall(codec.decode_usage, member)
    if dok and u then self:add_usage(u) end
end

-- The record's usage fields.
function Acct:log_fields(out)
    local u = self.usage
    if u then
        out.input_tokens, out.output_tokens = u.input_tokens, u.output_tokens
        out.cache_read_tokens, out.cache_write_tokens = u.cache_read_tokens, u.cache_write_tokens
    end
    return out
end

-- A same-protocol stream read on the side (passthrough or adapted): the
-- protocol's own decoder turns its events into IR for the accountant, and
-- the start names the answer (a failure tail repeats its id and model).
local Watch = {}
Watch.__index = Watch

function A.watch(acct, codec, opts)
    return setmetatable({ acct = acct, dec = codec.stream_decoder(opts or {}), seen = nil }, Watch)
end

function Watch:feed_batch(batch)
    local dec, acct = self.dec, self.acct
    for i = 1, #batch do
        local ok, evs = pcall(dec.feed, dec, batch[i])
        if ok and type(evs) == "table" then
            for k = 1, #evs do
                local e = evs[k]
                if e.type == "start" and not self.seen then self.seen = { id = e.id, model = e.model } end
                acct:note(e)
            end
        end
    end
end

return A
