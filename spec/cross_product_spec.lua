-- The generated cross-product: every upstream stream capture of every
-- protocol (spec/fixtures/<protocol>/stream_*.sse), translated for every
-- client protocol that has a pair with it, whole and cut after every event,
-- must be a stream that client's grammar accepts (helpers.validate) — and
-- complete exactly when the upstream's stream was. Unlike the pair goldens
-- (which pin exact bytes for chosen cases and grow as N²), this needs no
-- file per pair: a new capture, or a new protocol with its validator, is
-- covered in every direction at once.

local T = require("sluice.translate")
local F = require("helpers.fixtures")
local P = require("helpers.pairs")
local sse = require("helpers.sse")
local validate = require("helpers.validate")

-- Upstream stream captures of a protocol (client-side *.encoded.sse files
-- are outputs, not upstream streams).
local function captures(protocol)
    local out = {}
    local p = io.popen("ls " .. F.ROOT .. protocol .. " 2>/dev/null")
    for name in p:lines() do
        if name:match("^stream_.*%.sse$") and not name:match("%.encoded%.sse$") then
            out[#out + 1] = protocol .. "/" .. name
        end
    end
    p:close()
    table.sort(out)
    return out
end

-- Did the upstream's stream finish? It did when its decoder saw a stop
-- reason and no error.
local function upstream_complete(protocol, recs)
    local dec = T.protocol(protocol).stream_decoder({})
    local finished, failed = false, false
    local function look(evs)
        for _, e in ipairs(evs or {}) do
            if e.type == "finish" then finished = true end
            if e.type == "error" then failed = true end
        end
    end
    for _, r in ipairs(recs) do look(dec:feed(r)) end
    if dec.finish then look(dec:finish()) end
    return finished and not failed
end

for _, pair in ipairs(P.list()) do
    local meta = P.cases(pair)
    for _, path in ipairs(captures(pair.to)) do
        describe(pair.from .. " client on " .. path, function()
            local recs = F.sse_records(path)
            local complete = upstream_complete(pair.to, recs)

            local function run(n, outcome)
                local pipe = T.stream(pair.from, pair.to, P.state(pair, meta, {}))
                local out = P.feed_stream(pipe, recs, n) .. pipe:close(outcome)
                local ok, v = pcall(validate[pair.from], F.records(out))
                assert(ok, (n and ("cut after " .. n .. " events: ") or "") .. tostring(v) .. "\n" .. out)
                return v
            end

            it("whole: valid, and complete exactly when the upstream was", function()
                assert.are.equal(complete, run(nil, { complete = true }).complete)
            end)

            it("cut after every event: valid and never complete", function()
                for n = 0, #recs - 1 do
                    assert.is_false(run(n, { complete = false, reason = "UPSTREAM_EOF_EARLY" }).complete)
                end
            end)
        end)
    end
end

-- The cases above are generated from what is found on disk: none found
-- (no pairs, a capture directory renamed, a spec run from elsewhere) would
-- pass by running nothing.
describe("the cross-product itself", function()
    it("has pairs, and stream captures for every upstream protocol of a pair", function()
        local pairs_list = P.list()
        assert.is_true(#pairs_list > 0, "no protocol pairs")
        for _, pair in ipairs(pairs_list) do
            assert.is_true(#captures(pair.to) > 0, "no stream capture for " .. pair.to)
        end
    end)
end)
