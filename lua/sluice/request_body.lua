-- sluice.request_body — the client's JSON body, decoded only as far as the
-- request needs it.
--
-- A coding agent's request is mostly its conversation (a 300 KB body is
-- common), and a request passed through to a supplier of its own protocol
-- needs little of it: `model`, `stream` and the parts its session key is
-- made of. Decoding all of it into Lua tables cost more than everything
-- else sluice does with such a request. So:
--
--   - B.open(ctx) checks the whole body (json.members: the decoder's own
--     checks, same errors) and notes where each top-level field lies,
--     building nothing;
--   - B.field(ctx, name) decodes one top-level field;
--   - B.view(ctx, fields, lists, stop) decodes the named fields, and of each
--     list field only its members up to the first for which stop(m) holds;
--   - `ctx.request`, the whole decoded body, is made the first time anything
--     reads it: translation, adapters, on_request, a changed model, a body
--     lowered to an output cap or given a prompt cache key (the checks for
--     those read their fields alone). Ops' hooks read and change it as
--     before, and once it exists, fields and views are read from it.
--
-- A request that is translated reads all of it, and the scan would be a
-- second pass over a large body. B.learn notes, per service, whether the
-- request read its whole body; when the last one did, the next is decoded
-- whole at once (kept aside, so that whether it was read is still known).
-- A service whose routes mix both pays the scan only where they alternate.

local json = require("sluice.json")

local decode, members, is_array = json.decode, json.members, json.is_array
local ipairs, rawget, rawset, setmetatable, type = ipairs, rawget, rawset, setmetatable, type

local B = {}

-- service -> true when its latest request read its whole body
local read_whole = {}

-- ctx's only missing key that means something is `request`.
local LAZY = {
    __index = function(ctx, k)
        if k ~= "request" then return nil end
        local body = rawget(ctx, "body_decoded") or decode(ctx.body)
        rawset(ctx, "request", body)
        return body
    end,
}

-- The body as decoded so far: whole (read or not yet), or nil when only scanned.
local function whole(ctx)
    return rawget(ctx, "request") or rawget(ctx, "body_decoded")
end

-- -> true | nil, err (nil err: valid JSON, but not an object)
function B.open(ctx, service)
    if read_whole[service] then
        local body, err = decode(ctx.body)
        if type(body) ~= "table" or is_array(body) then return nil, err end
        ctx.body_decoded = body
    else
        local spans, kind = members(ctx.body)
        if kind ~= "object" then return nil, not spans and kind or nil end
        ctx.body_spans = spans
    end
    setmetatable(ctx, LAZY)
    return true
end

-- After the request's plan: whether it read the whole body.
function B.learn(ctx, service)
    read_whole[service] = rawget(ctx, "request") ~= nil
end

function B.field(ctx, name)
    local body = whole(ctx)
    if body then return body[name] end
    local span = ctx.body_spans[name]
    return span and decode(ctx.body, span[1], span[2])
end

-- The members of the array at span, decoded up to and including the first
-- for which stop(m) holds (all of them when none does). The first few are
-- looked for first: a conversation's opening is what is wanted.
local FIRST_FEW = 8
local function list_until(raw, span, stop)
    local items = members(raw, span[1], span[2], FIRST_FEW)
    local out = json.array({})
    for i = 1, #items do
        local m = decode(raw, items[i][1], items[i][2])
        out[i] = m
        if stop(m) then return out end
    end
    if #items < FIRST_FEW then return out end
    return decode(raw, span[1], span[2])
end

function B.view(ctx, fields, lists, stop)
    local body = whole(ctx)
    if body then return body end
    local raw, spans, view = ctx.body, ctx.body_spans, {}
    for _, name in ipairs(fields) do
        local span = spans[name]
        if span then view[name] = decode(raw, span[1], span[2]) end
    end
    for _, name in ipairs(lists) do
        local span = spans[name]
        if span then
            if raw:byte(span[1]) == 91 then -- "[": an array
                view[name] = list_until(raw, span, stop)
            else
                view[name] = decode(raw, span[1], span[2])
            end
        end
    end
    return view
end

return B
