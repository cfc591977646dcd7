-- Malformed but valid JSON from a client must get a clean refusal (nil, err:
-- the host answers 400 in the client's shape) or a request — never a Lua
-- error, which the host can only answer as a 500 SCRIPT_ERROR. Each codec's
-- decode_request is fed a well-formed request with one field at a time
-- (top level, in a message, in a content part, in a tool) replaced by a
-- value of every wrong JSON type.

local json = require("sluice.json")
local P = require("sluice.protocols")

local WRONG = { 7, -1.5, "x", "", true, false, json.null, {}, { 1, "a" }, { a = 1 }, { { a = 1 } }, { "s" } }

-- A well-formed request per protocol, rich enough that every codec path
-- (system, turns, content parts, tools, tool choice, output settings) runs.
local VALID = {
    anthropic = {
        model = "m", max_tokens = 100, system = { { type = "text", text = "sys" } },
        thinking = { type = "enabled", budget_tokens = 2048 }, tool_choice = { type = "auto" },
        tools = { { name = "t", description = "d", input_schema = { type = "object" } } },
        metadata = { user_id = "u" }, stop_sequences = { "s" },
        output_config = { format = { type = "json_schema", schema = { type = "object" } } },
        messages = {
            { role = "user", content = { { type = "text", text = "hi" },
                { type = "image", source = { type = "base64", media_type = "image/png", data = "AA==" } },
                { type = "document", source = { type = "file", file_id = "file_1" } } } },
            { role = "assistant", content = { { type = "thinking", thinking = "h", signature = "s" },
                { type = "tool_use", id = "toolu_1", name = "t", input = { a = 1 } } } },
            { role = "user", content = { { type = "tool_result", tool_use_id = "toolu_1",
                content = { { type = "text", text = "ok" } } } } },
        },
    },
    ["openai-chat"] = {
        model = "m", max_completion_tokens = 100, reasoning_effort = "low", stop = { "s" },
        tools = { { type = "function", ["function"] = { name = "t", parameters = { type = "object" } } } },
        tool_choice = { type = "function", ["function"] = { name = "t" } },
        response_format = { type = "json_schema", json_schema = { name = "n", schema = { type = "object" } } },
        messages = {
            { role = "system", content = { { type = "text", text = "sys" } } },
            { role = "user", content = { { type = "text", text = "hi" },
                { type = "image_url", image_url = { url = "data:image/png;base64,AA==" } },
                { type = "file", file = { file_id = "file-1" } } } },
            { role = "assistant", content = "c", tool_calls = { { id = "call_1", type = "function",
                ["function"] = { name = "t", arguments = "{}" } } } },
            { role = "tool", tool_call_id = "call_1", content = "ok" },
        },
    },
    ["openai-responses"] = {
        model = "m", instructions = "sys", max_output_tokens = 100, reasoning = { effort = "low" },
        tools = { { type = "function", name = "t", parameters = { type = "object" } }, { type = "web_search" } },
        tool_choice = { type = "function", name = "t" },
        text = { format = { type = "json_schema", name = "n", schema = { type = "object" } } },
        input = {
            { role = "user", content = { { type = "input_text", text = "hi" },
                { type = "input_image", image_url = "data:image/png;base64,AA==" },
                { type = "input_file", file_id = "file-1" } } },
            { type = "reasoning", id = "rs_1", summary = { { type = "summary_text", text = "h" } } },
            { type = "function_call", call_id = "call_1", name = "t", arguments = "{}" },
            { type = "function_call_output", call_id = "call_1", output = "ok" },
            { type = "message", role = "assistant", content = { { type = "output_text", text = "a" } } },
        },
    },
    gemini = {
        systemInstruction = { parts = { { text = "sys" } } },
        generationConfig = { maxOutputTokens = 100, stopSequences = { "s" },
                             thinkingConfig = { thinkingBudget = 1024 }, responseSchema = { type = "OBJECT" } },
        tools = { { functionDeclarations = { { name = "t", parameters = { type = "OBJECT" } } } }, { googleSearch = {} } },
        toolConfig = { functionCallingConfig = { mode = "ANY", allowedFunctionNames = { "t" } } },
        contents = {
            { role = "user", parts = { { text = "hi" }, { inlineData = { mimeType = "image/png", data = "AA==" } },
                { fileData = { mimeType = "application/pdf", fileUri = "gs://b/f" } } } },
            { role = "model", parts = { { functionCall = { name = "t", args = { a = 1 } }, thoughtSignature = "s" } } },
            { role = "user", parts = { { functionResponse = { name = "t", response = { ok = true } } } } },
        },
    },
}

local function copy(v)
    if type(v) ~= "table" or v == json.null then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = copy(x) end
    return out
end

-- Every path (a list of keys) to a value inside t.
local function paths(t, prefix, out)
    out = out or {}
    for k, v in pairs(t) do
        local p = { unpack(prefix) }
        p[#p + 1] = k
        out[#out + 1] = p
        if type(v) == "table" then paths(v, p, out) end
    end
    return out
end

local function with(body, path, value)
    local out = copy(body)
    local t = out
    for i = 1, #path - 1 do t = t[path[i]] end
    t[path[#path]] = value
    return out
end

for name, body in pairs(VALID) do
    describe(name .. " decode_request on malformed JSON", function()
        local codec = P.get(name)
        local info = { model = "m", upstream = "anthropic" }

        it("decodes the well-formed request", function()
            assert.is_table((codec.decode_request(copy(body), info)))
        end)

        it("never raises, whatever field has the wrong type", function()
            local failures = {}
            for _, path in ipairs(paths(body, {})) do
                for _, v in ipairs(WRONG) do
                    local ok, err = pcall(codec.decode_request, with(body, path, v), info)
                    if not ok then
                        failures[#failures + 1] = table.concat(path, ".") .. " = " .. json.encode(v) .. ": " .. tostring(err)
                        break
                    end
                end
            end
            -- whole-body shapes too
            for _, v in ipairs(WRONG) do
                local ok, err = pcall(codec.decode_request, v, info)
                if not ok then failures[#failures + 1] = "body = " .. json.encode(v) .. ": " .. tostring(err) end
            end
            assert.are.same({}, failures)
        end)

        -- What the host runs: decoding, then encoding for a supplier of
        -- each protocol (an IR value of the wrong type must not reach an encoder).
        it("translates or refuses it for every supplier protocol, never raises", function()
            local T = require("sluice.translate")
            local failures = {}
            for to in pairs(VALID) do
                for _, path in ipairs(paths(body, {})) do
                    for _, v in ipairs(WRONG) do
                        local ok, err = pcall(T.request, name, to, with(body, path, v), { model = "m" },
                            { model = "up", max_output_tokens = 8192 })
                        if not ok then
                            failures[#failures + 1] = to .. ": " .. table.concat(path, ".") .. " = "
                                .. json.encode(v) .. ": " .. tostring(err)
                            break
                        end
                    end
                end
            end
            assert.are.same({}, failures)
        end)
    end)
end
