-- Specs for sluice.tooltext and the dialects in lua/sluice/tools/: tool
-- calls written as text become real calls, or stay text when sluice cannot
-- be sure. Every case is read whole (a non-streamed answer) and as an IR
-- stream split at every byte boundary and fed byte by byte; the client must
-- get the same answer each way.

local json = require("sluice.json")
local T = require("sluice.translate")
local tooltext = require("sluice.tooltext")

local TOOLS = {
    { name = "get_weather", parameters = { type = "object", properties = {
        city = { type = "string" }, days = { type = "integer" }, metric = { type = "boolean" },
        tags = { type = "array" } } } },
    { name = "get_time", parameters = { type = "object", properties = { tz = { type = "string" } } } },
}

local function state(dialect, ids)
    return tooltext.setup({ parse = dialect }, TOOLS, ids)
end

-- A canonical text of any value (object keys sorted), to compare arguments.
local function canon(v)
    if type(v) ~= "table" then return json.encode(v) end
    if json.is_array(v) then
        local t = {}
        for i = 1, #v do t[i] = canon(v[i]) end
        return "[" .. table.concat(t, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local t = {}
    for i, k in ipairs(keys) do t[i] = json.encode(k) .. ":" .. canon(v[k]) end
    return "{" .. table.concat(t, ",") .. "}"
end

-- An IR answer as a list: { "text", s } / { "call", name, canonical args }.
local function shape(resp)
    local out = {}
    for _, p in ipairs(resp.content) do
        if p.type == "text" then
            out[#out + 1] = { "text", p.text }
        elseif p.type == "tool_call" then
            out[#out + 1] = { "call", p.name, canon(p.arguments) }
        end
    end
    return out, resp.stop_reason
end

local function whole(dialect, text)
    local st = state(dialect)
    local resp = tooltext.answer(st, { content = { { type = "text", text = text } }, stop_reason = "end_turn" })
    return resp, st
end

-- The text as an upstream stream in the given chunks, through the filter,
-- assembled the way a non-streaming client's answer is.
local function streamed(dialect, chunks)
    local st = state(dialect)
    local f = tooltext.filter(st)
    local evs = { { type = "start", id = "x" }, { type = "block_start", index = 0, kind = "text" } }
    for _, c in ipairs(chunks) do evs[#evs + 1] = { type = "text", index = 0, text = c } end
    evs[#evs + 1] = { type = "block_stop", index = 0 }
    evs[#evs + 1] = { type = "finish", stop_reason = "end_turn" }
    return T.assemble(f:feed_list(evs)), st
end

-- Every way of cutting the text: at each byte boundary, and byte by byte.
local function splits(text)
    local out = {}
    for i = 1, #text - 1 do out[#out + 1] = { text:sub(1, i), text:sub(i + 1) } end
    local bytes = {}
    for i = 1, #text do bytes[i] = text:sub(i, i) end
    out[#out + 1] = bytes
    return out
end

local function check(dialect, text, want, want_stop)
    local resp = whole(dialect, text)
    local got, stop = shape(resp)
    assert.are.same(want, got)
    assert.are.equal(want_stop, stop)
    for _, chunks in ipairs(splits(text)) do
        local sresp = streamed(dialect, chunks)
        local sgot, sstop = shape(sresp)
        assert.are.same(want, sgot, "split " .. #chunks[1] .. " of " .. #text)
        assert.are.equal(want_stop, sstop)
    end
end

local SF = canon({ city = "SF" })
local NY3 = canon({ city = "NY", days = 3 })
local UTC = canon({ tz = "UTC" })
local UNI = canon({ city = 'Zürich "alt" 東京\\n' })

-- Per dialect: one call (get_weather city=SF), two calls (get_weather
-- city=NY days=3, then get_time tz=UTC), unicode and escaped quotes, a
-- malformed region and a call to a tool the request did not declare.
local CASES = {
    hermes = {
        one = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "SF"}}\n</tool_call>',
        two = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "NY", "days": 3}}\n</tool_call>\n'
            .. '<tool_call>\n{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}\n</tool_call>',
        uni = '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich \\"alt\\" 東京\\\\n"}}</tool_call>',
        bad = '<tool_call>{"name": "get_weather", "arguments": {"city": "SF"</tool_call>',
        unknown = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
    },
    qwen3_coder = {
        one = '<tool_call>\n<function=get_weather>\n<parameter=city>\nSF\n</parameter>\n</function>\n</tool_call>',
        two = '<tool_call>\n<function=get_weather>\n<parameter=city>\nNY\n</parameter>\n<parameter=days>\n3\n'
            .. '</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n<parameter=tz>\nUTC\n'
            .. '</parameter>\n</function>\n</tool_call>',
        uni = '<tool_call>\n<function=get_weather>\n<parameter=city>\nZürich "alt" 東京\\n\n</parameter>\n'
            .. '</function>\n</tool_call>',
        bad = '<tool_call>\n<function=get_weather>\n<parameter=city>\nSF\n</parameter>\n</tool_call>',
        unknown = '<tool_call>\n<function=rm_rf>\n</function>\n</tool_call>',
    },
    kimi_k2 = {
        one = '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
            .. '<|tool_call_argument_begin|>{"city": "SF"}<|tool_call_end|><|tool_calls_section_end|>',
        two = '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
            .. '<|tool_call_argument_begin|>{"city": "NY", "days": 3}<|tool_call_end|>'
            .. '<|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>{"tz": "UTC"}'
            .. '<|tool_call_end|><|tool_calls_section_end|>',
        uni = '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
            .. '<|tool_call_argument_begin|>{"city": "Zürich \\"alt\\" 東京\\\\n"}<|tool_call_end|>'
            .. '<|tool_calls_section_end|>',
        bad = '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
            .. '<|tool_call_argument_begin|>{"city": }<|tool_call_end|><|tool_calls_section_end|>',
        unknown = '<|tool_calls_section_begin|><|tool_call_begin|>functions.rm_rf:0'
            .. '<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>',
    },
    deepseek_v3 = {
        one = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
            .. '{"city": "SF"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        two = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
            .. '{"city": "NY", "days": 3}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>'
            .. 'get_time\n```json\n{"tz": "UTC"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        uni = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
            .. '{"city": "Zürich \\"alt\\" 東京\\\\n"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        bad = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n'
            .. '{"city": "SF"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        unknown = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>rm_rf\n```json\n'
            .. '{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    },
    deepseek_v31 = {
        one = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "SF"}'
            .. '<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        two = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "NY", "days": 3}'
            .. '<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"tz": "UTC"}<｜tool▁call▁end｜>'
            .. '<｜tool▁calls▁end｜>',
        uni = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>'
            .. '{"city": "Zürich \\"alt\\" 東京\\\\n"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        bad = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": SF}'
            .. '<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        unknown = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>rm_rf<｜tool▁sep｜>{}<｜tool▁call▁end｜>'
            .. '<｜tool▁calls▁end｜>',
    },
    deepseek_v32 = {
        one = '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
            .. '<｜DSML｜parameter name="city" string="true">SF</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
            .. '</｜DSML｜function_calls>',
        two = '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
            .. '<｜DSML｜parameter name="city" string="true">NY</｜DSML｜parameter>\n'
            .. '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
            .. '<｜DSML｜invoke name="get_time">\n<｜DSML｜parameter name="tz" string="true">UTC'
            .. '</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>',
        uni = '<｜DSML｜function_calls><｜DSML｜invoke name="get_weather"><｜DSML｜parameter name="city" '
            .. 'string="true">Zürich "alt" 東京\\n</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜function_calls>',
        bad = '<｜DSML｜function_calls><｜DSML｜invoke name="get_weather"><｜DSML｜parameter name="city">SF'
            .. '</｜DSML｜invoke></｜DSML｜function_calls>',
        unknown = '<｜DSML｜function_calls><｜DSML｜invoke name="rm_rf"></｜DSML｜invoke></｜DSML｜function_calls>',
    },
    glm45 = {
        one = '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>SF</arg_value>\n</tool_call>',
        two = '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>NY</arg_value>\n<arg_key>days'
            .. '</arg_key>\n<arg_value>3</arg_value>\n</tool_call>\n<tool_call>get_time\n<arg_key>tz</arg_key>\n'
            .. '<arg_value>UTC</arg_value>\n</tool_call>',
        uni = '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Zürich "alt" 東京\\n</arg_value>\n'
            .. '</tool_call>',
        bad = '<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>',
        unknown = '<tool_call>rm_rf\n<arg_key>path</arg_key>\n<arg_value>/</arg_value>\n</tool_call>',
    },
    glm47 = {
        one = '<tool_call>get_weather<arg_key>city</arg_key><arg_value>SF</arg_value></tool_call>',
        two = '<tool_call>get_weather<arg_key>city</arg_key><arg_value>NY</arg_value><arg_key>days</arg_key>'
            .. '<arg_value>3</arg_value></tool_call><tool_call>get_time<arg_key>tz</arg_key><arg_value>UTC'
            .. '</arg_value></tool_call>',
        uni = '<tool_call>get_weather<arg_key>city</arg_key><arg_value>Zürich "alt" 東京\\n</arg_value></tool_call>',
        bad = '<tool_call>get_weather<arg_key>city</arg_key><arg_value>SF</tool_call>',
        unknown = '<tool_call>rm_rf<arg_key>path</arg_key><arg_value>/</arg_value></tool_call>',
    },
    minimax_m2 = {
        one = '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">SF</parameter>\n'
            .. '</invoke>\n</minimax:tool_call>',
        two = '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">NY</parameter>\n'
            .. '<parameter name="days">3</parameter>\n</invoke>\n<invoke name="get_time">\n'
            .. '<parameter name="tz">UTC</parameter>\n</invoke>\n</minimax:tool_call>',
        uni = '<minimax:tool_call><invoke name="get_weather"><parameter name="city">Zürich "alt" 東京\\n'
            .. '</parameter></invoke></minimax:tool_call>',
        bad = '<minimax:tool_call><invoke name="get_weather"><parameter name="city">SF</invoke>'
            .. '</minimax:tool_call>',
        unknown = '<minimax:tool_call><invoke name="rm_rf"></invoke></minimax:tool_call>',
    },
    mistral = {
        one = '[TOOL_CALLS]get_weather[ARGS]{"city": "SF"}',
        two = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "NY", "days": 3}}, '
            .. '{"name": "get_time", "arguments": {"tz": "UTC"}}]',
        uni = '[TOOL_CALLS]get_weather{"city": "Zürich \\"alt\\" 東京\\\\n"}',
        bad = '[TOOL_CALLS]get_weather[ARGS]{"city": SF}',
        unknown = '[TOOL_CALLS]rm_rf[ARGS]{}',
    },
    llama3_json = {
        one = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "SF"}}',
        two = '{"name": "get_weather", "parameters": {"city": "NY", "days": 3}}; '
            .. '{"name": "get_time", "parameters": {"tz": "UTC"}}',
        uni = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Zürich \\"alt\\" 東京\\\\n"}}',
        bad = '<|python_tag|>{"name": "get_weather", "parameters": {"city": }}',
        unknown = '<|python_tag|>{"name": "rm_rf", "parameters": {}}',
    },
    pythonic = {
        one = "[get_weather(city='SF')]",
        two = "[get_weather(city='NY', days=3), get_time(tz=\"UTC\")]",
        uni = "[get_weather(city='Zürich \"alt\" 東京\\\\n')]",
        bad = "[get_weather(city='SF' days=3)]",
        unknown = "[rm_rf(path='/')]",
    },
    harmony = {
        one = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "SF"}<|call|>',
        two = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "NY", "days": 3}'
            .. '<|call|>\n<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"tz": "UTC"}<|call|>',
        uni = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
            .. '{"city": "Zürich \\"alt\\" 東京\\\\n"}<|call|>',
        bad = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": }<|call|>',
        unknown = '<|channel|>commentary to=functions.rm_rf <|constrain|>json<|message|>{}<|call|>',
    },
    loose = {
        one = '```json\n{"name": "get_weather", "arguments": {"city": "SF"}}\n```',
        two = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "NY", "days": 3}}, '
            .. '{"function": {"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}}]}',
        uni = '<function=get_weather>{"city": "Zürich \\"alt\\" 東京\\\\n"}</function>',
        bad = '```json\n{"name": "get_weather", "arguments": {"city": "SF"}\n```',
        unknown = '{"name": "rm_rf", "arguments": {}}</tool_call>',
    },
}

local ORDER = { "hermes", "qwen3_coder", "kimi_k2", "deepseek_v3", "deepseek_v31", "deepseek_v32",
                "glm45", "glm47", "minimax_m2", "mistral", "llama3_json", "pythonic", "harmony", "loose" }

for _, name in ipairs(ORDER) do
    local c = CASES[name]
    -- pythonic is not tried by auto (its marker is any "[").
    for _, dialect in ipairs(name == "pythonic" and { name } or { name, "auto" }) do
        describe("tool calls as text, " .. name .. " read by " .. dialect, function()
            it("one call becomes a tool call and the answer ends in tool_use", function()
                check(dialect, c.one, { { "call", "get_weather", SF } }, "tool_use")
            end)

            it("several calls become several tool calls, in order", function()
                check(dialect, c.two, { { "call", "get_weather", NY3 }, { "call", "get_time", UTC } }, "tool_use")
            end)

            it("text around the calls stays text, around them", function()
                check(dialect, "Let me check the weather.\n\n" .. c.one .. "\nDone.", {
                    { "text", "Let me check the weather.\n\n" }, { "call", "get_weather", SF },
                    { "text", "\nDone." } }, "tool_use")
            end)

            it("keeps unicode and escaped quotes in arguments", function()
                check(dialect, c.uni, { { "call", "get_weather", UNI } }, "tool_use")
            end)

            it("a malformed call stays text", function()
                check(dialect, "Hm. " .. c.bad, { { "text", "Hm. " .. c.bad } }, "end_turn")
            end)

            it("a call to a tool the request did not declare stays text", function()
                check(dialect, c.unknown, { { "text", c.unknown } }, "end_turn")
            end)
        end)
    end
end

describe("tool calls as text, the stream", function()
    it("text that begins like a marker but is not one is given back as text", function()
        for _, dialect in ipairs(ORDER) do
            check(dialect, "a <tool_ b <｜tool c <|tool_calls x <minimax: y <｜DSML｜ z <",
                { { "text", "a <tool_ b <｜tool c <|tool_calls x <minimax: y <｜DSML｜ z <" } }, "end_turn")
        end
    end)

    it("holds back only what could begin a marker or a call region; the rest streams at once", function()
        local st = state("hermes")
        local f = tooltext.filter(st)
        f:feed_list({ { type = "start" }, { type = "block_start", index = 0, kind = "text" } })
        local out = f:feed_list({ { type = "text", index = 0, text = "I will look <tool_c" } })
        local got = {}
        for _, e in ipairs(out) do if e.type == "text" then got[#got + 1] = e.text end end
        assert.are.same({ "I will look " }, got)
        out = f:feed_list({ { type = "text", index = 0, text = "all>{\"name\"" } })
        for _, e in ipairs(out) do assert.are_not.equal("tool_call", e.kind) end
        assert.are.same({}, out) -- a call region is held whole: no partial name ever goes out
    end)

    -- What one chunk fed to a fresh filter lets out as text, at once.
    local function released(dialect, chunks)
        local f = tooltext.filter(state(dialect))
        f:feed_list({ { type = "start" }, { type = "block_start", index = 0, kind = "text" } })
        local got = {}
        for _, c in ipairs(chunks) do
            for _, e in ipairs(f:feed_list({ { type = "text", index = 0, text = c } })) do
                if e.type == "text" then got[#got + 1] = e.text end
            end
        end
        return table.concat(got)
    end

    it("prose or code that mentions a marker streams on instead of being held to the end", function()
        local prose = "Wrap each call in a <tool_call> tag, then wait."
        local code = 'x = {"name" + 1} and {"tool_calls" = 2} and ```json\n[1]``` end'
        local fn = "<function=get weather> and [{\"name\" 1}]"
        for _, dialect in ipairs({ "auto", "hermes", "qwen3_coder", "glm45", "loose", "llama3_json", "mistral" }) do
            assert.are.equal(prose, released(dialect, { prose }), dialect)
            assert.are.equal(code, released(dialect, { code }), dialect)
            assert.are.equal(fn, released(dialect, { fn }), dialect)
        end
        check("auto", prose, { { "text", prose } }, "end_turn")
        check("auto", code, { { "text", code } }, "end_turn")
    end)

    it("a region still open past the bound is text, and the stream goes on", function()
        local open = '<tool_call>{"name": "get_weather", "arguments": {"city": "'
        local chunks = { open }
        for i = 1, tooltext.MAX_REGION / 1024 + 4 do chunks[#chunks + 1] = string.rep("a", 1024) end
        local got = released("hermes", chunks)
        assert.truthy(#got > tooltext.MAX_REGION, #got)
        assert.are.equal(open, got:sub(1, #open))
        -- The same region closed is text whole too: both read it alike.
        local text = table.concat(chunks) .. '"}}</tool_call>'
        local resp = whole("hermes", text)
        assert.are.same({ { "text", text } }, (shape(resp)))
        local sresp = streamed("hermes", chunks)
        assert.are.same({ { "text", table.concat(chunks) } }, (shape(sresp)))
    end)

    it("a region never closed is text when the stream ends", function()
        check("qwen3_coder", "x <tool_call>\n<function=get_weather>\n<parameter=city>\nSF",
            { { "text", "x <tool_call>\n<function=get_weather>\n<parameter=city>\nSF" } }, "end_turn")
    end)

    it("a stream cut before its finish gives what it held back as text", function()
        local f = tooltext.filter(state("hermes"))
        local out = f:feed_list({ { type = "start" }, { type = "block_start", index = 0, kind = "text" },
                                  { type = "text", index = 0, text = "so <tool_call>{\"na" } })
        for _, e in ipairs(f:finish()) do out[#out + 1] = e end
        local resp = T.assemble(out)
        assert.are.same({ { "text", "so <tool_call>{\"na" } }, (shape(resp)))
    end)

    it("other blocks keep their order and get indices after the parsed ones", function()
        local f = tooltext.filter(state("hermes"))
        local out = f:feed_list({
            { type = "start" },
            { type = "block_start", index = 0, kind = "thinking" }, { type = "thinking", index = 0, text = "hm" },
            { type = "block_stop", index = 0 },
            { type = "block_start", index = 1, kind = "text" },
            { type = "text", index = 1, text = CASES.hermes.one },
            { type = "block_stop", index = 1 },
            { type = "finish", stop_reason = "end_turn" } })
        local resp = T.assemble(out)
        assert.are.equal("thinking", resp.content[1].type)
        assert.are.equal("hm", resp.content[1].text)
        assert.are.equal("tool_call", resp.content[2].type)
        assert.are.equal("tool_use", resp.stop_reason)
    end)

    it("an answer without a stop reason ends in tool_use, streamed as whole", function()
        local resp = tooltext.answer(state("hermes"), { content = { { type = "text", text = CASES.hermes.one } } })
        assert.are.equal("tool_use", resp.stop_reason)
        local f = tooltext.filter(state("hermes"))
        local sresp = T.assemble(f:feed_list({ { type = "start" },
            { type = "block_start", index = 0, kind = "text" }, { type = "text", index = 0, text = CASES.hermes.one },
            { type = "block_stop", index = 0 }, { type = "finish" } }))
        assert.are.equal("tool_use", sresp.stop_reason)
    end)

    it("a max_tokens end stays max_tokens", function()
        local resp = tooltext.answer(state("hermes"),
            { content = { { type = "text", text = CASES.hermes.one } }, stop_reason = "max_tokens" })
        assert.are.equal("tool_call", resp.content[1].type)
        assert.are.equal("max_tokens", resp.stop_reason)
    end)
end)

describe("tool calls as text, ids", function()
    it("are unique and in the client's style", function()
        local st = state("hermes", { prefix = "toolu_", pattern = "^[a-zA-Z0-9_-]+$" })
        local resp = tooltext.answer(st, { content = { { type = "text", text = CASES.hermes.two } } })
        local a, b = resp.content[1].id, resp.content[2].id
        assert.truthy(a:match("^toolu_%w+$") and b:match("^toolu_%w+$"))
        assert.are_not.equal(a, b)
        assert.are.equal(2, st.calls)
    end)

    it("keep Kimi's own ids where the client takes them, and replace them where it does not", function()
        local open = tooltext.answer(state("kimi_k2"), { content = { { type = "text", text = CASES.kimi_k2.two } } })
        assert.are.equal("functions.get_weather:0", open.content[1].id)
        assert.are.equal("functions.get_time:1", open.content[2].id)
        local strict = tooltext.answer(state("kimi_k2", { prefix = "toolu_", pattern = "^[a-zA-Z0-9_-]+$" }),
            { content = { { type = "text", text = CASES.kimi_k2.one } } })
        assert.truthy(strict.content[1].id:match("^toolu_"))
    end)
end)

describe("tool calls as text, repeated ids", function()
    -- Kimi numbers its calls itself and may write the same id twice.
    local TWICE = '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
        .. '<|tool_call_argument_begin|>{"city": "SF"}<|tool_call_end|><|tool_calls_section_end|>'
        .. 'and <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
        .. '<|tool_call_argument_begin|>{"city": "NY"}<|tool_call_end|><|tool_calls_section_end|>'

    local function ids_of(resp)
        local out = {}
        for _, p in ipairs(resp.content) do if p.type == "tool_call" then out[#out + 1] = p.id end end
        return out
    end

    it("a repeated id is replaced by a fresh one in the client's style, whole and streamed", function()
        local whole_resp = tooltext.answer(state("kimi_k2"), { content = { { type = "text", text = TWICE } },
                                                               stop_reason = "end_turn" })
        local st = state("kimi_k2")
        local f = tooltext.filter(st)
        local stream_resp = T.assemble(f:feed_list({ { type = "start" },
            { type = "block_start", index = 0, kind = "text" }, { type = "text", index = 0, text = TWICE },
            { type = "block_stop", index = 0 }, { type = "finish", stop_reason = "end_turn" } }))
        for _, resp in ipairs({ whole_resp, stream_resp }) do
            local ids = ids_of(resp)
            assert.are.equal(2, #ids)
            assert.are.equal("functions.get_weather:0", ids[1])
            assert.truthy(ids[2]:match("^call_"), ids[2])
        end
    end)
end)

describe("tool calls as text, deeply nested values", function()
    it("a pythonic argument nested thousands deep stays text instead of ending the request", function()
        local text = "[get_weather(city=" .. string.rep("[", 5000)
        local resp = tooltext.answer(state("pythonic"), { content = { { type = "text", text = text } },
                                                         stop_reason = "end_turn" })
        assert.are.same({ { "text", text } }, (shape(resp)))
        local sresp = streamed("pythonic", { text:sub(1, 100), text:sub(101) })
        assert.are.same({ { "text", text } }, (shape(sresp)))
    end)

    it("a pythonic argument nested a few levels deep is still a call", function()
        local resp = whole("pythonic", "[get_weather(city='SF', tags=[[['a']]])]")
        assert.are.equal("tool_call", resp.content[1].type)
    end)
end)

describe("tool calls as text, parameters typed by the schema", function()
    it("keeps strings raw, decodes other types, falls back to the string", function()
        local resp = whole("qwen3_coder", '<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n'
            .. '</parameter>\n<parameter=days>\nthree\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n'
            .. '<parameter=tags>\n["a", "b"]\n</parameter>\n</function>\n</tool_call>')
        local args = resp.content[1].arguments
        assert.are.equal("42", args.city)
        assert.are.equal("three", args.days)
        assert.are.equal(true, args.metric)
        assert.are.same({ "a", "b" }, { args.tags[1], args.tags[2] })
    end)
end)

describe("tool calls as text, setup", function()
    it("is off without tools, and without parse", function()
        assert.is_nil(tooltext.setup({ parse = "hermes" }, {}, nil))
        assert.is_nil(tooltext.setup(nil, TOOLS, nil))
    end)

    it("rejects an unknown dialect naming the field", function()
        local function bad(field, msg, ...) error(field .. ": " .. string.format(msg, ...), 0) end
        local ok, err = pcall(tooltext.check, { parse = "hermez" }, "suppliers.x.tool_text", bad)
        assert.is_false(ok)
        assert.truthy(err:find("suppliers.x.tool_text.parse", 1, true))
        assert.truthy(err:find("hermez", 1, true))
    end)
end)

describe("tool use emulation", function()
    local emulate = require("sluice.tools.emulate")

    local function request()
        return {
            system = { { type = "text", text = "Be brief." } },
            messages = {
                { role = "user", content = { { type = "text", text = "Weather in SF?" } } },
                { role = "assistant", content = { { type = "text", text = "Checking." },
                    { type = "tool_call", id = "toolu_1", name = "get_weather", arguments = { city = "SF" } } } },
                { role = "user", content = { { type = "tool_result", tool_call_id = "toolu_1",
                    content = { { type = "text", text = "18C, fog" } } } } },
            },
            tools = TOOLS, tool_choice = { type = "tool", name = "get_time" }, parallel_tool_calls = true,
        }
    end

    it("moves the tools and the format into the system prompt and sends no tools", function()
        local req = emulate.apply(request(), "hermes")
        assert.is_nil(req.tools)
        assert.is_nil(req.tool_choice)
        assert.is_nil(req.parallel_tool_calls)
        assert.are.equal("Be brief.", req.system[1].text)
        local sys = req.system[2].text
        assert.truthy(sys:find('"name":"get_weather"', 1, true))
        assert.truthy(sys:find("<tool_call>", 1, true))
        assert.truthy(sys:find("must call the tool `get_time`", 1, true))
    end)

    it("writes earlier calls and results into the conversation in the dialect", function()
        local req = emulate.apply(request(), "hermes")
        local a = req.messages[2].content
        assert.are.equal(1, #a)
        local parsed = tooltext.answer(state("hermes"), { content = { { type = "text", text = a[1].text } } })
        assert.are.equal("Checking.\n", parsed.content[1].text)
        assert.are.equal("get_weather", parsed.content[2].name)
        assert.are.equal(SF, canon(parsed.content[2].arguments))
        local u = req.messages[3].content
        assert.are.same({ { type = "text", text = '<tool_response name="get_weather">\n18C, fog\n</tool_response>' } }, u)
    end)

    it("renders what each emulating dialect parses back", function()
        for _, name in ipairs(tooltext.DIALECTS) do
            if emulate.can(name) then
                local text = require("sluice.tools." .. name).render({
                    { name = "get_weather", arguments = { city = "NY", days = 3 } },
                    { name = "get_time", arguments = { tz = "UTC" } } })
                check(name, text, { { "call", "get_weather", NY3 }, { "call", "get_time", UTC } }, "tool_use")
            end
        end
    end)

    it("rejects a dialect it cannot render, naming the field", function()
        local function bad(field, msg, ...) error(field .. ": " .. string.format(msg, ...), 0) end
        local ok, err = pcall(tooltext.check, { emulate = "auto" }, "suppliers.x.tool_text", bad)
        assert.is_false(ok)
        assert.truthy(err:find("suppliers.x.tool_text.emulate", 1, true))
        assert.are.same({ parse = "hermes", emulate = "hermes" },
            tooltext.check({ emulate = "hermes" }, "f", bad))
    end)
end)

describe("tool use emulation, every dialect", function()
    it("can render calls in every dialect", function()
        local emulate = require("sluice.tools.emulate")
        for _, name in ipairs(tooltext.DIALECTS) do assert.is_true(emulate.can(name), name) end
    end)

    it("round-trips unicode, quotes and newlines through each dialect's rendering", function()
        local args = { city = 'Zürich "alt" \'x\'\n東京', days = 3 }
        for _, name in ipairs(tooltext.DIALECTS) do
            local text = require("sluice.tools." .. name).render({ { name = "get_weather", arguments = args } })
            check(name, text, { { "call", "get_weather", canon(args) } }, "tool_use")
        end
    end)
end)

describe("tool calls as text, long calls", function()
    it("a call with a large argument streamed in small chunks parses as the whole answer does", function()
        local content = string.rep('line with "quotes" and {braces} </not_a_close>\n', 4000) -- ~190 KB
        local text = "Writing.\n<tool_call>\n" .. json.encode({ name = "get_weather", arguments = { city = content } })
            .. "\n</tool_call>\nDone."
        local chunks = {}
        for i = 1, #text, 16 do chunks[#chunks + 1] = text:sub(i, i + 15) end
        local want = { { "text", "Writing.\n" }, { "call", "get_weather", canon({ city = content }) }, { "text", "\nDone." } }
        assert.are.same(want, (shape(whole("hermes", text))))
        local resp = streamed("hermes", chunks)
        assert.are.same(want, (shape(resp)))
    end)
end)

describe("tool calls as text, qwen3_coder leniency", function()
    it("reads a parameter whose closing tag went missing, up to the next one", function()
        check("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nNY\n<parameter=days>\n3\n"
            .. "</parameter>\n</function>\n</tool_call>", { { "call", "get_weather", NY3 } }, "tool_use")
    end)

    it("reads a function without its <tool_call> wrapper, and a stray closing tag goes with it", function()
        for _, dialect in ipairs({ "qwen3_coder", "auto" }) do
            check(dialect, "Ok.\n<function=get_weather>\n<parameter=city>\nSF\n</parameter>\n</function>\n</tool_call>",
                { { "text", "Ok.\n" }, { "call", "get_weather", SF } }, "tool_use")
        end
    end)
end)
