-- Specs for sluice.ir_stream, the stream machinery the four codecs share:
-- block allocation, the one-open-block serializer, the close policy (one
-- wording for every protocol), usage/stop bookkeeping, and the one
-- non-JSON policy every decoder follows.

local S = require("sluice.ir_stream")
local T = require("sluice.translate")
local F = require("helpers.fixtures")
local validate = require("helpers.validate")

describe("ir_stream blocks", function()
    it("numbers blocks in start order and stops each once", function()
        local b, out = S.blocks(), {}
        assert.equal(0, b:start(out, "text"))
        assert.equal(1, b:start(out, "tool_call", { id = "c", name = "f" }))
        b:stop(out, 0)
        b:stop(out, 0)
        b:stop(out, nil)
        b:stop_all(out)
        assert.same({
            { type = "block_start", index = 0, kind = "text" },
            { type = "block_start", index = 1, kind = "tool_call", id = "c", name = "f" },
            { type = "block_stop", index = 0 }, { type = "block_stop", index = 1 },
        }, out)
    end)
end)

describe("ir_stream bookkeeping", function()
    it("keeps usage per field, the stop reason and an error", function()
        local t = {}
        S.note(t, { type = "start", usage = { input_tokens = 1 } })
        S.note(t, { type = "text", index = 0, text = "x" })
        S.note(t, { type = "usage", usage = { output_tokens = 2 } })
        S.note(t, { type = "finish", stop_reason = "stop_sequence", stop_sequence = "END" })
        assert.same({ usage = { input_tokens = 1, output_tokens = 2 }, stop_reason = "stop_sequence",
                      stop_sequence = "END" }, t)
        S.note(t, { type = "error", error = { message = "m" } })
        assert.equal("error", t.stop_reason)
        assert.same({ message = "m" }, t.error)
    end)
end)

describe("ir_stream close policy", function()
    it("is clean only with a stop reason and no failure, and words failures one way", function()
        assert.is_true(S.verdict(nil, "end_turn"))
        assert.is_true(S.verdict({ complete = true }, "tool_use"))
        assert.same({ false, "upstream stream ended without a stop reason" }, { S.verdict({ complete = true }, nil) })
        assert.same({ false, "upstream stream ended without a stop reason" }, { S.verdict(nil, "error") })
        assert.same({ false, "upstream stream ended before the response was complete (UPSTREAM_RESET)" },
            { S.verdict({ complete = false, reason = "UPSTREAM_RESET" }, "end_turn") })
        assert.same({ false, "upstream stream ended before the response was complete (UPSTREAM_EOF_EARLY)" },
            { S.verdict({ complete = false }, nil) })
        assert.same({ false, "told" }, { S.verdict({ complete = false, message = "told" }, nil) })
    end)

    for _, name in ipairs(T.PROTOCOLS) do
        it(name .. " encoders say the same when cut or closed without a stop reason", function()
            local mod = T.protocol(name)
            local enc = mod.stream_encoder({ model = "m" })
            local out = enc:feed({ type = "start", id = "x" }) .. enc:close({ complete = false, reason = "UPSTREAM_IDLE" })
            assert.truthy(out:find("upstream stream ended before the response was complete (UPSTREAM_IDLE)", 1, true), out)
            assert.equal("", enc:feed({ type = "text", index = 0, text = "late" }) .. enc:close())
            enc = mod.stream_encoder({ model = "m" })
            out = enc:feed({ type = "start", id = "x" }) .. enc:close({ complete = true })
            assert.truthy(out:find("upstream stream ended without a stop reason", 1, true), out)
            assert.is_false(validate[name](F.records(out)).complete)
        end)
    end
end)

describe("ir_stream one open block", function()
    it("lets the head stream live and replays the others in start order", function()
        local log = {}
        local enc = {}
        function enc:open_block(b, rec) log[#log + 1] = "open " .. rec.name end
        function enc:stop_block(b, rec, status) log[#log + 1] = "stop " .. rec.name .. " " .. status end
        local q = S.serializer(enc)
        local a, b = { name = "a" }, { name = "b" }
        q:start(nil, 0, a)
        q:start(nil, 1, b)
        assert.is_true(a.live)
        assert.is_nil(b.live)
        q:stop(nil, b, "completed")
        assert.same({ "open a" }, log)
        q:stop(nil, a, "completed")
        assert.same({ "open a", "stop a completed", "open b", "stop b completed" }, log)
        assert.equal(b, q:get(1))
        local c = { name = "c" }
        q:start(nil, 2, c)
        q:stop_all(nil, "incomplete")
        assert.same("stop c incomplete", log[#log])
    end)
end)

describe("ir_stream non-JSON policy", function()
    for _, name in ipairs(T.PROTOCOLS) do
        it(name .. " decoders turn a non-JSON event into one IR error and skip empty data and [DONE]", function()
            local dec = T.protocol(name).stream_decoder({})
            assert.same({}, dec:feed({ data = "" }))
            assert.same({}, dec:feed({ data = "[DONE]" }))
            local evs = dec:feed({ event = "message", data = "keep-alive" })
            assert.equal(1, #evs)
            assert.equal("error", evs[1].type)
            assert.same({ status = 502, type = "api_error", message = "malformed event from upstream: not a JSON object" },
                evs[1].error)
            assert.same({}, dec:feed({ data = "still not json" }))
            assert.same({}, dec:feed({ data = "42" }))
        end)
    end

    it("ends a translated stream as failed, never as a clean one", function()
        local _, st = T.request("anthropic", "openai-chat",
            { model = "claude-x", max_tokens = 5, stream = true, messages = { { role = "user", content = "hi" } } },
            {}, { model = "gpt-x" })
        local pipe = T.stream("anthropic", "openai-chat", st)
        local out = pipe:feed({ data = '{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}' })
            .. pipe:feed({ data = '{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,' })
            .. pipe:close({ complete = true })
        local v = validate.anthropic(F.records(out))
        assert.is_false(v.complete)
        assert.truthy(out:find("not a JSON object", 1, true), out)
    end)
end)
