-- sluice.retry: when a failure before the first byte is retried, how long
-- the wait is, and when the fallback chain moves on.
local retry = require("sluice.retry")

local function policy(t) return retry.normalize(t, "retry", retry.DEFAULT, error) end
local function fixed(v) return function() return v end end

describe("sluice.retry", function()
    it("retries configured statuses with exponential backoff, then gives up", function()
        local p = policy({ attempts = 3, base = 1, max = 8 })
        local st = { chain_len = 1 }
        local f = { kind = "status", status = 503 }
        assert.equal(1, retry.decide(p, st, f, 0, fixed(1)))   -- 2nd send after base
        assert.equal(2, retry.decide(p, st, f, 0, fixed(1)))   -- 3rd send after 2*base
        assert.is_nil(retry.decide(p, st, f, 0, fixed(1)))     -- never a 4th send
    end)

    it("jitters between half and the whole backoff", function()
        local p = policy({ attempts = 5, base = 2, max = 60 })
        assert.equal(1, retry.decide(p, {}, { kind = "status", status = 429 }, 0, fixed(0)))
    end)

    it("does not retry statuses outside the policy or errors that are not transient", function()
        local p = policy({})
        assert.is_nil(retry.decide(p, {}, { kind = "status", status = 400 }, 0))
        assert.is_nil(retry.decide(p, {}, { kind = "error", reason = "UPSTREAM_TLS" }, 0))
        assert.truthy(retry.decide(p, {}, { kind = "error", reason = "UPSTREAM_CONNECT" }, 0))
        assert.truthy(retry.decide(p, {}, { kind = "error", reason = "UPSTREAM_TIMEOUT_FIRST_BYTE" }, 0))
    end)

    it("waits at least what Retry-After and retry-after-ms demand, capped at max", function()
        local p = policy({ base = 0.1, max = 8 })
        assert.equal(3, retry.decide(p, {}, { kind = "status", status = 429, headers = { ["retry-after"] = "3" } }, 0, fixed(0)))
        assert.equal(0.25, retry.decide(p, {}, { kind = "status", status = 429,
            headers = { ["retry-after-ms"] = "250" } }, 0, fixed(0)))
    end)

    it("reads Retry-After as an HTTP date", function()
        local now = os.time({ year = 2015, month = 10, day = 21, hour = 7, min = 28, sec = 0, isdst = false })
            + (os.time() - os.time(os.date("!*t")))
        assert.equal(5, retry.retry_after({ ["retry-after"] = "Wed, 21 Oct 2015 07:28:05 GMT" }, now))
        assert.is_nil(retry.retry_after({ ["retry-after"] = "soon" }, now))
    end)

    it("moves to the next supplier of the chain when Retry-After exceeds max", function()
        local p = policy({ max = 2 })
        local st = { chain_len = 2, pos = 1 }
        assert.equal(0, retry.decide(p, st, { kind = "status", status = 429, headers = { ["retry-after"] = "60" } }, 0))
        assert.equal(2, st.pos)
        assert.equal(1, st.tries)
    end)

    it("walks the fallback chain once each supplier's attempts are spent", function()
        local p = policy({ attempts = 2, base = 0 })
        local st = { chain_len = 2 }
        local f = { kind = "error", reason = "UPSTREAM_CONNECT" }
        assert.equal(0, retry.decide(p, st, f, 0))     -- supplier 1, 2nd send
        assert.equal(0, retry.decide(p, st, f, 0))     -- supplier 2, 1st send
        assert.equal(2, st.pos)
        assert.equal(0, retry.decide(p, st, f, 0))     -- supplier 2, 2nd send
        assert.is_nil(retry.decide(p, st, f, 0))
    end)

    it("rejects bad policies naming the field", function()
        local function bad(field, msg) error(field .. ": " .. msg, 0) end
        assert.has_error(function() retry.normalize({ attempts = 0 }, "suppliers.a.retry", nil, bad) end,
            "suppliers.a.retry.attempts: expected a whole number >= 1")
        assert.has_error(function() retry.normalize({ statuses = { 200 } }, "retry", nil, bad) end,
            "retry.statuses[1]: expected an HTTP status 400..599")
        assert.has_error(function() retry.normalize({ tries = 2 }, "retry", nil, bad) end,
            "retry.tries: unknown field (known: attempts, statuses, base, max)")
    end)
end)
