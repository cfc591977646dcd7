-- sluice.tools.minimax_m2 — MiniMax-M2's calls:
--   <minimax:tool_call>
--   <invoke name="get_weather">
--   <parameter name="city">SF</parameter>
--   </invoke>
--   </minimax:tool_call>
-- several <invoke> in one section for several calls; values typed by the
-- tool's JSON schema.

local X = require("sluice.tools.xmlish")

local D = { name = "minimax_m2", markers = { "<minimax:tool_call>" } }

local OPEN, CLOSE = "<minimax:tool_call>", "</minimax:tool_call>"
local INVOKE = '^%s*<invoke%s+name%s*=%s*"([^"]+)"%s*>(.-)</invoke>()'
local PARAM = '^<parameter%s+name%s*=%s*"([^"]+)"([^>]*)>(.-)</parameter>()'

function D.parse(s, final, tools)
    return X.section(s, #OPEN, CLOSE, final, function(rest)
        local name, body, after = rest:match(INVOKE)
        if not name then return nil end
        local args = X.params(body, tools[name], PARAM)
        return args and { name = name, arguments = args }, after
    end)
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    return X.render(calls, OPEN, CLOSE, "", false)
end

return D
