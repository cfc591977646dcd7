-- sluice.tools.hermes — Hermes-style calls (Hermes, Qwen2.5/Qwen3 and many
-- fine-tunes): one JSON object per <tool_call>…</tool_call> region,
--   <tool_call>{"name": "get_weather", "arguments": {"city": "SF"}}</tool_call>
-- several regions in a row for several calls. "arguments" may also be
-- spelt "parameters", or be a JSON string holding the object. A region the
-- model never closed is read when the answer ends right after its JSON.

local C = require("sluice.tools.common")
local json = require("sluice.json")

local D = { name = "hermes", markers = { "<tool_call>" } }

local OPEN, CLOSE = "<tool_call>", "</tool_call>"

function D.parse(s, final)
    -- The body is a JSON object: anything else after the tag (prose that
    -- mentions <tool_call>) is text at once.
    local lead = C.leads(s, #OPEN + 1, { "{" }, final)
    if lead ~= "ok" then return lead end
    local a, b = string.find(s, CLOSE, #OPEN + 1, true)
    local body
    if a then
        body = s:sub(#OPEN + 1, a - 1)
    elseif final then
        body, b = s:sub(#OPEN + 1), #s
    else
        return "more"
    end
    local c = C.json_call(json.decode(C.trim(body)))
    if not c then return "fail" end
    return "ok", { c }, b
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    local out = {}
    for i, c in ipairs(calls) do
        out[i] = "<tool_call>\n" .. C.call_json(c, "arguments") .. "\n</tool_call>"
    end
    return table.concat(out, "\n")
end

return D
