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
    local a, b = string.find(s, CLOSE, #OPEN + 1, true)
    if not a then return final and "fail" or "more" end
    local rest, calls = s:sub(#OPEN + 1, a - 1), {}
    while not rest:match("^%s*$") do
        local name, body, after = rest:match(INVOKE)
        if not name then return "fail" end
        local args
        if body:match("^%s*{") then args = C.object(body) else args = X.params(body, tools[name], PARAM) end
        if not args then return "fail" end
        calls[#calls + 1] = { name = name, arguments = args }
        rest = rest:sub(after)
    end
    if #calls == 0 then return "fail" end
    return "ok", calls, b
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    local t = { OPEN }
    for _, c in ipairs(calls) do
        t[#t + 1] = '\n<｜DSML｜invoke name="' .. c.name .. '">'
        for k, v in pairs(c.arguments) do
            t[#t + 1] = '\n<｜DSML｜parameter name="' .. k .. '" string="' .. tostring(type(v) == "string")
                .. '">' .. C.value_text(v) .. "</｜DSML｜parameter>"
        end
        t[#t + 1] = "\n</｜DSML｜invoke>"
    end
    t[#t + 1] = "\n" .. CLOSE
    return table.concat(t)
end

return D
