-- sluice.protocols (the registry): it is the only list of protocols, every
-- protocol module declares the facts the generic modules read, and a fifth
-- protocol added through it alone is picked up by config, router,
-- translate, toolnames, upstream and host.

local P = require("sluice.protocols")

describe("sluice.protocols registry", function()
    it("lists the four protocols, their services and the default, in order", function()
        assert.same({ "anthropic", "openai-chat", "openai-responses", "gemini" }, P.names())
        local services = {}
        for i, e in ipairs(P.list) do services[i] = e.service end
        assert.same({ "claude", "chat", "codex", "gemini" }, services)
        assert.equal("openai-chat", P.default)
        assert.equal("codex", P.by_name["openai-responses"].service)
        assert.equal("gemini", P.by_service.gemini.name)
    end)

    it("loads every module with all of its facts", function()
        for _, e in ipairs(P.list) do
            local m, err = P.get(e.name)
            assert.truthy(m, err)
            assert.equal(e.name, m.name)
            assert.is_string(m.credential.header)
            assert.is_number(m.tool_names.max)
            assert.truthy(#m.endpoints > 0, e.name)
        end
        assert.same({ nil, "unknown protocol nope" }, { P.get("nope") })
    end)

    it("refuses a line that collides with another", function()
        assert.has_error(function() P.register({ name = "gemini", module = "x", service = "other" }) end)
        assert.has_error(function() P.register({ name = "x", module = "x", service = "chat" }) end)
        assert.has_error(function() P.register({ name = "x", module = "x", service = "a/b" }) end)
        assert.has_error(function() P.register({ name = "x", module = "x", service = "x", default = true }) end)
        assert.equal(4, #P.list)
    end)

    it("says which fact a module lacks", function()
        package.loaded["spec_registry_broken"] = { name = "broken" }
        P.register({ name = "broken", module = "spec_registry_broken", service = "broken" })
        local m, err = P.get("broken")
        assert.is_nil(m)
        assert.matches("fact title: expected a string", err, 1, true)
        -- undo: this file's later tests see the real four
        table.remove(P.list)
        P.by_name.broken, P.by_service.broken = nil, nil
        package.loaded["spec_registry_broken"] = nil
    end)
end)

-- ---------------------------------------------------------------- a fifth protocol

-- "fake-proto": a toy protocol that lives only in this spec. Its module is
-- the facts every protocol declares plus a small codec:
--   request  { model, prompt, tools = { { name } }, stream }
--   answer   { id, model, text, calls = { { name, args } }, tokens = { n_in, n_out }, done = "stop"|"tools" }
--   stream   data: {"delta":"..."} ... data: {"done":"stop","tokens":[i,o]}
local function fake_module()
    local json = require("sluice.json")
    local ir = require("sluice.ir")
    local M = { name = "fake-proto" }

    M.title = "Fake"
    M.endpoints = {
        { path = "/v1/fake", kind = "generate" },
        { match = "^/v9/models/([^/:]+):talk$", kind = "generate", stream = true },
    }
    M.models = {
        path = "/v1/fake/models",
        header = "fake-version",
        list = function(ids) return { fake_models = json.array(ids) } end,
    }
    M.guess = { contains = "/fakey", rank = 0 }
    M.credential = { header = "x-fake-key", query = "fkey" }
    M.upstream_headers = { { "fake-version", "9" } }
    M.tool_names = { max = 16, pattern = "^[a-z0-9_]+$", bad = "[^a-z0-9_]" }
    M.terminal = { { data_has = "\"done\":" } }
    M.usage_events = M.terminal
    function M.path(model, stream) return "/v1/fake" end

    function M.decode_request(body)
        if type(body.prompt) ~= "string" then return nil, "prompt: required string" end
        local tools
        for i, t in ipairs(body.tools or {}) do
            tools = tools or {}
            tools[i] = { name = t.name, parameters = { type = "object" } }
        end
        return { model = body.model, stream = body.stream == true, tools = tools,
                 messages = { { role = "user", content = { { type = "text", text = body.prompt } } } } }
    end

    function M.encode_request(req, opts)
        local text = {}
        for _, m in ipairs(req.messages) do
            for _, p in ipairs(m.content) do
                if p.type == "text" then text[#text + 1] = p.text end
            end
        end
        local tools
        for i, t in ipairs(req.tools or {}) do
            tools = tools or {}
            tools[i] = { name = t.name }
        end
        return { model = opts.model, prompt = table.concat(text, "\n"), tools = tools, stream = opts.stream }
    end

    function M.decode_response(b)
        if type(b.text) ~= "string" then return nil, "text: required string" end
        local content = { { type = "text", text = b.text } }
        for i, c in ipairs(b.calls or {}) do
            content[#content + 1] = { type = "tool_call", id = "call_" .. i, name = c.name, arguments = c.args or {} }
        end
        return { id = b.id, model = b.model, content = content,
                 stop_reason = b.done == "tools" and "tool_use" or "end_turn",
                 usage = { input_tokens = b.tokens and b.tokens[1], output_tokens = b.tokens and b.tokens[2] } }
    end

    function M.encode_response(resp, opts)
        local text, calls = {}, {}
        for _, p in ipairs(resp.content) do
            if p.type == "text" then text[#text + 1] = p.text end
            if p.type == "tool_call" then calls[#calls + 1] = { name = p.name, args = p.arguments } end
        end
        local u = resp.usage or {}
        return { id = opts.id or resp.id, model = opts.model, text = table.concat(text),
                 calls = #calls > 0 and calls or nil, tokens = { u.input_tokens, u.output_tokens },
                 done = resp.stop_reason == "tool_use" and "tools" or "stop" }
    end

    function M.decode_error(status, body)
        local msg = type(body) == "table" and body.oops or tostring(body)
        return ir.error(status, msg)
    end

    function M.encode_error(err)
        return err.status, { oops = err.message, kind = err.type }
    end

    function M.stream_decoder(opts)
        local d = { started = false }
        function d:feed(ev)
            local v = json.decode(ev.data)
            local out = {}
            if not self.started then
                self.started = true
                out[#out + 1] = { type = "start", model = opts.model }
                out[#out + 1] = { type = "block_start", index = 0, kind = "text" }
            end
            if v.delta then out[#out + 1] = { type = "text", index = 0, text = v.delta } end
            if v.done then
                out[#out + 1] = { type = "block_stop", index = 0 }
                out[#out + 1] = { type = "usage", usage = { input_tokens = v.tokens[1], output_tokens = v.tokens[2] } }
                out[#out + 1] = { type = "finish", stop_reason = "end_turn" }
            end
            return out
        end
        function d:finish() return {} end
        return d
    end

    function M.stream_encoder(opts)
        local e = { usage = {} }
        function e:feed(ev)
            if ev.type == "text" then return "data: " .. json.encode({ delta = ev.text }) .. "\n\n" end
            if ev.type == "usage" then self.usage = ev.usage end
            if ev.type == "finish" then
                self.done = true
                return "data: " .. json.encode({ done = "stop",
                    tokens = { self.usage.input_tokens, self.usage.output_tokens } }) .. "\n\n"
            end
            return ""
        end
        function e:close(outcome)
            if self.done then return "" end
            return "data: " .. json.encode({ done = "error", oops = outcome and outcome.message }) .. "\n\n"
        end
        function e:resume() end
        return e
    end

    return M
end

-- The modules that derive their tables from the registry, loaded afresh
-- after the fake's registry line (insulate puts the originals back).
local DERIVED = { "sluice.protocols", "sluice.config", "sluice.router", "sluice.translate",
                  "sluice.toolnames", "sluice.upstream", "sluice.host" }

insulate("a fifth protocol added by one registry line", function()
    local json = require("sluice.json")
    local P5, config, router, T, TN, U, host

    setup(function()
        for _, name in ipairs(DERIVED) do package.loaded[name] = nil end
        package.loaded["spec_fake_protocol"] = fake_module()
        P5 = require("sluice.protocols")
        -- the one line a new protocol adds to protocols/init.lua
        P5.register { name = "fake-proto", module = "spec_fake_protocol", service = "fake" }
        config, router, T = require("sluice.config"), require("sluice.router"), require("sluice.translate")
        TN, U, host = require("sluice.toolnames"), require("sluice.upstream"), require("sluice.host")
    end)

    local function load_config(text)
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write(text)
        f:close()
        local c, err = config.load(path)
        os.remove(path)
        return c, err
    end

    local CONFIG = [[return {
  suppliers = {
    f = { protocol = "fake-proto", base_url = "http://127.0.0.1:1", auth = { type = "passthrough" },
          models = { "fk-1" } },
    o = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1", auth = { type = "bearer", token = "t" } },
  },
  routes = { claude = { { supplier = "f" } }, fake = { { supplier = "o" } } },
}]]

    it("config accepts the protocol for suppliers and its service for routes", function()
        assert.truthy(load_config(CONFIG))
        assert.equal("fake-proto", config.SERVICES.fake)
        local _, err = load_config([[return { suppliers = { s = { protocol = "grpc", base_url = "http://x" } } }]])
        assert.matches("expected anthropic, openai-chat, openai-responses, gemini or fake-proto; got grpc", err, 1, true)
        _, err = load_config([[return { suppliers = { s = { protocol = "gemini", base_url = "http://x" } },
                                        routes = { nope = { { supplier = "s" } } } }]])
        assert.matches("known: claude, chat, codex, gemini, fake", err, 1, true)
    end)

    it("router classifies its endpoints, its models path and its service prefix", function()
        assert.same({ service = "fake", protocol = "fake-proto", kind = "generate" }, router.classify("POST", "/v1/fake"))
        assert.same({ service = "chat", protocol = "fake-proto", kind = "generate" },
            router.classify("POST", "/chat/v1/fake"))
        assert.same({ service = "fake", protocol = "fake-proto", kind = "generate", model = "m1", stream = true },
            router.classify("POST", "/v9/models/m1:talk"))
        assert.same({ service = "claude", protocol = "fake-proto", kind = "generate", model = "m2", stream = true },
            router.classify("POST", "/claude/v9/models/m2:talk"))
        assert.same({ service = "fake", protocol = "anthropic", kind = "generate" },
            router.classify("POST", "/fake/v1/messages"))
        assert.same({ kind = "models", protocol = "fake-proto" }, router.classify("GET", "/v1/fake/models"))
        assert.same({ nil, 405, "use POST for /v1/fake" }, { router.classify("GET", "/v1/fake") })
        -- the four are still there
        assert.same({ service = "claude", protocol = "anthropic", kind = "generate" },
            router.classify("POST", "/v1/messages"))
    end)

    it("translate composes its codec with the others, tool names cut to its rule", function()
        assert.equal("fake-proto", T.PROTOCOLS[5])
        assert.equal("spec_fake_protocol", P5.by_name["fake-proto"].module)
        assert.equal(16, TN.RULES["fake-proto"].max)
        local long = "Read.Some-File_from_the_workspace"
        local body, state = T.request("anthropic", "fake-proto", {
            model = "claude-x", max_tokens = 5, tools = { { name = long, input_schema = { type = "object" } } },
            messages = { { role = "user", content = "hello" } },
        }, nil, { model = "fake-1" })
        assert.truthy(body, state)
        assert.equal("fake-1", body.model)
        assert.equal("hello", body.prompt)
        local short = body.tools[1].name
        assert.truthy(#short <= 16 and short:find("^[a-z0-9_]+$"), short)

        local answer = T.response("anthropic", "fake-proto", {
            id = "f1", model = "fake-1", text = "ok", calls = { { name = short, args = { a = 1 } } },
            tokens = { 3, 4 }, done = "tools" }, state)
        assert.equal("tool_use", answer.stop_reason)
        assert.equal(long, answer.content[2].name)
        assert.equal("claude-x", answer.model)

        local chat = T.request("fake-proto", "openai-chat", { model = "m", prompt = "hi" }, nil, {})
        assert.equal("hi", chat.messages[1].content)

        local _, st = T.request("openai-chat", "fake-proto",
            { model = "g", stream = true, messages = { { role = "user", content = "x" } } }, nil, {})
        local pipe = T.stream("openai-chat", "fake-proto", st)
        local out = pipe:feed_batch({ { data = '{"delta":"Hel"}' }, { data = '{"delta":"lo"}' },
                                      { data = '{"done":"stop","tokens":[2,5]}' } })
        out = out .. pipe:close({ complete = true })
        assert.matches('"content":"Hel"', out, 1, true)
        assert.matches("data: [DONE]", out, 1, true)
        assert.same({ input_tokens = 2, output_tokens = 5 }, pipe.acct.usage)

        local status, err = T.error("anthropic", "fake-proto", 429, '{"oops":"slow down"}')
        assert.equal(429, status)
        assert.equal("slow down", err.error.message)
    end)

    it("upstream re-homes a passthrough key and adds its required header", function()
        local supplier = { id = "f", protocol = "fake-proto", base_url = "http://up", auth = { type = "passthrough" },
                           headers = {}, timeouts = {}, verify_tls = true }
        local ctx = { protocol = "anthropic", headers = { ["x-api-key"] = "client-k" }, query = "", id = "r",
                      model = "claude-x", stream = false,
                      request = { model = "claude-x", max_tokens = 5, messages = { { role = "user", content = "hi" } } } }
        local plan = assert(U.plan({}, ctx, { kind = "generate" }, { name = "r" }, supplier))
        local h = {}
        for _, kv in ipairs(plan.headers) do h[kv[1]] = kv[2] end
        assert.equal("client-k", h["x-fake-key"])
        assert.equal("9", h["fake-version"])
        assert.is_nil(h["x-api-key"])
        assert.equal("http://up/v1/fake", plan.url)
        assert.equal(P5.get("fake-proto").terminal, plan.terminal)

        -- same protocol: its query key moves to its header, and leaves the query
        ctx = { protocol = "fake-proto", headers = { ["fake-version"] = "8" }, query = "fkey=q1&x=1", id = "r",
                model = "m", stream = false, request = { model = "m", prompt = "hi" } }
        plan = assert(U.plan({}, ctx, { kind = "generate" }, { name = "r" }, supplier))
        h = {}
        for _, kv in ipairs(plan.headers) do h[kv[1]] = kv[2] end
        assert.equal("q1", h["x-fake-key"])
        assert.equal("8", h["fake-version"])
        assert.equal("http://up/v1/fake?x=1", plan.url)
        assert.is_true(U.check_inbound_key({ keys = { "q1" }, key_scopes = { "key:q1" } }, ctx))
        local ok, why = U.check_inbound_key({ keys = { "z" } }, { headers = {}, query = "" })
        assert.is_false(ok)
        assert.matches("Authorization: Bearer, x-api-key, x-goog-api-key or x-fake-key", why, 1, true)
    end)

    it("host answers in its shapes: plans, its models list, its errors", function()
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write(CONFIG)
        f:close()
        assert(host.init(path, 1))
        os.remove(path)

        local plan = host.request({ method = "POST", path = "/v1/fake", headers = {}, query = "", id = "a",
                                    body = '{"model":"m","prompt":"hi"}' })
        assert.equal("http://127.0.0.1:1/v1/chat/completions", plan.url)
        assert.equal("fake", plan.service)

        plan = host.request({ method = "POST", path = "/v1/messages", headers = { ["x-api-key"] = "k" }, query = "",
                              id = "b", body = '{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}' })
        assert.equal("http://127.0.0.1:1/v1/fake", plan.url)
        assert.equal("hi", json.decode(plan.body).prompt)

        local r = host.request({ method = "GET", path = "/v1/models", headers = { ["fake-version"] = "9" }, query = "",
                                 id = "c", body = "" })
        assert.same({ "fk-1" }, json.decode(r.body).fake_models)

        r = host.request({ method = "POST", path = "/nope/fakey", headers = {}, query = "", id = "d", body = "" })
        assert.equal(404, r.status)
        assert.equal("not_found", json.decode(r.body).kind)
    end)
end)
