-- sluice.host: bodies stored in the history (history.bodies) lose every
-- secret sluice knows of, whatever its length — gateway keys, the admin
-- token, the supplier's credentials and extra headers, a managed token, and
-- the credentials the client presented.
local host = require("sluice.host")

local function init(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    local core, err = host.init(path, 1)
    os.remove(path)
    assert(core, err)
end

describe("sluice.host stored bodies", function()
    before_each(function()
        init([[return {
  history = { path = "/tmp/unused.db", bodies = true },
  keys = { "gateway-key-LONG-1" },
  admin = { token = "adm" },
  suppliers = {
    short = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1",
              auth = { type = "bearer", token = "s3q" }, headers = { ["x-org"] = "o9" } },
    hdr = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1",
            auth = { type = "header", name = "x-api-key", value = "v7" } },
    nested = { protocol = "openai-chat", base_url = "http://127.0.0.1:1/v1",
               auth = { type = "bearer", token = "tok-ab" }, headers = { ["x-outer"] = "tok-abcdefgh" } },
  },
}]])
    end)

    local function stored(ctx, text)
        ctx.body, ctx.answer = text, text
        ctx.headers = ctx.headers or {}
        ctx.protocol = "openai-chat"
        local out = host.log(ctx)
        assert.equal(out.request_body, out.response_body)
        return out.request_body
    end

    it("redacts secrets shorter than 8 characters", function()
        local text = stored({ supplier = "short" }, "tok=s3q org=o9 a=adm key=gateway-key-LONG-1")
        assert.equal("tok=[redacted] org=[redacted] a=[redacted] key=[redacted]", text)
        text = stored({ supplier = "hdr", auth_token = "mt1" }, "v7 and mt1")
        assert.equal("[redacted] and [redacted]", text)
    end)

    it("redacts what the client presented, whatever its length", function()
        local text = stored({ supplier = "hdr", headers = { authorization = "Bearer cb1", ["x-goog-api-key"] = "g2" },
                              query = "alt=sse&key=q4" }, "cb1 g2 q4")
        assert.equal("[redacted] [redacted] [redacted]", text)
        text = stored({ supplier = "hdr", headers = { authorization = "Basic b5", ["x-api-key"] = "ak3" } }, "b5 ak3")
        assert.equal("[redacted] [redacted]", text)
    end)

    it("redacts a secret that contains another one whole", function()
        local text = stored({ supplier = "nested" }, "a tok-abcdefgh b tok-ab c")
        assert.equal("a [redacted] b [redacted] c", text)
    end)

    it("leaves a body without secrets alone", function()
        assert.equal('{"messages":[{"role":"user","content":"hello"}]}',
            stored({ supplier = "nested" }, '{"messages":[{"role":"user","content":"hello"}]}'))
    end)
end)
