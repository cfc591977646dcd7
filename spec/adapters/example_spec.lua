-- config/adapters/example.lua, the worked adapter of the README: each of
-- Acme's quirks in, the plain OpenAI chat shape out.
local adapters = require("sluice.adapters")
local translate = require("sluice.translate")
local json = require("sluice.json")

local A = assert(adapters.load("example", "config"))

local function plan()
    return { path = "/chat/completions", query = "", method = "POST",
             headers = { { "authorization", "Bearer sk" }, { "content-type", "application/json" } } }
end

describe("adapter example (Acme Cloud)", function()
    it("sends requests to Acme's path with its field names and a trace header", function()
        local p = plan()
        local body = { model = "acme-large", max_tokens = 64, stream = true,
                       stream_options = { include_usage = true }, messages = json.array({}) }
        local out = A.request({ id = "req-9" }, p, body)
        assert.equal("/acme/v2/chat", p.path)
        assert.equal("req-9", adapters.header(p.headers, "x-acme-trace"))
        assert.equal("Bearer sk", adapters.header(p.headers, "authorization"))
        assert.equal(64, out.max_output_tokens)
        assert.is_nil(out.max_tokens)
        assert.is_nil(out.stream_options)
        assert.is_nil(out.session)
        assert.equal('{"messages":[]}', json.encode({ messages = out.messages }))  -- arrays survive
    end)

    it("sends back the session Acme gave last turn", function()
        local out = A.request({ id = "r", upstream_session_id = "S-7" }, plan(), { model = "m" })
        assert.equal("S-7", out.session)
    end)

    it("sees errors wrapped in a 200 and gives them a real status", function()
        local cases = {
            { "quota_exceeded", 429, "rate_limit" },
            { "model_not_found", 404, "not_found" },
            { "unauthorized", 401, "authentication" },
            { "something_new", 502, "api_error" },
        }
        for _, c in ipairs(cases) do
            local e = A.classify_error({}, 200, { status = "error", error = { code = c[1], message = "nope" } })
            assert.same({ status = c[2], type = c[3], message = "acme " .. c[1] .. ": nope" }, e)
        end
        assert.is_nil(A.classify_error({}, 200, { status = "ok", result = {} }))
        assert.is_nil(A.classify_error({}, 200, "plain text"))
    end)

    it("unwraps good answers and finds the session", function()
        local inner = { id = "c", choices = json.array({}) }
        local s, b = A.response({}, 200, nil, { status = "ok", result = inner, session = "S-1" })
        assert.equal(200, s)
        assert.equal(inner, b)
        assert.is_nil((A.response({}, 200, nil, { id = "unwrapped" })))
        assert.equal("S-1", A.session_id({}, nil, { session = "S-1" }))
        assert.equal("S-2", A.session_id({}, { ["x-acme-session"] = "S-2" }, nil))
        assert.is_nil(A.session_id({}, {}, nil))
    end)

    it("drops heartbeats and turns in-stream errors into OpenAI error chunks", function()
        assert.is_nil(A.event({}, { event = "heartbeat", data = "{}" }))
        local chunk = { data = '{"choices":[{"index":0,"delta":{"content":"hi"}}]}' }
        assert.equal(chunk, A.event({}, chunk))
        local ev = A.event({}, { data = '{"status":"error","error":{"code":"quota_exceeded","message":"out of credit"}}' })
        -- what an Anthropic client of this supplier finally sees
        local pipe = translate.stream("anthropic", "openai-chat", { client_model = "claude-x" })
        local out = pipe:feed_batch({ { data = chunk.data }, ev })
        assert.truthy(out:find("event: error", 1, true), out)
        assert.truthy(out:find("acme quota_exceeded: out of credit", 1, true), out)
        assert.truthy(out:find("rate_limit_error", 1, true), out)
    end)
end)
