-- sluice.session: the session-key rules, on request headers and bodies as
-- the real clients send them (spec/fixtures/sessions), and sluice.clients.

local json = require("sluice.json")
local session = require("sluice.session")
local clients = require("sluice.clients")

local function fixture(name)
    local f = assert(io.open("spec/fixtures/sessions/" .. name))
    local body = json.decode(f:read("*a"))
    f:close()
    return body
end

local CLAUDE_HEADERS = {
    ["user-agent"] = "claude-cli/2.0.14 (external, cli)", ["x-app"] = "cli",
    ["anthropic-version"] = "2023-06-01", ["anthropic-beta"] = "claude-code-20250219,interleaved-thinking-2025-05-14",
    ["x-stainless-lang"] = "js", ["x-stainless-package-version"] = "0.60.0",
}
local CODEX_HEADERS = {
    ["user-agent"] = "codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
    originator = "codex_cli_rs", version = "0.46.0",
    session_id = "0199a4c2-7e31-7d52-b0f4-3c6e1a9d8b27", conversation_id = "0199a4c2-7e31-7d52-b0f4-3c6e1a9d8b27",
    ["openai-beta"] = "responses=experimental",
}
local CLAUDE_HEADERS_WITH_ID = { ["user-agent"] = CLAUDE_HEADERS["user-agent"],
                                 ["x-claude-code-session-id"] = "5c8e4f0a-9d1b-4e7c-a2f3-61b0d9e8c7a4" }
local GEMINI_HEADERS = { ["user-agent"] = "GeminiCLI/0.8.2 (linux; x64)", ["x-goog-api-client"] = "gl-node/22.18.0" }

local function ctx(headers, tenant) return { headers = headers or {}, tenant = tenant } end

describe("sluice.clients", function()
    it("names each client from its real headers", function()
        assert.equal("claude-code", clients.identify(ctx(CLAUDE_HEADERS)))
        assert.equal("codex", clients.identify(ctx(CODEX_HEADERS)))
        -- Codex's originator wins over a User-Agent a wrapper rewrote
        assert.equal("codex", clients.identify(ctx({ ["user-agent"] = "node", originator = "codex_vscode" })))
        assert.equal("gemini-cli", clients.identify(ctx(GEMINI_HEADERS)))
        assert.equal("anthropic-sdk", clients.identify(ctx({ ["user-agent"] = "Anthropic/Python 0.64.0" })))
        assert.equal("openai-sdk", clients.identify(ctx({ ["user-agent"] = "OpenAI/Python 1.107.0" })))
        assert.equal("google-genai-sdk",
            clients.identify(ctx({ ["user-agent"] = "google-genai-sdk/1.33.0 gl-python/3.12.3" })))
        assert.equal("curl", clients.identify(ctx({ ["user-agent"] = "curl/7.88.1" })))
        assert.equal("unknown", clients.identify(ctx({})))
    end)

    it("reads the client headers on every request, whatever the same User-Agent was named before", function()
        -- (names are remembered per User-Agent; the headers that win over it are not)
        for _ = 1, 2 do
            assert.equal("node", clients.identify(ctx({ ["user-agent"] = "node" })))
            assert.equal("codex", clients.identify(ctx({ ["user-agent"] = "node", originator = "codex_cli_rs" })))
            assert.equal("claude-code", clients.identify(ctx({ ["user-agent"] = "node",
                                                                ["x-claude-code-session-id"] = "s" })))
        end
        for i = 1, 2000 do -- past the memo's size, each agent keeps its own name
            assert.equal("agent" .. i, clients.identify(ctx({ ["user-agent"] = "Agent" .. i .. "/1.0" })))
        end
    end)
end)

describe("sluice.session key rules", function()
    it("takes x-claude-code-session-id first", function()
        local h = { ["x-claude-code-session-id"] = "6d0fe7a2-3b41-4c8e-9f2a-7b5c1d3e9a04" }
        local raw, rule = session.hint(ctx(h), fixture("claude_code_json_user_id.json"))
        assert.equal("6d0fe7a2-3b41-4c8e-9f2a-7b5c1d3e9a04", raw)
        assert.equal("claude-code-header", rule)
    end)

    it("reads the legacy metadata.user_id form", function()
        local raw, rule = session.hint(ctx(CLAUDE_HEADERS), fixture("claude_code_turn1.json"))
        assert.equal("6d0fe7a2-3b41-4c8e-9f2a-7b5c1d3e9a04", raw)
        assert.equal("metadata.user_id", rule)
    end)

    it("reads the JSON-string metadata.user_id form", function()
        local raw, rule = session.hint(ctx(CLAUDE_HEADERS), fixture("claude_code_json_user_id.json"))
        assert.equal("1c7e2f90-55aa-4b1e-a0c3-2d9e8f7b6a51", raw)
        assert.equal("metadata.user_id", rule)
    end)

    it("keeps one key across Claude Code turns whose billing header changes", function()
        local t1, t2 = fixture("claude_code_turn1.json"), fixture("claude_code_turn2.json")
        assert.are_not.equal(t1.system[1].text, t2.system[1].text)
        assert.equal(session.key(ctx(CLAUDE_HEADERS), t1), session.key(ctx(CLAUDE_HEADERS), t2))
        -- and without the user_id hint, the stable prefix ignores the billing block too
        t1.metadata, t2.metadata = nil, nil
        local k1, rule = session.key(ctx(CLAUDE_HEADERS), t1)
        assert.equal("prefix", rule)
        assert.equal(k1, session.key(ctx(CLAUDE_HEADERS), t2))
        -- while another first message is another conversation
        t2.messages[1].content[2].text = "rename the parser module"
        assert.are_not.equal(k1, session.key(ctx(CLAUDE_HEADERS), t2))
    end)

    it("reads Codex's session_id / conversation_id headers", function()
        local raw, rule = session.hint(ctx(CODEX_HEADERS), fixture("codex_turn.json"))
        assert.equal("0199a4c2-7e31-7d52-b0f4-3c6e1a9d8b27", raw)
        assert.equal("codex-header", rule)
        local raw2 = session.hint(ctx({ conversation_id = "c-2" }), {})
        assert.equal("c-2", raw2)
    end)

    it("falls back to the body's prompt_cache_key, then OpenAI user / metadata", function()
        local raw, rule = session.hint(ctx({ ["user-agent"] = "OpenAI/Python 1.107.0" }), fixture("codex_turn.json"))
        assert.equal("0199a4c2-7e31-7d52-b0f4-3c6e1a9d8b27", raw)
        assert.equal("prompt_cache_key", rule)
        local body = { model = "gpt-4.1", user = "user-1234", messages = { { role = "user", content = "hi" } } }
        assert.same({ "user-1234", "user" }, { session.hint(ctx(), body) })
        body = { model = "gpt-4.1", metadata = { session_id = "s-9" }, messages = { { role = "user", content = "hi" } } }
        assert.same({ "s-9", "user" }, { session.hint(ctx(), body) })
    end)

    -- sluice.sticky hands the rules a reader instead of a body: each part is
    -- decoded only when a rule gets to it, so a client that names its
    -- session in a header has none of its conversation decoded.
    it("reads only the parts of the body the winning rule needs", function()
        local function reader(body)
            local asked = {}
            return function(_, part)
                asked[#asked + 1] = part
                return body
            end, asked
        end
        local cases = {
            { CLAUDE_HEADERS_WITH_ID, "claude_code_turn1.json", {} },
            { CODEX_HEADERS, "codex_turn.json", { "hints" } },
            { { ["user-agent"] = "OpenAI/Python 1.107.0" }, "codex_turn.json", { "hints" } },
            { GEMINI_HEADERS, "gemini_cli_turn1.json", { "hints", "prefix" } },
        }
        for _, c in ipairs(cases) do
            local body = fixture(c[2])
            local read, asked = reader(body)
            local k, rule = session.key(ctx(c[1]), nil, nil, read)
            assert.same(c[3], asked)
            assert.same({ session.key(ctx(c[1]), body) }, { k, rule })
        end
    end)

    it("hashes Gemini CLI's stable prefix, the same on every turn", function()
        local k1, rule = session.key(ctx(GEMINI_HEADERS), fixture("gemini_cli_turn1.json"))
        assert.equal("prefix", rule)
        assert.equal(k1, session.key(ctx(GEMINI_HEADERS), fixture("gemini_cli_turn2.json")))
        local other = fixture("gemini_cli_turn1.json")
        other.systemInstruction.parts[1].text = "You are a different agent."
        assert.are_not.equal(k1, session.key(ctx(GEMINI_HEADERS), other))
    end)

    -- Gemini's API lets a single-turn request leave `role` out of contents
    -- (a role-less message reads as the user's); such a body keys by its
    -- first message too, and a different first message is another session.
    it("hashes Gemini contents that carry no role", function()
        local body = { contents = { { parts = { { text = "summarise this file" } } } } }
        local k, rule = session.key(ctx(), body)
        assert.equal("prefix", rule)
        assert.is_string(k)
        local other = { contents = { { parts = { { text = "something else" } } } } }
        assert.are_not.equal(k, session.key(ctx(), other))
    end)

    it("hashes an OpenAI chat conversation by system prompt + first user message", function()
        local t1 = { model = "gpt-4.1", messages = { { role = "system", content = "be brief" },
                                                     { role = "user", content = "hello" } } }
        local t2 = { model = "gpt-4.1", messages = { { role = "system", content = "be brief" },
                                                     { role = "user", content = "hello" },
                                                     { role = "assistant", content = "hi!" },
                                                     { role = "user", content = "more" } } }
        local curl = ctx({ ["user-agent"] = "curl/7.88.1" })
        assert.equal(session.key(curl, t1), session.key(curl, t2))
    end)

    it("has no key for a body with nothing stable in it", function()
        assert.is_nil(session.key(ctx(), { model = "x" }))
        assert.is_nil(session.key(ctx(), { model = "x", messages = {} }))
    end)

    it("scopes the key by tenant and never shows the client's id", function()
        local body = fixture("claude_code_turn1.json")
        local a = session.key(ctx(CLAUDE_HEADERS, "t-a"), body)
        local b = session.key(ctx(CLAUDE_HEADERS, "t-b"), body)
        local anon = session.key(ctx(CLAUDE_HEADERS), body)
        assert.are_not.equal(a, b)
        assert.are_not.equal(a, anon)
        assert.truthy(a:match("^%x+$"))
        assert.equal(32, #a)
        assert.falsy(a:find("6d0fe7a2", 1, true))
    end)

    it("lets ops replace the rules with sessions.key", function()
        local seen
        local function override(c) seen = c; return c.headers["x-team-conversation"] end
        local c = ctx({ ["x-team-conversation"] = "conv-77" })
        local k, rule = session.key(c, {}, override)
        assert.equal(c, seen)
        assert.equal("sessions.key", rule)
        assert.equal(k, session.key(ctx({ ["x-team-conversation"] = "conv-77" }), { user = "other" }, override))
        assert.is_nil(session.key(ctx({}), fixture("claude_code_turn1.json"), override))
        assert.has_error(function() session.key(ctx({}), {}, function() return 42 end) end,
            "sessions.key returned a number (expected a string or nil)")
    end)
end)
