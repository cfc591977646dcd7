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
    local a, b = string.find(s, CLOSE, #OPEN + 1, true)
    if not a then return final and "fail" or "more" end
    local rest, calls = s:sub(#OPEN + 1, a - 1), {}
    while not rest:match("^%s*$") do
        local name, body, after = rest:match(INVOKE)
        if not name then return "fail" end
        local args = X.params(body, tools[name], PARAM)
        if not args then return "fail" end
        calls[#calls + 1] = { name = name, arguments = args }
        rest = rest:sub(after)
    end
    if #calls == 0 then return "fail" end
    return "ok", calls, b
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    local C = require("sluice.tools.common")
    local t = { OPEN }
    for _, c in ipairs(calls) do
        t[#t + 1] = '\n<invoke name="' .. c.name .. '">'
        for k, v in pairs(c.arguments) do
            t[#t + 1] = '\n<parameter name="' .. k .. '">' .. C.value_text(v) .. "</parameter>"
        end
        t[#t + 1] = "\n</invoke>"
    end
    t[#t + 1] = "\n" .. CLOSE
    return table.concat(t)
end

return D
