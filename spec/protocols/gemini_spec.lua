-- Specs for sluice.protocols.gemini: request (incl. the schema subset),
-- response, error and stream goldens (spec/fixtures/gemini/), the same
-- upstream streams (CRLF-framed, as Google sends them) split at every byte
-- boundary, and client streams cut at every IR event.

local json = require("sluice.json")
local G = require("sluice.protocols.gemini")
local F = require("helpers.fixtures")
local C = require("helpers.codec")

local DIR = "gemini/"

local function chunks(bytes)
    local out = {}
    for _, r in ipairs(F.records(bytes)) do
        assert.are.equal(json.null, r.event) -- Gemini streams are data-only
        out[#out + 1] = r.data
    end
    return out
end

local function parts_of(chunk) return chunk.candidates[1].content.parts end

describe("gemini request", function()
    it("decodes a Gemini CLI request (thoughts, signatures, calls without ids, responses by name)", function()
        local req = assert(G.decode_request(F.json(DIR .. "request_cli.json"),
            { model = "models/gemini-2.5-pro", stream = true }))
        C.assert_ir(DIR .. "request_cli.ir.json", req)
    end)

    it("encodes an IR from another protocol: schema subset, signatures, results by name, merged turns", function()
        local body = G.encode_request(F.json(DIR .. "encode_request_mixed.ir.json"), { model = "gemini-2.5-pro", stream = true })
        F.assert_wire(F.json(DIR .. "encode_request_mixed.json"), body)
    end)

    it("puts signatures back on the parts that carried them when re-encoding a Gemini history", function()
        local req = assert(G.decode_request(F.json(DIR .. "request_cli.json"), { model = "gemini-2.5-pro" }))
        local body = F.wire(G.encode_request(req, { model = "gemini-2.5-pro" }))
        local model1 = body.contents[2].parts
        -- unsigned thought text is not replayed; the call keeps its own signature
        assert.are.equal(2, #model1)
        assert.are.equal("read_file", model1[1].functionCall.name)
        assert.are.equal("CiQBcsjafQ0", model1[1].thoughtSignature)
        assert.is_nil(model1[2].thoughtSignature)
        local results = body.contents[3].parts
        assert.are.same({ "read_file", "run_shell_command" }, { results[1].functionResponse.name, results[2].functionResponse.name })
        assert.are.same(F.wire({ error = "Command exited with code 2: main.c:3: error: expected ';'" }),
            results[2].functionResponse.response)
        assert.are.same(F.wire({ text = "main.c line 3 is missing a semicolon.", thoughtSignature = "CiQBcsjafQ1" }),
            body.contents[4].parts[1])
        assert.are.same(F.wire({ mode = "ANY", allowedFunctionNames = { "run_shell_command" } }),
            body.toolConfig.functionCallingConfig)
        assert.are.same(F.wire({ includeThoughts = true, thinkingBudget = 8192 }), body.generationConfig.thinkingConfig)
    end)

    it("matches results to calls by echoed id first, then by name and order", function()
        local req = assert(G.decode_request({ contents = {
            { role = "user", parts = { { text = "go" } } },
            { role = "model", parts = {
                { functionCall = { id = "toolu_01A", name = "f", args = { n = 1 } } },
                { functionCall = { name = "f", args = { n = 2 } } },
                { functionCall = { name = "f", args = { n = 3 } } } } },
            { role = "user", parts = {
                { functionResponse = { name = "f", response = { output = "second" } } },
                { functionResponse = { id = "toolu_01A", name = "f", response = { output = "first" } } },
                { functionResponse = { name = "f", response = { result = 3 } } } } },
        } }, { model = "gemini-2.5-flash" }))
        local calls, results = req.messages[2].content, req.messages[3].content
        assert.are.same({ "toolu_01A", "call_h_2", "call_h_3" }, { calls[1].id, calls[2].id, calls[3].id })
        -- the id-labelled response claims its call first; unlabelled ones take the rest in order
        assert.are.equal("call_h_2", results[1].tool_call_id)
        assert.are.equal("second", results[1].content[1].text)
        assert.are.equal("toolu_01A", results[2].tool_call_id)
        assert.are.equal("call_h_3", results[3].tool_call_id)
        assert.are.equal("{\"result\":3}", results[3].content[1].text)
    end)

    it("maps tool config modes and thinking settings", function()
        local function dec(body)
            body.contents = { { role = "user", parts = { { text = "x" } } } }
            return assert(G.decode_request(body, { model = "m" }))
        end
        assert.are.same({ type = "none" }, dec({ toolConfig = { functionCallingConfig = { mode = "NONE" } } }).tool_choice)
        assert.are.same({ type = "required" }, dec({ toolConfig = { functionCallingConfig = { mode = "ANY" } } }).tool_choice)
        assert.are.same({ type = "auto" }, dec({ toolConfig = { functionCallingConfig = { mode = "AUTO" } } }).tool_choice)
        assert.are.same({ enabled = false }, dec({ generationConfig = { thinkingConfig = { thinkingBudget = 0 } } }).thinking)
        assert.are.same({ enabled = true }, dec({ generationConfig = { thinkingConfig = { thinkingBudget = -1 } } }).thinking)
        assert.are.same({ enabled = true, effort = "high" },
            dec({ generationConfig = { thinkingConfig = { thinkingLevel = "HIGH" } } }).thinking)
        local rf = dec({ generationConfig = { responseMimeType = "application/json",
            responseSchema = { type = "OBJECT", properties = { a = { type = "STRING" } } } } }).response_format
        assert.are.same({ type = "json_schema", name = "response", schema = { type = "object", properties = { a = { type = "string" } } } }, rf)
        local up = G.encode_request({ messages = {}, tool_choice = { type = "tool", name = "f" },
            tools = { { name = "f", parameters = { type = "object", properties = { a = { type = "string" } } } } },
            thinking = { enabled = false } }, {})
        assert.are.same({ mode = "ANY", allowedFunctionNames = { "f" } }, up.toolConfig.functionCallingConfig)
        assert.are.same({ thinkingBudget = 0 }, up.generationConfig.thinkingConfig)
    end)

    it("needs the model from the URL and builds URL paths", function()
        local req, err = G.decode_request({ contents = {} }, {})
        assert.is_nil(req)
        assert.matches("model", err)
        assert.are.equal("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", G.path("models/gemini-2.5-pro", true))
        assert.are.equal("/v1beta/models/gemini-2.5-flash:generateContent", G.path("gemini-2.5-flash", false))
    end)
end)

describe("gemini response", function()
    it("decodes thoughts, text, signatures and id-less parallel calls with stable ids", function()
        local resp = assert(G.decode_response(F.json(DIR .. "response_tools.json")))
        C.assert_ir(DIR .. "response_tools.ir.json", resp)
        local again = assert(G.decode_response(F.json(DIR .. "response_tools.json")))
        assert.are.equal(resp.content[4].id, again.content[4].id)
    end)

    it("maps a blocked prompt, MAX_TOKENS and SAFETY", function()
        local r = assert(G.decode_response({ promptFeedback = { blockReason = "SAFETY" },
            usageMetadata = { promptTokenCount = 7, totalTokenCount = 7 } }))
        assert.are.equal("content_filter", r.stop_reason)
        assert.are.same({}, r.content)
        assert.are.equal(7, r.usage.input_tokens)
        r = assert(G.decode_response({ candidates = { { finishReason = "MAX_TOKENS",
            content = { role = "model", parts = { { text = "cut" } } } } } }))
        assert.are.equal("max_tokens", r.stop_reason)
        r = assert(G.decode_response({ candidates = { { finishReason = "SAFETY" } } }))
        assert.are.equal("content_filter", r.stop_reason)
    end)

    it("encodes an IR response for a Gemini client (ids echoed, thoughts split out of output tokens)", function()
        local body = G.encode_response(F.json(DIR .. "encode_response.ir.json"),
            { model = "gemini-2.5-pro", id = "resp-gem-1", origin = "anthropic" })
        F.assert_wire(F.json(DIR .. "encode_response.json"), body)
    end)

    it("maps stop reasons out", function()
        local function fr(stop)
            return G.encode_response({ content = {}, stop_reason = stop }, { model = "m", id = "r" }).candidates[1].finishReason
        end
        assert.are.same({ "STOP", "MAX_TOKENS", "SAFETY", "SAFETY", "STOP" },
            { fr("end_turn"), fr("max_tokens"), fr("content_filter"), fr("refusal"), fr("stop_sequence") })
    end)
end)

describe("gemini errors", function()
    it("reports an invalid API key as an authentication error with Google's message", function()
        local e = G.decode_error(400, F.json(DIR .. "error_invalid_key.json"))
        assert.are.same({ status = 401, type = "authentication", message = "API key not valid. Please pass a valid API key." }, e)
    end)

    it("keeps status and message, reads the JSON-array form, encodes Google's shape", function()
        local e = G.decode_error(429, json.decode('[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]'))
        assert.are.same({ status = 429, type = "rate_limit", message = "Resource has been exhausted (e.g. check quota)." }, e)
        local status, body = G.encode_error(e)
        assert.are.equal(429, status)
        assert.are.same({ error = { code = 429, message = e.message, status = "RESOURCE_EXHAUSTED" } }, body)
        status, body = G.encode_error({ status = 529, type = "overloaded", message = "Overloaded" })
        assert.are.equal(503, status)
        assert.are.same({ code = 503, message = "Overloaded", status = "UNAVAILABLE" }, body.error)
    end)
end)

describe("gemini stream decoder", function()
    for _, name in ipairs({ "stream_tools", "stream_max_tokens", "stream_error" }) do
        it("decodes " .. name .. " to the golden IR", function()
            C.assert_ir(DIR .. name .. ".ir.json", C.decode_stream(G, DIR .. name .. ".sse"))
        end)
        it("gives the same IR for " .. name .. " framed at every byte boundary and byte by byte", function()
            C.assert_split_invariant(G, DIR .. name .. ".sse")
        end)
    end

    it("invents nothing at EOF without finishReason", function()
        local dec = G.stream_decoder({})
        dec:feed({ data = '{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"responseId":"r"}' })
        assert.are.same({}, dec:finish())
    end)
end)

describe("gemini stream encoder", function()
    local OPTS = { model = "gemini-2.5-pro", id = "resp-gem-2", origin = "anthropic" }

    it("streams thoughts and text as deltas and tool calls whole (golden)", function()
        local out = C.encode_events(G, F.json(DIR .. "encode_stream.ir.json"), OPTS, { complete = true })
        F.assert_stream(DIR .. "encode_stream.sse", out)
    end)

    it("ends a cut stream with an error chunk and never a finishReason (golden)", function()
        local out = C.encode_events(G, F.json(DIR .. "encode_stream.ir.json"), OPTS,
            { complete = false, reason = "UPSTREAM_EOF_EARLY" }, 12)
        F.assert_stream(DIR .. "encode_stream_cut.sse", out)
        assert.is_nil(out:find("finishReason", 1, true))
    end)

    it("produces a valid stream when cut after any IR event", function()
        C.assert_cuts_valid(G, F.json(DIR .. "encode_stream.ir.json"), OPTS)
        for _, name in ipairs({ "stream_tools", "stream_max_tokens" }) do
            local events = C.decode_stream(G, DIR .. name .. ".sse")
            C.assert_cuts_valid(G, events, { model = "gemini-2.5-pro", origin = "gemini" })
            local out = C.encode_events(G, events, { model = "gemini-2.5-pro", origin = "gemini" }, { complete = true })
            local cs = chunks(out)
            assert.is_string(cs[#cs].candidates[1].finishReason)
        end
    end)

    it("re-encodes a Gemini stream with signatures on the parts Gemini put them on", function()
        local events = C.decode_stream(G, DIR .. "stream_tools.sse")
        local out = C.encode_events(G, events, { model = "gemini-2.5-pro", id = "kP", origin = "gemini" }, { complete = true })
        local cs = chunks(out)
        local calls = {}
        for _, c in ipairs(cs) do
            for _, p in ipairs(parts_of(c)) do
                if p.functionCall then calls[#calls + 1] = p end
            end
        end
        assert.are.equal(2, #calls)
        assert.are.equal("CiQBcsjafQ0=", calls[1].thoughtSignature)
        assert.is_nil(calls[2].thoughtSignature)
        assert.are.same(F.wire({ city = "Paris", units = { temp = "c" } }), calls[1].functionCall.args)
        local last = cs[#cs]
        assert.are.equal("STOP", last.candidates[1].finishReason)
        assert.are.same(F.wire({ { text = "", thoughtSignature = "CiQBcsjafQ9=" } }), parts_of(last))
        assert.are.same({ promptTokenCount = 2100, cachedContentTokenCount = 2048, candidatesTokenCount = 40,
                          thoughtsTokenCount = 100, totalTokenCount = 2240 }, last.usageMetadata)
    end)

    it("hands another provider's thinking back intact when the client replays its parts", function()
        local out = C.encode_events(G, F.json(DIR .. "encode_stream.ir.json"), OPTS, { complete = true })
        local parts = json.array({})
        for _, c in ipairs(chunks(out)) do
            for _, p in ipairs(parts_of(c)) do
                if not (p.text == "" and not p.thoughtSignature) then parts[#parts + 1] = p end
            end
        end
        local req = assert(G.decode_request({ contents = {
            { role = "user", parts = { { text = "weather?" } } }, { role = "model", parts = parts } } }, { model = "m" }))
        local content = req.messages[2].content
        assert.are.same({ type = "thinking", text = "Need weather.", signature = "EqQB", origin = "anthropic" }, content[1])
        assert.are.same({ "text", "tool_call", "tool_call" }, { content[2].type, content[3].type, content[4].type })
        assert.are.equal("toolu_01A", content[3].id)
        -- and that signature is never sent to a Gemini upstream
        local up = F.wire(G.encode_request(req, {}))
        assert.is_nil(json.encode(up):find("EqQB", 1, true))
    end)

    it("turns an in-stream error into Google's error object with the upstream message", function()
        local enc = G.stream_encoder({ model = "m", id = "r" })
        local out = enc:feed({ type = "start" }) .. enc:feed({ type = "block_start", index = 0, kind = "text" })
            .. enc:feed({ type = "text", index = 0, text = "Hi" })
            .. enc:feed({ type = "error", error = { status = 429, type = "rate_limit", message = "Too many requests" } })
            .. enc:close({ complete = true })
        local cs = chunks(out)
        assert.are.equal(2, #cs)
        assert.are.same({ code = 429, message = "Too many requests", status = "RESOURCE_EXHAUSTED" }, cs[2].error)
    end)

    it("reports timeouts as DEADLINE_EXCEEDED and a clean close without finish as an error", function()
        local enc = G.stream_encoder({ model = "m", id = "r" })
        local cs = chunks(enc:close({ complete = false, reason = "UPSTREAM_TIMEOUT_IDLE" }))
        assert.are.equal("DEADLINE_EXCEEDED", cs[1].error.status)
        enc = G.stream_encoder({ model = "m", id = "r" })
        cs = chunks(enc:close())
        assert.is_table(cs[1].error)
    end)
end)
