-- sluice.tools.deepseek_v32 — DeepSeek V3.2's DSML calls:
--   <｜DSML｜function_calls>
--   <｜DSML｜invoke name="get_weather">
--   <｜DSML｜parameter name="city" string="true">SF</｜DSML｜parameter>
--   </｜DSML｜invoke>
--   </｜DSML｜function_calls>
-- string="true" values are raw text, string="false" ones JSON; without the
-- attribute the tool's schema decides. An invoke whose body is one JSON
-- object (no parameter tags) takes it as the arguments.

local C = require("sluice.tools.common")
local X = require("sluice.tools.xmlish")

local D = { name = "deepseek_v32", markers = { "<｜DSML｜function_calls>" } }

local OPEN, CLOSE = "<｜DSML｜function_calls>", "</｜DSML｜function_calls>"
local INVOKE = '^%s*<｜DSML｜invoke%s+name%s*=%s*"([^"]+)"%s*>(.-)</｜DSML｜invoke>()'
local PARAM = '^<｜DSML｜parameter%s+name%s*=%s*"([^"]+)"([^>]*)>(.-)</｜DSML｜parameter>()'

function D.parse(s, final, tools)
    return X.section(s, #OPEN, CLOSE, final, function(rest)
        local name, body, after = rest:match(INVOKE)
        if not name then return nil end
        local args
        if body:match("^%s*{") then args = C.object(body) else args = X.params(body, tools[name], PARAM) end
        return args and { name = name, arguments = args }, after
    end)
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    return X.render(calls, OPEN, CLOSE, "｜DSML｜", true)
end

return D
