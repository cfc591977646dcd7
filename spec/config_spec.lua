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

    it("names the field of a bad sessions setting", function()
        for text, field in pairs({
            ["sessions = { store = 'redis', redis = { url = 'redis://h:0' } }"] = "^sessions.redis.url:",
            ["sessions = { store = 'redis', redis = { timeout = 0 } }"] = "^sessions.redis.timeout:",
            ["sessions = { redis = { url = 'redis://h' } }"] = "^sessions.redis:",
            ["sessions = { cooldown = 'x' }"] = "^sessions.cooldown:",
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
