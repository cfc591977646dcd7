-- sluice.retry — the retry and fallback policy (DESIGN §7). Pure: the core
-- asks it, for a failure before anything reached the client, whether to try
-- again and after how long; the core does the waiting.
--
-- Per supplier (default from the top-level `retry`):
--   retry = { attempts = 3, statuses = { 429, 500, 502, 503, 504 }, base = 0.5, max = 8 }
-- `attempts` counts every request sent to that supplier, the first included,
-- so a supplier never receives the request more than `attempts` times.
-- Backoff is exponential with full jitter in [delay/2, delay], capped at
-- `max`; Retry-After (seconds or HTTP date) and retry-after-ms are honoured
-- (never retried sooner than they say), up to `max` — a longer demand is not
-- waited out: the chain moves on. Connect failures, connect/first-byte
-- timeouts and resets before the first byte retry too. When a supplier's
-- attempts are spent the next supplier of the route's chain gets the request.
--
-- R.decide(policy, state, failure, now) -> delay_seconds | nil
--   state: per-request table this module owns ({ tries = n, pos = i })
--   failure: { kind = "status"|"error", status, headers, reason }
-- R.normalize(t, field, defaults) -> policy (raises config errors via `bad`)

local R = {}

R.DEFAULT = { attempts = 3, statuses = { 429, 500, 502, 503, 504 }, base = 0.5, max = 8 }

R.RETRYABLE_ERRORS = {
    UPSTREAM_CONNECT = true, UPSTREAM_TIMEOUT_CONNECT = true, UPSTREAM_TIMEOUT_FIRST_BYTE = true,
    UPSTREAM_RESET = true, UPSTREAM_EOF_EARLY = true, UPSTREAM_TLS = false,
}

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds to wait demanded by Retry-After / retry-after-ms, or nil.
function R.retry_after(headers, now)
    if not headers then return nil end
    local ms = tonumber(headers["retry-after-ms"])
    if ms and ms >= 0 then return ms / 1000 end
    local v = headers["retry-after"]
    if not v then return nil end
    local secs = tonumber(v)
    if secs then return secs >= 0 and secs or nil end
    -- HTTP date: "Wed, 21 Oct 2015 07:28:00 GMT"
    local d, mon, y, hh, mm, ss = v:match("^%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT$")
    if not d or not MONTHS[mon] then return nil end
    local t = os.time({ year = tonumber(y), month = MONTHS[mon], day = tonumber(d),
                        hour = tonumber(hh), min = tonumber(mm), sec = tonumber(ss), isdst = false })
    -- os.time() reads the table as local time; correct it to UTC.
    local utc_offset = os.time() - os.time(os.date("!*t"))
    local at = t + utc_offset
    local wait = at - (now or os.time())
    return wait > 0 and wait or 0
end

local function retryable(policy, f)
    if f.kind == "status" then return policy.status_set[f.status] == true end
    return R.RETRYABLE_ERRORS[f.reason] == true
end

-- state.tries counts requests sent to the current supplier; state.pos is the
-- position in the route's supplier chain; state.chain_len its length.
function R.decide(policy, state, f, now, random)
    random = random or math.random
    state.tries = state.tries or 1
    if not retryable(policy, f) then return nil end
    local demanded = R.retry_after(f.headers, now)
    if state.tries < policy.attempts and not (demanded and demanded > policy.max) then
        local backoff = math.min(policy.max, policy.base * 2 ^ (state.tries - 1))
        local delay = backoff / 2 + random() * backoff / 2
        if demanded and demanded > delay then delay = demanded end
        state.tries = state.tries + 1
        return math.min(delay, policy.max)
    end
    if (state.pos or 1) < (state.chain_len or 1) then
        state.pos = (state.pos or 1) + 1
        state.tries = 1
        return 0
    end
    return nil
end

-- Validates a `retry` table (raising through `bad(field, msg)`) and fills defaults.
function R.normalize(t, field, defaults, bad)
    defaults = defaults or R.DEFAULT
    if t == nil then return defaults end
    if type(t) ~= "table" then bad(field, "expected a table") end
    local p = {
        attempts = t.attempts or defaults.attempts,
        statuses = t.statuses or defaults.statuses,
        base = t.base or defaults.base,
        max = t.max or defaults.max,
    }
    for k in pairs(t) do
        if p[k] == nil then bad(field .. "." .. tostring(k), "unknown field (known: attempts, statuses, base, max)") end
    end
    if type(p.attempts) ~= "number" or p.attempts < 1 or p.attempts % 1 ~= 0 then
        bad(field .. ".attempts", "expected a whole number >= 1")
    end
    if type(p.base) ~= "number" or p.base < 0 then bad(field .. ".base", "expected a number >= 0") end
    if type(p.max) ~= "number" or p.max < 0 then bad(field .. ".max", "expected a number >= 0") end
    if type(p.statuses) ~= "table" then bad(field .. ".statuses", "expected a list of HTTP statuses") end
    p.status_set = {}
    for i, s in ipairs(p.statuses) do
        if type(s) ~= "number" or s < 400 or s > 599 then
            bad(string.format("%s.statuses[%d]", field, i), "expected an HTTP status 400..599")
        end
        p.status_set[s] = true
    end
    return p
end

R.DEFAULT = R.normalize(R.DEFAULT, "retry", R.DEFAULT, error)

return R
