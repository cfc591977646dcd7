-- sluice.adapters: finding and loading an adapter, the contract checks, the
-- header helpers, and the host running each hook at its place (request
-- shaping, whole answers, stream events, session ids, hidden errors).
local adapters = require("sluice.adapters")
local json = require("sluice.json")
local helper = require("helpers.host")

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    os.execute("mkdir -p " .. d .. "/adapters")
    return d
end

local function write(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
end

describe("sluice.adapters.load", function()
    local dir
    before_each(function() dir = tmpdir() end)
    after_each(function() os.execute("rm -rf " .. dir) end)

    it("loads <config dir>/adapters/<name>.lua", function()
        write(dir .. "/adapters/mine.lua", "return { tag = 'mine', request = function() end }")
        local ad = assert(adapters.load("mine", dir))
        assert.equal("mine", ad.tag)
        assert.is_function(ad.request)
    end)

    it("falls back to the built-in lua/sluice/adapters/<name>.lua", function()
        local saved = package.path
        local lib = tmpdir()
        os.execute("mkdir -p " .. lib .. "/sluice/adapters")
        write(lib .. "/sluice/adapters/builtin.lua", "return { tag = 'builtin' }")
        package.path = lib .. "/?.lua;" .. saved
        local ad, err = adapters.load("builtin", dir)
        package.path = saved
        os.execute("rm -rf " .. lib)
        assert.is_table(ad, err)
        assert.equal("builtin", ad.tag)
    end)

    it("prefers the config's adapter over a built-in one of the same name", function()
        local saved = package.path
        local lib = tmpdir()
        os.execute("mkdir -p " .. lib .. "/sluice/adapters")
        write(lib .. "/sluice/adapters/both.lua", "return { tag = 'builtin' }")
        write(dir .. "/adapters/both.lua", "return { tag = 'ops' }")
        package.path = lib .. "/?.lua;" .. saved
        local ad = adapters.load("both", dir)
        package.path = saved
        os.execute("rm -rf " .. lib)
        assert.equal("ops", ad.tag)
    end)

    it("explains what is wrong", function()
        write(dir .. "/adapters/syntax.lua", "return {")
        write(dir .. "/adapters/raises.lua", "error('boom')")
        write(dir .. "/adapters/number.lua", "return 42")
        write(dir .. "/adapters/typo.lua", "return { respone = function() end }")
        write(dir .. "/adapters/notfn.lua", "return { request = 'yes' }")
        local cases = {
            { "nope", "no adapter nope" },
            { "../etc/passwd", "expected an adapter name" },
            { "syntax", "cannot load adapter" },
            { "raises", "boom" },
            { "number", "must return a table" },
            { "typo", "unknown function `respone`" },
            { "notfn", "`request` must be a function" },
        }
        for _, c in ipairs(cases) do
            local ad, err = adapters.load(c[1], dir)
            assert.is_nil(ad)
            assert.truthy(err:find(c[2], 1, true), c[1] .. ": " .. tostring(err))
        end
    end)

    it("runs adapter code with the JIT off, so the script budget can stop it", function()
        if not jit then return end
        write(dir .. "/adapters/hot.lua", "return { request = function() end }")
        local real, calls = jit.off, {}
        jit.off = function(f, recursive) calls[#calls + 1] = { type(f), recursive } return real(f, recursive) end
        local ad, err = adapters.load("hot", dir)
        jit.off = real
        assert.is_table(ad, err)
        assert.same({ { "function", true } }, calls)
    end)
end)

describe("sluice.adapters helpers", function()
    it("reads, sets and removes headers case-insensitively", function()
        local h = { { "Content-Type", "application/json" }, { "x-a", "1" }, { "X-A", "2" } }
        assert.equal("application/json", adapters.header(h, "content-type"))
        adapters.set_header(h, "x-a", "3")
        assert.same({ { "Content-Type", "application/json" }, { "x-a", "3" } }, h)
        adapters.remove_header(h, "CONTENT-TYPE")
        assert.same({ { "x-a", "3" } }, h)
        assert.is_nil(adapters.header(h, "content-type"))
    end)

    it("maps a batch of events: keep, change, drop, split", function()
        local ad = { event = function(ctx, ev)
            if ev.data == "drop" then return nil end
            if ev.data == "two" then return { { data = "a" }, { data = "b" } } end
            return { event = ev.event, data = ev.data:upper() }
        end }
        local out = adapters.map_events(ad, {}, { { data = "x" }, { data = "drop" }, { event = "e", data = "two" } })
        assert.same({ { data = "X" }, { data = "a" }, { data = "b" } }, out)
    end)

    it("writes events back as SSE, multi-line data included", function()
        assert.equal("event: ping\ndata: {}\n\ndata: a\ndata: b\n\n",
            adapters.encode_events({ { event = "ping", data = "{}" }, { data = "a\nb" } }))
    end)
end)

-- ---------------------------------------------------------------------------
-- The host runs the hooks: a config with an adapter, requests and answers
-- driven through sluice.host as the C core would.

local CHAT_OK = { id = "c1", object = "chat.completion", model = "m-up",
                  choices = { { index = 0, message = { role = "assistant", content = "hi" }, finish_reason = "stop" } },
                  usage = { prompt_tokens = 2, completion_tokens = 1, total_tokens = 3 } }

local function host_with(adapter_src, protocol)
    return helper.load(([[
        return {
          suppliers = { up = { protocol = "%s", base_url = "http://up.test/v1", adapter = "t",
                               auth = { type = "bearer", token = "sk-up" } } },
          routes = { chat = { { match = "*", supplier = "up" } }, claude = { { match = "*", supplier = "up" } } },
        }]]):format(protocol or "openai-chat"), { t = adapter_src })
end

local function chat_ctx(body)
    return { id = "req-1", method = "POST", path = "/v1/chat/completions", query = "",
             headers = { ["content-type"] = "application/json" }, peer = "127.0.0.1",
             body = json.encode(body or { model = "gpt-x", max_tokens = 5,
                                          messages = { { role = "user", content = "hi" } } }) }
end

local function header(plan, name)
    for _, h in ipairs(plan.headers) do if h[1] == name then return h[2] end end
end

describe("sluice.host with an adapter", function()
    it("lets request() change path, headers and body", function()
        local H = host_with([[
            return { request = function(ctx, plan, body)
                plan.path = "/custom/chat"
                plan.headers[#plan.headers + 1] = { "x-trace", ctx.id }
                body.max_completion = body.max_tokens
                body.max_tokens = nil
            end }]])
        local plan = H.request(chat_ctx())
        assert.equal("http://up.test/v1/custom/chat", plan.url)
        assert.equal("req-1", header(plan, "x-trace"))
        assert.equal("Bearer sk-up", header(plan, "authorization"))
        local sent = json.decode(plan.body)
        assert.equal(5, sent.max_completion)
        assert.is_nil(sent.max_tokens)
        assert.equal("gpt-x", sent.model)
        assert.is_false(plan.transform)  -- no answer hooks: passthrough stays passthrough
    end)

    it("fails the request with a 502 when request() refuses", function()
        local H = host_with([[return { request = function() return nil, "no tenant configured" end }]])
        local resp = H.request(chat_ctx())
        assert.equal(502, resp.status)
        local msg = json.decode(resp.body).error.message
        assert.truthy(msg:find("supplier up", 1, true), msg)
        assert.truthy(msg:find("no tenant configured", 1, true), msg)
    end)

    it("sends the client's bytes untouched when the adapter has no request hook", function()
        local H = host_with([[return { response = function() end }]])
        local plan = H.request(chat_ctx())
        assert.is_nil(plan.body)
        assert.is_true(plan.transform)   -- it wants to see answers
        assert.equal("http://up.test/v1/chat/completions", plan.url)
    end)

    it("turns a 200 that is an error into the client's error", function()
        local H = host_with([[
            return { classify_error = function(ctx, status, body)
                if body.ok == false then return { status = 429, type = "rate_limit", message = body.why } end
            end }]])
        local ctx = chat_ctx()
        H.request(ctx)
        local r = H.body(ctx, 200, '{"ok":false,"why":"slow down"}')
        assert.equal(429, r.status)
        local e = json.decode(r.body).error
        assert.equal("slow down", e.message)
        assert.equal("requests", e.type) -- OpenAI's rate-limit type (PROTOCOLS §2.5)
        -- a normal answer passes
        r = H.body(ctx, 200, json.encode(CHAT_OK))
        assert.equal(200, r.status)
        assert.equal("hi", json.decode(r.body).choices[1].message.content)
    end)

    it("in the Anthropic client's shape when the request was translated", function()
        local H = host_with([[
            return { classify_error = function(ctx, status, body)
                if body.ok == false then return { status = 502, message = "down for maintenance" } end
            end }]])
        local ctx = { id = "req-2", method = "POST", path = "/v1/messages", query = "", peer = "127.0.0.1",
                      headers = { ["anthropic-version"] = "2023-06-01" },
                      body = '{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}' }
        H.request(ctx)
        local r = H.body(ctx, 200, '{"ok":false}')
        assert.equal(502, r.status)
        local b = json.decode(r.body)
        assert.equal("error", b.type)
        assert.equal("api_error", b.error.type)
        assert.equal("down for maintenance", b.error.message)
    end)

    it("maps whole answers before translation and keeps the session id", function()
        local H = host_with([[
            return {
              response = function(ctx, status, headers, body) return status, body.result end,
              session_id = function(ctx, headers, body) return body.sess end,
            }]])
        local ctx = { id = "req-3", method = "POST", path = "/v1/messages", query = "", peer = "127.0.0.1",
                      headers = { ["anthropic-version"] = "2023-06-01" },
                      body = '{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}' }
        H.request(ctx)
        local r = H.body(ctx, 200, json.encode({ sess = "S-42", result = CHAT_OK }))
        assert.equal(200, r.status)
        local b = json.decode(r.body)
        assert.equal("message", b.type)
        assert.equal("hi", b.content[1].text)
        assert.equal("claude-x", b.model)
        assert.equal("S-42", ctx.upstream_session_id)
        local extra = json.decode(H.log(ctx).extra_json)
        assert.equal("S-42", extra.upstream_session)
        -- the record also names the session (hashed) and its binding (sluice.sticky)
        assert.truthy(extra.session:match("^%x+$"))
        assert.same({ supplier = "up", key_index = 1 }, extra.binding)
        -- the supplier's headers reach both hooks on a whole answer
        local H2 = host_with([[
            return {
              response = function(ctx, status, headers, body) body.id = headers["x-id"]; return status, body end,
              session_id = function(ctx, headers, body) return headers["x-sess"] end,
            }]])
        local ctx2 = chat_ctx()
        H2.request(ctx2)
        r = H2.body(ctx2, 200, json.encode(CHAT_OK), { ["x-sess"] = "S-h", ["x-id"] = "from-header" })
        assert.equal("from-header", json.decode(r.body).id)
        assert.equal("S-h", ctx2.upstream_session_id)
    end)

    it("maps stream events on a same-protocol stream and closes a cut one properly", function()
        local H = host_with([[
            return {
              event = function(ctx, ev) if ev.event ~= "ping" then return ev end end,
              session_id = function(ctx, headers) return headers["x-sess"] end,
            }]])
        local ctx = chat_ctx({ model = "gpt-x", stream = true, messages = { { role = "user", content = "hi" } } })
        local plan = H.request(ctx)
        assert.is_true(plan.transform)
        assert.is_nil(H.response(ctx, 200, { ["content-type"] = "text/event-stream", ["x-sess"] = "S-1" }))
        assert.equal("S-1", ctx.upstream_session_id)
        local out = H.events(ctx, { { event = "ping", data = "{}" }, { data = '{"choices":[]}' } })
        assert.equal('data: {"choices":[]}\n\n', out)
        local tail = H.finish(ctx, { reason = "UPSTREAM_EOF_EARLY", committed = true, expected = false,
                                     status = 200, detail = "" })
        assert.truthy(tail:find("data: [DONE]", 1, true), tail)
        assert.truthy(tail:find("UPSTREAM_EOF_EARLY", 1, true), tail)
    end)

    it("maps stream events before translating them", function()
        local H = host_with([[
            return { event = function(ctx, ev)
                if ev.event == "heartbeat" then return nil end
                return ev
            end }]])
        local ctx = { id = "req-4", method = "POST", path = "/v1/messages", query = "", peer = "127.0.0.1",
                      headers = { ["anthropic-version"] = "2023-06-01" },
                      body = '{"model":"claude-x","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}' }
        H.request(ctx)
        H.response(ctx, 200, { ["content-type"] = "text/event-stream" })
        local chunk = json.encode({ id = "c", object = "chat.completion.chunk", model = "m",
            choices = { { index = 0, delta = { role = "assistant", content = "yo" } } } })
        local out = H.events(ctx, { { event = "heartbeat", data = "not json at all" }, { data = chunk } })
        assert.truthy(out:find("event: message_start", 1, true), out)
        assert.truthy(out:find('"text":"yo"', 1, true), out)
    end)
end)

describe("the sluice module adapters and hooks use", function()
    local sluice = require("sluice")

    it("refuses http and sleep outside the request phase, saying why", function()
        local ok, err = pcall(sluice.http, { url = "http://127.0.0.1:1/" })
        assert.is_false(ok)
        assert.truthy(err:find("only be called during the request phase", 1, true), err)
        -- a coroutine of the script's own is not the request phase either
        local co = coroutine.create(function() return sluice.sleep(1) end)
        local _, e2 = coroutine.resume(co)
        assert.truthy(e2:find("request phase", 1, true), e2)
        -- the request phase without the C core (plain busted) says that instead
        co = coroutine.create(function() sluice.enter_request(); return sluice.sleep(1) end)
        local _, e3 = coroutine.resume(co)
        assert.truthy(e3:find("needs the sluice binary", 1, true), e3)
    end)

    it("has a stand-in shared store with the C store's API and TTLs", function()
        local now = 100
        local s = sluice.local_store(function() return now end)
        assert.is_true(s.add("k", "v", 10))
        assert.same({ false, "exists" }, { s.add("k", "w", 10) })
        assert.same({ "v", 10 }, { s.get("k") })
        now = 110
        assert.is_nil(s.get("k"))
        assert.is_true(s.add("k", "w"))
        assert.same({ "w", 0 }, { s.get("k") })   -- 0: never expires
        assert.equal(3, s.incr("n", 3))
        assert.equal(2, s.count())
        s.delete("k")
        assert.equal(1, s.count())
    end)
end)
