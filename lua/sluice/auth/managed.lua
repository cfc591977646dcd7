-- sluice.auth.managed — short-lived supplier tokens fetched from a token
-- endpoint (DESIGN §7), for `auth = { type = "managed", ... }`.
--
-- Two ways to describe the endpoint:
--
--   OAuth2 client credentials (RFC 6749 §4.4):
--     { type = "managed", token_url = "https://idp/oauth/token",
--       client_id = "...", client_secret = os.getenv("..."), scope = "..." (optional),
--       client_auth = "body" | "basic" (default "body"), params = { extra form fields } }
--   Generic (any JSON/HTTP token service):
--     { type = "managed",
--       request = { method = "POST", url = "...", headers = { name = value },
--                   body = { ... } (sent as JSON) or "raw string" },
--       token_path = "data.token", expires_path = "data.ttl" }
--
-- Common fields, all optional: token_path (default "access_token"),
-- expires_path ("expires_in": seconds of lifetime, number or numeric string),
-- lifetime (300: used when the reply states none), refresh_before (60:
-- refresh this long before expiry, at most half the lifetime), header
-- ("authorization") and prefix ("Bearer ") for how the token goes upstream,
-- timeout (10 seconds for the token request).
--
-- Tokens live in the store shared by every worker (sluice.shared), keyed by
-- supplier and endpoint, with the token's lifetime as TTL. Single flight:
-- the request that finds no usable token takes a lock (shared.add) and
-- fetches; everyone else waits for the token to appear (polling every 50 ms,
-- bounded by the lock's TTL) or, during a refresh, keeps using the old token
-- while it is still valid. A failed fetch is left for the waiters of that
-- flight to read, so one dead endpoint costs one request, not fifty.
--
-- Secrets (client_secret, the token) never go into an error message: errors
-- name the endpoint's status or what was missing from its reply.
--
--   M.check(auth, field, bad)        -> auth with defaults (config validation)
--   M.token(supplier, rt?)           -> token | nil, err   (request phase: may yield)
--   M.invalidate(supplier, token, rt?) -- drop the cached token if it is still `token`
--   M.header(auth, token)            -> name, value for the upstream request
--
-- rt is the runtime { http, sleep, monotonic, shared }; it defaults to the
-- `sluice` module and exists so specs can drive every path without a core.

local json = require("sluice.json")
local bit = require("bit")

local type, tostring, tonumber, pairs, ipairs = type, tostring, tonumber, pairs, ipairs
local fmt, concat = string.format, table.concat

local M = {}

local POLL = 0.05

local FIELDS = {
    type = true, token_url = true, client_id = true, client_secret = true, scope = true,
    client_auth = true, params = true, request = true, token_path = true, expires_path = true,
    lifetime = true, refresh_before = true, header = true, prefix = true, timeout = true,
}

local function nonempty(a, key, field, bad)
    if type(a[key]) ~= "string" or a[key] == "" then
        bad(field .. "." .. key, "missing (if it comes from os.getenv, is the variable set?)")
    end
end

local function number_or(v, dflt, field, bad)
    if v == nil then return dflt end
    if type(v) ~= "number" or v < 0 then bad(field, "expected a number >= 0") end
    return v
end

function M.check(a, field, bad)
    for k in pairs(a) do
        if not FIELDS[k] then
            local names = {}
            for n in pairs(FIELDS) do names[#names + 1] = n end
            table.sort(names)
            bad(field .. "." .. tostring(k), "unknown field (known: " .. concat(names, ", ") .. ")")
        end
    end
    local out = {}
    for k, v in pairs(a) do out[k] = v end
    if a.request ~= nil then
        if a.token_url ~= nil then bad(field, "give either token_url (OAuth2) or request (generic), not both") end
        if type(a.request) ~= "table" then bad(field .. ".request", "expected a table") end
        local r = a.request
        if type(r.url) ~= "string" or not r.url:match("^https?://[^/]+") then
            bad(field .. ".request.url", "expected an http:// or https:// URL")
        end
        if r.method ~= nil and (type(r.method) ~= "string" or not r.method:match("^%u+$")) then
            bad(field .. ".request.method", "expected an HTTP method such as \"POST\"")
        end
        if r.headers ~= nil and type(r.headers) ~= "table" then bad(field .. ".request.headers", "expected a table") end
        if r.body ~= nil and type(r.body) ~= "table" and type(r.body) ~= "string" then
            bad(field .. ".request.body", "expected a table (sent as JSON) or a string")
        end
        out.url = r.url
    else
        if type(a.token_url) ~= "string" or not a.token_url:match("^https?://[^/]+") then
            bad(field .. ".token_url", "expected an http:// or https:// URL (or give `request` for a generic endpoint)")
        end
        nonempty(a, "client_id", field, bad)
        nonempty(a, "client_secret", field, bad)
        if a.scope ~= nil and type(a.scope) ~= "string" then bad(field .. ".scope", "expected a string") end
        if a.params ~= nil and type(a.params) ~= "table" then bad(field .. ".params", "expected a table") end
        out.client_auth = a.client_auth or "body"
        if out.client_auth ~= "body" and out.client_auth ~= "basic" then
            bad(field .. ".client_auth", "expected \"body\" or \"basic\"")
        end
        out.url = a.token_url
    end
    for _, k in ipairs({ "token_path", "expires_path", "header", "prefix" }) do
        if a[k] ~= nil and type(a[k]) ~= "string" then bad(field .. "." .. k, "expected a string") end
    end
    out.token_path = a.token_path or "access_token"
    out.expires_path = a.expires_path or "expires_in"
    out.header = (a.header or "authorization"):lower()
    if not out.header:match("^[%w%-_]+$") then bad(field .. ".header", "expected a header name") end
    out.prefix = a.prefix or "Bearer "
    out.lifetime = number_or(a.lifetime, 300, field .. ".lifetime", bad)
    out.refresh_before = number_or(a.refresh_before, 60, field .. ".refresh_before", bad)
    out.timeout = number_or(a.timeout, 10, field .. ".timeout", bad)
    if out.timeout == 0 then bad(field .. ".timeout", "expected a number > 0") end
    return out
end

function M.header(a, token)
    return a.header, a.prefix .. token
end

-- ------------------------------------------------------------------ the token request

local function urlencode(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(c) return fmt("%%%02X", c:byte()) end))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local k = #out
        out[k + 1] = B64:sub(bit.rshift(n, 18) + 1, bit.rshift(n, 18) + 1)
        out[k + 2] = B64:sub(bit.band(bit.rshift(n, 12), 63) + 1, bit.band(bit.rshift(n, 12), 63) + 1)
        out[k + 3] = b and B64:sub(bit.band(bit.rshift(n, 6), 63) + 1, bit.band(bit.rshift(n, 6), 63) + 1) or "="
        out[k + 4] = c and B64:sub(bit.band(n, 63) + 1, bit.band(n, 63) + 1) or "="
    end
    return concat(out)
end
M._base64 = base64

-- The HTTP request for the token endpoint.
function M.token_request(a)
    if a.request then
        local r = a.request
        local headers = { { "accept", "application/json" } }
        for k, v in pairs(r.headers or {}) do headers[#headers + 1] = { k, v } end
        local body = r.body
        if type(body) == "table" then
            body = json.encode(body)
            headers[#headers + 1] = { "content-type", "application/json" }
        end
        return { url = r.url, method = r.method or (body and "POST" or "GET"), headers = headers,
                 body = body, timeout = a.timeout }
    end
    local form = { "grant_type=client_credentials" }
    local headers = { { "accept", "application/json" },
                      { "content-type", "application/x-www-form-urlencoded" } }
    if a.client_auth == "basic" then
        headers[#headers + 1] = { "authorization", "Basic " ..
            base64(urlencode(a.client_id) .. ":" .. urlencode(a.client_secret)) }
    else
        form[#form + 1] = "client_id=" .. urlencode(a.client_id)
        form[#form + 1] = "client_secret=" .. urlencode(a.client_secret)
    end
    if a.scope and a.scope ~= "" then form[#form + 1] = "scope=" .. urlencode(a.scope) end
    if a.params then
        local names = {}
        for k in pairs(a.params) do names[#names + 1] = k end
        table.sort(names)
        for _, k in ipairs(names) do form[#form + 1] = urlencode(k) .. "=" .. urlencode(a.params[k]) end
    end
    return { url = a.token_url, method = "POST", headers = headers, body = concat(form, "&"),
             timeout = a.timeout }
end

local function dig(t, path)
    for part in path:gmatch("[^%.]+") do
        if type(t) ~= "table" then return nil end
        local v = t[part]
        if v == nil and part:match("^%d+$") then v = t[tonumber(part)] end
        t = v
    end
    return t
end

-- A short, safe excerpt of an OAuth2 error reply ("invalid_client"), never the body.
local function oauth_error(body)
    local e = type(body) == "table" and body.error
    if type(e) == "table" then e = e.code or e.type or e.status end
    if type(e) == "string" and #e <= 64 and e:match("^[%w%._%- ]+$") then return e end
    return nil
end

-- The endpoint's reply -> token, lifetime | nil, cause.
function M.parse_reply(a, status, raw)
    local body = type(raw) == "string" and json.decode(raw) or nil
    if type(status) ~= "number" or status < 200 or status > 299 then
        local code = oauth_error(body)
        return nil, fmt("token endpoint returned HTTP %s%s", tostring(status), code and (" (" .. code .. ")") or "")
    end
    if type(body) ~= "table" then return nil, "token endpoint answered with a body that is not JSON" end
    local token = dig(body, a.token_path)
    if type(token) ~= "string" or token == "" or token:find("[%c]") then
        return nil, fmt("no %s in the token response", a.token_path)
    end
    local life = tonumber(dig(body, a.expires_path))
    if not life or life <= 0 then life = a.lifetime end
    return token, life
end

-- ------------------------------------------------------------------ the cache

local function fnv1a(s)
    local h = 2166136261
    for i = 1, #s do
        h = bit.bxor(h, s:byte(i))
        h = bit.tobit(h * 16777619 % 4294967296)
    end
    return bit.tohex(h)
end

-- Cache keys name the supplier and the endpoint (so a reload that changes
-- the endpoint or the client does not reuse the old token), never a secret.
local function cache_key(supplier)
    local a = supplier.auth
    local k = a._key
    if not k then
        local who = a.client_id
        if not who then
            local body = a.request.body
            who = (type(body) == "string" and body or json.encode(body or "")) .. json.encode(a.request.headers or "")
        end
        k = "sluice:auth:" .. supplier.id .. ":" .. fnv1a(a.url .. "|" .. who .. "|" .. (a.scope or ""))
        a._key = k
    end
    return k
end

local runtime = require("sluice.runtime")

-- Fetch as the lock holder; store the token (with a shorter-lived "fresh"
-- mark that says when to refresh) or the failure, for the waiters.
local function fetch(a, rt, key)
    local status, headers_or_err, body = rt.http(M.token_request(a))
    local token, life
    if status == nil then
        token, life = nil, "token endpoint unreachable: " .. tostring(headers_or_err)
    else
        token, life = M.parse_reply(a, status, body)
    end
    local shared = rt.shared
    if token then
        shared.set(key, token, life)
        local margin = math.min(a.refresh_before, life / 2)
        shared.set(key .. ":fresh", "1", life - margin)
        shared.delete(key .. ":error")
    else
        shared.set(key .. ":error", life, a.timeout + 5)
    end
    shared.delete(key .. ":lock")
    return token, life
end

-- The token-fetch lock each request coroutine holds, if any (weak keys:
-- a finished coroutine takes its entry with it).
local holding = setmetatable({}, { __mode = "k" })

-- The request running as coroutine `co` was cancelled (its client left):
-- give up the fetch lock it held so the waiters need not wait for its TTL.
function M.abandon(co)
    local h = holding[co]
    if h then
        holding[co] = nil
        h.shared.delete(h.lock)
    end
end

function M.token(supplier, rt)
    rt = runtime(rt)
    local a = supplier.auth
    local shared = rt.shared
    local key = cache_key(supplier)
    local lock, fresh = key .. ":lock", key .. ":fresh"
    local lock_ttl = a.timeout + 2
    local deadline = rt.monotonic() + lock_ttl + 1
    local waited = false
    while true do
        local token = shared.get(key)
        if token and shared.get(fresh) then return token end
        if waited and not token and shared.get(lock) == nil then
            -- The flight we waited for ended without a token: report its failure.
            local err = shared.get(key .. ":error")
            if err then return nil, err end
        end
        if shared.add(lock, "1", lock_ttl) then
            -- Another flight may have stored its token and let go of the
            -- lock between the look above and this add (with Redis, another
            -- instance's): look again before fetching a second one.
            local landed = shared.get(key)
            if landed and shared.get(fresh) then
                shared.delete(lock)
                return landed
            end
            -- The lock must not outlive this flight: released if the fetch
            -- raises (a budget overrun) and, through M.abandon, if the
            -- request is cancelled while it waits on the endpoint.
            local co = coroutine.running()
            if co then holding[co] = { shared = shared, lock = lock } end
            local ok, got, err = pcall(fetch, a, rt, key)
            if co then holding[co] = nil end
            if not ok then
                shared.delete(lock)
                error(got, 0)
            end
            if got then return got end
            -- A refresh failed but the old token has not expired yet: use it.
            local old = shared.get(key)
            if old then return old end
            return nil, err
        end
        -- Someone else is fetching; a token that has not expired will do meanwhile.
        if token then return token end
        if rt.monotonic() > deadline then
            return nil, "timed out waiting for the token endpoint"
        end
        waited = true
        rt.sleep(POLL)
    end
end

function M.invalidate(supplier, token, rt)
    rt = runtime(rt)
    local key = cache_key(supplier)
    local cur = rt.shared.get(key)
    if cur ~= nil and cur == token then
        rt.shared.delete(key)
        rt.shared.delete(key .. ":fresh")
    end
end

return M
