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

local D = { name = "qwen3_coder", markers = { "<tool_call>", "<function=" } }

local OPEN, CLOSE = "<tool_call>", "</tool_call>"

-- The parameters of one function body -> args table | nil. Like the
-- model's own server-side parser, a parameter whose </parameter> went
-- missing ends where the next one begins.
local function params(inner, schema)
    local args, rest = {}, inner
    while true do
        rest = rest:gsub("^%s+", "")
        if rest == "" then return args end
        local p, from = rest:match("^<parameter=([^>\n]+)>()")
        if not p then return nil end
        local close = string.find(rest, "</parameter>", from, true)
        local nxt = string.find(rest, "<parameter=", from, true)
        local v, after
        if close and (not nxt or close < nxt) then
            v, after = rest:sub(from, close - 1), close + #"</parameter>"
        elseif nxt then
            v, after = rest:sub(from, nxt - 1), nxt
        else
            v, after = rest:sub(from), #rest + 1
        end
        v = v:gsub("^\n", ""):gsub("\n$", "")
        p = C.trim(p)
        args[p] = C.typed(v, schema, p)
        rest = rest:sub(after)
    end
end

local function call(body, tools)
    local name, inner = body:match("^%s*<function=([^>\n]+)>(.-)</function>%s*$")
    if not name then return nil end
    name = C.trim(name)
    local args = params(inner, tools[name])
    return args and { name = name, arguments = args }
end

function D.parse(s, final, tools)
    -- Fail early (the region is held from the client until decided): a
    -- function name is one word ending at ">" on its line, and <tool_call>
    -- is followed by <function=.
    local fn = string.find(s, "<function=", 1, true)
    if fn then
        local head = s:match("^[^>]*", fn + 10)
        if head:find("\n") or head:find("%S%s+%S") then return "fail" end
    end
    if s:sub(1, #OPEN) == OPEN then
        local i = s:match("^%s*()", #OPEN + 1)
        if i > #s then
            if not final then return "more" end
        else
            local lead = C.starts(s, i, "<function=", final)
            if lead ~= "ok" then return lead end
        end
    end
    if s:sub(1, #OPEN) ~= OPEN then
        -- <function=…>…</function> without its <tool_call> wrapper (a
        -- stray </tool_call> after it goes with it).
        local a, b = string.find(s, "</function>", 11, true)
        if not a then return final and "fail" or "more" end
        local c = call(s:sub(1, b), tools)
        if not c then return "fail" end
        local ws_end = s:match("^%s*()", b + 1)
        local tail = s:sub(ws_end)
        if tail:sub(1, #CLOSE) == CLOSE then return "ok", { c }, ws_end - 1 + #CLOSE end
        if not final and #tail < #CLOSE and CLOSE:sub(1, #tail) == tail then return "more" end
        return "ok", { c }, b
    end
    local a, b = string.find(s, CLOSE, #OPEN + 1, true)
    if not a then return final and "fail" or "more" end
    local c = call(s:sub(#OPEN + 1, a - 1), tools)
    if not c then return "fail" end
    return "ok", { c }, b
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
