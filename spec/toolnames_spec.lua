-- Specs for sluice.toolnames: names that break a supplier's rules are
-- shortened deterministically and reversibly; names that fit are untouched.

local TN = require("sluice.toolnames")

local LONG = "mcp__github_enterprise__create_or_update_pull_request_review_comment_thread"
local DOTTED = "mcp.server/tools:read-file"

describe("toolnames", function()
    it("leaves names that fit alone", function()
        local n = TN.new("openai-chat")
        assert.are.equal("Bash", n:up("Bash"))
        assert.are.equal("get_weather-v2", n:up("get_weather-v2"))
        assert.are.equal(0, n.renamed)
    end)

    it("shortens long names to a valid name and maps them back", function()
        for _, proto in ipairs({ "openai-chat", "openai-responses", "gemini" }) do
            local n = TN.new(proto)
            local s = n:up(LONG)
            local rule = TN.RULES[proto]
            assert.is_true(#s <= rule.max, proto)
            assert.truthy(s:find(rule.pattern), proto .. ": " .. s)
            assert.are_not.equal(LONG, s)
            assert.are.equal(LONG, n:down(s))
        end
        -- Anthropic allows 128 characters: the same name passes unchanged.
        assert.are.equal(LONG, TN.new("anthropic"):up(LONG))
    end)

    it("replaces characters a supplier rejects", function()
        local n = TN.new("anthropic")
        local s = n:up(DOTTED)
        assert.truthy(s:find("^[a-zA-Z0-9_-]+$"), s)
        assert.are.equal(DOTTED, n:down(s))
        -- Gemini accepts dots and colons but not slashes.
        local g = TN.new("gemini"):up(DOTTED)
        assert.truthy(g:find(TN.RULES.gemini.pattern), g)
        assert.are.equal("_9lives", TN.new("gemini"):up("9lives"):sub(1, 7))
    end)

    it("judges a name the same on every request, past the memo of verdicts", function()
        -- (verdicts are remembered per supplier rule; a name valid for one is not for another)
        for _ = 1, 2 do
            assert.are.equal(LONG, TN.new("anthropic"):up(LONG))
            assert.are_not.equal(LONG, TN.new("openai-chat"):up(LONG))
            assert.are.equal("a_b", TN.new("openai-chat"):up("a_b"))
        end
        for i = 1, 5000 do
            local n = TN.new("openai-chat")
            assert.are.equal("tool_" .. i, n:up("tool_" .. i))
            assert.are_not.equal("tool." .. i, n:up("tool." .. i))
        end
    end)

    it("is deterministic across requests, so replayed history maps the same way", function()
        assert.are.equal(TN.new("openai-chat"):up(LONG), TN.new("openai-chat"):up(LONG))
        assert.are_not.equal(TN.new("openai-chat"):up(LONG), TN.new("openai-chat"):up(LONG .. "_2"))
    end)

    it("keeps two long names with the same prefix apart", function()
        local n = TN.new("openai-chat")
        local a, b = n:up(LONG .. "_alpha"), n:up(LONG .. "_beta")
        assert.are_not.equal(a, b)
        assert.are.equal(LONG .. "_alpha", n:down(a))
        assert.are.equal(LONG .. "_beta", n:down(b))
    end)

    it("never gives a shortened name to a tool that already has it", function()
        local n = TN.new("openai-chat")
        local short = TN.new("openai-chat"):up(LONG)
        -- A tool literally named like the short form is registered first.
        local req = { tools = { { name = LONG }, { name = short } }, messages = {} }
        TN.apply_request(req, n)
        assert.are.equal(short, req.tools[2].name)
        assert.are_not.equal(short, req.tools[1].name)
        assert.are.equal(LONG, n:down(req.tools[1].name))
        assert.are.equal(short, n:down(short))
    end)

    it("rewrites tools, tool_choice and history, and restores responses", function()
        local n = TN.new("openai-chat")
        local req = {
            tools = { { name = LONG } }, tool_choice = { type = "tool", name = LONG },
            messages = { { role = "assistant", content = { { type = "tool_call", id = "c1", name = LONG, arguments = {} } } },
                         { role = "user", content = { { type = "tool_result", tool_call_id = "c1", name = LONG, content = {} } } } },
        }
        TN.apply_request(req, n)
        local s = req.tools[1].name
        assert.are_not.equal(LONG, s)
        assert.are.equal(s, req.tool_choice.name)
        assert.are.equal(s, req.messages[1].content[1].name)
        assert.are.equal(s, req.messages[2].content[1].name)
        local resp = TN.restore_response({ content = { { type = "tool_call", name = s }, { type = "text", text = s } } }, n)
        assert.are.equal(LONG, resp.content[1].name)
        assert.are.equal(s, resp.content[2].text)
        assert.are.equal("unknown_tool", n:down("unknown_tool"))
    end)

    it("hashes with FNV-1a", function()
        assert.are.equal("811c9dc5", TN.hash(""))
        assert.are.equal("e40c292c", TN.hash("a"))
        assert.are.equal("bf9cf968", TN.hash("foobar"))
    end)
end)
