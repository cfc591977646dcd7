-- sluice.auth.managed: config checks, the token request, reading the reply,
-- and the cache's behaviour under concurrency (single flight, refresh before
-- expiry, stale-while-refreshing, failures reported to the waiters). The
-- runtime is faked: a scheduler runs "requests" as coroutines on a fake
-- clock, with the token endpoint answering after a delay.
local managed = require("sluice.auth.managed")
local sluice = require("sluice")
local json = require("sluice.json")

local function bad(field, msg) error({ field = field, msg = msg }, 0) end

local function check(a)
    local ok, r = pcall(managed.check, a, "suppliers.acme.auth", bad)
    if ok then return r end
    return nil, r.field .. ": " .. r.msg
end

local OAUTH = { type = "managed", token_url = "http://idp.test/oauth/token", client_id = "cid",
                client_secret = "s3cret&=", scope = "llm" }

local function supplier(a) return { id = "acme", auth = assert(check(a or OAUTH)) } end

-- A fake world: clock, shared store, token endpoint, scheduler.
local function world(opts)
    opts = opts or {}
    local w = { now = 0, fetches = {}, replies = opts.replies or {}, delay = opts.delay or 0.3, tasks = {} }
    w.store = sluice.local_store(function() return w.now end)
    w.rt = {
        shared = w.store,
        monotonic = function() return w.now end,
        sleep = function(s) coroutine.yield("sleep", s) end,
        http = function(req)
            w.fetches[#w.fetches + 1] = req
            coroutine.yield("sleep", w.delay)
            local r = table.remove(w.replies, 1) or { 200, { access_token = "tok-" .. #w.fetches, expires_in = 3600 } }
            if r.fail then return nil, r.fail end
            return r[1], {}, type(r[2]) == "table" and json.encode(r[2]) or r[2]
        end,
    }
    -- Starts n token requests at the current time; returns their results once all ended.
    function w.run(sup, n)
        local results, pending = {}, {}
        for i = 1, n do
            pending[#pending + 1] = { co = coroutine.create(function() return managed.token(sup, w.rt) end),
                                      at = w.now, i = i }
        end
        while #pending > 0 do
            table.sort(pending, function(a, b) return a.at < b.at or (a.at == b.at and a.i < b.i) end)
            local t = table.remove(pending, 1)
            if t.at > w.now then w.now = t.at end
            local ok, a, b = coroutine.resume(t.co)
            assert(ok, a)
            if coroutine.status(t.co) == "dead" then
                results[t.i] = { a, b }
            else
                assert(a == "sleep")
                t.at = w.now + b
                pending[#pending + 1] = t
            end
        end
        return results
    end
    return w
end

describe("sluice.auth.managed config", function()
    it("fills defaults for OAuth2 client credentials", function()
        local a = assert(check(OAUTH))
        assert.equal("access_token", a.token_path)
        assert.equal("expires_in", a.expires_path)
        assert.equal("authorization", a.header)
        assert.equal("Bearer ", a.prefix)
        assert.equal("body", a.client_auth)
    end)

    it("names the field that is wrong", function()
        local cases = {
            { { type = "managed", client_id = "x", client_secret = "y" }, "suppliers.acme.auth.token_url" },
            { { type = "managed", token_url = "ftp://x", client_id = "x", client_secret = "y" }, "token_url" },
            { { type = "managed", token_url = "http://x", client_secret = "y" }, "auth.client_id" },
            { { type = "managed", token_url = "http://x", client_id = "x" }, "auth.client_secret" },
            { { type = "managed", token_url = "http://x", client_id = "x", client_secret = "y", client_auth = "jwt" }, "client_auth" },
            { { type = "managed", token_url = "http://x", client_id = "x", client_secret = "y", tokn_path = "a" }, "auth.tokn_path: unknown field" },
            { { type = "managed", request = { url = "http://x" }, token_url = "http://y" }, "not both" },
            { { type = "managed", request = { url = "nope" } }, "request.url" },
            { { type = "managed", request = { url = "http://x", body = 5 } }, "request.body" },
            { { type = "managed", request = { url = "http://x" }, timeout = 0 }, "auth.timeout" },
            { { type = "managed", request = { url = "http://x" }, header = "bad header" }, "auth.header" },
        }
        for _, c in ipairs(cases) do
            local ok, err = check(c[1])
            assert.is_nil(ok)
            assert.truthy(err:find(c[2], 1, true), err)
        end
    end)
end)

describe("sluice.auth.managed token request", function()
    it("posts a client-credentials form with the secret in the body", function()
        local r = managed.token_request(assert(check(OAUTH)))
        assert.equal("POST", r.method)
        assert.equal("http://idp.test/oauth/token", r.url)
        assert.equal("grant_type=client_credentials&client_id=cid&client_secret=s3cret%26%3D&scope=llm", r.body)
    end)

    it("can send the client credentials as HTTP Basic instead", function()
        local a = {}
        for k, v in pairs(OAUTH) do a[k] = v end
        a.client_auth, a.params = "basic", { audience = "api://llm" }
        local r = managed.token_request(assert(check(a)))
        assert.equal("grant_type=client_credentials&scope=llm&audience=api%3A%2F%2Fllm", r.body)
        local auth
        for _, h in ipairs(r.headers) do if h[1] == "authorization" then auth = h[2] end end
        assert.equal("Basic " .. managed._base64("cid:s3cret%26%3D"), auth)
        assert.equal("Y2lkOnMzY3JldCUyNiUzRA==", managed._base64("cid:s3cret%26%3D"))
    end)

    it("sends a generic request with a JSON body", function()
        local a = assert(check({ type = "managed", request = { url = "http://t/issue", headers = { ["x-k"] = "v" },
                                                               body = { id = "k1" } } }))
        local r = managed.token_request(a)
        assert.equal("POST", r.method)
        assert.same({ id = "k1" }, json.decode(r.body))
        local names = {}
        for _, h in ipairs(r.headers) do names[h[1]] = h[2] end
        assert.equal("v", names["x-k"])
        assert.equal("application/json", names["content-type"])
    end)
end)

describe("sluice.auth.managed reply", function()
    local a = assert(check(OAUTH))

    it("reads the token and its lifetime", function()
        assert.same({ "t1", 120 }, { managed.parse_reply(a, 200, '{"access_token":"t1","expires_in":120}') })
        assert.same({ "t1", 120 }, { managed.parse_reply(a, 200, '{"access_token":"t1","expires_in":"120"}') })
        assert.same({ "t1", 300 }, { managed.parse_reply(a, 200, '{"access_token":"t1"}') })
    end)

    it("follows dotted paths of a generic reply", function()
        local g = assert(check({ type = "managed", request = { url = "http://t" }, token_path = "data.items.1.jwt",
                                 expires_path = "data.ttl", lifetime = 42 }))
        assert.same({ "j", 9 }, { managed.parse_reply(g, 200, '{"data":{"items":[{"jwt":"j"}],"ttl":9}}') })
        assert.same({ "j", 42 }, { managed.parse_reply(g, 200, '{"data":{"items":[{"jwt":"j"}]}}') })
    end)

    it("explains failures without quoting the body", function()
        local _, e = managed.parse_reply(a, 401, '{"error":"invalid_client","error_description":"secret s3cret wrong"}')
        assert.equal("token endpoint returned HTTP 401 (invalid_client)", e)
        _, e = managed.parse_reply(a, 500, "<html>boom s3cret</html>")
        assert.equal("token endpoint returned HTTP 500", e)
        _, e = managed.parse_reply(a, 200, "not json")
        assert.equal("token endpoint answered with a body that is not JSON", e)
        _, e = managed.parse_reply(a, 200, '{"token":"x"}')
        assert.equal("no access_token in the token response", e)
        _, e = managed.parse_reply(a, 200, '{"access_token":"a\\r\\nx-evil: 1"}')
        assert.equal("no access_token in the token response", e)
    end)
end)

describe("sluice.auth.managed cache", function()
    it("fetches once for fifty requests that need a token at the same moment", function()
        local w = world()
        local sup = supplier()
        local res = w.run(sup, 50)
        assert.equal(1, #w.fetches)
        for i = 1, 50 do assert.same({ "tok-1" }, res[i]) end
        -- and later requests hit the cache without waiting
        local t0 = w.now
        assert.same({ { "tok-1" } }, w.run(sup, 1))
        assert.equal(t0, w.now)
        assert.equal(1, #w.fetches)
    end)

    it("refreshes shortly before expiry while others keep using the old token", function()
        local w = world({ replies = { { 200, { access_token = "old", expires_in = 600 } },
                                      { 200, { access_token = "new", expires_in = 600 } } } })
        local sup = supplier()
        w.run(sup, 1)
        w.now = w.now + 600 - 61   -- still fresh (refresh_before = 60)
        assert.same({ "old" }, w.run(sup, 1)[1])
        assert.equal(1, #w.fetches)
        w.now = w.now + 2          -- inside the refresh window
        local res = w.run(sup, 3)
        assert.equal(2, #w.fetches)
        assert.same({ "new" }, res[1])      -- the refresher waits for the new one
        assert.same({ "old" }, res[2])      -- the others are not held up
        assert.same({ "old" }, res[3])
        assert.same({ "new" }, w.run(sup, 1)[1])
    end)

    it("caps the refresh margin at half of a short lifetime", function()
        local w = world({ replies = { { 200, { access_token = "short", expires_in = 10 } } } })
        local sup = supplier()
        w.run(sup, 1)
        w.now = w.now + 4
        assert.same({ "short" }, w.run(sup, 1)[1])
        assert.equal(1, #w.fetches)
        w.now = w.now + 2
        w.run(sup, 1)
        assert.equal(2, #w.fetches)
    end)

    it("reports one failed fetch to every waiter of that flight", function()
        local w = world({ replies = { { 503, "{}" } } })
        local res = w.run(supplier(), 10)
        assert.equal(1, #w.fetches)
        for i = 1, 10 do assert.same({ nil, "token endpoint returned HTTP 503" }, res[i]) end
    end)

    it("reports an unreachable endpoint", function()
        local w = world({ replies = { { fail = "http request failed: Connection refused" } } })
        local res = w.run(supplier(), 1)
        assert.same({ nil, "token endpoint unreachable: http request failed: Connection refused" }, res[1])
    end)

    it("releases the fetch lock when the fetch raises", function()
        local w = world()
        local sup = supplier()
        local http = w.rt.http
        w.rt.http = function() error("script exceeded its instruction budget", 0) end
        local co = coroutine.create(function() return managed.token(sup, w.rt) end)
        local ok, err = coroutine.resume(co)
        assert.is_false(ok)
        assert.equal("script exceeded its instruction budget", err)
        w.rt.http = http
        local t0 = w.now
        assert.same({ "tok-1" }, w.run(sup, 1)[1])
        assert.is_true(w.now - t0 < 1, "the next request waited for a lock nobody held")
    end)

    it("releases the fetch lock of a request cancelled while it fetches", function()
        local w = world()
        local sup = supplier()
        local co = coroutine.create(function() return managed.token(sup, w.rt) end)
        assert.is_true(coroutine.resume(co))         -- now waiting on the endpoint, lock held
        managed.abandon(co)                           -- its client left
        local t0 = w.now
        assert.same({ "tok-2" }, w.run(sup, 1)[1])
        assert.is_true(w.now - t0 < 1, "the next request waited for an abandoned lock")
    end)

    it("tries again on the next request after a failure", function()
        local w = world({ replies = { { 500, "{}" } } })
        local sup = supplier()
        assert.is_nil(w.run(sup, 1)[1][1])
        assert.same({ "tok-2" }, w.run(sup, 1)[1])
    end)

    it("keeps a still-valid token when a refresh fails", function()
        local w = world({ replies = { { 200, { access_token = "old", expires_in = 100 } }, { 500, "{}" } } })
        local sup = supplier()
        w.run(sup, 1)
        w.now = w.now + 80
        assert.same({ "old" }, w.run(sup, 1)[1])
        assert.equal(2, #w.fetches)
    end)

    it("fetches nothing when another flight's token lands just before it takes the lock", function()
        local w = world()
        local sup = supplier()
        w.run(sup, 1) -- the token another flight (another instance) will store
        local stored = {}
        for _, k in ipairs(w.store.keys("", 100)) do stored[k] = { w.store.get(k) } end
        for k in pairs(stored) do w.store.delete(k) end
        -- The token and its fresh mark land, and that flight's lock is gone,
        -- between this request's look and its lock.
        w.rt.shared = setmetatable({ add = function(k, ...)
            if k:find(":lock$") then
                for sk, v in pairs(stored) do
                    if not sk:find(":lock$") then w.store.set(sk, v[1], v[2]) end
                end
            end
            return w.store.add(k, ...)
        end }, { __index = w.store })
        assert.same({ "tok-1" }, w.run(sup, 1)[1])
        assert.equal(1, #w.fetches)
        for _, k in ipairs(w.store.keys("", 100)) do assert.is_nil(k:find(":lock$"), k) end
    end)

    it("gives up waiting when the fetching request never finishes", function()
        local w = world()
        local sup = supplier()
        -- Someone holds the lock and never finishes (as if it never expired).
        w.rt.shared = setmetatable({ add = function(k, ...)
            if k:find(":lock$") then return false, "exists" end
            return w.store.add(k, ...)
        end }, { __index = w.store })
        local res = w.run(sup, 1)
        assert.same({ nil, "timed out waiting for the token endpoint" }, res[1])
        assert.is_true(w.now <= sup.auth.timeout + 3.1)
        assert.equal(0, #w.fetches)
    end)

    it("invalidates only the token that was refused", function()
        local w = world()
        local sup = supplier()
        w.run(sup, 1)
        managed.invalidate(sup, "some-older-token", w.rt)
        assert.same({ "tok-1" }, w.run(sup, 1)[1])
        managed.invalidate(sup, "tok-1", w.rt)
        assert.same({ "tok-2" }, w.run(sup, 1)[1])
        assert.equal(2, #w.fetches)
    end)

    it("keeps suppliers and endpoints apart", function()
        local w = world()
        local a, b = supplier(), { id = "other", auth = assert(check(OAUTH)) }
        w.run(a, 1)
        assert.same({ "tok-2" }, w.run(b, 1)[1])
        local c = {}
        for k, v in pairs(OAUTH) do c[k] = v end
        c.client_id = "another-client"
        assert.same({ "tok-3" }, w.run({ id = "acme", auth = assert(check(c)) }, 1)[1])
    end)

    it("never puts the secret into a cache key", function()
        local w = world()
        w.run(supplier(), 1)
        local seen = {}
        local set = w.store.set
        w.rt.shared = setmetatable({ set = function(k, v, t) seen[#seen + 1] = k; return set(k, v, t) end },
                                   { __index = w.store })
        managed.invalidate(supplier(), "tok-1", w.rt)
        w.run(supplier(), 1)
        assert.truthy(#seen > 0)
        for _, k in ipairs(seen) do assert.falsy(k:find("s3cret", 1, true), k) end
    end)
end)

describe("managed auth in the config", function()
    local config = require("sluice.config")

    local function load(auth_src)
        local path = os.tmpname()
        local f = assert(io.open(path, "w"))
        f:write(([[return {
          suppliers = { acme = { protocol = "openai-chat", base_url = "http://x/v1", auth = %s } },
          routes = { chat = { { supplier = "acme" } } } }]]):format(auth_src))
        f:close()
        local c, err = config.load(path)
        os.remove(path)
        return c, err
    end

    it("is accepted, normalised, and redacted for display", function()
        local c = assert(load([[{ type = "managed", token_url = "http://idp/t", client_id = "c",
                                  client_secret = "TOPSECRET" }]]))
        assert.equal("authorization", c.suppliers.acme.auth.header)
        local shown = json.encode(config.redacted(c))
        assert.falsy(shown:find("TOPSECRET", 1, true))
        assert.truthy(shown:find("http://idp/t", 1, true))
        c = assert(load([[{ type = "managed", request = { url = "http://idp/t", body = { k = "TOPSECRET" },
                                                          headers = { ["x-key"] = "TOPSECRET" } } }]]))
        assert.falsy(json.encode(config.redacted(c)):find("TOPSECRET", 1, true))
    end)

    it("names the field when it is wrong", function()
        local c, err = load([[{ type = "managed", token_url = "http://idp/t", client_id = "c" }]])
        assert.is_nil(c)
        assert.equal("suppliers.acme.auth.client_secret: missing (if it comes from os.getenv, is the variable set?)", err)
    end)
end)
