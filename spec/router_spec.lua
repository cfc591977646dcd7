-- sluice.router: route globs (linear-time wildcard matching, never Lua
-- patterns on a client's model name), the model-name check, and routing
-- with both.
local router = require("sluice.router")
local config = require("sluice.config")

local function routes(list)
    local entries = {}
    for i, r in ipairs(list) do
        entries[i] = { match = r[1], pattern = config.glob(r[1]), suppliers = { "s" }, name = "chat[" .. i .. "]" }
    end
    return { routes = { chat = entries } }
end

describe("sluice.router glob_match", function()
    local m = router.glob_match

    it("matches * and ? like a shell glob, anchored at both ends", function()
        local cases = {
            { "*", "", true }, { "*", "anything", true }, { "", "", true }, { "", "x", false },
            { "gpt-4.1", "gpt-4.1", true }, { "gpt-4.1", "gpt-4.10", false }, { "gpt-4.1", "xgpt-4.1", false },
            { "gpt-?", "gpt-4", true }, { "gpt-?", "gpt-", false }, { "gpt-?", "gpt-45", false },
            { "claude-*haiku*", "claude-3-5-haiku-20241022", true },
            { "claude-*haiku*", "claude-haiku", true },
            { "claude-*haiku*", "claude-sonnet", false },
            { "*-mini", "gpt-4.1-mini", true }, { "*-mini", "gpt-4.1-mini-x", false },
            { "a*b*c", "abc", true }, { "a*b*c", "aXbYc", true }, { "a*b*c", "aXbYcZ", false },
            { "a*b*c", "acb", false }, { "*a*a*b", "aaab", true }, { "*a*a*b", "ab", false },
            { "**", "x", true }, { "a**", "a", true }, { "?*?", "ab", true }, { "?*?", "a", false },
            -- what used to be Lua pattern magic is literal
            { "gpt.4", "gptx4", false }, { "a%d", "a%d", true }, { "a%d", "a1", false },
            { "x[1]", "x[1]", true }, { "a+", "aa", false }, { "(x)", "(x)", true }, { "^x$", "^x$", true },
        }
        for _, c in ipairs(cases) do
            assert.equal(c[3], m(c[1], c[2]), string.format("glob %q on %q", c[1], c[2]))
        end
    end)

    it("agrees with a reference matcher on many generated cases", function()
        -- Exhaustive over a small alphabet: the naive recursive definition.
        local function ref(g, s)
            if g == "" then return s == "" end
            local c = g:sub(1, 1)
            if c == "*" then
                for k = 0, #s do if ref(g:sub(2), s:sub(k + 1)) then return true end end
                return false
            end
            if s == "" then return false end
            return (c == "?" or c == s:sub(1, 1)) and ref(g:sub(2), s:sub(2))
        end
        local function all(alphabet, n, out, prefix)
            out[#out + 1] = prefix
            if n == 0 then return out end
            for i = 1, #alphabet do all(alphabet, n - 1, out, prefix .. alphabet:sub(i, i)) end
            return out
        end
        local globs, subjects = all("ab*?", 4, {}, ""), all("ab", 5, {}, "")
        for _, g in ipairs(globs) do
            for _, s in ipairs(subjects) do
                assert.equal(ref(g, s), m(g, s), string.format("glob %q on %q", g, s))
            end
        end
    end)

    it("finishes at once on a 40 KB adversarial name (Lua patterns took seconds)", function()
        local name = string.rep("a", 40 * 1024)
        local t0 = os.clock()
        assert.is_false(m("*a*a*a*a*a*a*b", name))
        assert.is_true(m("*a*a*a*a*a*a*", name))
        assert.is_false(m("a*a*a*a*a*a*a*a*ab", name))
        assert.is_true(m("a*a*a*a*a*a*a*a*a", name))
        assert.is_true(m(string.rep("?", 40 * 1024), name))
        assert.is_false(m(string.rep("?", 40 * 1024 + 1), name))
        assert.is_true(os.clock() - t0 < 2, "took " .. (os.clock() - t0) .. " s")
    end)
end)

describe("sluice.router.route", function()
    it("takes the first matching route, case-insensitively", function()
        local cfg = routes({ { "claude-*haiku*" }, { "GPT-*" }, { "*" } })
        assert.equal("chat[1]", router.route(cfg, "chat", "Claude-3-5-HAIKU").name)
        assert.equal("chat[2]", router.route(cfg, "chat", "gpt-4.1").name)
        assert.equal("chat[3]", router.route(cfg, "chat", "other").name)
    end)

    it("routes a long adversarial name quickly and never past the cap", function()
        local cfg = routes({ { "*a*a*a*a*a*a*b" }, { "*" } })
        local t0 = os.clock()
        assert.equal("chat[2]", router.route(cfg, "chat", string.rep("a", router.MODEL_MAX)).name)
        local e, err = router.route(cfg, "chat", string.rep("a", 40 * 1024))
        assert.is_nil(e)
        assert.matches("longer than 256", err)
        assert.is_true(os.clock() - t0 < 1)
    end)

    it("routes by each config's own routes: what one config routed is not another's answer", function()
        -- (routes are remembered per config and model; a reload brings a new config)
        local before = routes({ { "gpt-*" }, { "*" } })
        local after = routes({ { "claude-*" }, { "*" } })
        for _ = 1, 3 do
            assert.equal("chat[1]", router.route(before, "chat", "gpt-4.1").name)
            assert.equal("chat[2]", router.route(after, "chat", "gpt-4.1").name)
            assert.is_nil(router.route(before, "claude", "gpt-4.1"))
        end
        -- past the memo's size, every model still gets its own route
        for i = 1, 3000 do
            local model = (i % 2 == 0 and "gpt-" or "o") .. i
            assert.equal(i % 2 == 0 and "chat[1]" or "chat[2]", router.route(before, "chat", model).name)
        end
    end)
end)

describe("sluice.router.check_model", function()
    it("accepts the model ids real suppliers use", function()
        for _, name in ipairs({
            "gpt-4.1", "gpt-4.1-mini", "claude-sonnet-4-5-20250929", "gemini-2.5-flash",
            "models/gemini-2.5-flash", "meta-llama/Llama-3.1-8B-Instruct",
            "accounts/fireworks/models/llama-v3p1-70b-instruct", "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "claude-3-5-sonnet@20240620", "ft:gpt-4o-mini:org:custom:abc123", "qwen2.5-coder:32b",
            "anthropic/claude-3.5-sonnet:beta", "o3", "A_b.C-d", string.rep("m", 256),
        }) do
            local ok, why = router.check_model(name)
            assert.is_true(ok, name .. ": " .. tostring(why))
        end
    end)

    it("refuses what could change an upstream URL, and anything long", function()
        for _, name in ipairs({
            "x/../../../v1beta/cachedContents?", "../x", "a/./b", "a//b", "/a", "a/", "..", ".",
            "a?b", "a#b", "a\0b", "a\r\nX-Injected: 1", "a b", "a%2Fb", "a&b", "a=b", "a\\b", "é",
            "a;b", "a,b", "a'b", 'a"b', "a+b", string.rep("m", 257), string.rep("a", 40 * 1024), "",
        }) do
            local ok, why = router.check_model(name)
            assert.is_nil(ok, string.format("%q was accepted", name))
            assert.is_string(why)
        end
        assert.is_nil((router.check_model(nil)))
        assert.is_nil((router.check_model(42)))
    end)

    it("gives the same verdict on a name's every request, past the memo of accepted names", function()
        for round = 1, 2 do
            for i = 1, 3000 do
                assert.is_true(router.check_model("model-" .. i), "round " .. round)
                assert.is_nil((router.check_model("model/../" .. i)))
            end
        end
    end)
end)

describe("gemini upstream path", function()
    local gemini = require("sluice.protocols.gemini")

    it("percent-encodes the model as one path segment", function()
        assert.equal("/v1beta/models/gemini-2.5-flash:generateContent", gemini.path("gemini-2.5-flash"))
        assert.equal("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            gemini.path("models/gemini-2.5-flash", true))
        assert.equal("/v1beta/models/x%2F..%2F..%2Fv1beta%2FcachedContents%3F:generateContent",
            gemini.path("x/../../v1beta/cachedContents?"))
        assert.equal("/v1beta/models/a%23b%00%0D%0A:generateContent", gemini.path("a#b\0\r\n"))
        assert.equal("/v1beta/models/claude@1%3A0:generateContent", gemini.path("claude@1:0"))
    end)
end)

-- The paths come from the protocols' endpoint and models facts through the
-- registry; these are the answers sluice gave before they did.
describe("sluice.router.classify", function()
    local C = router.classify
    local function same(method, path, want, status, message)
        local info, s, m = C(method, path)
        assert.same(want, info, method .. " " .. path)
        assert.equal(status, s, method .. " " .. path)
        assert.equal(message, m, method .. " " .. path)
    end

    it("maps each protocol's endpoints to its home service, or the prefix's", function()
        same("POST", "/v1/messages", { service = "claude", protocol = "anthropic", kind = "generate" })
        same("POST", "/v1/messages/count_tokens", { service = "claude", protocol = "anthropic", kind = "count_tokens" })
        same("POST", "/v1/chat/completions", { service = "chat", protocol = "openai-chat", kind = "generate" })
        same("POST", "/v1/responses", { service = "codex", protocol = "openai-responses", kind = "generate" })
        same("POST", "/codex/responses", { service = "codex", protocol = "openai-responses", kind = "generate" })
        same("POST", "/chat/v1/messages", { service = "chat", protocol = "anthropic", kind = "generate" })
        same("POST", "/gemini/v1/chat/completions", { service = "gemini", protocol = "openai-chat", kind = "generate" })
        same("POST", "/other/v1/messages", nil, 404, "unknown path /other/v1/messages")
    end)

    it("reads Gemini's model and streaming from the path", function()
        same("POST", "/v1beta/models/gemini-2.5-pro:generateContent",
            { service = "gemini", protocol = "gemini", kind = "generate", model = "gemini-2.5-pro", stream = false })
        same("POST", "/claude/v1beta/models/g:streamGenerateContent",
            { service = "claude", protocol = "gemini", kind = "generate", model = "g", stream = true })
        same("GET", "/v1beta/models/g:countTokens",
            { service = "gemini", protocol = "gemini", kind = "count_tokens", model = "g" })
        same("POST", "/v1beta/models/g:embedContent", nil, 404, "unknown path /v1beta/models/g:embedContent")
        same("POST", "/v1beta/models/a/b:generateContent", nil, 404, "unknown path /v1beta/models/a/b:generateContent")
        same("GET", "/v1beta/models/g:generateContent", nil, 405, "use POST for /v1beta/models/g:generateContent")
    end)

    it("keeps /responses to the codex prefix and asks for the right method", function()
        same("POST", "/responses", nil, 404, "unknown path /responses")
        same("POST", "/claude/responses", nil, 404, "unknown path /claude/responses")
        same("GET", "/codex/responses", nil, 405, "use POST for /codex/responses")
        same("GET", "/v1/messages", nil, 405, "use POST for /v1/messages")
    end)

    it("lists models on GET, leaving a shared path's protocol to the headers", function()
        same("GET", "/v1/models", { kind = "models" })
        same("GET", "/codex/v1/models", { service = "codex", kind = "models" })
        same("GET", "/v1beta/models", { kind = "models", protocol = "gemini" })
        same("POST", "/v1/models", nil, 405, "use GET for /v1/models")
    end)
end)
