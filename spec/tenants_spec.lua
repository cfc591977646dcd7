-- sluice.tenants: gateway keys that name a tenant — their checks, the
-- fixed windows (seconds, UTC day, UTC month), admission against request,
-- token and cost limits in the process store and through Redis (shared by
-- instances, with the process counting alone while Redis cannot answer),
-- charging at the end of a request, and the /_sluice/keys report that
-- never shows a key. Runs on a fake clock, a fake Redis and the in-VM
-- stand-in of sluice.shared.
local tenants = require("sluice.tenants")
local new_runtime = require("helpers.runtime")
local config = require("sluice.config")
local upstream = require("sluice.upstream")
local digest = require("sluice.digest")
local session = require("sluice.session")

-- config's own validators, their { field, msg } error read as load() words it
local function entry(t, field)
    local ok, v = pcall(tenants.check_entry, t, field or "keys[1]", config.CHECK, config.SERVICES)
    if ok then return v end
    error(type(v) == "table" and (v.field .. ": " .. v.msg) or v, 0)
end

local function raises(t, pattern)
    local ok, err = pcall(entry, t)
    assert.is_false(ok)
    assert.matches(pattern, err)
end

-- A Redis that answers the commands tenants and the session send; `down` makes every call fail.
local function fake_redis()
    local r = { data = {}, down = false, sent = 0 }
    local function run(c)
        local op, k = c[1], c[2]
        if op == "INCR" or op == "INCRBY" or op == "DECR" or op == "INCRBYFLOAT" then
            local d = op == "INCR" and 1 or op == "DECR" and -1 or tonumber(c[3])
            r.data[k] = tostring((tonumber(r.data[k]) or 0) + d)
            return op == "INCRBYFLOAT" and r.data[k] or tonumber(r.data[k])
        elseif op == "GET" then
            return r.data[k] or false
        elseif op == "MGET" then -- the session's read, when the spec shares a round with it
            local out = {}
            for i = 2, #c do out[i - 1] = r.data[c[i]] or false end
            return out
        elseif op == "PEXPIRE" then
            return r.data[k] and 1 or 0
        end
        return { err = "unknown command " .. op }
    end
    function r.pipeline(cmds)
        if r.down then return nil, "redis is down" end
        local out = {}
        for i, c in ipairs(cmds) do out[i] = run(c) end
        return out
    end
    function r.send(cmds)
        if r.down then return nil, "redis is down" end
        r.sent = r.sent + 1
        for _, c in ipairs(cmds) do run(c) end
        return true
    end
    function r.up() return not r.down end
    return r
end

-- One "process": its own store and counters, a clock the spec moves.
local function runtime(clock, redis)
    return new_runtime(function() return clock.t end, redis or fake_redis())
end

local MEMORY = { sessions = { store = "memory", prefix = "sluice:" } }
local REDIS = { sessions = { store = "redis", prefix = "sluice:" } }

describe("sluice.tenants entries", function()
    it("normalises a full entry", function()
        local k = entry({ id = "alice", key = "alice-secret-1", models = { "Claude-*" }, services = { "claude" },
                          rate = { requests_per_minute = 60, tokens_per_minute = 400000 },
                          budget = { usd_per_day = 20, usd_per_month = 300 }, expires = "2027-01-01" })
        assert.equal("alice", k.id)
        assert.same({ "claude-*" }, k.model_globs)
        assert.same({ claude = true }, k.service_set)
        assert.equal(tenants.parse_time("2027-01-01"), k.expires)
        local by = {}
        for _, l in ipairs(k.limits) do by[l.name] = l end
        assert.same({ 60, 60, "requests" }, { by.requests_per_minute.max, by.requests_per_minute.window, by.requests_per_minute.counts })
        assert.same({ 400000, "tokens" }, { by.tokens_per_minute.max, by.tokens_per_minute.counts })
        assert.same({ 20, "day" }, { by.usd_per_day.max, by.usd_per_day.window })
        assert.same({ 300, "month" }, { by.usd_per_month.max, by.usd_per_month.window })
        assert.is_true(k.charges)
    end)

    it("takes shortened windows in seconds", function()
        local k = entry({ id = "t", key = "t-secret-123", rate = { requests_per_minute = 2, window = 2 },
                          budget = { usd_per_day = 1, day_window = 3, usd_per_month = 5, month_window = 7 } })
        assert.same({ 2, 3, 7 }, { k.limits[1].window, k.limits[2].window, k.limits[3].window })
    end)

    it("a key with request limits only has nothing to charge", function()
        assert.is_nil(entry({ id = "r", key = "r-secret-123", rate = { requests_per_minute = 1 } }).charges)
    end)

    it("names the field at fault", function()
        raises({ id = "a", key = "a-secret-123", rate = { requests_per_minute = 1.5 } },
            "^keys%[1%]%.rate%.requests_per_minute: expected a whole number")
        raises({ id = "a", key = "a-secret-123", rate = { requests_per_minute = -1 } },
            "^keys%[1%]%.rate%.requests_per_minute: expected a positive number")
        raises({ id = "a", key = "a-secret-123", rate = { window = 0 } }, "^keys%[1%]%.rate%.window: ")
        raises({ id = "a", key = "a-secret-123", budget = { usd_per_week = 1 } }, "^keys%[1%]%.budget%.usd_per_week: unknown field")
        raises({ id = "a", key = "a-secret-123", budget = 5 }, "^keys%[1%]%.budget: expected a table")
        raises({ id = "a", key = "a-secret-123", key_sha256 = string.rep("a", 64) }, "^keys%[1%]: give exactly one of key or key_sha256")
        raises({ id = "a" }, "^keys%[1%]: give exactly one")
        raises({ id = "a", key_sha256 = string.rep("g", 64) }, "^keys%[1%]%.key_sha256: expected the SHA%-256")
        raises({ id = "a", key = "short" }, "^keys%[1%]%.key: expected a string of at least 8")
        raises({ key = "a-secret-123" }, "^keys%[1%]%.id: expected a non%-empty string")
        raises({ id = "a:b", key = "a-secret-123" }, "^keys%[1%]%.id: expected at most 64")
        raises({ id = string.rep("x", 65), key = "a-secret-123" }, "^keys%[1%]%.id: ")
        raises({ id = "a", key = "a-secret-123", models = {} }, "^keys%[1%]%.models: expected a non%-empty list")
        raises({ id = "a", key = "a-secret-123", models = { "ok", 3 } }, "^keys%[1%]%.models%[2%]: ")
        raises({ id = "a", key = "a-secret-123", services = { "claude", "mail" } }, "^keys%[1%]%.services%[2%]: unknown service mail")
        raises({ id = "a", key = "a-secret-123", expires = "2027-02-29" }, "^keys%[1%]%.expires: expected a UTC date")
        raises({ id = "a", key = "a-secret-123", expires = 1800000000 }, "^keys%[1%]%.expires: ")
        raises({ id = "a", key = "a-secret-123", secret = "x" }, "^keys%[1%]%.secret: unknown field")
    end)

    it("never quotes the key in an error", function()
        local ok, err = pcall(entry, { id = "a", key = "a-secret-123", rate = { requests_per_minute = 0 } })
        assert.is_false(ok)
        assert.is_nil(err:find("a-secret-123", 1, true))
    end)

    it("shows neither the key nor its hash when redacted", function()
        local hash = digest.hex("b-secret-123", 64)
        local shown = tenants.redacted(entry({ id = "b", key_sha256 = hash, rate = { requests_per_minute = 5 } }))
        assert.same({ id = "b", key_sha256 = "[redacted]", rate = { requests_per_minute = 5, window = 60 } }, shown)
        shown = tenants.redacted(entry({ id = "a", key = "a-secret-123" }))
        assert.equal("[redacted]", shown.key)
    end)
end)

describe("sluice.tenants time", function()
    it("reads dates and instants in UTC", function()
        assert.equal(0, tenants.parse_time("1970-01-01"))
        assert.equal(1798761600, tenants.parse_time("2027-01-01"))
        assert.equal(1798761600 + 12 * 3600 + 61, tenants.parse_time("2027-01-01T12:01:01Z"))
        assert.equal(951782400, tenants.parse_time("2000-02-29"))
        assert.is_nil(tenants.parse_time("2100-02-29")) -- not a leap year
        assert.is_nil(tenants.parse_time("2027-13-01"))
        assert.is_nil(tenants.parse_time("2027-01-01T24:00:00Z"))
        assert.is_nil(tenants.parse_time("2027-01-01T10:00:00")) -- a local time is ambiguous: UTC only
    end)

    it("cuts fixed windows, UTC days and UTC months", function()
        local i, ends = tenants.window(60, 125)
        assert.same({ 2, 180 }, { i, ends })
        local t = tenants.parse_time("2026-12-31T23:59:59Z")
        local d, dend = tenants.window("day", t)
        assert.equal(tenants.parse_time("2027-01-01"), dend)
        assert.equal(d + 1, (tenants.window("day", dend)))
        local m, mend = tenants.window("month", t)
        assert.equal(tenants.parse_time("2027-01-01"), mend)
        assert.equal(m + 1, (tenants.window("month", mend)))
        local _, feb = tenants.window("month", tenants.parse_time("2028-02-10"))
        assert.equal(tenants.parse_time("2028-03-01"), feb)
    end)
end)

describe("sluice.tenants access", function()
    local k = entry({ id = "alice", key = "alice-secret-1", models = { "claude-*", "gpt-4.1*" },
                      services = { "claude", "codex" }, expires = "2027-01-01" })

    it("refuses an expired key with a 401 from the instant it expires", function()
        assert.is_nil(tenants.expired(k, tenants.parse_time("2026-12-31T23:59:59Z")))
        local r = tenants.expired(k, tenants.parse_time("2027-01-01"))
        assert.same({ 401, "authentication" }, { r.status, r.type })
        assert.matches("gateway key alice expired at 2027%-01%-01T00:00:00Z", r.message)
    end)

    it("keeps a key to its services and models (globs, any case)", function()
        assert.is_nil(tenants.refuse_service(k, "codex"))
        local r = tenants.refuse_service(k, "chat")
        assert.same({ 403, "permission" }, { r.status, r.type })
        assert.matches("may not use service chat %(allowed: claude, codex%)", r.message)
        assert.is_nil(tenants.refuse_model(k, "Claude-Sonnet-4-5"))
        assert.is_nil(tenants.refuse_model(k, "gpt-4.1-mini"))
        r = tenants.refuse_model(k, "gpt-4o")
        assert.equal(403, r.status)
        assert.matches("may not use model gpt%-4o", r.message)
        assert.same({ "claude-x", "gpt-4.1" }, tenants.filter_models(k, { "claude-x", "gpt-4.1", "o3" }))
    end)
end)

describe("sluice.tenants limits in one process", function()
    local clock, rt
    before_each(function()
        clock = { t = 1800000000 } -- a multiple of 60 and of 3600
        rt = runtime(clock)
    end)

    it("admits requests_per_minute requests per window, then refuses until it turns", function()
        local k = entry({ id = "a", key = "a-secret-123", rate = { requests_per_minute = 3 } })
        for _ = 1, 3 do assert.is_nil(tenants.admit(MEMORY, k, rt)) end
        clock.t = clock.t + 20
        local r = tenants.admit(MEMORY, k, rt)
        assert.same({ 429, "rate_limit", "requests_per_minute", 40 }, { r.status, r.type, r.limit, r.retry_after })
        assert.matches("gateway key a reached its requests_per_minute limit of 3; it resets in 40 s", r.message)
        -- a refused request does not use one up
        assert.equal(3, tonumber((rt.shared.get("tenant:a:requests_per_minute:30000000"))))
        clock.t = clock.t + 40
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        assert.equal(4, rt.counts["sluice_tenant_requests_total{tenant=a}"])
    end)

    it("says the window when it is not a minute", function()
        local k = entry({ id = "q", key = "q-secret-123", rate = { requests_per_minute = 1, window = 2 } })
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        local r = tenants.admit(MEMORY, k, rt)
        assert.equal(2, r.retry_after)
        assert.matches("limit of 1 %(a window of 2 s%)", r.message)
    end)

    it("charges recorded tokens at the end and refuses once the window's are spent", function()
        local k = entry({ id = "t", key = "t-secret-123",
                          rate = { requests_per_minute = 10, tokens_per_minute = 1000 } })
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        assert.is_nil(tenants.admit(MEMORY, k, rt)) -- in flight together: both admitted
        tenants.charge(MEMORY, k, { input_tokens = 700, output_tokens = 200 }, rt)
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        tenants.charge(MEMORY, k, { input_tokens = 300, output_tokens = 100 }, rt) -- past the limit: nothing is cut
        local r = tenants.admit(MEMORY, k, rt)
        assert.same({ 429, "tokens_per_minute" }, { r.status, r.limit })
        -- refused for tokens: no request was used up
        assert.equal(3, tonumber((rt.shared.get("tenant:t:requests_per_minute:30000000"))))
        clock.t = clock.t + 60
        assert.is_nil(tenants.admit(MEMORY, k, rt))
    end)

    it("spends a budget by recorded cost, day and month apart", function()
        local k = entry({ id = "b", key = "b-secret-123", budget = { usd_per_day = 1, usd_per_month = 1.5 } })
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        tenants.charge(MEMORY, k, { input_tokens = 10, output_tokens = 10, cost = 0.6 }, rt)
        tenants.charge(MEMORY, k, { input_tokens = 10 }, rt) -- no price matched: no cost
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        tenants.charge(MEMORY, k, { cost = 0.5 }, rt)
        local r = tenants.admit(MEMORY, k, rt)
        assert.same({ 429, "usd_per_day" }, { r.status, r.limit })
        local day_ends = select(2, tenants.window("day", clock.t))
        assert.equal(math.ceil(day_ends - clock.t), r.retry_after)
        assert.matches("limit of %$1", r.message)
        clock.t = day_ends -- a new day; the month has $0.40 left
        assert.is_nil(tenants.admit(MEMORY, k, rt))
        tenants.charge(MEMORY, k, { cost = 0.4 }, rt)
        r = tenants.admit(MEMORY, k, rt)
        assert.equal("usd_per_month", r.limit)
    end)

    it("reports each limit's use by id, and never a key or a hash", function()
        local hash = digest.hex("c-secret-123", 64)
        local cfg = { sessions = MEMORY.sessions, keys = {
            "plain-key-1234",
            entry({ id = "c", key_sha256 = hash, rate = { requests_per_minute = 5 }, expires = "2020-01-01" }),
        } }
        assert.is_nil(tenants.admit(cfg, cfg.keys[2], rt))
        clock.t = clock.t + 15
        local doc = tenants.report(cfg, rt)
        assert.equal("process", doc.counted)
        assert.same({ id = "key#1" }, doc.items[1])
        local c = doc.items[2]
        assert.same({ "c", true }, { c.id, c.expired })
        assert.same({ limit = 5, used = 1, remaining = 4, window = 60, resets_in = 45,
                      resets_at = os.date("!%Y-%m-%dT%H:%M:%SZ", 1800000060) }, c.limits.requests_per_minute)
        local text = require("sluice.json").encode(doc)
        assert.is_nil(text:find(hash, 1, true))
        assert.is_nil(text:find("plain-key-1234", 1, true))
    end)
end)

describe("sluice.tenants limits through Redis", function()
    local clock, redis, a, b, k
    before_each(function()
        clock = { t = 1800000000 }
        redis = fake_redis()
        a, b = runtime(clock, redis), runtime(clock, redis) -- two instances, one Redis
        k = entry({ id = "team", key = "team-secret-1", rate = { requests_per_minute = 4, tokens_per_minute = 100 } })
    end)

    it("shares one request counter between instances", function()
        for _, rt in ipairs({ a, b, a, b }) do assert.is_nil(tenants.admit(REDIS, k, rt)) end
        assert.equal(429, tenants.admit(REDIS, k, a).status)
        assert.equal(429, tenants.admit(REDIS, k, b).status)
        -- the refused increments were taken back
        assert.equal("4", redis.data["sluice:tenant:team:requests_per_minute:30000000"])
        -- each process mirrors what Redis said (what /_sluice/keys shows)
        assert.equal(4, tenants.report({ sessions = REDIS.sessions, keys = { k } }, b).items[1].limits.requests_per_minute.used)
        assert.is_nil(a.counts["sluice_tenant_counters_fallback_total"])
    end)

    it("shares charged tokens between instances", function()
        assert.is_nil(tenants.admit(REDIS, k, a))
        tenants.charge(REDIS, k, { input_tokens = 80, output_tokens = 30 }, a)
        assert.equal("110", redis.data["sluice:tenant:team:tokens_per_minute:30000000"])
        assert.equal("tokens_per_minute", tenants.admit(REDIS, k, b).limit)
    end)

    it("counts in the process while Redis is down, from what Redis last said, and says so", function()
        assert.is_nil(tenants.admit(REDIS, k, a))
        assert.is_nil(tenants.admit(REDIS, k, b))
        assert.is_nil(tenants.admit(REDIS, k, a)) -- Redis says 3; a's mirror holds 3
        redis.down = true
        assert.is_nil(tenants.admit(REDIS, k, a)) -- 4 in a's own count
        assert.equal(429, tenants.admit(REDIS, k, a).status)
        assert.equal(2, a.counts["sluice_tenant_counters_fallback_total"])
        tenants.charge(REDIS, k, { input_tokens = 5 }, a) -- not sent anywhere; counted here, never raises
        assert.equal("process (redis down)", tenants.report({ sessions = REDIS.sessions, keys = { k } }, a).counted)
        redis.down = false
        assert.is_nil(tenants.admit(REDIS, k, b)) -- Redis is the count again: 3 + 1
        assert.equal(429, tenants.admit(REDIS, k, a).status)
    end)

    it("takes a Redis error reply as no answer", function()
        redis.data["sluice:tenant:team:requests_per_minute:30000000"] = "x"
        local pipeline = redis.pipeline
        redis.pipeline = function(cmds)
            local out = pipeline(cmds)
            out[1] = { err = "ERR value is not an integer" }
            return out
        end
        assert.is_nil(tenants.admit(REDIS, k, a))
        assert.equal(1, a.counts["sluice_tenant_counters_fallback_total"])
    end)
end)

describe("sluice.tenants with the session in one round", function()
    local session_store = require("sluice.session_store")

    it("rides the session's pipeline: one wait for both, each reads its own replies", function()
        local clock = { t = 1800000000 }
        local redis = fake_redis()
        local calls, pipeline = 0, redis.pipeline
        redis.pipeline = function(cmds) calls = calls + 1; return pipeline(cmds) end
        redis.data["sluice:sess:abc"] = "entry"
        local rt = runtime(clock, redis)
        local k = entry({ id = "team", key = "team-secret-1", rate = { requests_per_minute = 1 } })
        local round = session_store.round(REDIS, rt)
        local admission = tenants.admission(REDIS, k, rt, round)
        local store = session_store.open({ sessions = { store = "redis", prefix = "sluice:", ttl = 60 } },
            { "sess:abc" }, "sess:abc", rt, round)
        assert.equal("entry", store:get("sess:abc"))
        assert.is_nil(admission:verdict())
        assert.equal(1, calls)
        -- the next request over the limit: refused from its own replies
        round = session_store.round(REDIS, rt)
        assert.equal(429, tenants.admission(REDIS, k, rt, round):verdict().status)
        assert.equal(2, calls)
    end)

    it("falls back for both when the round gets no answer", function()
        local clock = { t = 1800000000 }
        local redis = fake_redis()
        local rt = runtime(clock, redis)
        redis.down = true
        local k = entry({ id = "team", key = "team-secret-1", rate = { requests_per_minute = 5 } })
        local round = session_store.round(REDIS, rt)
        local admission = tenants.admission(REDIS, k, rt, round)
        local store = session_store.open({ sessions = { store = "redis", prefix = "sluice:", ttl = 60 } },
            { "sess:abc" }, "sess:abc", rt, round)
        assert.equal("memory", store.kind)
        assert.is_nil(admission:verdict())
        assert.equal(1, rt.counts["sluice_tenant_counters_fallback_total"])
        assert.equal(1, rt.counts["sluice_session_store_fallback_total"])
    end)
end)

describe("sluice.upstream inbound keys with tenants", function()
    local hash = digest.hex("carol-secret-1", 64)
    local cfg = { keys = {
        "plain-key-1234",
        entry({ id = "alice", key = "alice-secret-1" }, "keys[2]"),
        entry({ id = "carol", key_sha256 = hash:upper() }, "keys[3]"),
    }, hashed_keys = true, key_scopes = { session.plain_key_scope("plain-key-1234") } }
    local function check(key)
        local ctx = { headers = { authorization = "Bearer " .. key } }
        local ok, why = upstream.check_inbound_key(cfg, ctx)
        return ctx, ok, why
    end

    it("finds a key by its text or by its SHA-256, and names the tenant by id", function()
        local ctx, ok = check("alice-secret-1")
        assert.is_true(ok)
        assert.same({ 2, "alice", "id:alice" }, { ctx.gateway_key_index, ctx.key_id, ctx.tenant })
        assert.equal(cfg.keys[2], ctx.tenant_key)
        ctx, ok = check("carol-secret-1")
        assert.is_true(ok)
        assert.same({ 3, "carol", "id:carol" }, { ctx.gateway_key_index, ctx.key_id, ctx.tenant })
    end)

    it("leaves a plain key as it was: no tenant entry, scoped by its hash", function()
        local ctx, ok = check("plain-key-1234")
        assert.is_true(ok)
        assert.same({ 1, nil, nil }, { ctx.gateway_key_index, ctx.key_id, ctx.tenant_key })
        assert.equal("key:" .. digest.hex("plain-key-1234", 16), ctx.tenant)
    end)

    it("refuses the hash itself, and near misses", function()
        for _, k in ipairs({ hash, "carol-secret-2", "alice-secret-", "alice-secret-1x" }) do
            local _, ok, why = check(k)
            assert.is_false(ok)
            assert.equal("invalid API key", why)
        end
    end)
end)
