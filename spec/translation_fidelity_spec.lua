-- Specs for issue 12, "translation fidelity, round 2": the differences real
-- clients (Claude Code, Codex, Gemini CLI, the vendor SDKs) and other
-- gateways' own translation cases found. Each describe is one numbered item
-- of the issue; each case is a request or answer a client sends or gets,
-- run through sluice.translate (the codecs composed as the host composes
-- them), and asserts what the supplier or the client would see.

local json = require("sluice.json")
local T = require("sluice.translate")
local F = require("helpers.fixtures")

-- The upstream body a client's request becomes, in wire form.
local function upstream(from, to, body, opts)
    local out, st = T.request(from, to, body, {}, opts or { model = "up-model" })
    assert(out, st)
    return F.wire(out), st
end

describe("1: tool schemas toward Anthropic are object schemas", function()
    local function schemas(params)
        local tools = {}
        for i, p in ipairs(params) do
            tools[i] = { type = "function", ["function"] = { name = "t" .. i, parameters = p } }
        end
        local body = upstream("openai-chat", "anthropic", {
            model = "m", messages = { { role = "user", content = "hi" } }, tools = tools })
        local out = {}
        for i, t in ipairs(body.tools) do out[i] = t.input_schema end
        return out
    end

    it("turns {}, a schema without type and a top-level union into objects", function()
        local s = schemas({
            json.decode("{}"),
            json.decode('{"properties":{"q":{"type":"string"}}}'),
            json.decode('{"anyOf":[{"type":"object","properties":{"a":{"type":"string"}},"required":["a","c"]},'
                .. '{"type":"object","properties":{"b":{"type":"number"},"c":{"type":"string"}},"required":["c"]}]}'),
        })
        assert.are.same({ type = "object", properties = {} }, s[1])
        assert.are.equal("object", s[2].type)
        assert.are.same({ type = "string" }, s[2].properties.q)
        assert.are.equal("object", s[3].type)
        assert.is_nil(s[3].anyOf)
        assert.are.same({ "a", "b", "c" }, (function()
            local k = {}
            for n in pairs(s[3].properties) do k[#k + 1] = n end
            table.sort(k)
            return k
        end)())
        -- only what every branch requires stays required
        assert.are.same({ "c" }, s[3].required)
    end)

    it("keeps a proper object schema as it is", function()
        local p = json.decode('{"type":"object","properties":{"x":{"type":"integer"}},"required":["x"]}')
        assert.are.same(F.wire(p), schemas({ p })[1])
    end)
end)

describe("2: whitespace-only text toward Anthropic", function()
    it("drops whitespace text parts and all-whitespace turns, keeping the messages valid", function()
        local body = upstream("openai-chat", "anthropic", { model = "m", messages = {
            { role = "user", content = "list files" },
            { role = "assistant", content = "\n\n", tool_calls = {
                { id = "call_1", type = "function", ["function"] = { name = "ls", arguments = "{}" } } } },
            { role = "tool", tool_call_id = "call_1", content = "a.txt" },
            { role = "assistant", content = "  \n " },
            { role = "user", content = "thanks" },
        } })
        -- the blank assistant turn is gone; the two user turns around it merged
        assert.are.equal(3, #body.messages)
        assert.are.same({ "user", "assistant", "user" },
            { body.messages[1].role, body.messages[2].role, body.messages[3].role })
        assert.are.equal(1, #body.messages[2].content)
        assert.are.equal("tool_use", body.messages[2].content[1].type)
        for _, m in ipairs(body.messages) do
            for _, b in ipairs(m.content) do
                if b.type == "text" then assert.truthy(b.text:find("%S")) end
            end
        end
    end)
end)

describe("3: tool results without their call", function()
    local chat = { model = "m", messages = {
        { role = "user", content = "go on" },
        { role = "tool", tool_call_id = "call_gone", content = "42" },
    } }

    for _, to in ipairs({ "anthropic", "gemini" }) do
        it("become user text naming the call id toward " .. to, function()
            local body = upstream("openai-chat", to, chat)
            local text = json.encode(body)
            assert.is_nil(text:find("tool_result", 1, true))
            assert.is_nil(text:find("functionResponse", 1, true))
            assert.truthy(text:find("call_gone", 1, true))
            assert.truthy(text:find("42", 1, true))
        end)
    end

    it("leave answered calls alone", function()
        local body = upstream("openai-chat", "anthropic", { model = "m", messages = {
            { role = "user", content = "q" },
            { role = "assistant", tool_calls = {
                { id = "call_1", type = "function", ["function"] = { name = "f", arguments = "{}" } } } },
            { role = "tool", tool_call_id = "call_1", content = "ok" },
        } })
        assert.are.equal("tool_result", body.messages[3].content[1].type)
        assert.are.equal("call_1", body.messages[3].content[1].tool_use_id)
    end)

    it("a Responses client's trimmed history (an output without its call) becomes text toward Anthropic", function()
        local body = upstream("openai-responses", "anthropic", { model = "m",
            input = { { type = "function_call_output", call_id = "call_9", output = "done" } } })
        assert.are.equal("text", body.messages[1].content[1].type)
        assert.truthy(body.messages[1].content[1].text:find("call_9", 1, true))
    end)
end)

describe("4: tool-call ids outside Anthropic's alphabet", function()
    local KIMI = "functions.Bash:0"

    it("reach an Anthropic client mapped, and come back to the supplier unchanged", function()
        local _, st = T.request("anthropic", "openai-chat", { model = "m", max_tokens = 10,
            messages = { { role = "user", content = "run" } } }, {}, { model = "kimi" })
        local answer = F.wire(assert(T.response("anthropic", "openai-chat", { id = "c1", object = "chat.completion",
            model = "kimi", choices = { { index = 0, finish_reason = "tool_calls", message = { role = "assistant",
            tool_calls = { { id = KIMI, type = "function", ["function"] = { name = "Bash", arguments = "{}" } } } } } },
            usage = { prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 } }, st)))
        local id = answer.content[1].id
        assert.truthy(id:match("^[a-zA-Z0-9_-]+$"), id)
        -- the next turn, as the Anthropic client sends it, reaches the supplier with Kimi's id
        local body = upstream("anthropic", "openai-chat", { model = "m", max_tokens = 10, messages = {
            { role = "user", content = "run" },
            { role = "assistant", content = { answer.content[1] } },
            { role = "user", content = { { type = "tool_result", tool_use_id = id, content = "ok" } } },
        } })
        assert.are.equal(KIMI, body.messages[2].tool_calls[1].id)
        assert.are.equal(KIMI, body.messages[3].tool_call_id)
    end)

    it("are mapped the same way in requests to an Anthropic supplier", function()
        local body = upstream("openai-chat", "anthropic", { model = "m", messages = {
            { role = "user", content = "run" },
            { role = "assistant", tool_calls = {
                { id = KIMI, type = "function", ["function"] = { name = "Bash", arguments = "{}" } } } },
            { role = "tool", tool_call_id = KIMI, content = "ok" },
        } })
        local id = body.messages[2].content[1].id
        assert.truthy(id:match("^[a-zA-Z0-9_-]+$"), id)
        assert.are.equal(id, body.messages[3].content[1].tool_use_id)
        -- and an answer from that supplier with the mapped id reaches a chat client as Kimi's
        local _, st = T.request("openai-chat", "anthropic", { model = "m", messages = { { role = "user", content = "x" } } },
            {}, { model = "claude" })
        local answer = F.wire(assert(T.response("openai-chat", "anthropic", { id = "msg_1", type = "message",
            role = "assistant", model = "claude", stop_reason = "tool_use",
            content = { { type = "tool_use", id = id, name = "Bash", input = {} } },
            usage = { input_tokens = 1, output_tokens = 1 } }, st)))
        assert.are.equal(KIMI, answer.choices[1].message.tool_calls[1].id)
    end)
end)

-- A client stream from upstream SSE events, through translate's pipe.
local function pipe_stream(from, to, events, req)
    local _, st = T.request(from, to, req, {}, { model = "up-model" })
    local pipe = T.stream(from, to, st)
    local b = {}
    for _, ev in ipairs(events) do b[#b + 1] = pipe:feed(ev) end
    b[#b + 1] = pipe:close({ complete = true })
    return table.concat(b), pipe
end

local function sse_records(bytes)
    local out = {}
    for block in bytes:gmatch("(.-)\n\n") do
        local ev = block:match("^event: ([^\n]*)")
        local data = block:match("data: (.*)$")
        out[#out + 1] = { event = ev, data = data and data ~= "[DONE]" and json.decode(data) or data }
    end
    return out
end

describe("6: parallel tool calls that all say index 0", function()
    local function chunk(tc, finish)
        return { data = json.encode({ id = "c", object = "chat.completion.chunk", model = "m",
            choices = { { index = 0, delta = tc and { tool_calls = { tc } } or {}, finish_reason = finish or json.null } } }) }
    end

    it("become two tool_use blocks with their own inputs for an Anthropic client", function()
        local bytes = pipe_stream("anthropic", "openai-chat", {
            chunk({ index = 0, id = "call_ny", type = "function", ["function"] = { name = "weather", arguments = "" } }),
            chunk({ index = 0, ["function"] = { arguments = '{"city":"NY"}' } }),
            chunk({ index = 0, id = "call_sf", type = "function", ["function"] = { name = "weather", arguments = "" } }),
            chunk({ index = 0, ["function"] = { arguments = '{"city":"SF"}' } }),
            chunk(nil, "tool_calls"),
        }, { model = "m", max_tokens = 10, stream = true, messages = { { role = "user", content = "w" } } })
        local uses, args = {}, {}
        for _, r in ipairs(sse_records(bytes)) do
            if r.event == "content_block_start" and r.data.content_block.type == "tool_use" then
                uses[#uses + 1] = r.data.content_block.id
                args[r.data.index] = ""
            elseif r.event == "content_block_delta" and r.data.delta.type == "input_json_delta" then
                args[r.data.index] = args[r.data.index] .. r.data.delta.partial_json
            end
        end
        assert.are.same({ "call_ny", "call_sf" }, uses)
        assert.are.same({ [0] = '{"city":"NY"}', [1] = '{"city":"SF"}' }, args)
    end)
end)

describe("8: Gemini usage whose candidates already include the thoughts", function()
    local usage = { promptTokenCount = 100, candidatesTokenCount = 50, thoughtsTokenCount = 30,
                    totalTokenCount = 150 }

    it("adds up to Gemini's total in an OpenAI client's answer", function()
        local _, st = T.request("openai-chat", "gemini", { model = "m", messages = { { role = "user", content = "x" } } },
            {}, { model = "gemini-2.5-pro" })
        local answer = F.wire(assert(T.response("openai-chat", "gemini", { candidates = { { index = 0,
            content = { role = "model", parts = { { text = "hi" } } }, finishReason = "STOP" } },
            usageMetadata = usage }, st)))
        assert.are.equal(100, answer.usage.prompt_tokens)
        assert.are.equal(50, answer.usage.completion_tokens)
        assert.are.equal(150, answer.usage.total_tokens)
        assert.are.equal(30, answer.usage.completion_tokens_details.reasoning_tokens)
    end)

    it("keeps documented usage (thoughts on top of candidates) as it is", function()
        local _, st = T.request("openai-chat", "gemini", { model = "m", messages = { { role = "user", content = "x" } } },
            {}, { model = "gemini-2.5-pro" })
        local answer = F.wire(assert(T.response("openai-chat", "gemini", { candidates = { { index = 0,
            content = { role = "model", parts = { { text = "hi" } } }, finishReason = "STOP" } },
            usageMetadata = { promptTokenCount = 100, candidatesTokenCount = 20, thoughtsTokenCount = 30,
                              totalTokenCount = 150 } }, st)))
        assert.are.equal(50, answer.usage.completion_tokens)
        assert.are.equal(150, answer.usage.total_tokens)
    end)

    it("adds up in a stream too", function()
        local bytes = pipe_stream("openai-chat", "gemini", {
            { data = json.encode({ candidates = { { index = 0, content = { role = "model", parts = { { text = "hi" } } },
                finishReason = "STOP" } }, usageMetadata = usage }) },
        }, { model = "m", stream = true, stream_options = { include_usage = true },
             messages = { { role = "user", content = "x" } } })
        local last
        for _, r in ipairs(sse_records(bytes)) do
            if type(r.data) == "table" and r.data.usage ~= json.null and r.data.usage then last = r.data.usage end
        end
        assert.are.equal(150, last.total_tokens)
        assert.are.equal(50, last.completion_tokens)
    end)
end)

describe("9: Gemini CLI's JSON schemas with upper-case OpenAPI types", function()
    local gemini_cli = {
        contents = { { role = "user", parts = { { text = "classify" } } } },
        tools = { { functionDeclarations = { { name = "read_file", description = "Read",
            parametersJsonSchema = json.decode('{"type":"OBJECT","properties":{"path":{"type":"STRING"},'
                .. '"lines":{"type":"ARRAY","items":{"type":"INTEGER"}}},"required":["path"]}') } } } },
        generationConfig = { responseMimeType = "application/json",
            responseJsonSchema = json.decode('{"type":"OBJECT","properties":{"label":{"type":"STRING",'
                .. '"enum":["a","b"]}},"required":["label"]}') },
    }

    local function types_in(v, acc)
        acc = acc or {}
        if type(v) == "table" then
            for k, x in pairs(v) do
                if k == "type" and type(x) == "string" then acc[#acc + 1] = x end
                types_in(x, acc)
            end
        end
        return acc
    end

    for _, to in ipairs({ "anthropic", "openai-chat", "openai-responses" }) do
        it("reach " .. to .. " as lower-case JSON Schema", function()
            local out = T.request("gemini", to, gemini_cli, { model = "gemini-2.5-pro", stream = false },
                { model = "up-model" })
            assert.truthy(out)
            local text = json.encode(out)
            for _, t in ipairs(types_in(F.wire(out))) do
                assert.are_not.equal("OBJECT", t)
                assert.are_not.equal("STRING", t)
                assert.are_not.equal("ARRAY", t)
                assert.are_not.equal("INTEGER", t)
            end
            assert.truthy(text:find('"integer"', 1, true), text)
            assert.truthy(text:find('"label"', 1, true), text)
        end)
    end
end)

describe("10: a Chat client's tool loop on a Gemini 3 supplier", function()
    local SIG = "CiQBVKhc7realSig=="
    local gemini_answer = { candidates = { { index = 0, finishReason = "STOP", content = { role = "model", parts = {
        { functionCall = { name = "get_weather", args = { city = "Paris" } }, thoughtSignature = SIG },
        { functionCall = { name = "get_weather", args = { city = "Oslo" } } } } } } },
        usageMetadata = { promptTokenCount = 10, candidatesTokenCount = 5, totalTokenCount = 15 } }
    local first = { model = "m", messages = { { role = "user", content = "Weather in Paris and Oslo?" } },
        tools = { { type = "function", ["function"] = { name = "get_weather",
            parameters = { type = "object", properties = { city = { type = "string" } } } } } } }

    -- The second turn exactly as the OpenAI SDK builds it from the answer.
    local function second_turn(answer)
        local msg = answer.choices[1].message
        local msgs = { first.messages[1], { role = "assistant", content = msg.content, tool_calls = msg.tool_calls } }
        for _, tc in ipairs(msg.tool_calls) do
            msgs[#msgs + 1] = { role = "tool", tool_call_id = tc.id, content = "18C" }
        end
        return { model = "m", messages = msgs, tools = first.tools }
    end

    local function model_turn(body)
        for _, c in ipairs(body.contents) do
            if c.role == "model" then return c end
        end
    end

    it("gives the call's signature back to Gemini on the first call of the step (JSON)", function()
        local _, st = T.request("openai-chat", "gemini", first, {}, { model = "gemini-3-pro" })
        local answer = F.wire(assert(T.response("openai-chat", "gemini", gemini_answer, st)))
        local body = upstream("openai-chat", "gemini", second_turn(answer))
        local parts = model_turn(body).parts
        assert.are.equal(SIG, parts[1].thoughtSignature)
        assert.is_nil(parts[2].thoughtSignature)
        -- the supplier never sees the envelope, and each result still finds its call's name
        assert.is_nil(json.encode(body):find("sluice1:", 1, true))
        assert.are.equal("get_weather", body.contents[3].parts[1].functionResponse.name)
    end)

    it("gives it back when the first turn was streamed", function()
        local bytes = pipe_stream("openai-chat", "gemini", { { data = json.encode(gemini_answer) } },
            { model = "m", stream = true, messages = first.messages, tools = first.tools })
        local calls = {}
        for _, r in ipairs(sse_records(bytes)) do
            local d = type(r.data) == "table" and r.data.choices and r.data.choices[1] and r.data.choices[1].delta
            for _, tc in ipairs(d and d.tool_calls or {}) do
                if tc.id then calls[#calls + 1] = { id = tc.id, type = "function", ["function"] = tc["function"] } end
            end
        end
        local body = upstream("openai-chat", "gemini", second_turn({ choices = { { message = {
            content = json.null, tool_calls = calls } } } }))
        assert.are.equal(SIG, model_turn(body).parts[1].thoughtSignature)
    end)

    it("sends Google's placeholder when the signature is truly lost", function()
        local body = upstream("openai-chat", "gemini", second_turn({ choices = { { message = { content = json.null,
            tool_calls = { { id = "call_1", type = "function",
                             ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } } } } } } }))
        assert.are.equal("skip_thought_signature_validator", model_turn(body).parts[1].thoughtSignature)
    end)

    it("keeps the envelope away from other suppliers (the id is the original one)", function()
        local _, st = T.request("openai-chat", "gemini", first, {}, { model = "gemini-3-pro" })
        local answer = F.wire(assert(T.response("openai-chat", "gemini", gemini_answer, st)))
        local body = upstream("openai-chat", "anthropic", second_turn(answer))
        assert.is_nil(json.encode(body):find("sluice1:", 1, true))
        assert.are.equal(body.messages[2].content[1].id, body.messages[3].content[1].tool_use_id)
    end)
end)

describe("15: the output-limit field and cap, per supplier", function()
    local chat = { model = "m", max_tokens = 64000, messages = { { role = "user", content = "x" } } }

    it("sends max_completion_tokens by default and max_tokens when the supplier says so", function()
        local body = upstream("anthropic", "openai-chat", chat)
        assert.are.equal(64000, body.max_completion_tokens)
        assert.is_nil(body.max_tokens)
        body = upstream("anthropic", "openai-chat", chat,
            { model = "deepseek-chat", compat = { max_tokens_field = "max_tokens" } })
        assert.are.equal(64000, body.max_tokens)
        assert.is_nil(body.max_completion_tokens)
    end)

    it("clamps what the client asks for to max_output_tokens, on every target", function()
        assert.are.equal(8192, upstream("anthropic", "openai-chat", chat,
            { model = "x", max_output_tokens = 8192 }).max_completion_tokens)
        assert.are.equal(8192, upstream("anthropic", "gemini", chat,
            { model = "x", max_output_tokens = 8192 }).generationConfig.maxOutputTokens)
        assert.are.equal(8192, upstream("anthropic", "openai-responses", chat,
            { model = "x", max_output_tokens = 8192 }).max_output_tokens)
        -- a smaller ask is left alone
        assert.are.equal(100, upstream("anthropic", "openai-chat", { model = "m", max_tokens = 100,
            messages = chat.messages }, { model = "x", max_output_tokens = 8192 }).max_completion_tokens)
    end)

    it("keeps an Anthropic supplier's default and thinking budget under the cap", function()
        local body = upstream("openai-chat", "anthropic", { model = "m", messages = chat.messages },
            { model = "x", max_output_tokens = 4000 })
        assert.are.equal(4000, body.max_tokens)
        body = upstream("openai-chat", "anthropic", { model = "m", reasoning_effort = "high",
            messages = chat.messages }, { model = "x", max_output_tokens = 6000 })
        assert.are.equal(6000, body.max_tokens)
        -- the budget leaves Anthropic's 1024 tokens of the cap for the answer
        assert.are.equal(6000 - 1024, body.thinking.budget_tokens)
        -- a cap with no room for the minimum budget plus an answer: no thinking
        body = upstream("openai-chat", "anthropic", { model = "m", reasoning_effort = "high",
            messages = chat.messages }, { model = "x", max_output_tokens = 2000 })
        assert.are.equal(2000, body.max_tokens)
        assert.is_nil(body.thinking)
    end)
end)

describe("15: an output cap on an Anthropic passthrough with thinking", function()
    local U = require("sluice.upstream")
    local supplier = { id = "a", protocol = "anthropic", base_url = "http://up", auth = { type = "passthrough" },
                       headers = {}, timeouts = {}, verify_tls = true, max_output_tokens = 8192 }
    -- The body Anthropic gets for a Claude Code request under the cap.
    local function sent(thinking, cap)
        local ctx = { protocol = "anthropic", headers = { ["x-api-key"] = "k" }, query = "", id = "r",
                      model = "claude-x", stream = false,
                      request = { model = "claude-x", max_tokens = 32000, thinking = thinking,
                                  messages = { { role = "user", content = "hi" } } } }
        local plan = assert(U.plan({}, ctx, { kind = "generate" }, { name = "r", max_output_tokens = cap }, supplier))
        return json.decode(plan.body), ctx.request
    end

    it("lowers Claude Code's budget_tokens with max_tokens so Anthropic does not refuse it", function()
        local body, original = sent({ type = "enabled", budget_tokens = 31999 })
        assert.are.equal(8192, body.max_tokens)
        assert.are.same({ type = "enabled", budget_tokens = 8192 - 1024 }, body.thinking)
        -- the client's own request is not changed (retries, logs)
        assert.are.equal(31999, original.thinking.budget_tokens)
    end)

    it("keeps a budget that already fits, and drops thinking with no room for the 1024 minimum", function()
        assert.are.equal(4000, sent({ type = "enabled", budget_tokens = 4000 }).thinking.budget_tokens)
        local body = sent({ type = "enabled", budget_tokens = 31999 }, 2000)
        assert.are.equal(2000, body.max_tokens)
        assert.is_nil(body.thinking)
    end)
end)

describe("15/17: the compat and cap config", function()
    local config = require("sluice.config")
    local function load_text(text)
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write(text)
        f:close()
        local cfg, err = config.load(path)
        os.remove(path)
        return cfg, err
    end
    local function with(supplier, route)
        return load_text("return { suppliers = { s = { protocol = 'openai-chat', base_url = 'http://127.0.0.1:1/v1', "
            .. supplier .. " }, a = { protocol = 'anthropic', base_url = 'http://127.0.0.1:1' } }, "
            .. "routes = { chat = { { match = '*', supplier = 's' " .. (route or "") .. " } } } }")
    end

    it("accepts the documented fields and defaults billing_header to strip", function()
        local cfg, err = with("compat = { max_tokens_field = 'max_tokens' }, max_output_tokens = 8192",
            ", max_output_tokens = 4096")
        assert.is_table(cfg, err)
        assert.are.same({ max_tokens_field = "max_tokens", billing_header = "strip" }, cfg.suppliers.s.compat)
        assert.are.equal(8192, cfg.suppliers.s.max_output_tokens)
        assert.are.equal(4096, cfg.routes.chat[1].max_output_tokens)
        assert.are.equal("strip", cfg.suppliers.a.compat.billing_header)
    end)

    it("names the bad field", function()
        local _, err = with("compat = { max_tokens_field = 'max_len' }")
        assert.matches("^suppliers%.s%.compat%.max_tokens_field: ", err)
        _, err = with("compat = { billing_header = 'drop' }")
        assert.matches("^suppliers%.s%.compat%.billing_header: ", err)
        _, err = with("compat = { max_token_field = 'max_tokens' }")
        assert.matches("^suppliers%.s%.compat%.max_token_field: unknown field", err)
        _, err = with("max_output_tokens = -1")
        assert.matches("^suppliers%.s%.max_output_tokens: ", err)
        _, err = with("", ", max_output_tokens = 1.5")
        assert.matches("^routes%.chat%[1%]%.max_output_tokens: ", err)
        _, err = load_text("return { suppliers = { a = { protocol = 'anthropic', base_url = 'http://127.0.0.1:1', "
            .. "compat = { max_tokens_field = 'max_tokens' } } } }")
        assert.matches("^suppliers%.a%.compat%.max_tokens_field: only openai%-chat", err)
    end)
end)

describe("17: Claude Code's billing-header system block", function()
    local claude = { model = "claude-x", max_tokens = 100, messages = { { role = "user", content = "hi" } },
        system = { { type = "text", text = "x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli; cch=93f1;" },
                   { type = "text", text = "You are Claude Code." } } }

    for _, to in ipairs({ "openai-chat", "openai-responses", "gemini" }) do
        it("is left out toward " .. to .. " by default", function()
            local text = json.encode(upstream("anthropic", to, claude))
            assert.is_nil(text:find("billing-header", 1, true))
            assert.truthy(text:find("You are Claude Code.", 1, true))
        end)
    end

    it("is sent when the supplier's compat.billing_header is keep", function()
        local body = upstream("anthropic", "openai-chat", claude, { model = "x", compat = { billing_header = "keep" } })
        assert.truthy(json.encode(body):find("billing-header", 1, true))
    end)
end)

describe("16: reasoning_content goes back to the supplier it came from", function()
    local first = { model = "claude-x", max_tokens = 1000, messages = { { role = "user", content = "ls?" } },
        tools = { { name = "Bash", input_schema = { type = "object", properties = { command = { type = "string" } } } } } }
    local answer = { id = "c1", object = "chat.completion", model = "deepseek-chat", choices = { { index = 0,
        finish_reason = "tool_calls", message = { role = "assistant", content = "", reasoning_content = "I should list.",
        tool_calls = { { id = "call_0", type = "function", ["function"] = { name = "Bash", arguments = '{"command":"ls"}' } } } } } },
        usage = { prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 } }

    -- The next turn Claude Code sends after the answer `content`.
    local function next_turn(content)
        return { model = "claude-x", max_tokens = 1000, tools = first.tools, messages = {
            first.messages[1], { role = "assistant", content = content },
            { role = "user", content = { { type = "tool_result", tool_use_id = "call_0", content = "a.txt" } } } } }
    end

    it("from a JSON answer, to the same supplier only", function()
        local _, st = T.request("anthropic", "openai-chat", first, {}, { model = "deepseek-chat", supplier = "ds" })
        local a = F.wire(assert(T.response("anthropic", "openai-chat", answer, st)))
        assert.are.equal("thinking", a.content[1].type)
        assert.are.equal("I should list.", a.content[1].thinking)
        local body = upstream("anthropic", "openai-chat", next_turn(a.content), { model = "deepseek-chat", supplier = "ds" })
        assert.are.equal("I should list.", body.messages[2].reasoning_content)
        assert.are.equal("call_0", body.messages[2].tool_calls[1].id)
        -- another openai-chat supplier (a fallback, a changed route) never gets the field
        body = upstream("anthropic", "openai-chat", next_turn(a.content), { model = "gpt-4.1", supplier = "oa" })
        assert.is_nil(body.messages[2].reasoning_content)
        assert.is_nil(json.encode(body):find("sluice1:", 1, true))
    end)

    it("from a stream", function()
        local chunk = function(delta, finish)
            return { data = json.encode({ id = "c", object = "chat.completion.chunk", model = "deepseek-chat",
                choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } }) }
        end
        local _, st = T.request("anthropic", "openai-chat", first, {}, { model = "deepseek-chat", supplier = "ds" })
        local pipe = T.stream("anthropic", "openai-chat", st)
        local b = {}
        for _, ev in ipairs({ chunk({ reasoning_content = "I should " }), chunk({ reasoning_content = "list." }),
                              chunk({ tool_calls = { { index = 0, id = "call_0", type = "function",
                                  ["function"] = { name = "Bash", arguments = '{"command":"ls"}' } } } }),
                              chunk({}, "tool_calls") }) do
            b[#b + 1] = pipe:feed(ev)
        end
        b[#b + 1] = pipe:close({ complete = true })
        -- assemble the thinking block as the Anthropic SDK does
        local thinking, sig = "", ""
        for _, r in ipairs(sse_records(table.concat(b))) do
            if r.event == "content_block_delta" and r.data.delta.type == "thinking_delta" then
                thinking = thinking .. r.data.delta.thinking
            elseif r.event == "content_block_delta" and r.data.delta.type == "signature_delta" then
                sig = sig .. r.data.delta.signature
            end
        end
        local body = upstream("anthropic", "openai-chat", next_turn({
            { type = "thinking", thinking = thinking, signature = sig },
            { type = "tool_use", id = "call_0", name = "Bash", input = { command = "ls" } } }),
            { model = "deepseek-chat", supplier = "ds" })
        assert.are.equal("I should list.", body.messages[2].reasoning_content)
    end)
end)

describe("5: Anthropic structured output, GA and beta", function()
    local schema = { type = "object", properties = { answer = { type = "string" } }, required = { "answer" } }
    for _, shape in ipairs({ "output_config", "output_format" }) do
        it(shape .. " reaches every other supplier as its structured-output field", function()
            local req = { model = "claude-x", max_tokens = 100, messages = { { role = "user", content = "q" } } }
            if shape == "output_config" then
                req.output_config = { format = { type = "json_schema", schema = schema } }
            else
                req.output_format = { type = "json_schema", schema = schema }
            end
            local chat = upstream("anthropic", "openai-chat", req)
            assert.are.equal("json_schema", chat.response_format.type)
            assert.are.same(F.wire(schema), chat.response_format.json_schema.schema)
            local resp = upstream("anthropic", "openai-responses", req)
            assert.are.equal("json_schema", resp.text.format.type)
            local gem = upstream("anthropic", "gemini", req)
            assert.are.equal("application/json", gem.generationConfig.responseMimeType)
            assert.truthy(gem.generationConfig.responseSchema or gem.generationConfig.responseJsonSchema)
        end)
    end
end)

describe("12: Chat file parts", function()
    local PDF_B64 = "JVBERi0xLjQK"                 -- "%PDF-1.4\n"
    local TEXT_B64 = "aGVsbG8gZnJvbSBub3Rlcw=="     -- "hello from notes"
    local function chat_with(file)
        return { model = "m", messages = { { role = "user", content = {
            { type = "text", text = "read this" }, { type = "file", file = file } } } } }
    end

    it("bare base64 file_data is a document, not dropped", function()
        local body = upstream("openai-chat", "anthropic", chat_with({ filename = "spec.pdf", file_data = PDF_B64 }))
        local doc = body.messages[1].content[2]
        assert.are.equal("document", doc.type)
        assert.are.same({ type = "base64", media_type = "application/pdf", data = PDF_B64 }, doc.source)
    end)

    it("a text file is text, never a base64 document Anthropic refuses", function()
        for _, fd in ipairs({ "data:text/plain;base64," .. TEXT_B64, TEXT_B64 }) do
            local body = upstream("openai-chat", "anthropic", chat_with({ filename = "notes.txt", file_data = fd }))
            local doc = body.messages[1].content[2]
            assert.are.same({ type = "text", media_type = "text/plain", data = "hello from notes" }, doc.source)
            local gem = upstream("openai-chat", "gemini", chat_with({ filename = "notes.txt", file_data = fd }))
            assert.are.equal("hello from notes", gem.contents[1].parts[2].text)
        end
    end)

    it("a file_id goes to a Responses supplier and is a clear error for Gemini", function()
        local body = upstream("openai-chat", "openai-responses", chat_with({ file_id = "file-abc123" }))
        assert.are.same({ type = "input_file", file_id = "file-abc123" }, body.input[1].content[2])
        local out, err = T.request("openai-chat", "gemini", chat_with({ file_id = "file-abc123" }), {}, { model = "g" })
        assert.is_nil(out)
        assert.matches("file%-abc123", err)
        assert.matches("Gemini", err)
    end)

    it("a file part with neither data nor id is refused, not sent as an empty request", function()
        local out, err = T.request("openai-chat", "anthropic", chat_with({ filename = "x.pdf" }), {}, { model = "c" })
        assert.is_nil(out)
        assert.matches("messages%[0%]", err)
        out, err = T.request("openai-chat", "anthropic", chat_with({ file_data = "not base64!" }), {}, { model = "c" })
        assert.is_nil(out)
        assert.matches("file_data", err)
    end)

    it("an OpenAI file_id is refused toward Anthropic, whose Files API cannot know it", function()
        local out, err = T.request("openai-chat", "anthropic", chat_with({ file_id = "file-abc123" }), {},
            { model = "c" })
        assert.is_nil(out)
        assert.matches("file file%-abc123: an OpenAI file_id cannot be sent to an Anthropic supplier", err)
        out, err = T.request("openai-responses", "anthropic", { model = "m", input = { { role = "user", content = {
            { type = "input_file", file_id = "file-r1" } } } } }, {}, { model = "c" })
        assert.is_nil(out)
        assert.matches("file file%-r1: an OpenAI file_id", err)
    end)

    it("an Anthropic file_id is refused toward Chat and Responses, carried between OpenAI APIs", function()
        local claude = { model = "m", max_tokens = 100, messages = { { role = "user", content = {
            { type = "text", text = "summarise" },
            { type = "document", source = { type = "file", file_id = "file_011CNha8iCJcU1wXNR6q4V8w" } } } } } }
        for _, to in ipairs({ "openai-chat", "openai-responses" }) do
            local out, err = T.request("anthropic", to, claude, {}, { model = "g" })
            assert.is_nil(out, to)
            assert.matches("file file_011CNha8iCJcU1wXNR6q4V8w: an Anthropic file_id cannot be sent", err)
        end
        -- same vendor, other API: the id is good there
        local body = upstream("openai-responses", "openai-chat", { model = "m", input = { { role = "user",
            content = { { type = "input_file", file_id = "file-r1" } } } } })
        assert.are.same({ type = "file", file = { file_id = "file-r1" } }, body.messages[1].content[1])
        -- and an Anthropic client's own id still passes to Anthropic
        assert.are.equal("file_011CNha8iCJcU1wXNR6q4V8w",
            upstream("anthropic", "anthropic", claude, { model = "c" }).messages[1].content[2].source.file_id)
    end)

    it("is refused the same way in a system, developer or assistant message", function()
        for i, role in ipairs({ "system", "developer", "assistant" }) do
            local req = { model = "m", messages = { { role = "user", content = "hi" },
                { role = role, content = { { type = "file", file = { filename = "x.pdf" } } } } } }
            local out, err = T.request("openai-chat", "anthropic", req, {}, { model = "c" })
            assert.is_nil(out, role)
            assert.matches("messages%[1%]%.content: file: needs file_data or file_id", err)
        end
    end)
end)

describe("13: Responses image detail and file ids toward Chat", function()
    local function codex(part)
        return { model = "m", input = { { type = "message", role = "user", content = {
            { type = "input_text", text = "look" }, part } } } }
    end

    it("keeps input_image.detail", function()
        local body = upstream("openai-responses", "openai-chat",
            codex({ type = "input_image", image_url = "https://example.com/a.png", detail = "low" }))
        assert.are.same({ url = "https://example.com/a.png", detail = "low" }, body.messages[1].content[2].image_url)
    end)

    it("carries an input_file that has only a file_id", function()
        local body = upstream("openai-responses", "openai-chat", codex({ type = "input_file", file_id = "file-xyz" }))
        assert.are.same({ type = "file", file = { file_id = "file-xyz" } }, body.messages[1].content[2])
    end)
end)

describe("14: Codex's hosted and namespace tools", function()
    local codex = { model = "gpt-5-codex", input = "find the changelog of luajit", tools = {
        { type = "function", name = "shell", parameters = { type = "object", properties = {} } },
        { type = "web_search" },
        { type = "namespace", name = "mcp__docs", tools = { { type = "function", name = "lookup" } } } } }

    it("web_search becomes Anthropic's web search server tool; the namespace is reported", function()
        local body, st = upstream("openai-responses", "anthropic", codex)
        local types = {}
        for _, t in ipairs(body.tools) do types[#types + 1] = t.type or t.name end
        assert.are.same({ "shell", "web_search_20250305" }, types)
        assert.are.same({ "tool namespace mcp__docs" }, st.dropped)
    end)

    it("web_search becomes Gemini's googleSearch", function()
        local body = upstream("openai-responses", "gemini", codex)
        assert.is_table(body.tools[2].googleSearch)
    end)

    it("web_search toward Chat is reported, not dropped in silence", function()
        local body, st = upstream("openai-responses", "openai-chat", codex)
        assert.are.equal(1, #body.tools)
        assert.are.same({ "tool namespace mcp__docs", "tool web_search" }, st.dropped)
    end)

    it("nothing is reported when everything was carried", function()
        local _, st = upstream("openai-responses", "anthropic", { model = "m", input = "hi",
            tools = { { type = "web_search" } } })
        assert.is_nil(st.dropped)
    end)

    it("Gemini: an empty tool object is not reported, googleSearchRetrieval is web search", function()
        local body, st = upstream("gemini", "anthropic", json.decode('{"model":"gemini-2.5-pro","contents":[{"role":"user","parts":'
            .. '[{"text":"news?"}]}],"tools":[{},{"googleSearchRetrieval":{}},{"codeExecution":{}}]}'),
            { model = "claude-x" })
        assert.are.same({ "tool codeExecution" }, st.dropped)
        assert.matches("^web_search_", body.tools[1].type)
    end)

    it("the x-sluice-dropped header stays short whatever tool names the client sends", function()
        local host = require("sluice.host")
        assert.are.equal("tool namespace mcp__docs, tool web_search",
            host.dropped_header({ "tool namespace mcp__docs", "tool web_search" }))
        local many = {}
        for i = 1, 200 do many[i] = "tool namespace mcp__server_number_" .. i end
        local h = host.dropped_header(many)
        assert.is_true(#h <= 512)
        assert.matches("^tool namespace mcp__server_number_1, ", h)
        assert.matches("_number_%d+, \u{2026}$", h)
        -- one enormous name is cut too, never inside a UTF-8 character
        h = host.dropped_header({ "tool " .. ("\u{00e9}"):rep(1000) })
        assert.is_true(#h <= 512)
        local cut = h:match("^tool (.*), \u{2026}$")
        assert.are.equal(("\u{00e9}"):rep(#cut / 2), cut)
    end)
end)

describe("3: tool calls a later turn left unanswered", function()
    local chat = { model = "m", messages = {
        { role = "user", content = "q" },
        { role = "assistant", tool_calls = {
            { id = "call_a", type = "function", ["function"] = { name = "f", arguments = "{}" } },
            { id = "call_b", type = "function", ["function"] = { name = "f", arguments = "{}" } } } },
        { role = "tool", tool_call_id = "call_a", content = "ok" },
        { role = "user", content = "go on" },
    } }

    it("get an error result toward Anthropic, so every call is answered in the next turn", function()
        local body = upstream("openai-chat", "anthropic", chat)
        local ids = {}
        for _, b in ipairs(body.messages[3].content) do
            if b.type == "tool_result" then ids[#ids + 1] = b.tool_use_id end
        end
        table.sort(ids)
        assert.are.same({ "call_a", "call_b" }, ids)
    end)

    it("and toward Gemini, one functionResponse per functionCall", function()
        local body = upstream("openai-chat", "gemini", chat)
        local n = 0
        for _, p in ipairs(body.contents[3].parts) do if p.functionResponse then n = n + 1 end end
        assert.are.equal(2, n)
    end)

    it("a call in the last turn, still awaiting its result, is left alone", function()
        local body = upstream("openai-chat", "anthropic", { model = "m", messages = { chat.messages[1], chat.messages[2] } })
        assert.are.equal(2, #body.messages)
        assert.are.equal("tool_use", body.messages[2].content[1].type)
    end)
end)
