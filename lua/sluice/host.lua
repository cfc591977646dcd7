-- sluice.host — the hooks the C core calls (core/luahost.c), and the only
-- Lua module that knows that ABI. Everything else under lua/sluice/ is pure
-- Lua over tables and strings and loads under plain busted.
--
--   init(config_path, worker_id) -> core view of the config | nil, err
--   request(ctx)                 -> plan | direct response   (runs in a coroutine)
--   response(ctx, status, hdrs)  -> { status, headers } | nil   (translated streams)
--   events(ctx, batch)           -> bytes                     (translated streams)
--   body(ctx, status, body, hdrs) -> { status, headers, body } (translated/adapted bodies)
--   finish(ctx, outcome)         -> closing bytes | error response | nil
--   observe(ctx, batch)          -> nil (usage from a passthrough stream's events)
--   log(ctx)                     -> fields for the history record (usage, bodies, session)
--   cancel(ctx, co)              -> releases what an abandoned request held (token-fetch lock)
--
-- Per attempt, the request phase also fetches a managed supplier token
-- (sluice.auth.managed; it may yield) and a 401/403 from that supplier
-- drops the token and retries once (H.retry). A supplier's adapter
-- (sluice.adapters) shapes the plan in sluice.upstream, and sees answers
-- here: whole ones in H.body, stream events in H.events, the stream head
-- in H.response (same-protocol adapted streams go through a Relay pipe
-- that writes the events back as SSE).
--
-- A plan is { url, method, headers, body?, stream, transform, terminal,
-- timeouts, verify_tls, service, client, route, supplier, model_in,
-- model_out }; omitting `body` sends the client's body unchanged (true
-- passthrough: no copy, no re-encoding).

local json = require("sluice.json")
local config = require("sluice.config")
local router = require("sluice.router")
local upstream = require("sluice.upstream")
local translate = require("sluice.translate")
local clients = require("sluice.clients")
local ir = require("sluice.ir")
local retry = require("sluice.retry")
local managed = require("sluice.auth.managed")
local adapters = require("sluice.adapters")
local accounting = require("sluice.accounting")
local protocols = require("sluice.protocols")
local sticky = require("sluice.sticky")
local session_store = require("sluice.session_store")
local prices = require("sluice.prices")
local tenants = require("sluice.tenants")
local request_body = require("sluice.request_body")
local sluice = require("sluice")

local type, pairs, tostring, fmt = type, pairs, tostring, string.format

local H = {}
local cfg

function H.init(path, worker_id)
    local c, err = config.load(path)
    if not c then return nil, err end
    if c.lua_path then package.path = c.lua_path .. ";" .. package.path end
    cfg = c
    session_store.configure(c) -- this worker's Redis connection, when sessions use Redis
    return config.core_view(c)
end

-- ------------------------------------------------------------------ errors

local function codec(protocol)
    return translate.protocol(protocol or protocols.default)
end

-- A direct error response in the client's protocol shape; `error` is what
-- the history record says went wrong.
local function error_response(protocol, status, message, etype)
    local s, body = codec(protocol).encode_error(ir.error(status, message, etype))
    return { status = s, headers = { { "content-type", "application/json" } }, body = json.encode(body),
             error = message }
end

-- A tenant's request refused (sluice.tenants): expired key, a model or
-- service it may not use, a limit reached (429 with Retry-After).
local function refused(ctx, r)
    sluice.count("sluice_tenant_refused_total", "tenant", ctx.key_id) -- a configured id: a bounded label set
    local resp = error_response(ctx.protocol, r.status, r.message, r.type)
    if r.retry_after then resp.headers[#resp.headers + 1] = { "retry-after", tostring(r.retry_after) } end
    resp.service, resp.client, resp.model_in = ctx.service, ctx.client, ctx.model
    return resp
end

-- The upstream's answer was unusable (not JSON, not the protocol's shape):
-- a 502 in the client's shape, recorded as UPSTREAM_PROTOCOL.
local function unusable_answer(protocol, supplier, why)
    local resp = error_response(protocol, 502, fmt("supplier %s: %s", tostring(supplier), why))
    resp.upstream_invalid = true
    return resp
end

-- The `guess` facts, lowest rank first (the order the hints are tried in
-- matters: "/v1beta/responses" is Gemini's), and the `models.header` facts
-- in registry order; derived when the first request needs them.
local GUESSES, CLAIMS

local function derive()
    GUESSES, CLAIMS = {}, {}
    for _, m in ipairs(protocols.all()) do
        if m.guess then GUESSES[#GUESSES + 1] = { name = m.name, contains = m.guess.contains, rank = m.guess.rank } end
        if m.models and m.models.header then CLAIMS[#CLAIMS + 1] = { name = m.name, header = m.models.header } end
    end
    table.sort(GUESSES, function(a, b) return a.rank < b.rank end)
end

-- The protocol of a path we could not classify, for the shape of its error.
local function guess_protocol(path)
    if not GUESSES then derive() end
    for i = 1, #GUESSES do
        if path:find(GUESSES[i].contains, 1, true) then return GUESSES[i].name end
    end
    return protocols.default
end

-- The protocol whose header a request carries (anthropic-version), if any.
local function claimed_by_headers(headers)
    if not CLAIMS then derive() end
    for i = 1, #CLAIMS do
        if headers[CLAIMS[i].header] then return CLAIMS[i].name end
    end
    return nil
end

-- The protocol a request speaks: its path's, else (a shared models path)
-- the one its headers claim, else the default; a path that is not
-- classified gets a guess.
local function protocol_of(info, path, headers)
    if not info then return guess_protocol(path) end
    return info.protocol or claimed_by_headers(headers) or protocols.default
end

-- ------------------------------------------------------------------ request

-- The list in the shape of the protocol the client's headers claim, else
-- of the path's protocol if it has a list shape, else of the default's.
local function models_response(ctx, info, tk)
    local ids = router.models(cfg, info.service)
    if tk then ids = tenants.filter_models(tk, ids) end -- only what the tenant may use
    local shape = claimed_by_headers(ctx.headers)
    if not shape then
        local own = info.protocol and codec(info.protocol).models
        shape = own and own.list and info.protocol or protocols.default
    end
    return { status = 200, headers = { { "content-type", "application/json" } },
             body = json.encode(codec(shape).models.list(ids)) }
end

local function direct(ctx, resp)
    resp.service, resp.client = ctx.service, ctx.client
    return resp
end

-- A failure that names the supplier it happened with (in the record too).
local function supplier_error(ctx, supplier, status, message, etype)
    local resp = direct(ctx, error_response(ctx.protocol, status, message, etype))
    resp.supplier, resp.route = supplier.id, ctx.route.name
    resp.model_in = ctx.model
    return resp
end

-- The plan for the current attempt: the supplier at the current position of
-- the route's fallback chain. Runs again for every retry (see H.retry).
local function attempt(ctx)
    local route, rs = ctx.route, ctx.retry_state
    local supplier = cfg.suppliers[ctx.chain[rs.pos]]
    ctx.auth_token, ctx.pipe, ctx.watch = nil, nil, nil
    -- What an earlier attempt planned is not this one's: an attempt that
    -- fails before its plan names no supplier and no upstream model.
    ctx.supplier, ctx.model_out = nil, nil
    ctx.acct = accounting.new() -- this attempt's usage and outcome, whichever body path runs
    if supplier.auth.type == "managed" then
        -- with sessions in Redis, tokens are shared by every instance too
        local token, terr = managed.token(supplier, session_store.token_runtime(cfg))
        if not token then
            return supplier_error(ctx, supplier, 502, fmt("supplier %s: %s", supplier.id, terr), "api_error")
        end
        ctx.auth_token = token
    end
    ctx.key_index = sticky.pick_key(cfg, ctx, supplier) -- which key of the supplier's pool
    local plan, perr = upstream.plan(cfg, ctx, ctx.info, route, supplier)
    if not plan then return supplier_error(ctx, supplier, perr.status, perr.message, perr.type) end
    return plan
end

function H.request(ctx)
    sluice.enter_request()
    if ctx.route then return attempt(ctx) end
    local info, status, message = router.classify(ctx.method, ctx.path)
    ctx.protocol = protocol_of(info, ctx.path, ctx.headers)
    -- The key first: a client without one learns nothing, not even which paths exist.
    local ok, why = upstream.check_inbound_key(cfg, ctx)
    if not ok then
        return direct(ctx, error_response(ctx.protocol, 401, why, "authentication"))
    end
    -- A key with an id (a tenant) may have expired, and may be kept to some
    -- services and models; plain keys skip all of it on this one check.
    local tk = ctx.tenant_key
    if tk and tk.expires then
        local r = tenants.expired(tk, sluice.now())
        if r then return refused(ctx, r) end
    end
    if not info then return error_response(ctx.protocol, status, message) end
    ctx.service = info.service
    ctx.client = clients.identify(ctx)
    if tk and tk.service_set then
        local r = tenants.refuse_service(tk, ctx.service)
        if r then return refused(ctx, r) end
    end
    if ctx.reject_status then
        return direct(ctx, error_response(ctx.protocol, ctx.reject_status,
            "request body is larger than limits.max_body"))
    end
    if info.kind == "models" then return direct(ctx, models_response(ctx, info, tk)) end

    -- The body is checked whole but decoded only where read: ctx.request,
    -- the decoded body, is made when something first reads it
    -- (sluice.request_body); passing a request through reads a few fields.
    local ok, err = request_body.open(ctx, info.service)
    if not ok then
        return direct(ctx, error_response(ctx.protocol, 400,
            "request body is not a JSON object" .. (err and (": " .. err) or "")))
    end
    ctx.model = info.model or request_body.field(ctx, "model")
    if type(ctx.model) ~= "string" or ctx.model == "" then
        return direct(ctx, error_response(ctx.protocol, 400, "request has no model"))
    end
    -- Model names reach upstream URLs and route globs: a strict charset and
    -- a length cap (router.check_model). The bad name is not echoed or kept.
    local model_ok, model_why = router.check_model(ctx.model)
    if not model_ok then
        ctx.model = nil
        return direct(ctx, error_response(ctx.protocol, 400, "invalid model name: " .. model_why))
    end
    if info.stream ~= nil then ctx.stream = info.stream else ctx.stream = request_body.field(ctx, "stream") == true end
    -- The tenant's model allow-list, before anything else sees the model.
    if tk and tk.model_globs then
        local r = tenants.refuse_model(tk, ctx.model)
        if r then return refused(ctx, r) end
    end

    -- The ops hook: may inspect or change ctx (headers, model, body table).
    if cfg.on_request then cfg.on_request(ctx) end

    local route, rerr = router.route(cfg, ctx.service, ctx.model)
    if not route then return direct(ctx, error_response(ctx.protocol, 404, rerr, "not_found")) end
    ctx.info, ctx.route = info, route
    -- The session: its key, its binding, and ctx.chain, the route's
    -- suppliers with the one the session is bound to first. Token counting
    -- is not a turn of the conversation: it neither reads nor moves a binding.
    -- With Redis, the tenant's counters and the session are read in one
    -- round trip (the request's round); the limits are decided after it,
    -- before anything goes upstream.
    local round = session_store.round(cfg)
    local admission = tk and tenants.admission(cfg, tk, nil, round)
    if info.kind == "generate" then sticky.begin(cfg, ctx, nil, round) else ctx.chain = route.suppliers end
    if admission then
        local r = admission:verdict()
        if r then return refused(ctx, r) end
        ctx.tenant_admitted = true
    end
    ctx.retry_state = { pos = 1, tries = 1, chain_len = #ctx.chain }
    local plan = attempt(ctx)
    request_body.learn(ctx, info.service)
    return plan
end

-- A failure before anything reached the client: seconds until the next
-- attempt (same supplier, or the next one in the chain), or nil to give up.
-- A managed token the supplier refuses (401/403) is dropped and the request
-- tried once more, which fetches a fresh one.
function H.retry(ctx, failure)
    if not ctx.route or not ctx.supplier then return nil end
    local supplier = cfg.suppliers[ctx.supplier]
    -- A 429 cools its key down for every session; a failure of the bound
    -- supplier/key drops the session's binding (sluice.sticky).
    sticky.failed(cfg, ctx, failure, retry.retry_after(failure.headers, os.time()))
    -- A rate-limited key with a rested one beside it: try that one now
    -- instead of waiting out the Retry-After.
    local rs = ctx.retry_state
    if failure.kind == "status" and failure.status == 429 and supplier.retry.status_set[429]
        and rs.tries < supplier.retry.attempts and sticky.other_key_ready(cfg, ctx, supplier) then
        rs.tries = rs.tries + 1
        return 0
    end
    if supplier.auth.type == "managed" and failure.kind == "status"
        and (failure.status == 401 or failure.status == 403) then
        if ctx.auth_refreshed == supplier.id then return nil end
        ctx.auth_refreshed = supplier.id
        if ctx.auth_token then managed.invalidate(supplier, ctx.auth_token, session_store.token_runtime(cfg)) end
        return 0
    end
    return retry.decide(supplier.retry, ctx.retry_state, failure, os.time())
end

-- ------------------------------------------------------------------ translated answers

local SSE_HEADERS = { { "content-type", "text/event-stream" }, { "cache-control", "no-cache" } }
local JSON_HEADERS = { { "content-type", "application/json" } }

-- A translated answer's headers, plus `x-sluice-dropped: <what>, ...` when
-- the request carried something its supplier could not be sent (a Codex
-- namespace tool, web search toward Chat: translate's state.dropped).
--
-- The entries name client-sent tools (any length, any number), and a
-- header that large gets the answer refused by proxies and HTTP clients
-- (header size limits, often 8 KB in all): the value stops at whole entries
-- within DROPPED_MAX bytes and ends with ", …"; the history record keeps
-- the full list.
local DROPPED_MAX = 512
local ELLIPSIS = ", \u{2026}"
function H.dropped_header(dropped)
    local all = (table.concat(dropped, ", "):gsub("%c", " "))
    if #all <= DROPPED_MAX then return all end
    local room = DROPPED_MAX - #ELLIPSIS
    local n = 0
    for i, d in ipairs(dropped) do
        local add = #d + (i > 1 and 2 or 0)
        if n + add > room then break end
        n = n + add
    end
    -- a first entry longer than the room is cut, not split inside a UTF-8 character
    if n == 0 then
        n = room
        while n > 0 and all:byte(n + 1) and all:byte(n + 1) >= 0x80 and all:byte(n + 1) < 0xC0 do n = n - 1 end
    end
    return all:sub(1, n) .. ELLIPSIS
end

local function translated_headers(base, tr)
    local dropped = tr and tr.state and tr.state.dropped
    if not dropped then return base end
    local h = {}
    for i, kv in ipairs(base) do h[i] = kv end
    h[#h + 1] = { "x-sluice-dropped", H.dropped_header(dropped) }
    return h
end

local function adapter_of(ctx)
    local s = ctx.supplier and cfg.suppliers[ctx.supplier]
    return s and s.adapter
end

-- The accountant of the current attempt (sluice.accounting).
local function accountant(ctx)
    local acct = ctx.acct
    if not acct then
        acct = accounting.new()
        ctx.acct = acct
    end
    return acct
end

-- The closing bytes of a cut same-protocol stream (passthrough, or the
-- Relay below): the protocol's failure tail, told what the client already
-- got — the answer's id and model (the start `watch` saw), how many whole
-- events, the latest one ("name\ndata", its data cut short).
local function cut_tail(ctx, outcome, watch, events, last)
    local start = watch and watch.seen
    return upstream.passthrough_tail(ctx.protocol, outcome, {
        id = start and start.id, model = start and start.model, events = events, last = last })
end

-- A same-protocol stream that only goes through Lua because the supplier's
-- adapter wants its events: they go out again as SSE, the protocol's own
-- decoder reads them on the side for the accountant, and a cut stream is
-- closed the way passthrough closes it.
local Relay = {}
Relay.__index = Relay

function Relay:feed_batch(batch)
    self.watch:feed_batch(batch)
    local n = #batch
    if n > 0 then -- only a cut stream's tail reads the latest event: kept as it is
        self.events, self.last = self.events + n, batch[n]
    end
    return adapters.encode_events(batch)
end

function Relay:close(outcome)
    if outcome.complete then return nil end
    local ev = self.last
    local last = ev and ((ev.event or "") .. "\n" .. tostring(ev.data or ""):sub(1, 512))
    return cut_tail(self.ctx, outcome, self.watch, self.events, last)
end

function H.response(ctx, status, headers)
    local ad = adapter_of(ctx)
    if ad and ad.session_id then ctx.upstream_session_id = ad.session_id(ctx, headers, nil) end
    local tr = ctx.translation
    if not tr then
        local watch = accounting.watch(accountant(ctx), codec(ctx.protocol), { model = ctx.model_out })
        ctx.pipe = setmetatable({ ctx = ctx, watch = watch, events = 0, last = nil }, Relay)
        return nil
    end
    ctx.pipe = translate.stream(tr.from, tr.to, tr.state, accountant(ctx))
    return { status = 200, headers = translated_headers(SSE_HEADERS, tr) }
end

function H.events(ctx, batch)
    local ad = adapter_of(ctx)
    if ad and ad.event then batch = adapters.map_events(ad, ctx, batch) end
    return ctx.pipe:feed_batch(batch)
end

-- A whole answer through the supplier's adapter: its session id, an error it
-- hides, its own reshaping. Returns status, decoded body (or raw text), or
-- a finished client response when the adapter says it is an error.
local function adapt_answer(ctx, ad, status, raw, headers)
    local body = json.decode(raw)
    if body == nil then body = raw end
    if ad.session_id then ctx.upstream_session_id = ad.session_id(ctx, headers, body) end
    if ad.classify_error then
        local e = ad.classify_error(ctx, status, body)
        if e then
            local es = type(e.status) == "number" and e.status >= 400 and e.status <= 599 and e.status or 502
            return nil, nil, error_response(ctx.protocol, es, tostring(e.message or "supplier error"), e.type)
        end
    end
    if ad.response then
        local s2, b2 = ad.response(ctx, status, headers, body)
        if s2 ~= nil then status = s2 end
        if b2 ~= nil then body = b2 end
    end
    return status, body
end

function H.body(ctx, status, raw, headers)
    local tr = ctx.translation
    local ad = adapter_of(ctx)
    local ub
    if ad then
        local direct_resp
        status, ub, direct_resp = adapt_answer(ctx, ad, status, raw, headers)
        if direct_resp then return direct_resp end
        if not tr then
            if type(ub) ~= "table" then return { status = status, body = tostring(ub) } end
            if status < 400 then accountant(ctx):answer_body(codec(ctx.protocol), ub) end
            return { status = status, headers = JSON_HEADERS, body = json.encode(ub) }
        end
    else
        if not tr then return { status = status, body = raw } end
        ub = json.decode(raw)
    end
    if status >= 400 then
        local cs, cb = translate.error(tr.from, tr.to, status, ub or raw)
        return { status = cs, headers = JSON_HEADERS, body = json.encode(cb) }
    end
    if type(ub) ~= "table" or json.is_array(ub) then
        return unusable_answer(tr.from, ctx.supplier, "answered with a body that is not a JSON object")
    end
    local U = translate.protocol(tr.to)
    local resp, derr = U.decode_response(ub, { supplier = tr.state.supplier })
    if type(resp) ~= "table" then -- an error object in a 2xx, or not the protocol's shape
        local why = type(derr) == "table" and derr.message or tostring(derr)
        if ub.error ~= nil then why = U.decode_error(status, ub).message end
        return unusable_answer(tr.from, ctx.supplier, fmt("answered %d without a usable %s answer: %s",
            status, tr.to, tostring(why)))
    end
    accountant(ctx):answer(resp)
    if ctx.stream then
        -- A streaming client on an answer that came back whole: synthesize the stream.
        local bytes, err = translate.answer_stream(tr.from, tr.to, resp, tr.state)
        if not bytes then return error_response(tr.from, 502, "cannot translate the answer: " .. tostring(err)) end
        return { status = 200, headers = translated_headers(SSE_HEADERS, tr), body = bytes }
    end
    local cb, err = translate.answer(tr.from, tr.to, resp, tr.state)
    if not cb then return error_response(tr.from, 502, "cannot translate the answer: " .. tostring(err)) end
    return { status = 200, headers = translated_headers(JSON_HEADERS, tr), body = json.encode(cb) }
end

-- ------------------------------------------------------------------ the end

-- What the client is told, by termination reason, when nothing was sent yet.
local FAILURE = {
    SCRIPT_ERROR = { 500, "api_error", "a sluice script failed while handling this request (request id %s; the traceback is in the sluice log)" },
    UPSTREAM_TIMEOUT_FIRST_BYTE = { 504, "timeout", "supplier %s sent no response within the first-byte timeout" },
    UPSTREAM_TIMEOUT_CONNECT = { 504, "timeout", "connecting to supplier %s timed out" },
    UPSTREAM_TIMEOUT_IDLE = { 504, "timeout", "supplier %s went silent past the idle timeout" },
    UPSTREAM_TIMEOUT_TOTAL = { 504, "timeout", "supplier %s exceeded the total timeout" },
    UPSTREAM_CONNECT = { 502, "api_error", "cannot connect to supplier %s" },
    UPSTREAM_TLS = { 502, "api_error", "TLS with supplier %s failed" },
    UPSTREAM_RESET = { 502, "api_error", "supplier %s reset the connection" },
    UPSTREAM_EOF_EARLY = { 502, "api_error", "supplier %s closed the connection before answering" },
    UPSTREAM_PROTOCOL = { 502, "api_error", "supplier %s sent an invalid HTTP response" },
    LIMIT_RESPONSE_SIZE = { 502, "api_error", "the answer of supplier %s exceeds limits.max_response" },
    LIMIT_EVENT_SIZE = { 502, "api_error", "an event from supplier %s exceeds limits.max_event" },
    SHUTDOWN = { 503, "overloaded", "sluice is shutting down" },
}

local function describe(oc)
    local msg = fmt("stream ended early: %s", oc.reason)
    if oc.detail and oc.detail ~= "" then msg = msg .. " (" .. oc.detail .. ")" end
    return msg
end

-- How the client's answer ends. Committed: the closing bytes of a stream
-- (the pipe closes a translated one; a cut passthrough stream gets the
-- protocol's failure tail), or nil — for a cut plain body the core then
-- closes the connection without the final chunk, so no client mistakes it
-- for a whole answer. The tail follows what the upstream sent (oc.sse), not
-- what the client asked for. If closing the pipe raises, the core calls
-- again with reason SCRIPT_ERROR and the plain failure tail is used.
-- Not committed: an error response in the client's shape.
function H.finish(ctx, oc)
    local complete = oc.reason == "COMPLETE"
    if complete and ctx.session and oc.status >= 200 and oc.status <= 299 then
        -- The binding is written only once an answer went through whole.
        local ok, err = pcall(sticky.succeeded, cfg, ctx)
        if not ok then sluice.log("warn", "session store: " .. tostring(err)) end
    end
    if oc.committed then
        local outcome = complete and { complete = true }
            or { complete = false, reason = oc.reason, message = describe(oc) }
        local pipe = ctx.pipe
        if pipe and not ctx.pipe_closing then
            ctx.pipe_closing = true
            return pipe:close(outcome)
        end
        if complete or oc.expected or not oc.sse then return nil end
        return cut_tail(ctx, outcome, ctx.watch, oc.events, ctx.stream_last_event)
    end
    if oc.expected or complete then return nil end
    local f = FAILURE[oc.reason]
    if not f then
        if oc.reason == "UPSTREAM_HTTP_ERROR" then
            return error_response(ctx.protocol, oc.status, "supplier answered HTTP " .. oc.status)
        end
        f = { 500, "api_error", "sluice failed to handle this request (%s)" }
    end
    local subject = oc.reason == "SCRIPT_ERROR" and ctx.id or (ctx.supplier or "?")
    local message = fmt(f[3], subject)
    if oc.reason ~= "SCRIPT_ERROR" and oc.detail and oc.detail ~= "" then
        message = message .. ": " .. oc.detail
    end
    return error_response(ctx.protocol, f[1], message, f[2])
end

-- Passthrough streams: the core hands over only the stream's first event
-- and the events that mention usage (a handful per stream); the protocol's
-- own decoder reads them for the accountant (sluice.accounting, which never
-- raises: observability must never fail a request) and names the answer
-- (a failure tail repeats its id and model). The watch is the attempt's
-- (attempt() drops the previous one).
function H.observe(ctx, batch)
    local watch = ctx.watch
    if not watch then
        watch = accounting.watch(accountant(ctx), codec(ctx.protocol), { model = ctx.model_out })
        ctx.watch = watch
    end
    watch:feed_batch(batch)
end

-- Bodies kept in the history (history.bodies) lose every secret sluice knows
-- of, whatever its length: a short secret is still a secret. The price of a
-- very short one (a 3-character supplier token) is that every occurrence of
-- those characters in the stored text is redacted too; sluice cannot tell the
-- secret from a coincidence. Longest first, so a secret that contains another
-- is never left half-redacted.
local function by_length_desc(a, b) return #a > #b end

local function secrets_of(ctx)
    local secrets, seen = {}, {}
    local function add(v)
        if type(v) == "string" and v ~= "" and not seen[v] then
            seen[v] = true
            secrets[#secrets + 1] = v
        end
    end
    add(ctx.auth_token)
    for i = 1, #cfg.keys do
        local k = cfg.keys[i]
        add(type(k) == "table" and k.key or k)
    end
    add(cfg.admin.token)
    local s = ctx.supplier and cfg.suppliers[ctx.supplier]
    if s then
        local a = s.auth
        add(a.token)
        add(a.value)
        for _, k in ipairs(a.pool or {}) do add(k) end
        add(a.client_secret)
        for _, v in pairs(s.headers) do add(v) end
    end
    local presented = upstream.client_credentials(ctx)
    for i = 1, #presented do add(presented[i]) end
    table.sort(secrets, by_length_desc)
    return secrets
end

local function redact(text, secrets)
    if type(text) ~= "string" then return nil end
    for i = 1, #secrets do
        text = text:gsub(secrets[i]:gsub("%W", "%%%0"), "[redacted]")
    end
    return text
end

-- The request coroutine was abandoned (its client left while it waited):
-- release what it held, so other requests need not wait for a timeout.
function H.cancel(ctx, co)
    managed.abandon(co)
end

-- GET /_sluice/sessions: live sessions (sluice.sticky.list), never a key.
function H.sessions()
    local out = sticky.list(cfg)
    if #out.items == 0 then out.items = json.array() end
    return json.encode(out)
end

-- GET /_sluice/keys: every gateway key by id with its use against each
-- limit (sluice.tenants.report), never a key or its hash.
function H.keys()
    local out = tenants.report(cfg)
    if #out.items == 0 then out.items = json.array() end
    return json.encode(out)
end

-- GET /_sluice/config: the running config, secrets replaced.
function H.config()
    return json.encode(config.redacted(cfg))
end

function H.log(ctx)
    local out = { service = ctx.service, client = ctx.client, model_in = ctx.model,
                  model_out = ctx.model_out }
    -- The key the client used, for the history and the access log: a
    -- tenant's id, else its place in `keys` — never its text.
    local ki = ctx.gateway_key_index
    if ki then out.gateway_key = ctx.key_id or ("key#" .. ki) end
    -- Usage and cost feed the history, and a tenant's token and cost limits.
    local tk = ctx.tenant_admitted and ctx.tenant_key
    local charge = tk and tk.charges
    if not cfg.history and not charge then return out end
    -- Usage from the accountant alone; a passthrough answer (whose bytes the
    -- core kept as ctx.answer) is read into it here, the only path no hook saw.
    local acct = accountant(ctx)
    if not acct.fed and not ctx.translation then acct:answer_text(codec(ctx.protocol), ctx.answer) end
    acct:log_fields(out)
    -- Priced on the model asked of the supplier that answered (sluice.prices).
    local s = ctx.supplier and cfg.suppliers[ctx.supplier]
    out.cost = prices.cost(cfg.prices, s and s.prices, ctx.model_out, out)
    if charge then tenants.charge(cfg, tk, out) end
    if not cfg.history then return out end
    local extra = nil
    local sid = ctx.upstream_session_id
    if type(sid) == "string" then extra = { upstream_session = sid } end
    -- Tool calls parsed from the answer's text (sluice.tooltext): how many,
    -- and the dialect that read them (the configured one while none did).
    local state = ctx.translation and ctx.translation.state
    local tt = state and state.tool_text
    if tt then
        extra = extra or {}
        extra.tool_text = { calls = tt.calls, dialect = tt.parsed_with or tt.dialect, emulated = tt.emulate ~= nil }
    end
    -- What the supplier could not be sent (translate: state.dropped).
    if state and state.dropped then
        extra = extra or {}
        extra.dropped = json.array(state.dropped)
    end
    -- The session (hashed) and the supplier/key index it is bound to.
    local session, binding = sticky.record_fields(ctx)
    if session then
        extra = extra or {}
        extra.session, extra.binding = session, binding
    end
    if extra then out.extra_json = json.encode(extra) end
    if cfg.history.bodies then
        local secrets = secrets_of(ctx) -- once for both bodies
        out.request_body = redact(ctx.body, secrets)
        out.response_body = redact(ctx.answer, secrets)
    end
    return out
end

return H
