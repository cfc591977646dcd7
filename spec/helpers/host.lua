-- spec.helpers.host — a fresh sluice.host, initialised as the C core would
-- initialise it, from a config file (and its adapters/) written to a
-- temporary directory that is gone again before this returns.
--
--   M.load(config_text, adapters) -> H   adapters = { name = source }

local M = {}

local function write(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
end

function M.load(config_text, adapters)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir .. "/adapters"))
    for name, src in pairs(adapters or {}) do write(dir .. "/adapters/" .. name .. ".lua", src) end
    write(dir .. "/sluice.lua", config_text)
    package.loaded["sluice.host"] = nil
    local H = require("sluice.host")
    local core, err = H.init(dir .. "/sluice.lua", 0)
    os.execute("rm -rf " .. dir)
    assert(core, err)
    return H
end

return M
