-- sluice.adapters — loads supplier adapters and defines what one may do.
--
-- A supplier that speaks one of the four protocols *almost* (another path,
-- an extra header, errors wrapped in a 200, heartbeat events, a session id
-- to carry) gets a small adapter instead of a fork of a codec:
-- `suppliers.<id>.adapter = "name"` loads `<config dir>/adapters/name.lua`,
-- else the built-in `lua/sluice/adapters/name.lua`. The file returns a
-- table; every function is optional and works on the *supplier's* wire
-- format (the protocol named by `suppliers.<id>.protocol`), so translation
-- to and from the client's protocol happens around it unchanged:
--
--   request(ctx, plan, body) -> body? | nil, err
--       Before the request goes upstream. plan.path (after base_url),
--       plan.query, plan.method and plan.headers ({ {name, value}... }) may
--       be changed in place; body is the decoded JSON about to be sent (a
--       copy: change it in place or return a new table). `nil, "why"` fails
--       the request with a 502 naming the supplier and why.
--   response(ctx, status, headers, body) -> status?, body?
--       A whole (non-streamed) answer with the supplier's headers; body is
--       the decoded JSON (the raw text if it is not JSON). Return what
--       replaces them (nil keeps).
--   event(ctx, ev) -> ev | { ev, ev... } | nil
--       One SSE event of a streamed answer ({ event = name|nil, data = s });
--       return it (changed or not), several, or nil to drop it.
--   session_id(ctx, headers, body) -> string | nil
--       The supplier's session id, kept as ctx.upstream_session_id and in
--       the history record. Called on a whole answer and on the head of
--       a stream (body nil). Header names are lower case.
--   classify_error(ctx, status, body) -> { status, type, message } | nil
--       Runs before `response` on every whole answer: an error the supplier
--       hides (a 200 whose body is an error) or words oddly. The client gets
--       it in its own protocol's error shape (see sluice.ir error types).
--
-- ctx is the request: ctx.id, ctx.model (the client's), ctx.model_out (the
-- supplier's), ctx.stream, ctx.supplier, ctx.headers (the client's), and
-- ctx.adapter_state, a table the adapter may keep per-request state in.
-- Other non-function fields are the adapter's own data. An unknown
-- *function* field is an error: a misspelt hook must not silently never run.
--
-- Like the config, adapters are ops code and run with the JIT off so the
-- script budget can stop a runaway loop in them.
--
--   A.load(name, config_dir) -> adapter | nil, err
--   A.check(t, where)        -> adapter | nil, err
--   A.header(headers, name) -> value | nil ; A.set_header(headers, name, value) ;
--   A.remove_header(headers, name)          (helpers for plan.headers)

local type, pairs, tostring, pcall, loadfile = type, pairs, tostring, pcall, loadfile
local lower = string.lower

local A = {}

A.HOOKS = { request = true, response = true, event = true, session_id = true, classify_error = true }

function A.check(t, where)
    if type(t) ~= "table" then
        return nil, where .. " must return a table, got " .. type(t)
    end
    for k, v in pairs(t) do
        if type(v) == "function" and not A.HOOKS[k] then
            return nil, where .. ": unknown function `" .. tostring(k) ..
                "` (known: classify_error, event, request, response, session_id)"
        end
        if A.HOOKS[k] and type(v) ~= "function" then
            return nil, where .. ": `" .. k .. "` must be a function"
        end
    end
    return t
end

local function exists(path)
    local f = io.open(path, "r")
    if f then f:close() return true end
    return false
end

local function builtin_path(name)
    return package.searchpath("sluice.adapters." .. name, package.path)
end

function A.load(name, config_dir)
    if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
        return nil, "expected an adapter name (letters, digits, _ and -), got " .. tostring(name)
    end
    local path = (config_dir or ".") .. "/adapters/" .. name .. ".lua"
    if not exists(path) then
        path = builtin_path(name)
        if not path then
            return nil, "no adapter " .. name .. " (looked in " .. (config_dir or ".") ..
                "/adapters/ and lua/sluice/adapters/)"
        end
    end
    local chunk, err = loadfile(path)
    if not chunk then return nil, "cannot load adapter: " .. tostring(err) end
    if jit then jit.off(chunk, true) end
    local ok, t = pcall(chunk)
    if not ok then return nil, "adapter " .. path .. " raised an error: " .. tostring(t) end
    local ad
    ad, err = A.check(t, "adapter " .. path)
    if not ad then return nil, err end
    return ad
end

-- ------------------------------------------------------------------ header helpers

function A.header(headers, name)
    name = lower(name)
    for i = 1, #headers do
        if lower(headers[i][1]) == name then return headers[i][2] end
    end
    return nil
end

function A.remove_header(headers, name)
    name = lower(name)
    for i = #headers, 1, -1 do
        if lower(headers[i][1]) == name then table.remove(headers, i) end
    end
end

function A.set_header(headers, name, value)
    A.remove_header(headers, name)
    headers[#headers + 1] = { name, value }
end

-- ------------------------------------------------------------------ applying an adapter

-- Runs ev through adapter.event; appends what comes out to `out`.
local function push_events(out, r)
    if r == nil or r == false then return end
    if r.data ~= nil or r.event ~= nil then
        out[#out + 1] = r
        return
    end
    for i = 1, #r do out[#out + 1] = r[i] end
end

function A.map_events(ad, ctx, batch)
    local fn = ad.event
    if not fn then return batch end
    local out = {}
    for i = 1, #batch do push_events(out, fn(ctx, batch[i])) end
    return out
end

-- SSE text for events (what a same-protocol adapted stream sends on).
function A.encode_events(events)
    local parts = {}
    for i = 1, #events do
        local ev = events[i]
        if ev.event then parts[#parts + 1] = "event: " .. ev.event .. "\n" end
        local data = tostring(ev.data or "")
        for line in (data .. "\n"):gmatch("([^\n]*)\n") do
            parts[#parts + 1] = "data: " .. line .. "\n"
        end
        parts[#parts + 1] = "\n"
    end
    return table.concat(parts)
end

return A
