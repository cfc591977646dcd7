-- Specs for tool calls written as text across translate's answer paths:
-- every client protocol, on an OpenAI-chat supplier that writes Hermes calls
-- into its text, gets real tool calls whichever way the answer travels —
-- a stream (Pipe, the upstream content split at every byte), a whole
-- answer, a stream collected for a non-streaming client, a whole answer
-- streamed to a streaming client. The client's bytes are read back with the
-- client protocol's own decoder, as its SDK would.

local json = require("sluice.json")
local T = require("sluice.translate")
local F = require("helpers.fixtures")
local sse = require("helpers.sse")
local validate = require("helpers.validate")

local SCHEMA = { type = "object", properties = { city = { type = "string" } } }

local REQUESTS = {
    anthropic = { model = "m", max_tokens = 100, messages = { { role = "user", content = "hi" } },
                  tools = { { name = "get_weather", input_schema = SCHEMA } } },
    ["openai-chat"] = { model = "m", messages = { { role = "user", content = "hi" } },
                        tools = { { type = "function", ["function"] = { name = "get_weather", parameters = SCHEMA } } } },
    ["openai-responses"] = { model = "m", input = "hi",
                             tools = { { type = "function", name = "get_weather", parameters = SCHEMA } } },
    gemini = { contents = { { role = "user", parts = { { text = "hi" } } } },
               tools = { { functionDeclarations = { { name = "get_weather", parameters = SCHEMA } } } } },
}

local TEXT = 'Looking it up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'

local function chunk(delta, finish)
    return { data = json.encode({ id = "chatcmpl-1", object = "chat.completion.chunk", model = "up",
        choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } }) }
end

-- The upstream stream with TEXT cut at the given byte boundaries.
local function upstream(cuts)
    local evs, from = { chunk({ role = "assistant", content = "" }) }, 1
    for _, c in ipairs(cuts) do
        evs[#evs + 1] = chunk({ content = TEXT:sub(from, c) })
        from = c + 1
    end
    evs[#evs + 1] = chunk({ content = TEXT:sub(from) })
    evs[#evs + 1] = chunk({}, "stop")
    evs[#evs + 1] = { data = "[DONE]" }
    return evs
end

local WHOLE = { id = "chatcmpl-2", object = "chat.completion", model = "up", created = 1,
    choices = { { index = 0, finish_reason = "stop", message = { role = "assistant", content = TEXT } } } }

local function state(from)
    local info = { model = "m", stream = true }
    local _, st = T.request(from, "openai-chat", REQUESTS[from], info,
        { model = "up", stream = true, tool_text = { parse = "hermes" } })
    assert.truthy(st and st.tool_text)
    return st
end

-- What the client got, read back as IR by its own protocol's decoder.
local function read_stream(from, bytes)
    local records = F.records(bytes)
    validate[from](records)
    local dec = T.protocol(from).stream_decoder({})
    local evs = {}
    for _, r in ipairs(sse.parse(bytes)) do
        for _, e in ipairs(dec:feed(r)) do evs[#evs + 1] = e end
    end
    return T.assemble(evs)
end

local function read_body(from, body)
    return assert(T.protocol(from).decode_response(body))
end

local function check(resp, label)
    local text, calls = "", {}
    for _, p in ipairs(resp.content) do
        if p.type == "text" then text = text .. p.text
        elseif p.type == "tool_call" then calls[#calls + 1] = p end
    end
    assert.are.equal("Looking it up.\n", text, label)
    assert.are.equal(1, #calls, label)
    assert.are.equal("get_weather", calls[1].name, label)
    assert.are.same({ city = "Zürich" }, calls[1].arguments, label)
    assert.truthy(type(calls[1].id) == "string" and calls[1].id ~= "", label)
end

for _, from in ipairs(T.PROTOCOLS) do
    describe("tool calls as text for a " .. from .. " client on an openai-chat supplier", function()
        -- Upstream deltas are JSON strings: whole characters, so the cuts
        -- fall between characters (every byte boundary of ASCII text).
        it("streams real tool calls, the upstream text split between any two characters", function()
            for i = 1, #TEXT - 1 do
                if TEXT:byte(i + 1) >= 0x80 and TEXT:byte(i + 1) < 0xC0 then goto continue end
                local pipe = T.stream(from, "openai-chat", state(from))
                local bytes = pipe:feed_batch(upstream({ i })) .. pipe:close({ complete = true })
                check(read_stream(from, bytes), "split at " .. i)
                ::continue::
            end
            local every = {}
            for i = 1, #TEXT - 1 do
                if not (TEXT:byte(i + 1) >= 0x80 and TEXT:byte(i + 1) < 0xC0) then every[#every + 1] = i end
            end
            local pipe = T.stream(from, "openai-chat", state(from))
            local bytes = pipe:feed_batch(upstream(every)) .. pipe:close({ complete = true })
            check(read_stream(from, bytes), "character by character")
            assert.are.equal("tool_use", pipe.acct.stop_reason)
        end)

        it("answers a whole answer with real tool calls", function()
            check(read_body(from, T.response(from, "openai-chat", WHOLE, state(from))), "whole")
        end)

        it("collects a stream for a non-streaming client", function()
            local c = T.collect(from, "openai-chat", state(from))
            c:feed_batch(upstream({ 20, 40 }))
            check(read_body(from, assert(c:finish({ complete = true }))), "collected")
        end)

        it("streams a whole answer to a streaming client", function()
            check(read_stream(from, T.response_stream(from, "openai-chat", WHOLE, state(from))), "synthesized")
        end)
    end)
end

describe("tool calls as text on a supplier of any protocol", function()
    it("become real calls for every client, the client's own protocol included", function()
        for _, from in ipairs(T.PROTOCOLS) do
            for _, to in ipairs(T.PROTOCOLS) do
                local _, st = T.request(from, to, REQUESTS[from], { model = "m", stream = false },
                    { model = "up", stream = false, tool_text = { parse = "auto" } })
                local resp = { id = "x", model = "up", content = { { type = "text", text = TEXT } },
                               stop_reason = "end_turn", usage = {} }
                check(read_body(from, T.answer(from, to, resp, st)), from .. " on " .. to)
            end
        end
    end)
end)

describe("Kimi's own call ids for an Anthropic client", function()
    -- Kimi answers worse when its ids come back rewritten (issue 11): the
    -- id a client gets must lead back to functions.get_weather:0.
    local KIMI = '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
        .. '<|tool_call_argument_begin|>{"city": "SF"}<|tool_call_end|><|tool_calls_section_end|>'

    it("survive the round trip: the next request carries them to the supplier as Kimi wrote them", function()
        local _, st = T.request("anthropic", "openai-chat", REQUESTS.anthropic, { model = "m", stream = false },
            { model = "up", stream = false, tool_text = { parse = "kimi_k2" } })
        local body = assert(T.response("anthropic", "openai-chat",
            { id = "chatcmpl-3", object = "chat.completion", model = "up", created = 1,
              choices = { { index = 0, finish_reason = "stop", message = { role = "assistant", content = KIMI } } } },
            st))
        local answer = type(body) == "string" and json.decode(body) or body
        local use = answer.content[1]
        assert.are.equal("tool_use", use.type)
        assert.truthy(use.id:match("^[a-zA-Z0-9_-]+$"), use.id) -- Anthropic's id alphabet
        local req = { model = "m", max_tokens = 100, tools = REQUESTS.anthropic.tools, messages = {
            { role = "user", content = "hi" },
            { role = "assistant", content = { use } },
            { role = "user", content = { { type = "tool_result", tool_use_id = use.id, content = "sunny" } } } } }
        local up = assert(T.request("anthropic", "openai-chat", req, { model = "m", stream = false },
            { model = "up", stream = false, tool_text = { parse = "kimi_k2" } }))
        if type(up) == "string" then up = json.decode(up) end
        local call, result
        for _, m in ipairs(up.messages) do
            if m.role == "assistant" then call = m.tool_calls[1] end
            if m.role == "tool" then result = m end
        end
        assert.are.equal("functions.get_weather:0", call.id)
        assert.are.equal("functions.get_weather:0", result.tool_call_id)
    end)
end)
