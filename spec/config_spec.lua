-- sluice.config: the checks that keep a config from opening a hole — a
-- public listener needs keys and a long admin token, a route's model is a
-- real model name — and that ops code (the config file) runs with the JIT
-- off so the script budget reaches it.
local config = require("sluice.config")

local function tmpfile(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
end

local function load_text(text)
    local path = tmpfile(text)
    local cfg, err = config.load(path)
    os.remove(path)
    return cfg, err
end

local SUPPLIER = [[suppliers = { oa = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1",
  auth = { type = "bearer", token = "sk-upstream" } } },]]

describe("sluice.config TLS listeners", function()
    local cert, key = tmpfile("cert"), tmpfile("key")
    teardown(function() os.remove(cert); os.remove(key) end)

    it("takes { addr, tls = { cert, key } } beside plain addresses and hands both to the core", function()
        local cfg, err = load_text(("return { listen = { '127.0.0.1:7070', { addr = '127.0.0.1:7443', " ..
            "tls = { cert = %q, key = %q } } }, %s }"):format(cert, key, SUPPLIER))
        assert.is_table(cfg, err)
        local view = config.core_view(cfg)
        assert.same({ "127.0.0.1:7070", "127.0.0.1:7443" }, view.listen)
        assert.same({ false, { cert = cert, key = key } }, view.listen_tls)
    end)

    it("names the listener field that is wrong", function()
        local _, err = load_text(("return { listen = { { addr = '127.0.0.1:7443', tls = { cert = '/nonexistent/c.pem', " ..
            "key = %q } } }, %s }"):format(key, SUPPLIER))
        assert.matches("^listen%[1%]%.tls%.cert: cannot read /nonexistent/c.pem", err)
        _, err = load_text(("return { listen = { { addr = '127.0.0.1:7443', tls = { cert = %q } } }, %s }")
            :format(cert, SUPPLIER))
        assert.matches("^listen%[1%]%.tls%.key: ", err)
        _, err = load_text("return { listen = { { adr = '127.0.0.1:7443' } }, " .. SUPPLIER .. " }")
        assert.matches("^listen%[1%]%.adr: unknown field", err)
        _, err = load_text("return { listen = { { addr = '127.0.0.1' } }, " .. SUPPLIER .. " }")
        assert.matches("^listen%[1%]%.addr: expected \"host:port\"", err)
    end)

    it("still needs keys and an admin token on a public TLS listener", function()
        local _, err = load_text(("return { listen = { { addr = '0.0.0.0:7443', tls = { cert = %q, key = %q } } }, %s }")
            :format(cert, key, SUPPLIER))
        assert.matches("^keys: required", err)
    end)
end)

describe("sluice.config public listeners", function()
    it("needs keys and an admin token of at least 16 characters off loopback", function()
        local _, err = load_text("return { listen = { '0.0.0.0:7070' }, " .. SUPPLIER .. " }")
        assert.matches("^keys: required", err)
        _, err = load_text("return { listen = { '0.0.0.0:7070' }, keys = { 'gateway-key-1' }, " .. SUPPLIER .. " }")
        assert.matches("^admin.token: required", err)
        _, err = load_text("return { listen = { '0.0.0.0:7070' }, keys = { 'gateway-key-1' }, " ..
            "admin = { token = 'x' }, " .. SUPPLIER .. " }")
        assert.matches("^admin.token: must be at least 16 characters", err)
        _, err = load_text("return { listen = { '[::]:7070' }, keys = { 'gateway-key-1' }, " ..
            "admin = { token = '123456789012345' }, " .. SUPPLIER .. " }")
        assert.matches("^admin.token: must be at least 16 characters", err)
        local cfg
        cfg, err = load_text("return { listen = { '0.0.0.0:7070' }, keys = { 'gateway-key-1' }, " ..
            "admin = { token = '1234567890123456' }, " .. SUPPLIER .. " }")
        assert.is_table(cfg, err)
    end)

    it("lets a loopback listener keep a short admin token", function()
        local cfg, err = load_text("return { listen = { '127.0.0.1:7070' }, admin = { token = 'x' }, " ..
            SUPPLIER .. " }")
        assert.is_table(cfg, err)
    end)
end)

describe("sluice.config route models", function()
    it("refuses a route model that is not a model name", function()
        for _, m in ipairs({ "../v1beta/cachedContents", "gemini?x=1", "a#b", "a\r\nb", "", string.rep("m", 257) }) do
            local _, err = load_text("return { " .. SUPPLIER ..
                " routes = { chat = { { match = '*', supplier = 'oa', model = " .. string.format("%q", m) .. " } } } }")
            assert.matches("^routes%.chat%[1%]%.model: ", err)
        end
        local cfg, err = load_text("return { " .. SUPPLIER ..
            " routes = { chat = { { match = 'GPT-*', supplier = 'oa', model = 'meta-llama/Llama-3.1-8B' } } } }")
        assert.is_table(cfg, err)
        assert.equal("gpt-*", cfg.routes.chat[1].pattern)
    end)
end)

describe("sluice.config tool_text", function()
    local function with(tt)
        return load_text([[return { suppliers = { oa = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1",
  tool_text = ]] .. tt .. [[ } } }]])
    end

    it("takes a dialect, auto, or an emulated dialect, and is off by default", function()
        assert.are.same({ parse = "auto" }, with('{ parse = "auto" }').suppliers.oa.tool_text)
        assert.are.same({ parse = "kimi_k2" }, with('{ parse = "kimi_k2" }').suppliers.oa.tool_text)
        assert.are.same({ parse = "hermes", emulate = "hermes" }, with('{ emulate = "hermes" }').suppliers.oa.tool_text)
        assert.is_nil(with("{ parse = false }").suppliers.oa.tool_text)
        assert.is_nil(with("nil").suppliers.oa.tool_text)
    end)

    it("names the field of an unknown dialect or setting", function()
        local _, err = with('{ parse = "hermez" }')
        assert.matches("^suppliers%.oa%.tool_text%.parse: unknown dialect \"hermez\"", err)
        _, err = with('{ emulate = "auto" }')
        assert.matches("^suppliers%.oa%.tool_text%.emulate: ", err)
        _, err = with('{ parse = "hermes", parsers = 1 }')
        assert.matches("^suppliers%.oa%.tool_text%.parsers: unknown field", err)
        _, err = with('"hermes"')
        assert.matches("^suppliers%.oa%.tool_text: expected a table", err)
    end)

    it("rejects emulation with parsing switched off, naming the parse field", function()
        -- Emulated tools only come back as text: unparsed, the client would
        -- get prose, and the supplier (which has no tools) real tools.
        local cfg, err = with('{ emulate = "hermes", parse = false }')
        assert.is_nil(cfg)
        assert.matches("^suppliers%.oa%.tool_text%.parse: ", err)
    end)
end)

describe("sluice.config sessions and key pools", function()
    local json = require("sluice.json")

    it("reads a Redis store and never shows its password or the pool's keys", function()
        local cfg, err = load_text("return { " ..
            [[suppliers = { p = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1",
                auth = { type = "bearer", tokens = { "sk-pool-one", "sk-pool-two" } } } },]] ..
            [[sessions = { store = "redis", redis = { url = "redis://:url-pass-123@127.0.0.1:6390/2", prefix = "x:" } } }]])
        assert.is_table(cfg, err)
        assert.same({ host = "127.0.0.1", port = 6390, db = 2, password = "url-pass-123", timeout = 0.2 },
            cfg.sessions.redis)
        assert.equal("x:", cfg.sessions.prefix)
        assert.same({ "sk-pool-one", "sk-pool-two" }, cfg.suppliers.p.auth.pool)
        local shown = json.encode(config.redacted(cfg))
        for _, secret in ipairs({ "url-pass-123", "sk-pool-one", "sk-pool-two" }) do
            assert.falsy(shown:find(secret, 1, true), secret)
        end
    end)

    it("never quotes the password of a bad Redis URL", function()
        for _, url in ipairs({ "redis://:hunter2-secret@h:0", "redis://:hunter2-secret@", "rediss://:hunter2-secret@h" }) do
            local cfg, err = load_text("return { sessions = { store = 'redis', redis = { url = '" .. url .. "' } } }")
            assert.is_nil(cfg)
            assert.matches("^sessions.redis.url:", err)
            assert.falsy(err:find("hunter2", 1, true), err)
        end
    end)

    it("takes sessions.key = false (sessions off)", function()
        local cfg = assert(load_text("return { sessions = { key = false } }"))
        assert.is_false(cfg.sessions.key)
    end)

    it("names the field of a bad sessions setting", function()
        for text, field in pairs({
            ["sessions = { store = 'redis', redis = { url = 'redis://h:0' } }"] = "^sessions.redis.url:",
            ["sessions = { store = 'redis', redis = { timeout = 0 } }"] = "^sessions.redis.timeout:",
            ["sessions = { redis = { url = 'redis://h' } }"] = "^sessions.redis:",
            ["sessions = { cooldown = 'x' }"] = "^sessions.cooldown:",
            ["sessions = { key = 'claude-code' }"] = "^sessions.key:",
            ["sessions = { ttl = math.huge }"] = "^sessions.ttl:",
            ["routes = { chat = { { supplier = 'oa', balance = 'random' } } }, " .. SUPPLIER] = "balance",
            ["suppliers = { p = { protocol = 'openai-chat', base_url = 'http://h', auth = { type = 'bearer', token = 'a', tokens = { 'b' } } } }"] = "^suppliers.p.auth:",
            ["suppliers = { p = { protocol = 'openai-chat', base_url = 'http://h', auth = { type = 'header', name = 'x-k', tokens = {} } } }"] = "^suppliers.p.auth.tokens:",
        }) do
            local cfg, err = load_text("return { " .. text .. " }")
            assert.is_nil(cfg, text)
            assert.matches(field, err)
        end
    end)
end)

describe("sluice.config keys that name tenants", function()
    local ALICE = "{ id = 'alice', key = 'alice-secret-1', models = { 'claude-*' }, services = { 'claude', 'codex' }, " ..
        "rate = { requests_per_minute = 60, tokens_per_minute = 400000 }, budget = { usd_per_day = 20, usd_per_month = 300 }, " ..
        "expires = '2027-01-01' }"
    local HASH = require("sluice.digest").hex("bob-secret-12", 64)

    it("takes tables beside plain strings, which work as before", function()
        local cfg, err = load_text("return { keys = { 'plain-key-1234', " .. ALICE ..
            ", { id = 'bob', key_sha256 = '" .. HASH .. "' } }, " .. SUPPLIER .. " }")
        assert.is_table(cfg, err)
        assert.equal("plain-key-1234", cfg.keys[1])
        assert.equal("alice", cfg.keys[2].id)
        assert.equal(HASH, cfg.keys[3].key_sha256)
        assert.is_true(cfg.hashed_keys)
        cfg = load_text("return { keys = { 'plain-key-1234' }, " .. SUPPLIER .. " }")
        assert.is_nil(cfg.hashed_keys)
    end)

    it("names the field at fault, with the key's place", function()
        for text, field in pairs({
            ["{ id = 'a', key = 'a-secret-123', rate = { requests_per_minute = 0 } }"] = "^keys%[2%]%.rate%.requests_per_minute: ",
            ["{ id = 'a', key = 'a-secret-123', budget = { usd_per_month = 'x' } }"] = "^keys%[2%]%.budget%.usd_per_month: ",
            ["{ id = 'a', key = 'a-secret-123', services = { 'email' } }"] = "^keys%[2%]%.services%[1%]: unknown service",
            ["{ id = 'alice', key = 'a-secret-123' }"] = "^keys%[2%]%.id: alice is also the id of keys%[1%]",
            ["{ id = 'a', key = 'a-secret-123', key_sha256 = '" .. HASH .. "' }"] = "^keys%[2%]: give exactly one of key or key_sha256",
            ["'short'"] = "^keys%[2%]: expected a string of at least 8 characters, or a table",
            ["42"] = "^keys%[2%]: ",
        }) do
            local cfg, err = load_text("return { keys = { " .. ALICE .. ", " .. text .. " }, " .. SUPPLIER .. " }")
            assert.is_nil(cfg, text)
            assert.matches(field, err)
            assert.falsy(err:find("secret", 1, true), err)
        end
    end)

    it("asks the core to read answers' usage when a key charges tokens or cost, history or not", function()
        local cfg = assert(load_text("return { history = false, keys = { " .. ALICE .. " }, " .. SUPPLIER .. " }"))
        assert.is_true(config.core_view(cfg).watch_usage)
        cfg = assert(load_text("return { history = false, keys = { 'plain-key-1234', { id = 'r', key = 'r-secret-123', " ..
            "rate = { requests_per_minute = 5 } } }, " .. SUPPLIER .. " }"))
        assert.is_false(config.core_view(cfg).watch_usage)
    end)

    it("still refuses passthrough suppliers, and lets table keys guard a public listener", function()
        local _, err = load_text("return { keys = { " .. ALICE .. " }, suppliers = { an = { protocol = 'anthropic', " ..
            "base_url = 'http://h', auth = { type = 'passthrough' } } } }")
        assert.matches("^suppliers%.an%.auth%.type: passthrough cannot be combined", err)
        local cfg
        cfg, err = load_text("return { listen = { '0.0.0.0:7070' }, keys = { " .. ALICE .. " }, " ..
            "admin = { token = '1234567890123456' }, " .. SUPPLIER .. " }")
        assert.is_table(cfg, err)
    end)

    it("shows tenants in the redacted config without a key or a hash", function()
        local cfg = assert(load_text("return { keys = { 'plain-key-1234', " .. ALICE ..
            ", { id = 'bob', key_sha256 = '" .. HASH .. "' } }, " .. SUPPLIER .. " }"))
        local text = require("sluice.json").encode(config.redacted(cfg))
        local scope = assert(cfg.key_scopes[1]):sub(#"key:" + 1) -- the plain key's session scope, a hash of it
        for _, secret in ipairs({ "plain-key-1234", "alice-secret-1", HASH, scope }) do
            assert.falsy(text:find(secret, 1, true), secret)
        end
        local shown = config.redacted(cfg).keys
        assert.equal("[redacted]", shown[1])
        assert.same({ "alice", "[redacted]", { "claude-*" }, "2027-01-01" },
            { shown[2].id, shown[2].key, shown[2].models, shown[2].expires })
        assert.same({ requests_per_minute = 60, tokens_per_minute = 400000, window = 60 }, shown[2].rate)
        assert.same({ "bob", "[redacted]" }, { shown[3].id, shown[3].key_sha256 })
    end)
end)

-- Whether code ops wrote can run once the config is loaded: the core counts
-- instructions against script_budget only then (core/luahost.c), so every
-- way a config can bring such code in must be seen.
describe("sluice.config ops code", function()
    it("says a config of plain settings runs none", function()
        local cfg = assert(load_text("return { " .. SUPPLIER .. " routes = { chat = { { supplier = 'oa' } } } }"))
        assert.is_false(cfg.ops_code)
        assert.is_false(config.core_view(cfg).ops_code)
    end)

    it("sees a function the config defines, wherever it is kept", function()
        for _, text in ipairs({
            "return { " .. SUPPLIER .. " on_request = function(ctx) end }",
            "return { " .. SUPPLIER .. " sessions = { key = function(ctx) return 'k' end } }",
            -- a function the returned table does not hold: a library function replaced at load
            "require('sluice.router').route = function() end\nreturn { " .. SUPPLIER .. " }",
            "local function helper() end\nreturn { " .. SUPPLIER .. " }",
        }) do
            local cfg = assert(load_text(text))
            assert.is_true(cfg.ops_code, text)
            assert.is_true(config.core_view(cfg).ops_code, text)
        end
    end)

    it("sees modules from lua_path and adapters", function()
        local cfg = assert(load_text("return { " .. SUPPLIER .. " lua_path = '/nonexistent/?.lua' }"))
        assert.is_true(cfg.ops_code)
        -- an adapter file, with no function in the config itself
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -p " .. dir .. "/adapters"))
        local f = assert(io.open(dir .. "/adapters/tag.lua", "w"))
        f:write("return { request = function(ctx, body) return body end }")
        f:close()
        local path = dir .. "/sluice.lua"
        f = assert(io.open(path, "w"))
        f:write([[return { suppliers = { oa = { protocol = "openai-chat",
            base_url = "http://127.0.0.1:1/v1", auth = { type = "none" }, adapter = "tag" } } }]])
        f:close()
        cfg = assert(config.load(path))
        os.execute("rm -rf " .. dir)
        assert.is_true(cfg.ops_code)
    end)
end)
