-- sluice.tools.qwen3_coder — Qwen3-Coder's XML calls:
--   <tool_call>
--   <function=get_weather>
--   <parameter=city>
--   SF
--   </parameter>
--   </function>
--   </tool_call>
-- Parameter values are text, typed by the tool's JSON schema (one newline
-- after the opening and before the closing tag belongs to the format, not
-- the value). Several regions in a row are several calls.

local C = require("sluice.tools.common")

local D = { name = "qwen3_coder", markers = { "<tool_call>" } }

local OPEN, CLOSE = "<tool_call>", "</tool_call>"

function D.parse(s, final, tools)
    local a, b = string.find(s, CLOSE, #OPEN + 1, true)
    if not a then return final and "fail" or "more" end
    local body = s:sub(#OPEN + 1, a - 1)
    local name, inner = body:match("^%s*<function=([^>\n]+)>(.-)</function>%s*$")
    if not name then return "fail" end
    name = C.trim(name)
    local schema = tools[name]
    local args, rest = {}, inner
    -- Parameters one after another, nothing but whitespace between them.
    while true do
        rest = rest:gsub("^%s+", "")
        if rest == "" then break end
        local p, v, after = rest:match("^<parameter=([^>\n]+)>(.-)</parameter>()")
        if not p then return "fail" end
        v = v:gsub("^\n", ""):gsub("\n$", "")
        p = C.trim(p)
        args[p] = C.typed(v, schema, p)
        rest = rest:sub(after)
    end
    return "ok", { { name = name, arguments = args } }, b
end

-- The calls as the model writes them (tool use emulation): strings raw,
-- other values as JSON.
function D.render(calls)
    local json = require("sluice.json")
    local out = {}
    for i, c in ipairs(calls) do
        local t = { "<tool_call>\n<function=" .. c.name .. ">\n" }
        for k, v in pairs(c.arguments) do
            t[#t + 1] = "<parameter=" .. k .. ">\n" .. (type(v) == "string" and v or json.encode(v))
                .. "\n</parameter>\n"
        end
        t[#t + 1] = "</function>\n</tool_call>"
        out[i] = table.concat(t)
    end
    return table.concat(out, "\n")
end

return D
