-- sluice.request_body: a request body checked whole but decoded only where
-- read. What must hold: the same verdict on bad bodies as a full decode, the
-- same values for every field read, `ctx.request` equal to the full decode
-- whenever something reads it, and the session key of a partly decoded body
-- equal to the key of the whole one (spec/fixtures/sessions plus edge shapes).

local json = require("sluice.json")
local request_body = require("sluice.request_body")
local session = require("sluice.session")
local sticky = require("sluice.sticky")

local function fixture(name)
    local f = assert(io.open("spec/fixtures/sessions/" .. name))
    local s = f:read("*a")
    f:close()
    return s
end

local function opened(raw)
    local ctx = { body = raw, headers = {} }
    assert(request_body.open(ctx))
    return ctx
end

-- What the default session rules read of a body (sluice.sticky's reader), both parts.
local function session_view(ctx)
    local view = sticky.read_session_body(ctx, "prefix")
    for k, v in pairs(sticky.read_session_body(ctx, "hints")) do view[k] = v end
    return view
end

describe("sluice.request_body", function()
    it("refuses what a full decode refuses, with the same message", function()
        for _, raw in ipairs({ "", "{", '{"model": "m",}', '{"a": "\\x"}', "[1] x", '{"a": "\1"}' }) do
            local _, want = json.decode(raw)
            local ok, err = request_body.open({ body = raw })
            assert.is_nil(ok)
            assert.equal(want, err)
        end
        -- valid JSON that is not an object: no parse error to add
        for _, raw in ipairs({ "[]", '"text"', "3", "null" }) do
            assert.same({ nil, nil }, { request_body.open({ body = raw }) })
        end
    end)

    it("reads fields without decoding the body, and decodes it whole when ctx.request is read", function()
        local raw = fixture("claude_code_turn1.json")
        local ctx = opened(raw)
        local whole = json.decode(raw)
        assert.equal(whole.model, request_body.field(ctx, "model"))
        assert.equal(whole.stream, request_body.field(ctx, "stream"))
        assert.is_nil(request_body.field(ctx, "no_such_field"))
        assert.is_nil(rawget(ctx, "request"))
        assert.same(whole, ctx.request)
        assert.is_nil(ctx.anything_else)
        -- once decoded, it is the body fields are read from (ops' on_request may change it)
        ctx.request.model = "changed"
        assert.equal("changed", request_body.field(ctx, "model"))
        assert.equal(ctx.request, session_view(ctx))
    end)

    it("keys a session the same from the partly decoded body as from the whole one", function()
        local bodies = {}
        for _, name in ipairs({ "claude_code_json_user_id.json", "claude_code_turn1.json", "claude_code_turn2.json", "codex_turn.json", "gemini_cli_turn1.json", "gemini_cli_turn2.json" }) do
            bodies[#bodies + 1] = fixture(name)
        end
        local many_system = { model = "m", messages = json.array({}) }
        for i = 1, 12 do many_system.messages[i] = { role = i % 2 == 0 and "developer" or "system", content = "rule " .. i } end
        many_system.messages[13] = { role = "user", content = "the first question" }
        many_system.messages[14] = { role = "assistant", content = "an answer" }
        local shapes = {
            many_system, -- the first user message past the first few
            { model = "m", input = "a Responses string input", instructions = "be brief" },
            { model = "m", input = json.array({ { type = "message", content = json.array({ { type = "input_text", text = "hi" } }) } }) },
            { contents = json.array({ { parts = json.array({ { text = "gemini, no role" } }) } }),
              systemInstruction = { parts = json.array({ { text = "sys" } }) } },
            { model = "m", messages = json.array({ { role = "system", content = "only a system prompt" } }) },
            { model = "m", metadata = { user_id = "user_abc_account_def_session_0199a4c2-7e31" }, messages = json.array({}) },
            { model = "m", prompt_cache_key = "pck", messages = "not a list" },
        }
        for _, b in ipairs(shapes) do bodies[#bodies + 1] = assert(json.encode(b)) end
        local rules = {}
        for i, raw in ipairs(bodies) do
            local ctx = opened(raw)
            local view = session_view(ctx)
            assert.is_nil(rawget(ctx, "request"), "body " .. i .. " was decoded whole")
            local want = { session.key({ headers = {} }, json.decode(raw)) }
            assert.same(want, { session.key(ctx, view) }, "body " .. i)
            assert.same(want, { session.key(ctx, nil, nil, sticky.read_session_body) }, "body " .. i)
            rules[#rules + 1] = want[2] or "none"
        end
        -- every rule that reads the body was exercised, and the one body without a key gave none
        assert.equal("metadata.user_id,metadata.user_id,metadata.user_id,prompt_cache_key,prefix,prefix,prefix,prefix,prefix,prefix,none,metadata.user_id,prompt_cache_key",
            table.concat(rules, ","))
    end)

    it("decodes the next body of a service whole at once when the last one was read whole", function()
        local raw = json.encode({ model = "m", stream = true, messages = json.array({ { role = "user", content = "hi" } }) })
        local first = opened(raw)
        assert.equal("m", request_body.field(first, "model"))
        assert.is_table(first.request) -- a translation reads it all
        request_body.learn(first, "svc")
        local second = { body = raw, headers = {} }
        assert(request_body.open(second, "svc"))
        assert.is_nil(second.body_spans) -- no scan: decoded whole at once
        assert.equal(true, request_body.field(second, "stream"))
        assert.equal("hi", session_view(second).messages[1].content)
        assert.is_nil(rawget(second, "request")) -- and still known as not read
        request_body.learn(second, "svc")
        local third = { body = raw, headers = {} }
        assert(request_body.open(third, "svc"))
        assert.is_table(third.body_spans) -- passed through: back to the scan
        -- the same verdict on bad bodies either way
        request_body.learn(first, "svc")
        local _, want = json.decode("[1")
        assert.same({ nil, want }, { request_body.open({ body = "[1" }, "svc") })
        assert.same({ nil, nil }, { request_body.open({ body = "[1]" }, "svc") })
        request_body.learn(third, "svc")
    end)

    -- A passthrough plan reads an output cap's fields and the client's own
    -- prompt cache key alone: the body is decoded whole only to change it.
    it("plans a passthrough under its output cap, or with its own cache key, without a whole decode", function()
        local U = require("sluice.upstream")
        local supplier = { id = "oa", protocol = "openai-chat", base_url = "http://up/v1", auth = { type = "none" },
                           headers = {}, timeouts = {}, verify_tls = true, cache_key = true }
        local function plan(body, cap)
            local ctx = opened(json.encode(body))
            ctx.protocol, ctx.query, ctx.id, ctx.model, ctx.stream = "openai-chat", "", "r", body.model, false
            ctx.session = { key = "sess" }
            local p = assert(U.plan({}, ctx, { kind = "generate" }, { name = "r", max_output_tokens = cap }, supplier))
            return p, ctx
        end
        local msgs = json.array({ { role = "user", content = "hi" } })
        local p, ctx = plan({ model = "m", max_tokens = 100, prompt_cache_key = "own", messages = msgs }, 1000)
        assert.is_nil(p.body) -- the client's bytes, unchanged
        assert.is_nil(rawget(ctx, "request"))
        p = plan({ model = "m", max_tokens = 5000, prompt_cache_key = "own", messages = msgs }, 1000)
        assert.equal(1000, json.decode(p.body).max_tokens)
        p = plan({ model = "m", max_tokens = 100, messages = msgs }, 1000)
        assert.equal("sess", json.decode(p.body).prompt_cache_key)
    end)

    it("decodes a conversation only up to its first user message", function()
        local turns = json.array({ { role = "system", content = "s" }, { role = "user", content = "u" } })
        for i = 3, 200 do turns[i] = { role = i % 2 == 0 and "user" or "assistant", content = ("turn %d"):format(i) } end
        local view = session_view(opened(json.encode({ model = "m", messages = turns })))
        assert.equal(2, #view.messages)
        assert.equal("u", view.messages[2].content)
    end)
end)
