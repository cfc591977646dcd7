-- Specs for sluice.translate: every directed protocol pair against its
-- golden fixtures (spec/fixtures/pairs/<client>--<supplier>/), every stream
-- also fed byte by byte and split at every byte boundary, and cut after
-- every upstream event (the client must still get a well-formed stream).

local json = require("sluice.json")
local T = require("sluice.translate")
local F = require("helpers.fixtures")
local P = require("helpers.pairs")
local sse = require("helpers.sse")
local validate = require("helpers.validate")

local PROTOS = T.PROTOCOLS

describe("translate pair fixtures", function()
    local all = P.list()

    it("cover every directed pair whose codecs exist", function()
        local have = {}
        for _, p in ipairs(all) do have[p.from .. "--" .. p.to] = true end
        local missing = {}
        for _, a in ipairs(PROTOS) do
            for _, b in ipairs(PROTOS) do
                if a ~= b and T.protocol(a) and T.protocol(b) and not have[a .. "--" .. b] then
                    missing[#missing + 1] = a .. "--" .. b
                end
            end
        end
        assert.are.same({}, missing)
    end)

    for _, pair in ipairs(all) do
        local meta = P.cases(pair)
        describe(pair.from .. " client on " .. pair.to .. " supplier", function()
            local kinds = {}
            for _, case in ipairs(meta.cases) do
                kinds[case.kind] = true
                it(case.kind .. ": " .. (case.name or case.input), function()
                    local actual, extra = P.run(pair, meta, case)
                    if case.kind == "stream" or case.kind == "explode" then
                        F.assert_stream(pair.dir .. case.expect, actual)
                        local v = validate[pair.from](F.records(actual))
                        assert.are.equal(case.cut_after == nil and case.complete ~= false, v.complete)
                    else
                        F.assert_wire(F.json(pair.dir .. case.expect), actual, case.kind)
                        if case.kind == "error" then assert.are.equal(case.expect_status, extra) end
                    end
                end)
            end
            it("has request, response and stream goldens", function()
                assert.is_true(kinds.request and kinds.response and kinds.stream and true or false)
            end)

            for _, case in ipairs(meta.cases) do
                if case.kind == "stream" and not case.cut_after then
                    local recs = F.sse_records(case.input)
                    local bytes = F.read(case.input)
                    local whole = P.run(pair, meta, case)

                    it("stream " .. case.input .. " framed byte by byte and at every split", function()
                        for _, cuts in ipairs({ 1, 7 }) do
                            local st = P.state(pair, meta, case)
                            local pipe = T.stream(pair.from, pair.to, st)
                            local out = P.feed_stream(pipe, sse.parse_chunked(bytes, cuts))
                            out = out .. pipe:close({ complete = true })
                            assert.are.equal(whole, out)
                        end
                        for cut = 1, #bytes - 1 do
                            local got = sse.parse_chunked(bytes, { cut })
                            assert.are.same(recs, got)
                        end
                    end)

                    it("stream " .. case.input .. " cut after every event stays well-formed", function()
                        for n = 0, #recs - 1 do
                            local st = P.state(pair, meta, case)
                            local pipe = T.stream(pair.from, pair.to, st)
                            local out = P.feed_stream(pipe, recs, n)
                            out = out .. pipe:close({ complete = false, reason = "UPSTREAM_EOF_EARLY" })
                            local ok, v = pcall(validate[pair.from], F.records(out))
                            assert(ok, "cut after " .. n .. " events: " .. tostring(v) .. "\n" .. out)
                            -- Never passed off as complete.
                            assert.is_false(v.complete)
                        end
                    end)
                end
            end
        end)
    end
end)

describe("translate", function()
    it("names protocols by wire name and refuses unknown ones", function()
        assert.are.equal("anthropic", T.protocol("anthropic").name)
        assert.are.equal("openai-chat", T.protocol("openai-chat").name)
        local m, err = T.protocol("soap")
        assert.is_nil(m)
        assert.matches("unknown protocol", err)
    end)

    it("returns nil, err for a body the client codec rejects", function()
        local up, err = T.request("anthropic", "openai-chat", { model = "m" }, {}, {})
        assert.is_nil(up)
        assert.matches("messages", err)
    end)

    it("reports usage and stop reason of a translated stream for the history record", function()
        local body = F.json("anthropic/request_claude_code.json")
        local _, st = T.request("anthropic", "openai-chat", body, {}, { model = "gpt-4.1" })
        local pipe = T.stream("anthropic", "openai-chat", st)
        P.feed_stream(pipe, F.sse_records("openai-chat/stream_tools.sse"))
        pipe:close({ complete = true })
        assert.are.equal("tool_use", pipe.acct.stop_reason)
        assert.are.same({ input_tokens = 3120, output_tokens = 58, cache_read_tokens = 2048,
                          reasoning_tokens = 0 }, pipe.acct.usage)
    end)

    it("gives shortened tool names back in streams and bodies", function()
        local body = F.json("anthropic/request_claude_code.json")
        local up, st = T.request("anthropic", "openai-chat", body, {}, { model = "gpt-4.1" })
        local long = "mcp__github_enterprise__create_or_update_pull_request_review_comment_thread"
        local short = up.tools[3]["function"].name
        assert.is_true(#short <= 64 and short:match("^[a-zA-Z0-9_-]+$") ~= nil)
        assert.are_not.equal(long, short)
        local ev = { event = nil, data = json.encode({ id = "chatcmpl-1", object = "chat.completion.chunk",
            created = 1, model = "gpt-4.1", choices = { { index = 0, delta = { tool_calls = { {
                index = 0, id = "call_1", type = "function", ["function"] = { name = short, arguments = "{}" } } } } } } }) }
        local out = T.stream("anthropic", "openai-chat", st):feed(ev)
        assert.matches(long, out, 1, true)
    end)

    it("assembles IR events into a response and explodes it back", function()
        local dec = T.protocol("openai-chat").stream_decoder({})
        local events = {}
        for _, r in ipairs(F.sse_records("openai-chat/stream_tools.sse")) do
            for _, e in ipairs(dec:feed(r)) do events[#events + 1] = e end
        end
        local resp = T.assemble(events)
        assert.are.equal("tool_use", resp.stop_reason)
        assert.are.equal("I'll read both files.", resp.content[1].text)
        assert.are.same({ file_path = "src/main.c" }, resp.content[2].arguments)
        assert.are.same({ file_path = "Makefile" }, resp.content[3].arguments)
        assert.are.equal("call_Mk7bQ", resp.content[3].id)
        local again = T.assemble(T.explode(resp))
        assert.are.same(resp.content, again.content)
        assert.are.same(resp.usage, again.usage)
    end)

    it("a non-streaming client on a stream that breaks gets an error, not a partial body", function()
        local body = F.json("openai-chat/request_tools.json")
        body.stream = false
        local _, st = T.request("openai-chat", "anthropic", body, {}, { model = "claude-x" })
        local c = T.collect("openai-chat", "anthropic", st)
        local recs = F.sse_records("anthropic/stream_tools.sse")
        for i = 1, 6 do c:feed(recs[i]) end
        local out, err = c:finish({ complete = false, reason = "UPSTREAM_EOF_EARLY" })
        assert.is_nil(out)
        assert.are.equal(502, err.status)
    end)
end)

-- sluice.estimate lives beside translate (count_tokens on a non-Anthropic
-- supplier); its spec is here because no estimate_spec.lua was assigned.
describe("count_tokens estimate", function()
    local E = require("sluice.estimate")
    local anthropic = T.protocol("anthropic")

    it("answers Anthropic's shape, marked as an estimate by a header", function()
        local status, body, headers = E.count_tokens_response(anthropic, { model = "claude-x",
            messages = { { role = "user", content = string.rep("abcd", 100) } } })
        assert.are.equal(200, status)
        assert.are.equal(100 + E.MESSAGE_TOKENS, body.input_tokens)
        assert.are.equal("chars/4", headers[E.HEADER])
    end)

    it("grows with text, tools and images", function()
        local base = { model = "m", messages = { { role = "user", content = { { type = "text", text = "hello there" } } } } }
        local n0 = E.count_tokens(base)
        base.tools = { { name = "Read", description = "Read a file",
                         parameters = { type = "object", properties = { path = { type = "string" } } } } }
        local n1 = E.count_tokens(base)
        assert.is_true(n1 > n0 + E.TOOL_TOKENS)
        base.messages[1].content[2] = { type = "image", source = { kind = "base64", media_type = "image/png", data = "x" } }
        assert.are.equal(n1 + E.IMAGE_TOKENS, E.count_tokens(base))
    end)

    it("answers a bad body with an Anthropic 400", function()
        local status, body = E.count_tokens_response(anthropic, { model = "m" })
        assert.are.equal(400, status)
        assert.are.equal("invalid_request_error", body.error.type)
    end)
end)

describe("stop reasons and documents across anthropic and openai-chat", function()
    local state_a = select(2, T.request("anthropic", "openai-chat",
        { model = "claude-x", max_tokens = 10, messages = { { role = "user", content = "hi" } } }, {}, { model = "gpt-x" }))
    local state_o = select(2, T.request("openai-chat", "anthropic",
        { model = "gpt-x", messages = { { role = "user", content = "hi" } } }, {}, { model = "claude-x" }))

    local function chat_body(finish, with_call)
        local msg = { role = "assistant", content = "x" }
        if with_call then
            msg.tool_calls = { { id = "call_1", type = "function", ["function"] = { name = "f", arguments = "{}" } } }
        end
        return { id = "chatcmpl-1", choices = { { index = 0, message = msg, finish_reason = finish } },
                 usage = { prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 } }
    end

    for _, c in ipairs({ { "stop", false, "end_turn" }, { "length", false, "max_tokens" },
                         { "tool_calls", true, "tool_use" }, { "stop", true, "tool_use" },
                         { "content_filter", false, "refusal" } }) do
        it("chat " .. c[1] .. (c[2] and " with a tool call" or "") .. " -> anthropic " .. c[3], function()
            local out = T.response("anthropic", "openai-chat", chat_body(c[1], c[2]), state_a)
            assert.are.equal(c[3], out.stop_reason)
        end)
    end

    for _, c in ipairs({ { "end_turn", "stop" }, { "max_tokens", "length" }, { "tool_use", "tool_calls" },
                         { "stop_sequence", "stop" }, { "refusal", "content_filter" }, { "pause_turn", "stop" } }) do
        it("anthropic " .. c[1] .. " -> chat " .. c[2], function()
            local body = { id = "msg_1", type = "message", role = "assistant", model = "claude-x",
                           content = { { type = "text", text = "x" } }, stop_reason = c[1],
                           usage = { input_tokens = 1, output_tokens = 1 } }
            if c[1] == "tool_use" then
                body.content[2] = { type = "tool_use", id = "toolu_1", name = "f", input = {} }
            end
            local out = T.response("openai-chat", "anthropic", body, state_o)
            assert.are.equal(c[2], out.choices[1].finish_reason)
        end)
    end

    it("carries PDF documents both ways", function()
        local up = T.request("anthropic", "openai-chat", { model = "claude-x", max_tokens = 10, messages = { {
            role = "user", content = { { type = "document", title = "spec.pdf",
                source = { type = "base64", media_type = "application/pdf", data = "JVBERi0x" } },
                { type = "text", text = "summarise" } } } } }, {}, { model = "gpt-x" })
        assert.are.same({ type = "file", file = { file_data = "data:application/pdf;base64,JVBERi0x",
                                                  filename = "spec.pdf" } }, up.messages[1].content[1])
        local back = T.request("openai-chat", "anthropic", { model = "gpt-x", messages = { {
            role = "user", content = { up.messages[1].content[1] } } } }, {}, { model = "claude-x" })
        assert.are.same({ type = "document", title = "spec.pdf",
            source = { type = "base64", media_type = "application/pdf", data = "JVBERi0x" } },
            back.messages[1].content[1])
    end)
end)
