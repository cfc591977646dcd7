-- Specs for sluice.protocols.openai_chat: decode/encode goldens for
-- requests, responses and chunk streams (spec/fixtures/openai-chat/), stream
-- framing invariance, and well-formed client streams from any IR sequence.

local json = require("sluice.json")
local O = require("sluice.protocols.openai_chat")
local F = require("helpers.fixtures")
local C = require("helpers.codec")
local validate = require("helpers.validate")

local ENC_OPTS = { model = "gpt-4.1", id = "chatcmpl-Golden", created = 1730000000, include_usage = true }

local function chunk(delta, finish, usage)
    return { data = json.encode({ id = "chatcmpl-1", object = "chat.completion.chunk", created = 1,
        model = "gpt-x", choices = delta and { { index = 0, delta = delta, finish_reason = finish or json.null } }
            or json.array(), usage = usage }) }
end

describe("openai-chat request", function()
    it("decodes to the IR golden (tool role folded into user tool_results)", function()
        local req = assert(O.decode_request(F.json("openai-chat/request_tools.json")))
        C.assert_ir("openai-chat/request_tools.ir.json", req)
    end)

    it("encodes the IR back to the wire golden", function()
        F.assert_wire(F.json("openai-chat/request_tools.encoded.json"),
            O.encode_request(F.json("openai-chat/request_tools.ir.json"), { model = "gpt-4.1", stream = true }))
    end)

    it("refuses n > 1, which no other protocol can answer", function()
        local r, err = O.decode_request({ model = "m", messages = {}, n = 2 })
        assert.is_nil(r)
        assert.matches("^n:", err)
    end)

    it("splits tool results into tool messages before the user's text, moving images out", function()
        local body = F.wire(O.encode_request({ model = "m", messages = {
            { role = "assistant", content = { { type = "tool_call", id = "toolu_1", name = "shot", arguments = {} } } },
            { role = "user", content = {
                { type = "tool_result", tool_call_id = "toolu_1", is_error = true, content = {
                    { type = "text", text = "failed" },
                    { type = "image", source = { kind = "base64", media_type = "image/png", data = "AAAA" } } } },
                { type = "text", text = "what now?" } } },
        } }, { model = "gpt-4.1", stream = false }))
        local m = body.messages
        assert.are.equal(3, #m)
        assert.are.same({ role = "assistant", content = json.null, tool_calls = { {
            id = "toolu_1", type = "function", ["function"] = { name = "shot", arguments = "{}" } } } }, m[1])
        assert.are.equal("tool", m[2].role)
        assert.are.equal("toolu_1", m[2].tool_call_id)
        assert.matches("failed", m[2].content)
        assert.matches("^Error", m[2].content)
        assert.are.equal("user", m[3].role)
        assert.are.equal("data:image/png;base64,AAAA", m[3].content[1].image_url.url)
        assert.are.equal("what now?", m[3].content[2].text)
        assert.is_nil(body.stream_options)
    end)

    it("joins a tool result's texts with newlines, skipping empty ones", function()
        local function tool_text(content)
            local body = F.wire(O.encode_request({ model = "m", messages = {
                { role = "assistant", content = { { type = "tool_call", id = "t1", name = "read", arguments = {} } } },
                { role = "user", content = { { type = "tool_result", tool_call_id = "t1", content = content } } },
            } }, { model = "gpt-4.1", stream = false }))
            return body.messages[2].content
        end
        assert.are.equal("one", tool_text({ { type = "text", text = "one" } }))
        assert.are.equal("a\nb\nc", tool_text({ { type = "text", text = "a" }, { type = "text", text = "" },
            { type = "image", source = { kind = "base64", media_type = "image/png", data = "AA" } },
            { type = "text", text = "b" }, { type = "text", text = "c" } }))
        assert.are.equal("", tool_text({}))
        assert.are.equal("", tool_text({ { type = "text", text = "" } }))
    end)

    it("asks for usage on every streamed upstream request and maps thinking to an effort", function()
        local body = O.encode_request({ model = "m", messages = {}, stop = { "a", "b", "c", "d", "e" },
                                        thinking = { enabled = true, budget_tokens = 20000 } },
            { model = "o4-mini", stream = true })
        assert.are.same({ include_usage = true }, body.stream_options)
        assert.are.equal("high", body.reasoning_effort)
        assert.are.equal(4, #body.stop)
        assert.are.equal("o4-mini", body.model)
    end)
end)

describe("openai-chat response", function()
    it("decodes to the IR golden", function()
        C.assert_ir("openai-chat/response_tools.ir.json",
            assert(O.decode_response(F.json("openai-chat/response_tools.json"))))
    end)

    it("encodes the IR to the wire golden", function()
        F.assert_wire(F.json("openai-chat/response_tools.encoded.json"),
            O.encode_response(F.json("openai-chat/response_tools.ir.json"), ENC_OPTS))
    end)

    it("reads finish_reason stop with tool calls as tool_use, and length as max_tokens", function()
        local body = F.json("openai-chat/response_tools.json")
        body.choices[1].finish_reason = "stop"
        assert.are.equal("tool_use", O.decode_response(body).stop_reason)
        body.choices[1].finish_reason = "length"
        assert.are.equal("max_tokens", O.decode_response(body).stop_reason)
    end)

    it("encodes arguments as a JSON string, {} for none, and a chatcmpl- id", function()
        local body = F.wire(O.encode_response({ id = "msg_1", content = {
            { type = "thinking", text = "hidden", signature = "s" },
            { type = "tool_call", id = "toolu_9", name = "f", arguments = json.array() } },
            stop_reason = "tool_use", usage = { input_tokens = 10, output_tokens = 2 } }, { model = "gpt-x" }))
        assert.matches("^chatcmpl%-", body.id)
        assert.are.equal("gpt-x", body.model)
        local msg = body.choices[1].message
        assert.are.equal(json.null, msg.content)
        assert.are.equal("{}", msg.tool_calls[1]["function"].arguments)
        assert.are.equal("toolu_9", msg.tool_calls[1].id)
        assert.are.equal("tool_calls", body.choices[1].finish_reason)
        assert.are.equal(12, body.usage.total_tokens)
    end)
end)

describe("openai-chat errors", function()
    it("keeps the upstream message and maps the status", function()
        local e = O.decode_error(429, F.read("openai-chat/error_rate_limit.json"))
        assert.are.equal("rate_limit", e.type)
        assert.matches("^Rate limit reached", e.message)
        local status, body = O.encode_error(e)
        assert.are.equal(429, status)
        assert.are.equal(e.message, body.error.message)
        assert.are.equal("rate_limit_exceeded", body.error.code)
    end)

    it("turns Anthropic's 529 into 503", function()
        local status, body = O.encode_error({ status = 529, type = "overloaded", message = "Overloaded" })
        assert.are.equal(503, status)
        assert.are.equal("Overloaded", body.error.message)
    end)
end)

describe("openai-chat stream decoder", function()
    for _, name in ipairs({ "stream_tools", "stream_stop_with_tools", "stream_error" }) do
        it(name .. " decodes to the IR golden", function()
            C.assert_ir("openai-chat/" .. name .. ".ir.json", C.decode_stream(O, "openai-chat/" .. name .. ".sse"))
        end)
        it(name .. " gives the same IR however it is framed", function()
            C.assert_split_invariant(O, "openai-chat/" .. name .. ".sse")
        end)
    end

    it("buffers arguments that arrive before the id and name", function()
        local dec = O.stream_decoder({})
        local evs = {}
        local function feed(ev) for _, e in ipairs(dec:feed(ev)) do evs[#evs + 1] = e end end
        feed(chunk({ tool_calls = { { index = 0, ["function"] = { arguments = '{"a"' } } } }))
        feed(chunk({ tool_calls = { { index = 0, ["function"] = { arguments = ':1}' } } } }))
        assert.are.equal(1, #evs) -- only start: no block without id and name
        feed(chunk({ tool_calls = { { index = 0, id = "call_late", type = "function",
                                      ["function"] = { name = "f", arguments = "" } } } }))
        assert.are.same({ type = "block_start", index = 0, kind = "tool_call", id = "call_late", name = "f" }, evs[2])
        assert.are.same({ type = "tool_args", index = 0, json = '{"a":1}' }, evs[3])
    end)

    it("closes the text block when a tool call starts and reopens for later text", function()
        local evs = C.decode_records(O, {
            chunk({ content = "a" }),
            chunk({ tool_calls = { { index = 0, id = "c1", type = "function", ["function"] = { name = "f", arguments = "{}" } } } }),
            chunk({ content = "b" }),
            chunk({}, "tool_calls"),
        })
        local kinds = {}
        for _, e in ipairs(evs) do kinds[#kinds + 1] = e.type .. (e.index and (":" .. e.index) or "") end
        assert.are.same({ "start", "block_start:0", "text:0", "block_stop:0", "block_start:1", "tool_args:1",
                          "block_start:2", "text:2", "block_stop:2", "block_stop:1", "finish" }, kinds)
    end)

    it("carries usage reported in the finish chunk or a later usage-only chunk", function()
        local evs = C.decode_records(O, { chunk({}, "stop"),
            chunk(nil, nil, { prompt_tokens = 7, completion_tokens = 3, total_tokens = 10,
                              prompt_tokens_details = { cached_tokens = 4 } }) })
        local last = evs[#evs]
        assert.are.same({ type = "usage", usage = { input_tokens = 7, output_tokens = 3, cache_read_tokens = 4 } }, last)
    end)
end)

describe("openai-chat stream encoder", function()
    local events = F.json("openai-chat/stream_tools.ir.json")

    it("re-encodes the decoded capture to the golden client stream", function()
        F.assert_stream("openai-chat/stream_tools.encoded.sse", C.encode_events(O, events, ENC_OPTS))
    end)

    it("sends the usage chunk only to clients that asked for it", function()
        local out = C.encode_events(O, events, { model = "m", id = "chatcmpl-x" })
        local v = validate["openai-chat"](F.records(out))
        assert.is_true(v.complete)
        assert.is_nil(v.usage)
        assert.are.equal("tool_calls", v.stop_reason)
        assert.are.same({ file_path = "Makefile" }, v.tools[2].input)
    end)

    it("drops thinking and reports tool_calls when the IR says end_turn but tools ran", function()
        local out = C.encode_events(O, {
            { type = "start" },
            { type = "block_start", index = 0, kind = "thinking" },
            { type = "thinking", index = 0, text = "secret" },
            { type = "block_stop", index = 0 },
            { type = "block_start", index = 1, kind = "tool_call", id = "toolu_1", name = "f" },
            { type = "tool_args", index = 1, json = "{}" },
            { type = "block_stop", index = 1 },
            { type = "finish", stop_reason = "end_turn" },
        }, { model = "m" })
        assert.is_nil(out:find("secret", 1, true))
        local v = validate["openai-chat"](F.records(out))
        assert.are.equal("tool_calls", v.stop_reason)
        assert.are.equal("toolu_1", v.tools[1].id)
    end)

    it("ends a cut stream with an error chunk naming the cause, then [DONE]", function()
        local out = C.encode_events(O, events, ENC_OPTS, { complete = false, reason = "UPSTREAM_RESET" }, 7)
        local recs = F.records(out)
        assert.are.equal("[DONE]", recs[#recs].data)
        assert.matches("UPSTREAM_RESET", recs[#recs - 1].data.error.message)
        for _, r in ipairs(recs) do
            if type(r.data) == "table" and r.data.choices then
                assert.are.equal(json.null, r.data.choices[1].finish_reason)
            end
        end
    end)

    it("stays well-formed when cut after any IR event", function()
        C.assert_cuts_valid(O, events, ENC_OPTS)
    end)
end)
