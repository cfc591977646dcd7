-- Specs for sluice.protocols.anthropic: decode/encode goldens for requests,
-- responses and streams (spec/fixtures/anthropic/), stream framing
-- invariance, and well-formed client streams from any IR sequence.

local json = require("sluice.json")
local A = require("sluice.protocols.anthropic")
local F = require("helpers.fixtures")
local C = require("helpers.codec")
local validate = require("helpers.validate")

local ENC_OPTS = { model = "claude-sonnet-4-5-20250929", id = "msg_01Golden", origin = "anthropic" }

describe("anthropic request", function()
    it("decodes a Claude Code request to the IR golden", function()
        local req = assert(A.decode_request(F.json("anthropic/request_claude_code.json")))
        C.assert_ir("anthropic/request_claude_code.ir.json", req)
    end)

    it("encodes the IR back to the wire golden", function()
        local req = F.json("anthropic/request_claude_code.ir.json")
        F.assert_wire(F.json("anthropic/request_claude_code.encoded.json"),
            A.encode_request(req, { model = "claude-sonnet-4-5-20250929", stream = true }))
    end)

    it("rejects bodies without model or messages", function()
        local r, err = A.decode_request({ messages = {} })
        assert.is_nil(r)
        assert.matches("model", err)
        r, err = A.decode_request({ model = "m" })
        assert.is_nil(r)
        assert.matches("messages", err)
    end)

    local function encode(req, opts)
        return F.wire(A.encode_request(req, opts or { model = "claude-x" }))
    end

    it("merges same-role turns and puts tool results first", function()
        local body = encode({ model = "m", messages = {
            { role = "assistant", content = { { type = "tool_call", id = "call_1", name = "f", arguments = {} } } },
            { role = "user", content = { { type = "text", text = "and then" } } },
            { role = "user", content = { { type = "tool_result", tool_call_id = "call_1",
                                           content = { { type = "text", text = "ok" } } } } },
        } })
        assert.are.equal(2, #body.messages)
        assert.are.equal("tool_result", body.messages[2].content[1].type)
        assert.are.equal("text", body.messages[2].content[2].type)
        -- input of an argument-less call is an object, never []
        assert.is_false(json.is_array(body.messages[1].content[1].input))
    end)

    it("drops thinking that did not come from Anthropic and empty text", function()
        local body = encode({ model = "m", messages = {
            { role = "user", content = { { type = "text", text = "hi" } } },
            { role = "assistant", content = {
                { type = "thinking", text = "elsewhere", signature = "gemini-sig" },
                { type = "thinking", text = "mine", signature = "EqQB", origin = "anthropic" },
                { type = "text", text = "" }, { type = "text", text = "answer" } } },
        } })
        local c = body.messages[2].content
        assert.are.equal(2, #c)
        assert.are.same({ type = "thinking", thinking = "mine", signature = "EqQB" }, c[1])
        assert.are.equal("answer", c[2].text)
    end)

    it("maps tool_choice and parallelism, clamps temperature, defaults max_tokens", function()
        local tools = { { name = "f", parameters = { type = "object", properties = {} } } }
        local body = encode({ model = "m", messages = {}, tools = tools, temperature = 1.7,
                              tool_choice = { type = "required" }, parallel_tool_calls = false })
        assert.are.same({ type = "any", disable_parallel_tool_use = true }, body.tool_choice)
        assert.are.equal(1, body.temperature)
        assert.is_true(body.max_tokens > 0)
        body = encode({ model = "m", messages = {}, tools = tools, tool_choice = { type = "tool", name = "f" } })
        assert.are.same({ type = "tool", name = "f" }, body.tool_choice)
        body = encode({ model = "m", messages = {}, tools = tools, tool_choice = { type = "none" },
                        parallel_tool_calls = false })
        assert.are.same({ type = "none" }, body.tool_choice)
    end)

    it("turns an effort into a thinking budget below max_tokens", function()
        local body = encode({ model = "m", messages = {}, max_tokens = 1000, temperature = 0.2,
                              thinking = { enabled = true, effort = "high" } })
        assert.are.equal("enabled", body.thinking.type)
        assert.is_true(body.thinking.budget_tokens >= 1024)
        assert.is_true(body.max_tokens > body.thinking.budget_tokens)
        assert.is_nil(body.temperature)
    end)
end)

describe("anthropic response", function()
    it("decodes to the IR golden with cache-inclusive usage", function()
        local resp = assert(A.decode_response(F.json("anthropic/response_tools.json")))
        C.assert_ir("anthropic/response_tools.ir.json", resp)
        assert.are.equal(12 + 100 + 2048, resp.usage.input_tokens)
    end)

    it("encodes the IR to the wire golden", function()
        local resp = F.json("anthropic/response_tools.ir.json")
        F.assert_wire(F.json("anthropic/response_tools.encoded.json"), A.encode_response(resp, ENC_OPTS))
    end)

    it("reports the client's model and a msg_ id", function()
        local body = A.encode_response({ id = "chatcmpl-9", content = {}, stop_reason = "content_filter",
                                         usage = {} }, { model = "claude-asked-for" })
        assert.are.equal("claude-asked-for", body.model)
        assert.matches("^msg_", body.id)
        assert.are.equal("refusal", body.stop_reason)
        assert.are.same({ input_tokens = 0, output_tokens = 0, cache_read_input_tokens = 0,
                          cache_creation_input_tokens = 0 }, body.usage)
    end)
end)

describe("anthropic errors", function()
    it("keeps the upstream message and type", function()
        local e = A.decode_error(529, F.read("anthropic/error_overloaded.json"))
        assert.are.same({ status = 529, type = "overloaded", message = "Overloaded" }, e)
        local status, body = A.encode_error(e)
        assert.are.equal(529, status)
        assert.are.same({ type = "error", error = { type = "overloaded_error", message = "Overloaded" } }, body)
    end)

    it("wraps a non-JSON upstream body", function()
        local e = A.decode_error(502, "<html>Bad Gateway</html>")
        assert.are.equal("<html>Bad Gateway</html>", e.message)
        local status, body = A.encode_error(e)
        assert.are.equal(502, status)
        assert.are.equal("api_error", body.error.type)
        e = A.decode_error(401, nil)
        assert.are.equal("authentication", e.type)
    end)
end)

describe("anthropic stream decoder", function()
    for _, name in ipairs({ "stream_tools", "stream_error" }) do
        it(name .. " decodes to the IR golden", function()
            C.assert_ir("anthropic/" .. name .. ".ir.json", C.decode_stream(A, "anthropic/" .. name .. ".sse"))
        end)
        it(name .. " gives the same IR however it is framed", function()
            C.assert_split_invariant(A, "anthropic/" .. name .. ".sse")
        end)
    end

    it("lets message_delta usage override message_start, never add to it", function()
        local dec = A.stream_decoder({})
        dec:feed({ data = '{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}' })
        local evs = dec:feed({ data = '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":12,"output_tokens":7}}' })
        assert.are.same({ input_tokens = 17, output_tokens = 7, cache_read_tokens = 5 }, evs[1].usage)
        assert.are.same({ type = "finish", stop_reason = "end_turn" }, evs[2])
    end)
end)

describe("anthropic stream encoder", function()
    local events = F.json("anthropic/stream_tools.ir.json")

    it("re-encodes the decoded capture to the golden client stream", function()
        F.assert_stream("anthropic/stream_tools.encoded.sse", C.encode_events(A, events, ENC_OPTS))
    end)

    it("wraps another provider's signature so it survives the client round trip", function()
        local out = C.encode_events(A, events, { model = "m", id = "msg_x", origin = "gemini" })
        local v = validate.anthropic(F.records(out))
        assert.is_true(v.complete)
        local sig
        for _, r in ipairs(F.records(out)) do
            if r.event == "content_block_delta" and r.data.delta.type == "signature_delta" then
                sig = r.data.delta.signature
            end
        end
        assert.are.equal("sluice1:gemini:sig:EqQBCkYIBxgCKkBRzk1Xv8w", sig)
        -- The client sends the block back: it is Gemini's again, and never
        -- reaches an Anthropic upstream.
        local req = A.decode_request({ model = "m", messages = {
            { role = "user", content = "hi" },
            { role = "assistant", content = { { type = "thinking", thinking = "t", signature = sig },
                                              { type = "text", text = "ok" } } } } })
        assert.are.same({ type = "thinking", text = "t", signature = "EqQBCkYIBxgCKkBRzk1Xv8w", origin = "gemini" },
            req.messages[2].content[1])
        local body = F.wire(A.encode_request(req, { model = "claude-x" }))
        assert.are.equal(1, #body.messages[2].content)
    end)

    it("serialises overlapping IR blocks: one Anthropic block open at a time", function()
        local evs = {
            { type = "start", id = "chatcmpl-1" },
            { type = "block_start", index = 0, kind = "tool_call", id = "call_a", name = "f" },
            { type = "block_start", index = 1, kind = "tool_call", id = "call_b", name = "g" },
            { type = "tool_args", index = 1, json = '{"b":' },
            { type = "tool_args", index = 0, json = '{"a":1}' },
            { type = "tool_args", index = 1, json = '2}' },
            { type = "block_stop", index = 0 }, { type = "block_stop", index = 1 },
            { type = "usage", usage = { input_tokens = 5, output_tokens = 3 } },
            { type = "finish", stop_reason = "tool_use" },
        }
        local v = validate.anthropic(F.records(C.encode_events(A, evs, { model = "m" })))
        assert.is_true(v.complete)
        assert.are.same({ a = 1 }, v.tools[1].input)
        assert.are.same({ b = 2 }, v.tools[2].input)
        assert.are.equal("call_b", v.tools[2].id)
        assert.are.equal(5, v.usage.input_tokens)
    end)

    it("ends a cut stream with the open block closed, error, message_stop", function()
        local out = C.encode_events(A, events, ENC_OPTS,
            { complete = false, reason = "UPSTREAM_EOF_EARLY" }, 12)
        local recs = F.records(out)
        local n = #recs
        assert.are.equal("content_block_stop", recs[n - 2].event)
        assert.are.equal("error", recs[n - 1].event)
        assert.are.equal("api_error", recs[n - 1].data.error.type)
        assert.matches("UPSTREAM_EOF_EARLY", recs[n - 1].data.error.message)
        assert.are.equal("message_stop", recs[n].event)
    end)

    it("stays well-formed when cut after any IR event", function()
        C.assert_cuts_valid(A, events, ENC_OPTS)
    end)

    it("does not pass a stream without a stop reason off as complete", function()
        local out = C.encode_events(A, { events[1], events[2] }, ENC_OPTS, { complete = true })
        assert.is_false(validate.anthropic(F.records(out)).complete)
    end)

    it("sends message_start usage even when nothing else came", function()
        local recs = F.records(A.stream_encoder({ model = "m" }):close({ complete = false }))
        assert.are.equal(0, recs[1].data.message.usage.input_tokens)
        assert.are.equal("error", recs[2].event)
    end)
end)
