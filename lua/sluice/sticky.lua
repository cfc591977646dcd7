-- sluice.sticky — keeps a conversation on one supplier and one upstream key
-- (DESIGN §8), so the supplier's prompt cache keeps hitting, and spreads new
-- conversations over a supplier's key pool.
--
-- State, in the session store (sluice.session_store: Redis or the
-- in-process store), names relative to its prefix:
--   sess:<session hash>        -> the session entry, JSON, idle TTL sessions.ttl:
--       { v = SCHEMA, supplier, key_index, upstream_session, created, last_used, turns }
--   key:<supplier>:<i>:cool    -> present while key i of the supplier rests after a 429
--   key:<supplier>:<i>:used    -> when key i was last handed to a request
--   sup:<supplier>:used        -> when the supplier last got a new session (balance = "sticky")
-- An entry whose `v` is missing or not SCHEMA is a miss (schema guard): it
-- is rewritten by the next successful turn.
--
-- The life of a request (sluice.host calls these):
--   begin(cfg, ctx, rt, round)  after routing: opens the store (with Redis,
--                            it runs the request's round: one round trip, shared
--                            with a tenant's counters), the session key, its entry, and
--                            ctx.chain (the route's suppliers, the bound one first)
--   pick_key(cfg, ctx, s)    per attempt: the bound key, else the least
--                            recently used key that is not cooling down
--   failed(cfg, ctx, f)      a failed attempt: a 429 cools its key down for
--                            everyone; any 429, 5xx, 401/403 or transport
--                            failure of the bound supplier/key drops the binding
--   succeeded(cfg, ctx)      a 2xx reached the client: the binding is written
--
-- Keys are never stored or shown: only their index in the pool.

local json = require("sluice.json")
local request_body = require("sluice.request_body")
local session = require("sluice.session")
local session_store = require("sluice.session_store")

local type, tonumber, ipairs, fmt, floor = type, tonumber, ipairs, string.format, math.floor

local T = {}

T.SCHEMA = 1
local STAMP_TTL = 86400 -- use stamps only order keys; a day-old one is as good as none

local rt_of = require("sluice.runtime")

local function count(rt, name, k, v)
    if rt.count then rt.count(name, k, v) end
end

local function sess_name(hash) return "sess:" .. hash end
local function key_base(sid, i) return fmt("key:%s:%d", sid, i) end

-- The request's store (opened by begin; the in-process one otherwise).
local function store_of(cfg, ctx, rt)
    local st = ctx.store
    if not st then
        st = session_store.memory(cfg, rt_of(rt))
        ctx.store = st
    end
    return st
end

local function decode_entry(raw)
    if type(raw) ~= "string" then return nil end
    local e = json.decode(raw)
    if type(e) ~= "table" or e.v ~= T.SCHEMA or type(e.supplier) ~= "string" then return nil, "stale" end
    return e
end

-- The entry stored under `hash` in `store`, or nil (absent, unreadable, other schema).
function T.load(store, hash)
    return decode_entry(store:get(sess_name(hash)))
end

local function cooling(store, sid, i)
    return store:get(key_base(sid, i) .. ":cool") ~= nil
end

local function pool_size(supplier)
    local p = supplier.auth.pool
    return p and #p or 1
end

-- A supplier is healthy for a new session while one of its keys is not cooling.
local function healthy(store, supplier)
    for i = 1, pool_size(supplier) do
        if not cooling(store, supplier.id, i) then return true end
    end
    return false
end

-- The least recently used of `candidates` (names of their `used` stamps),
-- skipping the unhealthy unless all are; marks the winner used now.
local function lru(store, rt, candidates, ok)
    local best, best_t, best_ok
    for i, c in ipairs(candidates) do
        local good = ok(i)
        local t = tonumber(store:get(c)) or 0
        if best == nil or (good and not best_ok) or (good == best_ok and t < best_t) then
            best, best_t, best_ok = i, t, good
        end
    end
    store:set(candidates[best], fmt("%.6f", rt.now()), STAMP_TTL)
    return best
end

-- Every name the request may read, for the store's one round trip.
local function names_for(cfg, chain, hash)
    local names = {}
    if hash then names[1] = sess_name(hash) end
    for _, sid in ipairs(chain) do
        local s = cfg.suppliers[sid]
        names[#names + 1] = "sup:" .. sid .. ":used"
        for i = 1, pool_size(s) do
            names[#names + 1] = key_base(sid, i) .. ":cool"
            names[#names + 1] = key_base(sid, i) .. ":used"
        end
    end
    return names
end

-- The balancing picks, kept out of the functions every request runs: a
-- function that makes a closure cannot be compiled by LuaJIT 2.1.
local function least_used_supplier(cfg, store, rt, chain)
    local stamps = {}
    for i, sid in ipairs(chain) do stamps[i] = "sup:" .. sid .. ":used" end
    return chain[lru(store, rt, stamps, function(i) return healthy(store, cfg.suppliers[chain[i]]) end)]
end

local function least_used_key(store, rt, supplier, n)
    local stamps = {}
    for i = 1, n do stamps[i] = key_base(supplier.id, i) .. ":used" end
    return lru(store, rt, stamps, function(i) return not cooling(store, supplier.id, i) end)
end

-- The parts of the body the default session rules read (sluice.session),
-- decoded from the request as far as they reach (sluice.request_body).
local NO_LISTS = {}
function T.read_session_body(ctx, part)
    if part == "hints" then return request_body.view(ctx, session.HINT_FIELDS, NO_LISTS) end
    return request_body.view(ctx, session.PREFIX_FIELDS, session.BODY_LISTS, session.opens_conversation)
end

-- round: the request's Redis round (sluice.session_store.round), which the
-- session's reads join and run; nil without Redis.
function T.begin(cfg, ctx, rt, round)
    rt = rt_of(rt)
    local route = ctx.route
    local chain = route.suppliers
    ctx.chain = chain
    if cfg.sessions.key == false then return end -- sessions off
    -- the default rules read a few body fields, and only once a rule needs
    -- them; a sessions.key function reads what it likes
    local hash, rule = session.key(ctx, nil, cfg.sessions.key, T.read_session_body)
    -- only Redis needs the names up front (one round trip); the in-process store reads as it goes
    local names = cfg.sessions.store == "redis" and names_for(cfg, chain, hash) or nil
    local store = session_store.open(cfg, names, hash and sess_name(hash), rt, round)
    ctx.store = store
    if not hash then return end
    local entry = T.load(store, hash)
    local s = { key = hash, rule = rule, entry = entry, upstream_session = entry and entry.upstream_session }
    ctx.session = s
    local first
    if entry then
        for _, sid in ipairs(chain) do
            if sid == entry.supplier then first = sid end
        end
    end
    if first then
        s.hit = true
        count(rt, "sluice_session_sticky_hits_total")
    else
        s.entry = nil
        count(rt, "sluice_session_misses_total")
        if route.balance == "sticky" and #chain > 1 then first = least_used_supplier(cfg, store, rt, chain) end
    end
    if first and first ~= chain[1] then
        local ordered = { first }
        for _, sid in ipairs(chain) do
            if sid ~= first then ordered[#ordered + 1] = sid end
        end
        ctx.chain = ordered
    end
end

function T.pick_key(cfg, ctx, supplier, rt)
    rt = rt_of(rt)
    local n = pool_size(supplier)
    if n <= 1 then return 1 end
    local store = store_of(cfg, ctx, rt)
    local s = ctx.session
    local e = s and s.entry
    if e and e.supplier == supplier.id and type(e.key_index) == "number" and e.key_index >= 1
        and e.key_index <= n and not cooling(store, supplier.id, e.key_index) then
        return e.key_index
    end
    return least_used_key(store, rt, supplier, n)
end

-- True when the supplier has a key other than the current one that is not cooling.
function T.other_key_ready(cfg, ctx, supplier, rt)
    local store = store_of(cfg, ctx, rt)
    for i = 1, pool_size(supplier) do
        if i ~= ctx.key_index and not cooling(store, supplier.id, i) then return true end
    end
    return false
end

local function drops_binding(f)
    if f.kind ~= "status" then return true end
    local st = f.status or 0
    return st == 429 or st == 401 or st == 403 or st >= 500
end

-- retry_after: seconds the upstream asked for (sluice.retry), or nil.
function T.failed(cfg, ctx, f, retry_after, rt)
    rt = rt_of(rt)
    local sid, idx = ctx.supplier, ctx.key_index or 1
    if not sid then return end
    local store = store_of(cfg, ctx, rt)
    if f.kind == "status" and f.status == 429 then
        local secs = retry_after and retry_after > 0 and retry_after or cfg.sessions.cooldown
        store:set(key_base(sid, idx) .. ":cool", "1", secs)
        count(rt, "sluice_key_cooldowns_total", "key", sid .. "#" .. idx)
    end
    local s = ctx.session
    local e = s and s.entry
    if e and e.supplier == sid and (e.key_index or 1) == idx and drops_binding(f) then
        store:delete(sess_name(s.key))
        s.entry, s.rebound = nil, true
        count(rt, "sluice_session_rebinds_total")
    end
end

function T.succeeded(cfg, ctx, rt)
    local s = ctx.session
    if not s or not ctx.supplier then return end
    rt = rt_of(rt)
    local store = store_of(cfg, ctx, rt)
    -- milliseconds: they order the sessions (/_sluice/sessions), and a time
    -- with 13 digits encodes on the JSON encoder's first, short try (a full
    -- double took its slow shortest-round-trip path)
    local now = floor(rt.now() * 1000) / 1000
    -- begin read the entry; without one there (absent, stale, or a rebind)
    -- this is a new binding, counted from its first turn. Not read again:
    -- a binding another request wrote meanwhile is overwritten either way.
    local old = s.entry or {}
    local upstream_session = ctx.upstream_session_id
    if type(upstream_session) ~= "string" then upstream_session = old.upstream_session end
    local e = { v = T.SCHEMA, supplier = ctx.supplier, key_index = ctx.key_index or 1,
                upstream_session = upstream_session,
                created = old.supplier and old.created or now, last_used = now,
                turns = (old.supplier and tonumber(old.turns) or 0) + 1 }
    store:set(sess_name(s.key), json.encode(e), cfg.sessions.ttl)
    s.entry = e
end

-- GET /_sluice/sessions: the live sessions in the in-process store (with
-- Redis, the ones this instance served), most recently used first, at most
-- `max`: hashed key, binding (supplier, key index), turns, times. Never a key.
function T.list(cfg, max, rt)
    rt = rt_of(rt)
    local store = session_store.memory(cfg, rt)
    local prefix = store.prefix .. "sess:"
    local items = {}
    for _, k in ipairs(rt.shared.keys(prefix, max or 1000)) do
        local e = decode_entry(rt.shared.get(k))
        if e then
            items[#items + 1] = { session = k:sub(#prefix + 1), supplier = e.supplier, key_index = e.key_index,
                                  turns = e.turns, created = e.created, last_used = e.last_used }
        end
    end
    table.sort(items, function(a, b) return (a.last_used or 0) > (b.last_used or 0) end)
    return { store = cfg.sessions.store, items = items }
end

-- What the history record says about the binding: supplier and key index.
function T.record_fields(ctx)
    local s = ctx.session
    if not s then return nil end
    local b = ctx.supplier and { supplier = ctx.supplier, key_index = ctx.key_index or 1 } or nil
    return s.key, b
end

return T
