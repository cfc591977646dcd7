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
