-- sluice.tools.llama3_json — Llama 3.x JSON calls:
--   <|python_tag|>{"name": "get_weather", "parameters": {"city": "SF"}}; {"name": …}
-- or the same objects without the tag at the start of an answer. Several
-- calls are separated by "; ". The region has no closing marker: it ends
-- where the last object ends, so a call at the very end of a stream is
-- decided when the stream ends (another "; {" could still follow).

local C = require("sluice.tools.common")
local json = require("sluice.json")

local D = { name = "llama3_json", markers = { "<|python_tag|>", '{"name"' } }

local TAG = "<|python_tag|>"

function D.parse(s, final)
    -- A bare {"name" is a call only if a string name follows (fail early:
    -- code holding {"name" is text at once rather than held).
    if s:sub(1, 1) == "{" then
        local lead = C.leads(s, 8, { ":", '"' }, final)
        if lead ~= "ok" then return lead end
    end
    local i = s:sub(1, #TAG) == TAG and #TAG + 1 or 1
    local calls, used = {}, nil
    while true do
        local j = s:match("^%s*(){", i)
        if not j then
            if s:match("^%s*$", i) and not final then return "more" end
            break
        end
        local e = C.json_extent(s, j)
        if not e then return final and "fail" or "more" end
        local c = C.json_call(json.decode(s:sub(j, e)))
        if not c then return "fail" end
        calls[#calls + 1] = c
        used = e
        -- "; " then the next object, or the end of the region.
        local k = s:match("^%s*;%s*()", e + 1)
        if not k then
            if not final and s:match("^%s*$", e + 1) then return "more" end
            break
        end
        if k > #s then
            if not final then return "more" end
            used = #s
            break
        end
        i = k
    end
    if #calls == 0 then return "fail" end
    return "ok", calls, used
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    local out = {}
    for i, c in ipairs(calls) do out[i] = C.call_json(c, "parameters") end
    return "<|python_tag|>" .. table.concat(out, "; ")
end

return D
