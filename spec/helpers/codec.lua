-- spec.helpers.codec — shared checks for one protocol codec's specs.
--
-- Decoding goldens are IR documents (JSON files ending in .ir.json, compared
-- without array/object strictness since the IR is plain Lua tables); stream
-- decoders are also fed the capture framed byte by byte and split at every
-- byte boundary and must produce the same IR; stream encoders are fed every
-- prefix of an IR event list and closed as cut short, and must still
-- produce a stream the protocol's validator accepts.

local json = require("sluice.json")
local F = require("helpers.fixtures")
local sse = require("helpers.sse")
local validate = require("helpers.validate")

local M = {}

-- Feed framed records to a fresh decoder; all IR events, finish() included.
function M.decode_records(mod, records)
    local dec = mod.stream_decoder({})
    local out = {}
    for _, r in ipairs(records) do
        for _, e in ipairs(dec:feed(r)) do out[#out + 1] = e end
    end
    for _, e in ipairs(dec:finish()) do out[#out + 1] = e end
    return out
end

function M.decode_stream(mod, path)
    return M.decode_records(mod, F.sse_records(path))
end

function M.assert_ir(golden_path, actual)
    local ok, why = F.same(F.json(golden_path), actual, false)
    assert(ok, golden_path .. ": " .. tostring(why) .. "\nactual: " .. json.encode(actual))
end

-- The same capture framed in every way gives the same IR.
function M.assert_split_invariant(mod, path)
    local bytes = F.read(path)
    local whole = M.decode_records(mod, sse.parse(bytes))
    local ok1, why1 = F.same(whole, M.decode_records(mod, sse.parse_chunked(bytes, 1)), false)
    assert(ok1, "byte by byte: " .. tostring(why1))
    for cut = 1, #bytes - 1 do
        local got = M.decode_records(mod, sse.parse_chunked(bytes, { cut }))
        local ok, why = F.same(whole, got, false)
        assert(ok, "split at byte " .. cut .. ": " .. tostring(why))
    end
end

function M.encode_events(mod, events, opts, outcome, n)
    local enc = mod.stream_encoder(opts)
    local b = {}
    for i = 1, n or #events do b[#b + 1] = enc:feed(events[i]) end
    b[#b + 1] = enc:close(outcome)
    return table.concat(b)
end

-- Every prefix of `events`, closed as cut short, is a valid client stream
-- that does not claim to be complete.
function M.assert_cuts_valid(mod, events, opts)
    for n = 0, #events do
        local out = M.encode_events(mod, events, opts,
            { complete = false, reason = "UPSTREAM_EOF_EARLY" }, n)
        local ok, v = pcall(validate[mod.name], F.records(out))
        assert(ok, "cut after " .. n .. " IR events: " .. tostring(v) .. "\n" .. out)
        assert(not v.complete, "cut after " .. n .. " IR events passed off as complete\n" .. out)
    end
end

return M
