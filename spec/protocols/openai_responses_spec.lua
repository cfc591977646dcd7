-- Specs for sluice.protocols.openai_responses: request, response, error and
-- stream goldens (spec/fixtures/openai-responses/), the same upstream
-- streams framed at every byte boundary, and client streams cut at every IR
-- event that must still end the way Responses clients expect.

local json = require("sluice.json")
local R = require("sluice.protocols.openai_responses")
local F = require("helpers.fixtures")
local C = require("helpers.codec")
local sse = require("helpers.sse")

local DIR = "openai-responses/"

-- What Codex and the SDKs rely on beyond helpers.validate: sequence numbers
-- 0,1,2...; every output item added is done exactly once, at its index; the
-- terminal event is last and carries exactly the finished items.
local function check_stream(bytes)
    local recs = F.records(bytes)
    local added, done, terminal = {}, {}, nil
    for i, r in ipairs(recs) do
        local d = r.data
        assert.are.equal(r.event, d.type)
        assert.are.equal(i - 1, d.sequence_number, "sequence_number of record " .. i)
        assert.is_nil(terminal, "event after the terminal event: " .. d.type)
        if d.type == "response.output_item.added" then
            assert.is_nil(added[d.output_index], "output_index added twice")
            assert.are.equal(#added + (added[0] and 1 or 0), d.output_index, "output items in order")
            added[d.output_index] = d.item
        elseif d.type == "response.output_item.done" then
            assert.is_not_nil(added[d.output_index], "done before added")
            assert.is_nil(done[d.output_index], "output item done twice")
            assert.are.equal(added[d.output_index].id, d.item.id)
            done[d.output_index] = d.item
        elseif d.type:match("^response%.") and d.output_index ~= nil then
            assert.is_not_nil(added[d.output_index], d.type .. " outside its item")
            assert.is_nil(done[d.output_index], d.type .. " after its item is done")
        elseif d.type == "response.completed" or d.type == "response.incomplete"
            or d.type == "response.failed" then
            terminal = d
        end
    end
    assert.is_not_nil(terminal, "no terminal event")
    local n = 0
    for k in pairs(added) do
        n = n + 1
        assert.is_not_nil(done[k], "output item " .. k .. " never done")
        assert.are.same(F.wire(done[k]), F.wire(terminal.response.output[k + 1]))
    end
    assert.are.equal(n, #terminal.response.output)
    return terminal, recs
end

local function ir_events(path)
    return F.json(DIR .. path)
end

describe("openai-responses request", function()
    it("decodes a Codex request (instructions, developer text, reasoning, parallel calls, outputs)", function()
        local req = assert(R.decode_request(F.json(DIR .. "request_codex.json"), {}))
        C.assert_ir(DIR .. "request_codex.ir.json", req)
    end)

    it("re-encodes it for a Responses upstream with its reasoning item before the calls", function()
        local req = assert(R.decode_request(F.json(DIR .. "request_codex.json"), {}))
        local body = R.encode_request(req, { model = "gpt-5-codex", stream = true })
        F.assert_wire(F.json(DIR .. "request_codex.upstream.json"), body)
    end)

    it("encodes an IR from another protocol: documents, URL images, is_error results, named tool_choice", function()
        local req = F.json(DIR .. "encode_request_mixed.ir.json")
        local body = R.encode_request(req, { model = "gpt-5", stream = false })
        F.assert_wire(F.json(DIR .. "encode_request_mixed.json"), body)
    end)

    it("accepts a plain string input", function()
        local req = assert(R.decode_request({ model = "gpt-5", input = "hi" }, {}))
        assert.are.same({ { role = "user", content = { { type = "text", text = "hi" } } } }, req.messages)
        assert.is_false(req.stream)
    end)

    it("rejects previous_response_id unless the upstream is Responses too", function()
        local body = { model = "gpt-5", input = "next", previous_response_id = "resp_prev" }
        local req, err = R.decode_request(body, {})
        assert.is_nil(req)
        assert.matches("previous_response_id", err)
        req = assert(R.decode_request(body, { upstream = "openai-responses" }))
        local up = R.encode_request(req, { model = "gpt-5" })
        assert.are.equal("resp_prev", up.previous_response_id)
        assert.is_nil(up.store) -- the client's store setting is left to the client
    end)

    it("rejects item_reference items", function()
        local req, err = R.decode_request({ model = "gpt-5", input = { { type = "item_reference", id = "msg_1" } } }, {})
        assert.is_nil(req)
        assert.matches("item_reference", err)
    end)

    it("maps tool_choice and reasoning effort values", function()
        local function tc(v) return assert(R.decode_request({ model = "m", input = "x", tool_choice = v }, {})).tool_choice end
        assert.are.same({ type = "required" }, tc("required"))
        assert.are.same({ type = "none" }, tc("none"))
        assert.are.same({ type = "tool", name = "f" }, tc({ type = "function", name = "f" }))
        local function th(e) return assert(R.decode_request({ model = "m", input = "x", reasoning = { effort = e } }, {})).thinking end
        assert.are.same({ enabled = false }, th("none"))
        assert.are.same({ enabled = true, effort = "low" }, th("minimal"))
        assert.are.same({ enabled = true, effort = "high" }, th("high"))
        local up = R.encode_request({ messages = {}, thinking = { enabled = true, budget_tokens = 2048 } }, { model = "m" })
        assert.are.equal("low", up.reasoning.effort)
        up = R.encode_request({ messages = {}, thinking = { enabled = true, budget_tokens = 32000 } }, { model = "m" })
        assert.are.equal("high", up.reasoning.effort)
        up = R.encode_request({ messages = {}, thinking = { enabled = false } }, { model = "m" })
        assert.is_nil(up.reasoning)
        assert.is_nil(up.include)
    end)

    it("sends tool results with images as an input array", function()
        local req = { messages = {
            { role = "assistant", content = { { type = "tool_call", id = "c1", name = "shot", arguments = {} } } },
            { role = "user", content = { { type = "tool_result", tool_call_id = "c1", is_error = false, content = {
                { type = "text", text = "here" },
                { type = "image", source = { kind = "base64", media_type = "image/png", data = "AAAA" } } } } } },
        } }
        local body = F.wire(R.encode_request(req, { model = "m" }))
        assert.are.same(F.wire({ { type = "input_text", text = "here" },
            { type = "input_image", image_url = "data:image/png;base64,AAAA", detail = "auto" } }), body.input[2].output)
    end)

    it("round-trips another provider's reasoning through a Responses client, never upstream to OpenAI", function()
        -- What a Codex client sends back after an Anthropic-served turn.
        local body = { model = "claude", input = {
            { type = "reasoning", summary = { { type = "summary_text", text = "Think." } },
              encrypted_content = "sluice1:anthropic:sig:EqQBCkYI" },
            { type = "function_call", call_id = "toolu_1", name = "f", arguments = "{}" },
            { type = "function_call_output", call_id = "toolu_1", output = "ok" },
        } }
        local req = assert(R.decode_request(body, {}))
        assert.are.same({ type = "thinking", text = "Think.", signature = "EqQBCkYI", origin = "anthropic" },
            req.messages[1].content[1])
        local up = R.encode_request(req, { model = "gpt-5" })
        assert.are.equal("function_call", up.input[1].type) -- the foreign signature is not sent to OpenAI
    end)
end)

describe("openai-responses response", function()
    it("decodes reasoning, text and parallel calls with cached and reasoning usage", function()
        C.assert_ir(DIR .. "response_tools.ir.json", assert(R.decode_response(F.json(DIR .. "response_tools.json"))))
    end)

    it("maps incomplete, refusal and failed responses", function()
        local r = assert(R.decode_response({ status = "incomplete", incomplete_details = { reason = "content_filter" },
            output = {} }))
        assert.are.equal("content_filter", r.stop_reason)
        r = assert(R.decode_response({ status = "incomplete", incomplete_details = { reason = "max_output_tokens" } }))
        assert.are.equal("max_tokens", r.stop_reason)
        r = assert(R.decode_response({ status = "completed", output = { { type = "message", content = {
            { type = "refusal", refusal = "I can't help with that." } } } } }))
        assert.are.equal("refusal", r.stop_reason)
        assert.are.equal("I can't help with that.", r.content[1].text)
        local ok, err = R.decode_response({ status = "failed", error = { code = "rate_limit_exceeded", message = "slow down" } })
        assert.is_nil(ok)
        assert.are.same({ status = 429, type = "rate_limit", message = "slow down" }, err)
    end)

    it("encodes an IR response for a Responses client (ids, envelope, usage)", function()
        local body = R.encode_response(F.json(DIR .. "encode_response.ir.json"),
            { model = "gpt-5-codex", id = "resp_abc", origin = "anthropic", created = 1757540000 })
        F.assert_wire(F.json(DIR .. "encode_response.json"), body)
    end)

    it("reports max_tokens as incomplete with its reason", function()
        local body = R.encode_response({ content = { { type = "text", text = "cut" } }, stop_reason = "max_tokens" },
            { model = "m", id = "resp_x" })
        assert.are.equal("incomplete", body.status)
        assert.are.same({ reason = "max_output_tokens" }, body.incomplete_details)
    end)
end)

describe("openai-responses errors", function()
    it("keeps the upstream message and maps the status", function()
        local e = R.decode_error(429, F.json(DIR .. "error_rate_limit.json"))
        assert.are.equal("rate_limit", e.type)
        assert.are.equal(429, e.status)
        assert.matches("Rate limit reached for gpt%-5", e.message)
        local status, body = R.encode_error(e)
        assert.are.equal(429, status)
        assert.are.equal(e.message, body.error.message)
        assert.are.equal("rate_limit_exceeded", body.error.code)
    end)

    it("turns Anthropic's 529 into 503 and handles raw text bodies", function()
        local status, body = R.encode_error({ status = 529, type = "overloaded", message = "Overloaded" })
        assert.are.equal(503, status)
        assert.are.equal("Overloaded", body.error.message)
        local e = R.decode_error(502, "<html>bad gateway</html>")
        assert.are.equal("<html>bad gateway</html>", e.message)
        assert.are.equal("api_error", e.type)
    end)
end)

describe("openai-responses stream decoder", function()
    for _, name in ipairs({ "stream_codex", "stream_incomplete", "stream_failed" }) do
        it("decodes " .. name .. " to the golden IR", function()
            C.assert_ir(DIR .. name .. ".ir.json", C.decode_stream(R, DIR .. name .. ".sse"))
        end)
        it("gives the same IR for " .. name .. " framed at every byte boundary and byte by byte", function()
            C.assert_split_invariant(R, DIR .. name .. ".sse")
        end)
    end

    it("uses arguments from .done when no deltas came, and ignores [DONE]", function()
        local dec = R.stream_decoder({})
        local evs = {}
        local function feed(t, obj)
            obj.type = t
            for _, e in ipairs(dec:feed({ event = t, data = json.encode(obj) })) do evs[#evs + 1] = e end
        end
        feed("response.output_item.added", { output_index = 0, item = { type = "function_call", call_id = "call_1",
            name = "f", arguments = "" } })
        feed("response.function_call_arguments.done", { output_index = 0, arguments = "{\"a\":1}" })
        feed("response.output_item.done", { output_index = 0, item = { type = "function_call", call_id = "call_1",
            name = "f", arguments = "{\"a\":1}" } })
        feed("response.completed", { response = { status = "completed", output = {} } })
        assert.are.same({ {}, }, { dec:feed({ data = "[DONE]" }) })
        assert.are.same({ type = "tool_args", index = 0, json = "{\"a\":1}" }, evs[3])
        assert.are.equal(1, #(function() local n = {} for _, e in ipairs(evs) do
            if e.type == "tool_args" then n[#n + 1] = e end end return n end)())
        assert.are.same({ type = "finish", stop_reason = "tool_use" }, evs[#evs])
    end)
end)

describe("openai-responses stream encoder", function()
    local OPTS = { model = "gpt-5-codex", id = "resp_t1", created = 1757540000, origin = "openai-chat" }

    it("serialises parallel tool calls into one open item at a time (golden)", function()
        local out = C.encode_events(R, ir_events("encode_stream_parallel.ir.json"), OPTS, { complete = true })
        F.assert_stream(DIR .. "encode_stream_parallel.sse", out)
        local terminal = check_stream(out)
        assert.are.equal("response.completed", terminal.type)
    end)

    it("ends a cut stream with error + response.failed and the partial output (golden)", function()
        local out = C.encode_events(R, ir_events("encode_stream_parallel.ir.json"), OPTS,
            { complete = false, reason = "UPSTREAM_EOF_EARLY" }, 9)
        F.assert_stream(DIR .. "encode_stream_cut.sse", out)
        check_stream(out)
    end)

    it("produces a well-formed stream when cut after any IR event", function()
        for _, name in ipairs({ "stream_codex", "stream_incomplete" }) do
            local events = C.decode_stream(R, DIR .. name .. ".sse")
            C.assert_cuts_valid(R, events, OPTS)
            for n = 0, #events do
                local out = C.encode_events(R, events, OPTS, { complete = false, reason = "UPSTREAM_IDLE" }, n)
                local terminal = check_stream(out)
                assert.are.equal("response.failed", terminal.type)
                assert.matches("UPSTREAM_IDLE", terminal.response.error.message)
            end
        end
        local events = ir_events("encode_stream_parallel.ir.json")
        C.assert_cuts_valid(R, events, OPTS)
        for n = 0, #events do
            check_stream(C.encode_events(R, events, OPTS, { complete = false, reason = "UPSTREAM_RESET" }, n))
        end
    end)

    it("re-encodes a decoded Responses stream with reasoning, text and calls intact", function()
        local events = C.decode_stream(R, DIR .. "stream_codex.sse")
        local out = C.encode_events(R, events, { model = "gpt-5-codex", id = "resp_z", origin = "openai-responses" },
            { complete = true })
        local terminal = check_stream(out)
        assert.are.equal("response.completed", terminal.type)
        local o = terminal.response.output
        assert.are.equal("reasoning", o[1].type)
        assert.are.equal("gAAAAABowfCkZ2VuZXJhdGVk", o[1].encrypted_content) -- native: no envelope
        assert.are.equal("**Inspecting the repo**\n\nI'll list the files.\n\nThen read the README.", o[1].summary[1].text)
        assert.are.equal("I'll look at the repo first — ünïcode ✓.", o[2].content[1].text)
        assert.are.same({ "call_Xq1Lr9", "{\"command\":[\"ls\",\"-la\"]}" }, { o[3].call_id, o[3].arguments })
        assert.are.same({ "call_Bz7Pk2", "{\"command\":[\"cat\",\"README.md\"]}" }, { o[4].call_id, o[4].arguments })
        assert.are.same({ input_tokens = 5230, input_tokens_details = { cached_tokens = 4864 }, output_tokens = 187,
            output_tokens_details = { reasoning_tokens = 64 }, total_tokens = 5417 }, terminal.response.usage)
    end)

    it("turns an in-stream error into error + response.failed with the upstream message", function()
        local enc = R.stream_encoder({ model = "m", id = "resp_e" })
        local out = enc:feed({ type = "start" }) .. enc:feed({ type = "block_start", index = 0, kind = "text" })
            .. enc:feed({ type = "text", index = 0, text = "Hi" })
            .. enc:feed({ type = "error", error = { status = 529, type = "overloaded", message = "Overloaded" } })
            .. enc:close({ complete = true })
        local terminal, recs = check_stream(out)
        assert.are.equal("response.failed", terminal.type)
        assert.are.equal("Overloaded", terminal.response.error.message)
        assert.are.equal("error", recs[#recs - 1].event)
        assert.are.equal("Overloaded", recs[#recs - 1].data.error.message)
    end)

    it("does not claim completion when closed cleanly without a finish", function()
        local enc = R.stream_encoder({ model = "m", id = "resp_n" })
        local out = enc:feed({ type = "start" }) .. enc:close()
        assert.are.equal("response.failed", check_stream(out).type)
    end)

    it("reports max_tokens as response.incomplete", function()
        local events = C.decode_stream(R, DIR .. "stream_incomplete.sse")
        local out = C.encode_events(R, events, { model = "gpt-5-mini", id = "resp_i" }, { complete = true })
        local terminal = check_stream(out)
        assert.are.equal("response.incomplete", terminal.type)
        assert.are.same({ reason = "max_output_tokens" }, terminal.response.incomplete_details)
        assert.are.equal(16, terminal.response.usage.output_tokens)
    end)

    it("wraps another provider's signature and redacted data so they can come back", function()
        local enc = R.stream_encoder({ model = "m", id = "resp_s", origin = "anthropic" })
        local out = enc:feed({ type = "block_start", index = 0, kind = "thinking" })
            .. enc:feed({ type = "thinking", index = 0, text = "hmm" })
            .. enc:feed({ type = "signature", index = 0, signature = "SIG" })
            .. enc:feed({ type = "block_stop", index = 0 })
            .. enc:feed({ type = "block_start", index = 1, kind = "redacted_thinking", data = "OPAQUE" })
            .. enc:feed({ type = "block_stop", index = 1 })
            .. enc:feed({ type = "finish", stop_reason = "end_turn" }) .. enc:close()
        local o = check_stream(out).response.output
        assert.are.equal("sluice1:anthropic:sig:SIG", o[1].encrypted_content)
        assert.are.equal("sluice1:anthropic:data:OPAQUE", o[2].encrypted_content)
        local req = assert(R.decode_request({ model = "m", input = o }, {}))
        assert.are.same({ type = "thinking", text = "hmm", signature = "SIG", origin = "anthropic" }, req.messages[1].content[1])
        assert.are.same({ type = "redacted_thinking", data = "OPAQUE", origin = "anthropic" }, req.messages[1].content[2])
    end)
end)

describe("openai-responses module", function()
    it("names its path and terminal events", function()
        assert.are.equal("/responses", R.path("gpt-5", true))
        -- by the event line, or by the type in the data when there is no event line
        assert.are.same({ { event = "response.completed" }, { event = "response.incomplete" },
            { event = "response.failed" }, { data_has = '"response.completed"' },
            { data_has = '"response.incomplete"' }, { data_has = '"response.failed"' } }, R.terminal)
        assert.is_not_nil(sse)
    end)
end)

-- Codex CLI sends apply_patch as a *custom* (freeform) tool: its input is
-- free text following a grammar, not JSON arguments. Other suppliers only
-- know JSON-schema tools, so a custom tool travels as a function tool with
-- one string parameter `input`, and a call to it comes back to the client
-- as a custom_tool_call item carrying that text. Found end to end: the tool
-- (and its calls in the history) used to be dropped, leaving Codex on a
-- Claude or Gemini supplier with no way to edit files.
describe("openai-responses custom tools (Codex apply_patch)", function()
    local T = require("sluice.translate")
    local PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi \"there\"\n*** End Patch\n"
    local BODY = {
        model = "gpt-5-codex", stream = true,
        input = {
            { type = "message", role = "user", content = { { type = "input_text", text = "add a.txt" } } },
            { type = "custom_tool_call", id = "ctc_1", call_id = "call_p1", name = "apply_patch", input = PATCH },
            { type = "custom_tool_call_output", call_id = "call_p1", output = "Success. Updated: A a.txt" },
        },
        tools = {
            { type = "custom", name = "apply_patch", description = "Use apply_patch to edit files.",
              format = { type = "grammar", syntax = "lark", definition = "start: begin_patch hunk+ end_patch" } },
            { type = "function", name = "shell", parameters = { type = "object", properties = {} } },
        },
        tool_choice = { type = "custom", name = "apply_patch" },
    }

    it("decodes the tool as a function with one string input, and its calls in the history", function()
        local req = assert(R.decode_request(BODY, {}))
        assert.are.equal(2, #req.tools)
        local t = req.tools[1]
        assert.are.equal("apply_patch", t.name)
        assert.matches("Use apply_patch to edit files.", t.description, 1, true)
        assert.matches("start: begin_patch hunk+ end_patch", t.description, 1, true)
        assert.are.equal("string", t.parameters.properties.input.type)
        assert.are.same({ "input" }, t.parameters.required)
        assert.is_true(json.is_array(t.parameters.required))
        assert.are.same({ apply_patch = true }, req.custom_tools)
        assert.are.same({ type = "tool", name = "apply_patch" }, req.tool_choice)
        assert.are.same({ type = "tool_call", id = "call_p1", name = "apply_patch", arguments = { input = PATCH } },
            req.messages[2].content[1])
        local res = req.messages[3].content[1]
        assert.are.equal("tool_result", res.type)
        assert.are.equal("call_p1", res.tool_call_id)
        assert.are.same({ { type = "text", text = "Success. Updated: A a.txt" } }, res.content)
    end)

    it("answers a call to it as a custom_tool_call item (non-streamed)", function()
        local resp = { id = "msg_1", content = {
            { type = "text", text = "Adding it." },
            { type = "tool_call", id = "toolu_9", name = "apply_patch", arguments = { input = PATCH } },
            { type = "tool_call", id = "toolu_8", name = "shell", arguments = { command = { "ls" } } },
        }, stop_reason = "tool_use", usage = { input_tokens = 5, output_tokens = 7 } }
        local out = R.encode_response(resp, { model = "gpt-5-codex", id = "resp_c1",
                                              custom_tools = { apply_patch = true } })
        local items = out.output
        assert.are.equal("message", items[1].type)
        assert.are.same({ type = "custom_tool_call", id = "ctc_c1_2", call_id = "toolu_9", name = "apply_patch",
                          input = PATCH, status = "completed" }, items[2])
        assert.are.equal("function_call", items[3].type)
        assert.are.equal('{"command":["ls"]}', items[3].arguments)
    end)

    local function stream_events(args_pieces)
        local ev = { { type = "start", id = "msg_1", model = "claude" },
                     { type = "block_start", index = 0, kind = "tool_call", id = "toolu_9", name = "apply_patch" } }
        for _, p in ipairs(args_pieces) do ev[#ev + 1] = { type = "tool_args", index = 0, json = p } end
        ev[#ev + 1] = { type = "block_stop", index = 0 }
        ev[#ev + 1] = { type = "finish", stop_reason = "tool_use" }
        return ev
    end

    it("streams a call to it as a custom_tool_call item with its input text", function()
        local args = json.encode({ input = PATCH })
        local pieces = { args:sub(1, 7), args:sub(8, 20), args:sub(21) }
        local out = C.encode_events(R, stream_events(pieces),
            { model = "gpt-5-codex", id = "resp_c2", custom_tools = { apply_patch = true } }, { complete = true })
        local terminal, recs = check_stream(out)
        assert.are.equal("response.completed", terminal.type)
        local item = terminal.response.output[1]
        assert.are.same({ type = "custom_tool_call", id = "ctc_c2_1", call_id = "toolu_9", name = "apply_patch",
                          input = PATCH, status = "completed" }, F.wire(item))
        local names, deltas = {}, {}
        for _, r in ipairs(recs) do
            names[#names + 1] = r.data.type
            if r.data.type == "response.custom_tool_call_input.delta" then deltas[#deltas + 1] = r.data.delta end
        end
        assert.are.equal(PATCH, table.concat(deltas))
        assert.is_nil(table.concat(names, " "):find("function_call", 1, true))
        assert.matches("response.custom_tool_call_input.done", table.concat(names, " "), 1, true)
    end)

    it("keeps the raw text when the supplier's arguments are not {\"input\": string}", function()
        local out = C.encode_events(R, stream_events({ '{"patch":"x"}' }),
            { model = "m", id = "resp_c3", custom_tools = { apply_patch = true } }, { complete = true })
        local terminal = check_stream(out)
        assert.are.equal('{"patch":"x"}', terminal.response.output[1].input)
    end)

    it("round-trips through an Anthropic supplier", function()
        local up, state = assert(T.request("openai-responses", "anthropic", BODY, nil, { model = "claude-sonnet-4-5" }))
        local tool = up.tools[1]
        assert.are.equal("apply_patch", tool.name)
        assert.are.same({ "input" }, tool.input_schema.required)
        assert.are.same({ type = "tool", name = "apply_patch" }, up.tool_choice)
        local use = up.messages[2].content[1]
        assert.are.same({ type = "tool_use", id = "call_p1", name = "apply_patch", input = { input = PATCH } }, use)
        assert.are.equal("call_p1", up.messages[3].content[1].tool_use_id)
        -- the answer: a tool_use of apply_patch becomes a custom_tool_call for Codex
        local pipe = T.stream("openai-responses", "anthropic", state)
        local b = {}
        local function feed(name, obj) b[#b + 1] = pipe:feed({ event = name, data = json.encode(obj) }) end
        feed("message_start", { type = "message_start", message = { id = "msg_2", type = "message",
            role = "assistant", model = "claude-sonnet-4-5", content = json.array({}), usage = { input_tokens = 3,
            output_tokens = 1 } } })
        feed("content_block_start", { type = "content_block_start", index = 0, content_block = { type = "tool_use",
            id = "toolu_7", name = "apply_patch", input = {} } })
        feed("content_block_delta", { type = "content_block_delta", index = 0, delta = { type = "input_json_delta",
            partial_json = json.encode({ input = PATCH }) } })
        feed("content_block_stop", { type = "content_block_stop", index = 0 })
        feed("message_delta", { type = "message_delta", delta = { stop_reason = "tool_use" },
            usage = { output_tokens = 9 } })
        feed("message_stop", { type = "message_stop" })
        b[#b + 1] = pipe:close({ complete = true })
        local terminal = check_stream(table.concat(b))
        assert.are.same({ type = "custom_tool_call", call_id = "toolu_7", name = "apply_patch", input = PATCH },
            { type = terminal.response.output[1].type, call_id = terminal.response.output[1].call_id,
              name = terminal.response.output[1].name, input = terminal.response.output[1].input })
    end)
end)
