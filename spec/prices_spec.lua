-- sluice.prices: a request's cost from the price table (USD per million
-- tokens), the most specific glob first, a supplier's table before the
-- global one, and the table's checks naming the field at fault.
local prices = require("sluice.prices")

local function bad(field, msg, ...) error(field .. ": " .. string.format(msg, ...), 0) end
local function check(t) return prices.check(t, "prices", bad) end

describe("sluice.prices", function()
    local global = check({
        ["gpt-4*"] = { input = 2, output = 8, cache_read = 0.5 },
        ["gpt-4.1-mini"] = { input = 0.4, output = 1.6 },
        ["claude-*"] = { input = 3, output = 15, cache_read = 0.3, cache_write = 3.75 },
    })

    it("prices plain input, cache reads and writes and output apart", function()
        -- input_tokens includes the cache reads and writes (the IR's rule)
        local c = prices.cost(global, nil, "claude-sonnet-4-5",
            { input_tokens = 1300, output_tokens = 50, cache_read_tokens = 1000, cache_write_tokens = 200 })
        assert.near((100 * 3 + 1000 * 0.3 + 200 * 3.75 + 50 * 15) / 1e6, c, 1e-12)
    end)

    it("falls back to the input rate for a cache rate the table leaves out", function()
        local c = prices.cost(global, nil, "gpt-4.1-mini", { input_tokens = 1000, cache_read_tokens = 500 })
        assert.near(1000 * 0.4 / 1e6, c, 1e-12)
    end)

    it("takes the longest matching glob, whatever the table's order", function()
        assert.near(1.6e-6, prices.cost(global, nil, "GPT-4.1-mini", { output_tokens = 1 }), 1e-15)
        assert.near(8e-6, prices.cost(global, nil, "gpt-4o", { output_tokens = 1 }), 1e-15)
    end)

    it("consults the supplier's table first", function()
        local own = check({ ["gpt-4*"] = { input = 1, output = 1 } })
        assert.near(2e-6, prices.cost(global, own, "gpt-4o", { input_tokens = 1, output_tokens = 1 }), 1e-15)
        assert.near(3e-6 + 15e-6, prices.cost(global, own, "claude-x", { input_tokens = 1, output_tokens = 1 }), 1e-15)
    end)

    it("has no cost without a matching price, a model or any usage", function()
        assert.is_nil(prices.cost(global, nil, "o3", { input_tokens = 10 }))
        assert.is_nil(prices.cost(global, nil, nil, { input_tokens = 10 }))
        assert.is_nil(prices.cost(global, nil, "gpt-4o", {}))
    end)

    it("names the field at fault", function()
        local function err(t)
            local ok, e = pcall(check, t)
            assert.is_false(ok)
            return e
        end
        assert.matches('prices%["m"%]%.output: is required', err({ m = { input = 1 } }))
        assert.matches('prices%["m"%]%.input: expected a price', err({ m = { input = -1, output = 1 } }))
        assert.matches('prices%["m"%]%.cache: unknown field', err({ m = { input = 1, output = 1, cache = 1 } }))
        assert.matches("prices: expected a table", err("cheap"))
    end)
end)
