-- spec.helpers.fixtures — loading golden fixtures and comparing against them.
--
-- Goldens are wire captures and hand-reviewed expectations under
-- spec/fixtures/. Bodies are compared as decoded JSON (so key order does not
-- matter but array-vs-object does: an `input: []` where `{}` was expected is
-- a failure), streams record by record. The string "<any>" in an expected
-- document matches any present value (used for clocks such as `created`).

local json = require("sluice.json")
local sse = require("helpers.sse")

local M = {}

M.ROOT = "spec/fixtures/"

function M.read(path)
    local f = assert(io.open(M.ROOT .. path, "rb"), "missing fixture " .. path)
    local s = f:read("*a")
    f:close()
    return s
end

function M.exists(path)
    local f = io.open(M.ROOT .. path, "rb")
    if f then f:close() return true end
    return false
end

function M.json(path)
    local v, err = json.decode(M.read(path))
    assert(v ~= nil, "bad JSON in " .. path .. ": " .. tostring(err))
    return v
end

-- Normalise a Lua value to its wire form: encode then decode.
function M.wire(v)
    local s, err = json.encode(v)
    assert(s, "encode failed: " .. tostring(err))
    return json.decode(s)
end

local function keys_of(t)
    local ks = {}
    for k in pairs(t) do ks[#ks + 1] = tostring(k) end
    table.sort(ks)
    return table.concat(ks, ",")
end

-- Deep comparison; returns true, or false and the path of the first mismatch.
-- strict: arrays must be marked arrays on both sides (wire comparison).
local function same(e, a, path, strict)
    if e == "<any>" then
        if a == nil then return false, path .. ": expected a value, got nil" end
        return true
    end
    if type(e) ~= type(a) then
        return false, string.format("%s: expected %s (%s), got %s (%s)", path, tostring(e),
            type(e), tostring(a), type(a))
    end
    if type(e) ~= "table" then
        if e ~= a then
            return false, string.format("%s: expected %q, got %q", path, tostring(e), tostring(a))
        end
        return true
    end
    if strict and json.is_array(e) ~= json.is_array(a) then
        return false, path .. ": expected " .. (json.is_array(e) and "an array" or "an object")
            .. ", got " .. (json.is_array(a) and "an array" or "an object")
    end
    for k, v in pairs(e) do
        local ok, why = same(v, a[k], path .. "." .. tostring(k), strict)
        if not ok then return false, why end
    end
    for k in pairs(a) do
        if e[k] == nil then
            return false, path .. ": unexpected key " .. tostring(k) .. " (expected keys: "
                .. keys_of(e) .. ")"
        end
    end
    return true
end

function M.same(expected, actual, strict)
    return same(expected, actual, "$", strict)
end

-- Assert that `actual` (a Lua value) has the wire form of `expected`.
function M.assert_wire(expected, actual, what)
    local ok, why = same(expected, M.wire(actual), "$", true)
    assert(ok, (what or "body") .. " differs from golden: " .. tostring(why)
        .. "\nactual: " .. json.encode(actual))
end

-- Client stream bytes -> { { event = name|nil, data = decoded|"[DONE]" }... }.
function M.records(bytes)
    local out = {}
    for _, r in ipairs(sse.parse(bytes)) do
        local d = r.data
        if d ~= "[DONE]" then
            local v, err = json.decode(d)
            assert(v ~= nil, "stream record is not JSON: " .. d .. " (" .. tostring(err) .. ")")
            d = v
        end
        out[#out + 1] = { event = r.event or json.null, data = d }
    end
    return out
end

-- Assert stream bytes match a golden .sse file, record by record.
function M.assert_stream(golden_path, bytes)
    local expected = M.records(M.read(golden_path))
    local actual = M.records(bytes)
    for i = 1, math.max(#expected, #actual) do
        local e, a = expected[i], actual[i]
        assert(e, "extra record " .. i .. ": " .. json.encode(a and a.data or "?")
            .. "\nfull output:\n" .. bytes)
        assert(a, "missing record " .. i .. " (expected " .. json.encode(e.data) .. ")"
            .. "\nfull output:\n" .. bytes)
        local ok, why = same(e, a, "record[" .. i .. "]", true)
        assert(ok, golden_path .. ": " .. tostring(why) .. "\nfull output:\n" .. bytes)
    end
end

-- Upstream SSE fixture -> framed records.
function M.sse_records(path)
    return sse.parse(M.read(path))
end

return M
