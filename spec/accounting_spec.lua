-- Specs for sluice.accounting: one accountant per request, fed by every
-- body path, and the only thing the log hook reads usage from. The host
-- paths are driven through sluice.host as the C core would: a translated
-- stream and answer, an adapted same-protocol stream and answer (the Relay:
-- before the accountant they recorded no usage at all), a passthrough
-- stream (observe) and a passthrough answer (ctx.answer).

local json = require("sluice.json")
local A = require("sluice.accounting")
local T = require("sluice.translate")
local helper = require("helpers.host")

local USAGE = { prompt_tokens = 7, completion_tokens = 3, total_tokens = 10,
                prompt_tokens_details = { cached_tokens = 4 } }
local CHAT_OK = { id = "chatcmpl-1", object = "chat.completion", model = "m-up", usage = USAGE,
                  choices = { { index = 0, message = { role = "assistant", content = "hi" }, finish_reason = "stop" } } }

local function chunk(t)
    t.id, t.object, t.model = "chatcmpl-1", "chat.completion.chunk", "m-up"
    return { data = json.encode(t) }
end
local STREAM = {
    chunk({ choices = { { index = 0, delta = { role = "assistant", content = "hi" } } } }),
    chunk({ choices = { { index = 0, delta = {}, finish_reason = "stop" } } }),
    chunk({ choices = {}, usage = USAGE }),
    { data = "[DONE]" },
}

describe("the accountant", function()
    it("keeps usage (later values win per field), stop reason and error of IR events", function()
        local acct = A.new()
        assert.is_false(acct.fed)
        acct:note({ type = "start", usage = { input_tokens = 5 } })
        acct:note({ type = "usage", usage = { input_tokens = 6, output_tokens = 2 } })
        acct:note({ type = "finish", stop_reason = "max_tokens" })
        assert.same({ input_tokens = 6, output_tokens = 2 }, acct.usage)
        assert.equal("max_tokens", acct.stop_reason)
        acct:note({ type = "error", error = { status = 500, type = "api_error", message = "x" } })
        assert.equal("error", acct.stop_reason)
        assert.same({ input_tokens = 6, output_tokens = 2, cache_read_tokens = nil, cache_write_tokens = nil },
            acct:log_fields({}))
    end)

    it("reads a whole answer's bytes with the protocol's decoder, and ignores what is not one", function()
        local acct = A.new()
        acct:answer_text(T.protocol("openai-chat"), "data: {}\n\n")
        acct:answer_text(T.protocol("openai-chat"), '{"error":{"message":"no"}}')
        assert.is_false(acct.fed)
        acct:answer_text(T.protocol("openai-chat"), json.encode(CHAT_OK))
        assert.same({ input_tokens = 7, output_tokens = 3, cache_read_tokens = 4 }, acct.usage)
    end)

    -- A passed-through answer has only its usage member decoded (the
    -- codec's answer_usage fact): it must read what the whole decoder reads.
    it("reads only the usage of a whole answer, as the protocol's full decoder would", function()
        local F = require("helpers.fixtures")
        local answers = { anthropic = "anthropic/response_tools.json", gemini = "gemini/response_tools.json",
                          ["openai-chat"] = "openai-chat/response_tools.json",
                          ["openai-responses"] = "openai-responses/response_tools.json" }
        for name, path in pairs(answers) do
            local codec, text = T.protocol(name), F.read(path)
            assert.is_string(codec.answer_usage, name)
            local acct = A.new()
            acct:answer_text(codec, text)
            local want = codec.decode_response(json.decode(text)).usage
            assert.is_true(next(want) ~= nil, name .. ": the fixture reports usage")
            assert.same(want, acct.usage, name)
            assert.is_true(acct.fed, name)
            -- cut short: not an answer, nothing read
            local cut = A.new()
            cut:answer_text(codec, text:sub(1, #text - 2))
            assert.is_nil(cut.usage, name)
        end
    end)

    it("watches a same-protocol stream without ever raising", function()
        local acct = A.new()
        local w = A.watch(acct, T.protocol("openai-chat"), {})
        w:feed_batch({ { data = "not json" }, { data = 42 } })
        w:feed_batch(STREAM)
        assert.same({ id = "chatcmpl-1", model = "m-up" }, w.seen)
        assert.equal(7, acct.usage.input_tokens)
        assert.equal("end_turn", acct.stop_reason)
    end)
end)

-- ---------------------------------------------------------------------------
-- Through the host.

local function host_with(adapter_src, protocol)
    return helper.load(([[
        return {
          history = { path = "/tmp/unused.db" },
          suppliers = {
            up = { protocol = "%s", base_url = "http://up.test/v1", adapter = "t",
                   auth = { type = "bearer", token = "sk-up" } },
            plain = { protocol = "openai-chat", base_url = "http://plain.test/v1",
                      auth = { type = "bearer", token = "sk-pl" } },
          },
          routes = { chat = { { match = "plain-*", supplier = "plain" }, { match = "*", supplier = "up" } },
                     claude = { { match = "*", supplier = "up" } } },
        }]]):format(protocol or "openai-chat"), { t = adapter_src or "return {}" })
end

local function chat_ctx(model, stream)
    return { id = "req-a", method = "POST", path = "/v1/chat/completions", query = "", peer = "127.0.0.1",
             headers = { ["content-type"] = "application/json" },
             body = json.encode({ model = model or "gpt-x", stream = stream or nil,
                                  messages = { { role = "user", content = "hi" } } }) }
end

local function anthropic_ctx(stream)
    return { id = "req-b", method = "POST", path = "/v1/messages", query = "", peer = "127.0.0.1",
             headers = { ["anthropic-version"] = "2023-06-01" },
             body = json.encode({ model = "claude-x", max_tokens = 5, stream = stream or nil,
                                  messages = { { role = "user", content = "hi" } } }) }
end

local function recorded(H, ctx)
    local out = H.log(ctx)
    return { out.input_tokens, out.output_tokens, out.cache_read_tokens }
end

local ADAPTER = [[return { event = function(ctx, ev) return ev end,
                           response = function(ctx, status, headers, body) return status, body end }]]

describe("usage in the record, whichever body path ran", function()
    -- Leave no host (and its config) loaded for the specs after this one.
    teardown(function()
        package.loaded["sluice.host"] = nil
        collectgarbage()
    end)

    it("an adapted same-protocol answer (was input_tokens: null)", function()
        local H = host_with(ADAPTER)
        local ctx = chat_ctx()
        assert.is_true(H.request(ctx).transform)
        local r = H.body(ctx, 200, json.encode(CHAT_OK))
        assert.equal(200, r.status)
        assert.same({ 7, 3, 4 }, recorded(H, ctx))
    end)

    it("an adapted same-protocol stream through the Relay (was input_tokens: null)", function()
        local H = host_with(ADAPTER)
        local ctx = chat_ctx(nil, true)
        H.request(ctx)
        assert.is_nil(H.response(ctx, 200, { ["content-type"] = "text/event-stream" }))
        local out = H.events(ctx, STREAM)
        assert.truthy(out:find('"prompt_tokens":7', 1, true), out)
        assert.is_nil(H.finish(ctx, { reason = "COMPLETE", committed = true, status = 200 }))
        assert.same({ 7, 3, 4 }, recorded(H, ctx))
    end)

    it("a cut adapted stream's tail ends the block its latest event left open", function()
        -- An Anthropic client on an Anthropic supplier that has an adapter.
        local H = host_with([[return { event = function(ctx, ev) return ev end }]], "anthropic")
        local ctx = anthropic_ctx(true)
        assert.is_true(H.request(ctx).transform)
        assert.is_nil(H.response(ctx, 200, { ["content-type"] = "text/event-stream" }))
        H.events(ctx, {
            { event = "message_start", data = '{"type":"message_start","message":{"id":"msg_up1","model":"m",'
                .. '"usage":{"input_tokens":9,"output_tokens":1}}}' },
            { event = "content_block_start", data = '{"type":"content_block_start","index":0,'
                .. '"content_block":{"type":"text","text":""}}' },
            { event = "content_block_delta", data = '{"type":"content_block_delta","index":0,'
                .. '"delta":{"type":"text_delta","text":"Hel"}}' },
        })
        local tail = H.finish(ctx, { reason = "UPSTREAM_RESET", committed = true, status = 200, detail = "" })
        local names = {}
        for name in tail:gmatch("event: ([%w_]+)") do names[#names + 1] = name end
        assert.same({ "content_block_stop", "error", "message_stop" }, names)
        assert.truthy(tail:find("UPSTREAM_RESET", 1, true), tail)
        assert.equal(9, H.log(ctx).input_tokens)
    end)

    it("a translated answer and a translated stream", function()
        local H = host_with(ADAPTER)
        local ctx = anthropic_ctx()
        H.request(ctx)
        assert.equal(200, H.body(ctx, 200, json.encode(CHAT_OK)).status)
        assert.same({ 7, 3, 4 }, recorded(H, ctx))
        ctx = anthropic_ctx(true)
        H.request(ctx)
        assert.same(200, H.response(ctx, 200, { ["content-type"] = "text/event-stream" }).status)
        local out = H.events(ctx, STREAM) .. H.finish(ctx, { reason = "COMPLETE", committed = true, status = 200 })
        assert.truthy(out:find("event: message_stop", 1, true), out)
        assert.same({ 7, 3, 4 }, recorded(H, ctx))
    end)

    it("a passthrough stream (observe) and a passthrough answer (ctx.answer)", function()
        local H = host_with()
        local ctx = chat_ctx("plain-1", true)
        assert.is_false(H.request(ctx).transform)
        H.observe(ctx, { STREAM[1], STREAM[3] })
        assert.same({ 7, 3, 4 }, recorded(H, ctx))
        assert.same({ id = "chatcmpl-1", model = "m-up" }, ctx.watch.seen)
        ctx = chat_ctx("plain-1")
        H.request(ctx)
        ctx.answer = json.encode(CHAT_OK)
        assert.same({ 7, 3, 4 }, recorded(H, ctx))
    end)

    it("starts afresh on every attempt", function()
        local H = host_with(ADAPTER)
        local ctx = chat_ctx()
        H.request(ctx)
        H.body(ctx, 200, json.encode(CHAT_OK))
        H.request(ctx) -- a retry: the next attempt's plan
        ctx.answer = nil
        assert.same({}, recorded(H, ctx))
    end)
end)

describe("the record of a fallback", function()
    teardown(function()
        package.loaded["sluice.host"] = nil
        collectgarbage()
    end)

    it("names no upstream model when the next supplier fails before its plan", function()
        local H = helper.load([[
            return {
              history = { path = "/tmp/unused.db" },
              suppliers = {
                first = { protocol = "openai-chat", base_url = "http://first.test/v1", retry = { attempts = 1 },
                          auth = { type = "bearer", token = "sk-1" } },
                second = { protocol = "openai-chat", base_url = "http://second.test/v1",
                           auth = { type = "managed", token_url = "http://idp.test/token",
                                    client_id = "c", client_secret = "s" } },
              },
              routes = { chat = { { match = "*", supplier = { "first", "second" }, model = "up-model" } } },
            }]])
        local ctx = chat_ctx()
        assert.equal("up-model", H.request(ctx).model_out)
        assert.equal(0, H.retry(ctx, { kind = "status", status = 503 }))
        -- The token endpoint cannot be reached: the second attempt ends before a plan.
        local sluice = require("sluice")
        local http = sluice.http
        sluice.http = function() return nil, "connection refused" end
        local ok, r = pcall(H.request, ctx)
        sluice.http = http
        assert(ok, r)
        assert.equal(502, r.status)
        assert.equal("second", r.supplier)
        assert.is_nil(H.log(ctx).model_out)
    end)
end)
