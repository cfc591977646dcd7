-- spec.helpers.pairs — running the translation pair fixtures.
--
-- spec/fixtures/pairs/<client>--<supplier>/cases.json lists the golden cases
-- of one directed pair (client protocol first). Inputs are shared wire
-- captures named relative to spec/fixtures/ (e.g. "openai-chat/stream_tools.sse");
-- expectations live in the pair's folder. Case kinds:
--   request   input = client body          -> expect = upstream body (JSON)
--   response  input = upstream body        -> expect = client body (JSON)
--   stream    input = upstream SSE         -> expect = client SSE; `cut_after` = n feeds only
--             the first n upstream records, then closes with UPSTREAM_EOF_EARLY
--   error     input = upstream error body, status -> expect = client body, expect_status
--   collect   input = upstream SSE         -> expect = client body (non-streaming client)
--   explode   input = upstream body        -> expect = client SSE (streaming client)
-- Response-side cases get their state from the pair's request case (`state`
-- names its input), so the client model and tool-name map are the real ones.

local json = require("sluice.json")
local T = require("sluice.translate")
local F = require("helpers.fixtures")

local M = {}

function M.list()
    local out = {}
    local p = io.popen("ls " .. F.ROOT .. "pairs 2>/dev/null")
    for name in p:lines() do
        local from, to = name:match("^(.-)%-%-(.+)$")
        if from and F.exists("pairs/" .. name .. "/cases.json") then
            out[#out + 1] = { dir = "pairs/" .. name .. "/", from = from, to = to }
        end
    end
    p:close()
    return out
end

function M.cases(pair)
    return F.json(pair.dir .. "cases.json")
end

-- Build the request state the response-side cases need.
function M.state(pair, meta, case)
    local input = case.state or meta.request
    local body = F.json(input)
    local _, state = assert(T.request(pair.from, pair.to, body, meta.info or {},
        { model = meta.model, id = meta.id }))
    state.created = meta.created
    return state
end

function M.feed_stream(pipe, records, n)
    local b = {}
    for i = 1, math.min(n or #records, #records) do b[#b + 1] = pipe:feed(records[i]) end
    return table.concat(b)
end

-- Run one case; returns the actual result (table for bodies, bytes for
-- streams) and, for errors, the status.
function M.run(pair, meta, case)
    local k = case.kind
    if k == "request" then
        local up, state = T.request(pair.from, pair.to, F.json(case.input), meta.info or {},
            { model = meta.model, id = meta.id })
        assert(up, state)
        return up, state
    end
    local state = M.state(pair, meta, case)
    if k == "response" then
        return assert(T.response(pair.from, pair.to, F.json(case.input), state))
    elseif k == "stream" then
        local recs = F.sse_records(case.input)
        local pipe = T.stream(pair.from, pair.to, state)
        local out = M.feed_stream(pipe, recs, case.cut_after)
        if case.cut_after then
            out = out .. pipe:close({ complete = false, reason = "UPSTREAM_EOF_EARLY",
                                      message = "upstream stream ended prematurely (UPSTREAM_EOF_EARLY)" })
        else
            out = out .. pipe:close({ complete = true })
        end
        return out, pipe
    elseif k == "error" then
        local status, body = T.error(pair.from, pair.to, case.status, F.read(case.input))
        return body, status
    elseif k == "collect" then
        local c = T.collect(pair.from, pair.to, state)
        c:feed_batch(F.sse_records(case.input))
        return c:finish({ complete = true })
    elseif k == "explode" then
        return assert(T.response_stream(pair.from, pair.to, F.json(case.input), state))
    end
    error("unknown case kind " .. tostring(k))
end

M.json = json
return M
