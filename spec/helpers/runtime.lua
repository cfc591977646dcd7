-- The runtime (`rt`) sluice.sticky and sluice.tenants take, for specs: the
-- in-VM stand-in of sluice.shared on a clock the spec moves, now(), a
-- Redis (a fake the spec passes, if any), and count() recording every
-- counter it is asked to move in rt.counts ("name" or "name{k=v}").
local sluice = require("sluice")

return function(now, redis)
    local rt = { counts = {}, now = now, redis = redis }
    rt.shared = sluice.local_store(now)
    rt.count = function(name, k, v)
        local n = name .. (k and ("{" .. k .. "=" .. v .. "}") or "")
        rt.counts[n] = (rt.counts[n] or 0) + 1
    end
    return rt
end
