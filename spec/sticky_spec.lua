-- sluice.sticky: the session entry's schema guard, binding order, key
-- choice and cool-downs, on the in-process store stand-in.

local json = require("sluice.json")
local new_runtime = require("helpers.runtime")
local sticky = require("sluice.sticky")
local session_store = require("sluice.session_store")

local function runtime()
    local clock = 1000
    local rt = new_runtime(function() return clock end)
    rt.tick = function(s) clock = clock + s end
    return rt
end

local function config()
    return {
        sessions = { ttl = 3600, cooldown = 30 },
        suppliers = {
            a = { id = "a", auth = { type = "bearer", pool = { "k1", "k2", "k3" } } },
            b = { id = "b", auth = { type = "none" } },
        },
    }
end

local BODY = { model = "m", user = "conversation-1" }

local function request(route, rt, cfg)
    local ctx = { headers = {}, request = BODY, route = route }
    sticky.begin(cfg, ctx, rt)
    return ctx
end

describe("sluice.sticky", function()
    local FALLBACK = { suppliers = { "a", "b" }, balance = "fallback" }

    it("binds a session on success and keeps it on that supplier and key", function()
        local rt, cfg = runtime(), config()
        local ctx = request(FALLBACK, rt, cfg)
        assert.is_nil(ctx.session.entry)
        ctx.supplier, ctx.key_index = "b", 1
        ctx.upstream_session_id = "up-7"
        sticky.succeeded(cfg, ctx, rt)
        local again = request(FALLBACK, rt, cfg)
        assert.same({ "b", "a" }, again.chain)
        assert.equal("up-7", again.session.upstream_session)
        assert.equal(1, rt.counts.sluice_session_sticky_hits_total)
        local e = sticky.load(session_store.memory(cfg, rt), ctx.session.key)
        assert.same({ 1, "b", 1, "up-7", 1 }, { e.v, e.supplier, e.key_index, e.upstream_session, e.turns })
    end)

    it("with sessions.key = false keeps no session: route order, nothing read or written", function()
        local rt, cfg = runtime(), config()
        cfg.sessions.key = false
        local ctx = request({ suppliers = { "b", "a" }, balance = "sticky" }, rt, cfg)
        assert.is_nil(ctx.session)
        assert.same({ "b", "a" }, ctx.chain)
        ctx.supplier, ctx.key_index = "b", 1
        sticky.succeeded(cfg, ctx, rt)
        assert.same({}, rt.shared.keys("", 100))
        assert.same({}, rt.counts)
    end)

    it("counts a binding's turns, and a rebind starts a new count", function()
        local rt, cfg = runtime(), config()
        for _ = 1, 3 do
            local ctx = request(FALLBACK, rt, cfg)
            ctx.supplier, ctx.key_index = ctx.chain[1], 1
            sticky.succeeded(cfg, ctx, rt)
        end
        local ctx = request(FALLBACK, rt, cfg)
        assert.equal(3, ctx.session.entry.turns)
        ctx.supplier, ctx.key_index = "a", 1
        sticky.failed(cfg, ctx, { kind = "status", status = 500 }, nil, rt)
        ctx.supplier = "b"
        sticky.succeeded(cfg, ctx, rt)
        local e = sticky.load(session_store.memory(cfg, rt), ctx.session.key)
        assert.same({ "b", 1 }, { e.supplier, e.turns })
    end)

    it("treats an entry of another schema version as a miss and rewrites it", function()
        local rt, cfg = runtime(), config()
        local probe = request(FALLBACK, rt, cfg)
        for _, old in ipairs({ { supplier = "b", key_index = 1 }, { v = 99, supplier = "b", key_index = 1 } }) do
            rt.shared.set("sluice:sess:" .. probe.session.key, json.encode(old), 60)
            local ctx = request(FALLBACK, rt, cfg)
            assert.is_nil(ctx.session.entry)
            assert.same({ "a", "b" }, ctx.chain)
            ctx.supplier, ctx.key_index = "a", 2
            sticky.succeeded(cfg, ctx, rt)
            local e = json.decode((rt.shared.get("sluice:sess:" .. probe.session.key)))
            assert.same({ 1, "a", 2, 1 }, { e.v, e.supplier, e.key_index, e.turns })
        end
    end)

    it("gives new sessions the least recently used key that is not cooling", function()
        local rt, cfg = runtime(), config()
        local a = cfg.suppliers.a
        local picks = {}
        for i = 1, 3 do
            rt.tick(1)
            picks[i] = sticky.pick_key(cfg, { }, a, rt)
        end
        table.sort(picks)
        assert.same({ 1, 2, 3 }, picks)
        -- key 1 is rate limited for 120 s (its Retry-After): skipped while it rests
        sticky.failed(cfg, { supplier = "a", key_index = 1 }, { kind = "status", status = 429 }, 120, rt)
        assert.equal(1, rt.counts['sluice_key_cooldowns_total{key=a#1}'])
        for _ = 1, 4 do
            rt.tick(1)
            assert.are_not.equal(1, sticky.pick_key(cfg, {}, a, rt))
        end
        rt.tick(121)
        local seen1 = false
        for _ = 1, 3 do
            rt.tick(1)
            if sticky.pick_key(cfg, {}, a, rt) == 1 then seen1 = true end
        end
        assert.is_true(seen1)
    end)

    it("drops the binding when its supplier/key fails, not when another one does", function()
        local rt, cfg = runtime(), config()
        local ctx = request(FALLBACK, rt, cfg)
        ctx.supplier, ctx.key_index = "a", 2
        sticky.succeeded(cfg, ctx, rt)
        local t2 = request(FALLBACK, rt, cfg)
        t2.supplier, t2.key_index = "a", 3
        sticky.failed(cfg, t2, { kind = "status", status = 503 }, nil, rt)
        assert.is_not_nil(t2.session.entry) -- key 3 is not the bound key
        t2.key_index = 2
        sticky.failed(cfg, t2, { kind = "status", status = 400 }, nil, rt)
        assert.is_not_nil(t2.session.entry) -- the client's mistake, not the key's
        sticky.failed(cfg, t2, { kind = "error", reason = "UPSTREAM_CONNECT" }, nil, rt)
        assert.is_nil(t2.session.entry)
        assert.is_nil(sticky.load(session_store.memory(cfg, rt), ctx.session.key))
        assert.equal(1, rt.counts.sluice_session_rebinds_total)
    end)

    it("spreads new sessions over a sticky pool, skipping a supplier whose keys all rest", function()
        local rt, cfg = runtime(), config()
        cfg.suppliers.a.auth.pool = { "k1" }
        local STICKY = { suppliers = { "a", "b" }, balance = "sticky" }
        sticky.failed(cfg, { supplier = "a", key_index = 1 }, { kind = "status", status = 429 }, nil, rt)
        local ctx = request(STICKY, rt, cfg)
        assert.same({ "b", "a" }, ctx.chain)
    end)
end)
