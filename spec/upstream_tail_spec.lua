-- Specs for sluice.upstream.passthrough_tail: the end a cut passthrough
-- stream gets. It comes from the client protocol's own stream encoder, so
-- for every protocol a real upstream stream cut after any whole event, plus
-- the tail, must be a stream the client SDK accepts as a failed answer
-- (helpers.validate: an error chunk and [DONE] for chat, error + a whole
-- response.failed numbered after the upstream's events for Responses, an
-- error object for Gemini; for Anthropic the block the upstream left open
-- stopped, then error + message_stop).

local json = require("sluice.json")
local U = require("sluice.upstream")
local T = require("sluice.translate")
local A = require("sluice.accounting")
local F = require("helpers.fixtures")
local sse = require("helpers.sse")
local validate = require("helpers.validate")

-- A real stream per protocol, and the facts of its first event.
local STREAMS = {
    anthropic = "anthropic/stream_tools.encoded.sse",
    ["openai-chat"] = "openai-chat/stream_tools.encoded.sse",
    ["openai-responses"] = "openai-responses/stream_codex.sse",
    gemini = "gemini/stream_tools.sse",
}

-- The first event's id and model, learnt as the host learns them (H.observe
-- feeds the kept events to the accountant's watch).
local function seen_of(protocol, first)
    local watch = A.watch(A.new(), T.protocol(protocol), {})
    watch:feed_batch({ first })
    return watch.seen or {}
end

-- Where the loop stops: the terminal event (nothing is cut after it) — and
-- for Anthropic message_delta, after which the validator allows no error
-- (the tail still ends the stream with error + message_stop there).
local function is_terminal(protocol, rec)
    return rec.event == "message_stop" or rec.event == "message_delta" or rec.data == "[DONE]" or rec.event == "response.completed"
        or (protocol == "gemini" and rec.data:find('"finishReason":', 1, true) ~= nil)
end

for protocol, path in pairs(STREAMS) do
    describe("passthrough tail for " .. protocol, function()
        local recs = sse.parse(F.read(path))

        it("ends a stream cut after any whole event the way the SDK accepts", function()
            local outcome = { complete = false, reason = "UPSTREAM_EOF_EARLY",
                              message = "stream ended early: UPSTREAM_EOF_EARLY" }
            local seen = seen_of(protocol, recs[1])
            for k = 1, #recs do
                if is_terminal(protocol, recs[k]) then break end
                local head = sse.serialise({ unpack(recs, 1, k) })
                -- What the core hands over: the count, and the latest event with
                -- its data cut to 512 bytes.
                seen.events = k
                seen.last = (recs[k].event or "") .. "\n" .. recs[k].data:sub(1, 512)
                local tail = U.passthrough_tail(protocol, outcome, seen)
                local ok, res = pcall(validate[protocol], F.records(head .. tail))
                assert(ok, "cut after event " .. k .. ": " .. tostring(res) .. "\n" .. tail)
                assert.is_false(res.complete)
                assert.truthy(tail:find("UPSTREAM_EOF_EARLY", 1, true), tail)
            end
        end)
    end)
end

describe("passthrough tail for openai-responses", function()
    it("repeats the response id and numbers its events after the upstream's", function()
        local tail = U.passthrough_tail("openai-responses", { complete = false, message = "cut" },
            { id = "resp_abc", model = "gpt-5", events = 7 })
        local recs = F.records(tail)
        assert.are.same({ "error", "response.failed" }, { recs[1].event, recs[2].event })
        assert.are.equal(7, recs[1].data.sequence_number)
        assert.are.equal(8, recs[2].data.sequence_number)
        local r = recs[2].data.response
        assert.are.equal("resp_abc", r.id)
        assert.are.equal("failed", r.status)
        assert.is_true(json.is_array(r.output))
        assert.are.equal("cut", r.error.message)
    end)

    it("still makes a whole failed response when nothing of the stream is known", function()
        local recs = F.records(U.passthrough_tail("openai-responses", { complete = false, message = "cut" }))
        local r = recs[2].data.response
        assert.truthy(r.id:find("^resp_"))
        assert.are.equal(0, recs[1].data.sequence_number)
    end)
end)
