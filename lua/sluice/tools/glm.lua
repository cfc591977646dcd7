-- sluice.tools.glm — the calls GLM-4.5/4.6 and GLM-4.7 write, which differ
-- only in line breaks:
--   <tool_call>get_weather
--   <arg_key>city</arg_key>
--   <arg_value>SF</arg_value>
--   </tool_call>                                   (glm45)
--   <tool_call>get_weather<arg_key>city</arg_key><arg_value>SF</arg_value></tool_call>   (glm47)
-- One region per call; values typed by the tool's JSON schema. Both
-- dialects read both spellings (whitespace between tags is not meaning).

local C = require("sluice.tools.common")

local G = {}

local OPEN, CLOSE = "<tool_call>", "</tool_call>"
local PAIR = "^%s*<arg_key>(.-)</arg_key>%s*<arg_value>(.-)</arg_value>()"

function G.parse(s, final, tools)
    -- Fail early: the name (up to the first tag) is one word without
    -- braces or quotes, so prose or JSON after <tool_call> is text at once.
    local head = s:match("^[^<]*", #OPEN + 1)
    if head:find("%S%s+%S") or head:find('[{}"]') then return "fail" end
    local a, b = string.find(s, CLOSE, #OPEN + 1, true)
    if not a then return final and "fail" or "more" end
    local body = s:sub(#OPEN + 1, a - 1)
    local name, rest = body:match("^%s*([^<\n]-)%s*(<.*)$")
    if not name then name, rest = C.trim(body), "" end
    if name == "" or name:find("[{}\"]") then return "fail" end
    local schema, args = tools[name], {}
    while not rest:match("^%s*$") do
        local k, v, after = rest:match(PAIR)
        if not k then return "fail" end
        k = C.trim(k)
        args[k] = C.typed(v, schema, k)
        rest = rest:sub(after)
    end
    return "ok", { { name = name, arguments = args } }, b
end

-- The calls as the model writes them (tool use emulation); sep is "\n"
-- for GLM-4.5, "" for GLM-4.7.
function G.render(calls, sep)
    local out = {}
    for i, c in ipairs(calls) do
        local t = { OPEN .. c.name }
        for k, v in pairs(c.arguments) do
            t[#t + 1] = "<arg_key>" .. k .. "</arg_key>" .. sep .. "<arg_value>" .. C.value_text(v) .. "</arg_value>"
        end
        t[#t + 1] = CLOSE
        out[i] = table.concat(t, sep)
    end
    return table.concat(out, "\n")
end

function G.dialect(name, sep)
    return { name = name, markers = { OPEN }, parse = G.parse,
             render = function(calls) return G.render(calls, sep) end }
end

return G
