-- sluice.prices — what a request cost, from the config's price table.
--
-- The config prices models in USD per million tokens, by a glob on the
-- model asked of the supplier (the upstream model), with an optional
-- per-supplier table that is consulted first:
--
--   prices = { ["claude-sonnet-4*"] = { input = 3.00, output = 15.00,
--                                       cache_read = 0.30, cache_write = 3.75 } }
--   suppliers = { x = { ..., prices = { ["claude-sonnet-4*"] = { input = 2.5, output = 12 } } } }
--
-- A missing cache_read / cache_write rate falls back to the input rate.
-- Among matching globs the longest (most specific) wins, so a table's
-- iteration order never changes a bill. Usage follows the IR (sluice.ir):
-- input_tokens includes the cache reads and writes, so the plain input part
-- is what remains once those are taken out.
--
--   P.check(t, field, bad) -> list  (validates one price table, raises via bad)
--   P.cost(global, supplier_list, model, usage) -> USD or nil (no price matches,
--                                                  or nothing was counted)

local type, pairs, fmt = type, pairs, string.format

local P = {}

local RATES = { input = true, output = true, cache_read = true, cache_write = true }

local function glob_match(g, s)
    return require("sluice.config").glob_match(g, s)
end

-- One price table from the config, as a list sorted most specific first.
function P.check(t, field, bad)
    if type(t) ~= "table" then bad(field, "expected a table of model globs, got %s", type(t)) end
    local list = {}
    for glob, r in pairs(t) do
        if type(glob) ~= "string" or glob == "" then
            bad(field, "keys must be model globs (non-empty strings)")
        end
        local f = fmt("%s[%q]", field, glob)
        if type(r) ~= "table" then bad(f, "expected a table of rates, got %s", type(r)) end
        for k, v in pairs(r) do
            if not RATES[k] then
                bad(f .. "." .. tostring(k), "unknown field (known: cache_read, cache_write, input, output)")
            end
            if type(v) ~= "number" or v < 0 or v ~= v or v == math.huge then
                bad(f .. "." .. k, "expected a price in USD per million tokens (a number >= 0), got %s",
                    tostring(v))
            end
        end
        if r.input == nil then bad(f .. ".input", "is required") end
        if r.output == nil then bad(f .. ".output", "is required") end
        list[#list + 1] = { glob = glob:lower(), input = r.input, output = r.output,
                            cache_read = r.cache_read or r.input, cache_write = r.cache_write or r.input }
    end
    table.sort(list, function(a, b)
        if #a.glob ~= #b.glob then return #a.glob > #b.glob end
        return a.glob < b.glob
    end)
    return list
end

local function find(list, model)
    if not list then return nil end
    for i = 1, #list do
        if glob_match(list[i].glob, model) then return list[i] end
    end
end

local function count(v)
    return type(v) == "number" and v > 0 and v or 0
end

function P.cost(global, supplier_list, model, u)
    if type(model) ~= "string" or type(u) ~= "table" then return nil end
    if u.input_tokens == nil and u.output_tokens == nil then return nil end
    model = model:lower()
    local r = find(supplier_list, model) or find(global, model)
    if not r then return nil end
    local cr, cw = count(u.cache_read_tokens), count(u.cache_write_tokens)
    local plain = count(u.input_tokens) - cr - cw
    if plain < 0 then plain = 0 end
    return (plain * r.input + cr * r.cache_read + cw * r.cache_write
            + count(u.output_tokens) * r.output) / 1e6
end

return P
