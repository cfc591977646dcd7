-- sluice.upstream — turns a routed request into the plan the core executes:
-- the upstream URL, the headers (hygiene and supplier auth), the body (the
-- client's bytes untouched when possible), and the stream settings.
--
-- Header hygiene (DESIGN §5, §7): hop-by-hop headers and Host are dropped
-- (curl sets Host from the URL); Accept-Encoding is forced to identity
-- because the gateway must be able to read every answer; the client's
-- credentials (every protocol's `credential` header and query parameter:
-- Authorization, x-api-key, x-goog-api-key, ?key=) never go upstream unless
-- the supplier's auth is `passthrough`; cookies never do. On same-protocol
-- passthrough every other client header is forwarded (anthropic-version,
-- anthropic-beta, openai-beta, user-agent...); on a translated request only
-- neutral ones are, since the rest belong to the client's protocol. The
-- supplier protocol's `upstream_headers` (anthropic-version) are added
-- unless a same-protocol client sent its own.
--
-- Every protocol fact used here comes from the protocol's module through
-- the registry (sluice.protocols; see protocols/README.md): credential,
-- upstream_headers, path(), path_query, model_in_path, count_tokens,
-- terminal, usage_events.
--
-- Managed auth: the host fetches the token (it may yield) and leaves it in
-- ctx.auth_token before asking for a plan. A supplier's adapter (see
-- sluice.adapters) shapes the plan last: path, query, headers, body; and if
-- it wants to see answers, the plan asks the core for them (transform).
--
-- U.plan(cfg, ctx, info, route, supplier) -> plan | nil, { status, type, message }
-- U.check_inbound_key(cfg, ctx) -> true | false, why
-- U.client_credentials(ctx) -> { value... } every credential the client presented
-- U.passthrough_tail(protocol, outcome, seen) -> closing bytes for a cut passthrough stream

local json = require("sluice.json")
local translate = require("sluice.translate")
local estimate = require("sluice.estimate")
local managed = require("sluice.auth.managed")
local protocols = require("sluice.protocols")
local digest = require("sluice.digest")
local request_body = require("sluice.request_body")
local one_of = require("sluice.config").one_of

local bit = require("bit")
local bxor, bor, byte = bit.bxor, bit.bor, string.byte
local type, pairs, ipairs, tostring, fmt = type, pairs, ipairs, tostring, string.format

local U = {}

local NEVER_FORWARD = {
    host = true, connection = true, ["keep-alive"] = true, ["proxy-connection"] = true,
    ["transfer-encoding"] = true, te = true, trailer = true, upgrade = true,
    ["content-length"] = true, ["content-type"] = true, ["accept-encoding"] = true, cookie = true, expect = true,
    ["x-request-id"] = true, ["proxy-authorization"] = true, ["x-forwarded-for"] = true,
}
local NEUTRAL = { ["user-agent"] = true, accept = true }

-- ------------------------------------------------------------------ credentials

local function literal(s) return (s:gsub("%W", "%%%0")) end

-- Where clients put keys, from every protocol's `credential` fact: the
-- headers with a scheme first (Authorization: Bearer), then the plain ones,
-- in registry order, then the query parameters. K.set is the set of those
-- headers, K.headers the same in that order; K.no_query the query
-- parameters a client's query loses (credentials, and what a protocol's
-- path() sets itself: `path_query`). Derived when the first request needs
-- it (the codecs load then, as they always have).
local K

local function credentials()
    if K then return K end
    local k = { set = {}, headers = {}, no_query = {}, schemed = {}, pattern = {}, plain = {}, query = {} }
    local shown, counts = {}, {}
    for _, m in ipairs(protocols.all()) do
        local c = m.credential
        if not k.set[c.header] then
            k.set[c.header] = true
            local list = c.scheme and k.schemed or k.plain
            list[#list + 1] = c
        end
        if c.query and not k.no_query[c.query] then
            k.no_query[c.query] = true
            k.query[#k.query + 1] = c.query
        end
        for _, q in ipairs(m.path_query or {}) do k.no_query[q] = true end
        if m.count_tokens then counts[#counts + 1] = m.title end
    end
    for i, c in ipairs(k.schemed) do
        k.headers[#k.headers + 1] = c.header
        shown[#shown + 1] = c.header:gsub("^%l", string.upper) .. ": " .. c.scheme
        -- "Bearer <token>", the scheme's first letter in either case
        local first = c.scheme:sub(1, 1)
        k.pattern[i] = "^[" .. literal(first:upper()) .. literal(first:lower()) .. "]"
            .. literal(c.scheme:sub(2)) .. "%s+(.+)$"
    end
    for _, c in ipairs(k.plain) do
        k.headers[#k.headers + 1] = c.header
        shown[#shown + 1] = c.header
    end
    k.missing = "missing API key: send one of the gateway's keys as " .. one_of(shown, " or ")
    k.no_counting = "token counting is only offered on the " .. one_of(counts, " and ") .. " endpoint"
    K = k
    return k
end

-- The value of query parameter `name` (`key`: Gemini's way to send a key),
-- and only that one: `monkey=` or `cache_key=` are not keys.
local function query_param(ctx, name)
    local k = ("&" .. (ctx.query or "")):match("&" .. literal(name) .. "=([^&]*)")
    return k ~= "" and k or nil
end

local function client_key(ctx)
    local h, k = ctx.headers, credentials()
    for i = 1, #k.schemed do
        local v = h[k.schemed[i].header]
        if v then
            local tok = v:match(k.pattern[i])
            if tok then return tok end
        end
    end
    for i = 1, #k.plain do
        local v = h[k.plain[i].header]
        if v then return v end
    end
    for i = 1, #k.query do
        local v = query_param(ctx, k.query[i])
        if v then return v end
    end
    return nil
end

-- Every credential the client presented, in any protocol's place: the value
-- of each credential header (a schemed one without its scheme, whichever
-- scheme it names) and query parameter — what a stored body must not keep.
function U.client_credentials(ctx)
    local h, k, out = ctx.headers or {}, credentials(), {}
    for i = 1, #k.schemed do
        local v = h[k.schemed[i].header]
        if v then out[#out + 1] = v:match("^%a+%s+(.+)$") end
    end
    for i = 1, #k.plain do out[#out + 1] = h[k.plain[i].header] end
    for i = 1, #k.query do out[#out + 1] = query_param(ctx, k.query[i]) end
    return out
end

-- A key in the form `credential` says.
local function credential_value(c, key)
    return c.scheme and (c.scheme .. " " .. key) or key
end

-- Constant time in the length of the presented key: compares against every
-- configured key without stopping early.
local function secret_eq(a, b)
    local diff = #a == #b and 0 or 1
    for i = 1, #a do
        diff = bor(diff, bxor(byte(a, i), byte(b, (i - 1) % #b + 1) or 0))
    end
    return diff == 0
end

function U.check_inbound_key(cfg, ctx)
    local keys = cfg.keys
    if #keys == 0 then return true end
    local presented = client_key(ctx)
    if not presented then
        return false, credentials().missing
    end
    -- A key given as key_sha256 is compared by the hash of what was
    -- presented (computed once, and only when such keys exist).
    local hashed = cfg.hashed_keys and digest.hex(presented, 64)
    local ok = false
    for i = 1, #keys do
        local k, want, got = keys[i], nil, presented
        if type(k) == "string" then
            want = k
        elseif k.key then
            want = k.key
        else
            want, got = k.key_sha256, hashed
        end
        if secret_eq(got, want) then ok = i end
    end
    if not ok then return false, "invalid API key" end
    ctx.gateway_key_used = true
    ctx.gateway_key_index = ok -- the history names the key by its place in `keys`, never its text
    local k = keys[ok]
    if type(k) == "table" then
        -- A key with an id is a tenant (sluice.tenants): sessions are scoped
        -- by the id, so a tenant's sessions survive the rotation of its key.
        ctx.tenant_key, ctx.key_id = k, k.id
        ctx.tenant = "id:" .. k.id
    else
        -- The tenant sessions are scoped by (sluice.session): the key,
        -- hashed at config load.
        ctx.tenant = cfg.key_scopes[ok]
    end
    return true
end

-- Adds the supplier's credentials in the way its protocol expects. A
-- passthrough key keeps its headers on a same-protocol request (one sent in
-- the protocol's query parameter moves to its header); towards another
-- protocol the client's key is re-homed in the supplier protocol's header.
local function apply_auth(headers, supplier, ctx, same_protocol)
    local a = supplier.auth
    if a.type == "bearer" then
        headers[#headers + 1] = { "authorization", "Bearer " .. a.pool[ctx.key_index or 1] }
    elseif a.type == "header" then
        headers[#headers + 1] = { a.name, a.pool[ctx.key_index or 1] }
    elseif a.type == "managed" then
        local name, value = managed.header(a, ctx.auth_token)
        headers[#headers + 1] = { name, value }
    elseif a.type == "passthrough" then
        local c = protocols.get(supplier.protocol).credential
        if same_protocol then
            local names = credentials().headers
            for i = 1, #names do
                local name = names[i]
                local v = ctx.headers[name]
                if v then headers[#headers + 1] = { name, v } end
            end
            if c.query and not ctx.headers[c.header] then
                local k = query_param(ctx, c.query)
                if k then headers[#headers + 1] = { c.header, credential_value(c, k) } end
            end
        else
            local k = client_key(ctx)
            if k then headers[#headers + 1] = { c.header, credential_value(c, k) } end
        end
    end
end

local function build_headers(ctx, supplier, same_protocol)
    local out, creds = {}, credentials().set
    for name, value in pairs(ctx.headers) do
        if not NEVER_FORWARD[name] and not creds[name] and (same_protocol or NEUTRAL[name]) then
            out[#out + 1] = { name, value }
        end
    end
    local required = protocols.get(supplier.protocol).upstream_headers or {}
    for i = 1, #required do
        local name, value = required[i][1], required[i][2]
        if not (same_protocol and ctx.headers[name]) then out[#out + 1] = { name, value } end
    end
    for name, value in pairs(supplier.headers) do out[#out + 1] = { name, value } end
    if not ctx.gateway_key_used or supplier.auth.type ~= "passthrough" then
        apply_auth(out, supplier, ctx, same_protocol)
    end
    out[#out + 1] = { "content-type", "application/json" }
    out[#out + 1] = { "accept-encoding", "identity" }
    out[#out + 1] = { "x-request-id", ctx.id }
    return out
end

-- The client's query string minus credentials and what the path already says.
local function forwarded_query(ctx)
    local q = ctx.query or ""
    if q == "" then return "" end
    local keep, drop = {}, credentials().no_query
    for pair in q:gmatch("[^&]+") do
        local k = pair:match("^([^=]*)")
        if not drop[k] then keep[#keep + 1] = pair end
    end
    return #keep > 0 and table.concat(keep, "&") or ""
end

local function join_url(base, path, query)
    local url = base .. path
    if query ~= "" then url = url .. (url:find("?", 1, true) and "&" or "?") .. query end
    return url
end

-- ------------------------------------------------------------------ plans

local function common(plan, ctx, route, supplier, upstream_model)
    local t = supplier.timeouts
    plan.method = "POST"
    plan.timeouts = { connect = t.connect, first_byte = t.first_byte, idle = t.idle, total = t.total }
    plan.verify_tls = supplier.verify_tls
    plan.service, plan.client, plan.route = ctx.service, ctx.client, route.name
    plan.supplier, plan.model_in, plan.model_out = supplier.id, ctx.model, upstream_model
    ctx.supplier, ctx.model_out = supplier.id, upstream_model
    return plan
end

-- The client's decoded body with another model, for re-encoding (the
-- original table stays as the client sent it: a fallback may need it).
local function with_model(body, model)
    local copy = {}
    for k, v in pairs(body) do copy[k] = v end
    copy.model = model
    return copy
end

-- A codec's output_limit paths, split into keys once per path.
local limit_keys = {}
local function keys_of(path)
    local keys = limit_keys[path]
    if not keys then
        keys = {}
        for k in path:gmatch("[^.]+") do keys[#keys + 1] = k end
        limit_keys[path] = keys
    end
    return keys
end

-- The number at keys below v, the value at keys[1]; nil when not a number.
local function limit_at(v, keys)
    for i = 2, #keys do v = type(v) == "table" and v[keys[i]] or nil end
    return type(v) == "number" and v or nil
end

-- A passthrough body asking for more output than the configured cap: a
-- copy with the protocol's limit field(s) (its `output_limit` fact, dotted
-- paths) lowered to the cap, passed through the protocol's `fit_output`
-- (fields that must stay below the limit, as Anthropic's thinking budget);
-- nil when nothing asks for more.
local function capped(body, codec, cap)
    local out
    for _, path in ipairs(codec.output_limit or {}) do
        local keys = keys_of(path)
        local v = limit_at(body[keys[1]], keys)
        if v and v > cap then
            out = out or with_model(body, body.model)
            local t = out
            for i = 1, #keys - 1 do
                local copy = {}
                for k, x in pairs(t[keys[i]]) do copy[k] = x end
                t[keys[i]] = copy
                t = copy
            end
            t[keys[#keys]] = cap
        end
    end
    if out and codec.fit_output then out = codec.fit_output(out, cap) end
    return out
end

-- Whether the client's own body asks for more than cap at one of the
-- codec's output_limit paths, read field by field (sluice.request_body): a
-- passthrough request under the cap is never decoded whole for the check.
local function asks_over(ctx, codec, cap)
    for _, path in ipairs(codec.output_limit or {}) do
        local keys = keys_of(path)
        local v = limit_at(request_body.field(ctx, keys[1]), keys)
        if v and v > cap then return true end
    end
    return false
end

local function wants_answers(ad)
    return ad.response ~= nil or ad.event ~= nil or ad.classify_error ~= nil or ad.session_id ~= nil
end

-- Sets the plan's url and body: `body` is the table to send, or nil for the
-- client's bytes unchanged. The supplier's adapter gets the last word.
local function finish_plan(plan, ctx, supplier, path, query, body)
    local ad = supplier.adapter
    ctx.adapter_state = {}
    if ad and wants_answers(ad) then plan.transform = true end
    if not (ad and ad.request) then
        plan.url = join_url(supplier.base_url, path, query)
        if body then plan.body = json.encode(body) end
        return plan
    end
    plan.path, plan.query = path, query
    body = body or with_model(ctx.request, ctx.request.model)
    local replaced, err = ad.request(ctx, plan, body)
    if err ~= nil then
        return nil, { status = 502, type = "api_error",
                      message = fmt("supplier %s: adapter refused the request: %s", supplier.id, tostring(err)) }
    end
    if type(replaced) == "table" then body = replaced end
    plan.url = join_url(supplier.base_url, plan.path, plan.query or "")
    plan.path, plan.query = nil, nil
    plan.body = json.encode(body)
    return plan
end

-- The session as the supplier protocol's prompt-cache field (sluice.sticky),
-- unless the request already names one. Returns the body to send.
local function with_cache_key(ctx, supplier, codec, body)
    local field = codec.cache_key
    if not (field and supplier.cache_key and ctx.session) then return body end
    if body == nil then
        -- read alone: a client that names its own cache key passes through undecoded
        if request_body.field(ctx, field) ~= nil then return nil end
        body = with_model(ctx.request, ctx.request.model)
    elseif body[field] ~= nil then
        return body
    end
    body[field] = ctx.session.key
    return body
end

function U.plan(cfg, ctx, info, route, supplier)
    local from, to = ctx.protocol, supplier.protocol
    ctx.translation = nil
    local same = from == to
    local upstream_model = route.model or ctx.model
    local codec = translate.protocol(to)

    if info.kind == "count_tokens" then
        local client = translate.protocol(from)
        if not client.count_tokens then
            return nil, { status = 501, type = "api_error", message = credentials().no_counting }
        end
        if to ~= from then -- answered here: an estimate, marked as such
            local status, body, extra = estimate.count_tokens_response(client, ctx.request)
            local headers = { { "content-type", "application/json" } }
            for k, v in pairs(extra) do headers[#headers + 1] = { k, v } end
            return { status = status, headers = headers, body = json.encode(body),
                     service = ctx.service, client = ctx.client }
        end
        local plan = { headers = build_headers(ctx, supplier, true), stream = false, transform = false }
        local body = upstream_model ~= ctx.model and with_model(ctx.request, upstream_model) or nil
        common(plan, ctx, route, supplier, upstream_model)
        return finish_plan(plan, ctx, supplier, codec.count_tokens, forwarded_query(ctx), body)
    end

    local plan = {
        headers = build_headers(ctx, supplier, same),
        stream = ctx.stream,
        terminal = codec.terminal,
        usage_events = codec.usage_events,
    }
    local path, query, body = codec.path(upstream_model, ctx.stream), "", nil
    -- The output cap: the lower of the route's and the supplier's.
    local cap = route.max_output_tokens
    if supplier.max_output_tokens and (not cap or supplier.max_output_tokens < cap) then
        cap = supplier.max_output_tokens
    end
    local state
    if not same or supplier.tool_text then
        body, state = translate.request(from, to, ctx.request, { model = ctx.model, stream = ctx.stream },
            { model = upstream_model, stream = ctx.stream, supplier = supplier.id, compat = supplier.compat,
              max_output_tokens = cap, tool_text = supplier.tool_text })
        -- A same-protocol request stays passthrough unless its answer's
        -- text may hold tool calls (parsing on and tools declared) or its
        -- tools are emulated; one sluice cannot decode goes as it came, for
        -- the supplier to judge.
        local tt = supplier.tool_text
        if same and not (body and (state.tool_text or (tt and tt.emulate))) then
            body, state = nil, nil
        elseif not body then
            return nil, { status = 400, type = "invalid_request", message = tostring(state) }
        end
    end
    if not state then
        query = forwarded_query(ctx)
        plan.transform = false
        if upstream_model ~= ctx.model and not codec.model_in_path then
            body = with_model(ctx.request, upstream_model)
        end
        if cap and (body or asks_over(ctx, codec, cap)) then
            body = capped(body or ctx.request, codec, cap) or body
        end
    else
        state.client_model = state.client_model or ctx.model
        ctx.translation = { from = from, to = to, state = state }
        plan.transform = true
    end
    body = with_cache_key(ctx, supplier, codec, body)
    common(plan, ctx, route, supplier, upstream_model)
    return finish_plan(plan, ctx, supplier, path, query, body)
end

-- ------------------------------------------------------------------ cut passthrough streams

-- A passthrough stream that the upstream cut short still has to end the way
-- its protocol expects, with an error the client's SDK will raise. The
-- bytes come from the protocol's own stream encoder — the one translated
-- streams end with — taking up where the client's stream stands: `seen` is
-- { id, model, events, last } of what the client already got (the answer's
-- id and model from its first event, the number of whole events sent, and
-- the latest event as "name\ndata", its data cut short), when known.
-- outcome = { complete = false, reason, message } as for Encoder:close.
function U.passthrough_tail(protocol, outcome, seen)
    seen = seen or {}
    local enc = translate.protocol(protocol).stream_encoder({ model = seen.model, id = seen.id })
    enc:resume(seen)
    return enc:close(outcome)
end

return U
