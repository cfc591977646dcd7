-- sluice.runtime — the runtime the stateful modules (sluice.sticky,
-- sluice.session_store, sluice.tenants, sluice.auth.managed) run with: the
-- one a caller passes (specs pass their own clock, store and Redis), else
-- the host's `sluice` module.
--
-- `sluice` is looked up once per VM, on first use rather than at load (it
-- requires modules that require these), and kept: a `require` on every
-- call cost as much as the store read it preceded, and a call to it is one
-- LuaJIT cannot compile into a trace.
--
--   runtime(rt?) -> rt, or the host's `sluice`

local default

return function(rt)
    if rt then return rt end
    if not default then default = require("sluice") end
    return default
end
