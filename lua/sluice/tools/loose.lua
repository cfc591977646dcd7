-- sluice.tools.loose — what models write when they are merely told about
-- tools, without a trained format:
--   ```json {"name": "get_weather", "arguments": {"city": "SF"}} ```   (a fenced block)
--   {"name": "get_weather", "arguments": {…}}                          (a bare object; "parameters" too)
--   {"tool_calls": [{"name": …, "arguments": …}, …]}                   (several; OpenAI's
--                                                   {"function": {…}} shape too)
--   <function=get_weather>{"city": "SF"}</function>
-- and a call whose opening <tool_call> went missing: the bare object
-- followed by </tool_call>, which is dropped with it.

local C = require("sluice.tools.common")
local json = require("sluice.json")

local D = { name = "loose", markers = { "```json", '{"name"', '{"tool_calls"', "<function=" } }

-- The calls a decoded JSON value stands for, or nil.
local function calls_of(v)
    if type(v) ~= "table" then return nil end
    if type(v.tool_calls) == "table" then
        local out = {}
        for i = 1, #v.tool_calls do
            out[i] = C.json_call(v.tool_calls[i])
            if not out[i] then return nil end
        end
        return #out > 0 and out or nil
    end
    local c = C.json_call(v)
    return c and { c } or nil
end

local function fenced(s, final)
    local a, b = string.find(s, "```", 8, true)
    if not a then return final and "fail" or "more" end
    local calls = calls_of(json.decode(C.trim(s:sub(8, a - 1))))
    if not calls then return "fail" end
    return "ok", calls, b
end

local function bare(s, final)
    local e = C.json_extent(s, 1)
    if not e then return final and "fail" or "more" end
    local calls = calls_of(json.decode(s:sub(1, e)))
    if not calls then return "fail" end
    -- A closing tag whose opening one the model forgot goes with the call.
    local rest = s:sub(e + 1)
    local ws_end = rest:match("^%s*()")
    local tail = rest:sub(ws_end)
    local CLOSE = "</tool_call>"
    if tail:sub(1, #CLOSE) == CLOSE then return "ok", calls, e + ws_end - 1 + #CLOSE end
    if not final and #tail < #CLOSE and CLOSE:sub(1, #tail) == tail then return "more" end
    return "ok", calls, e
end

local function function_tag(s, final)
    local a, b = string.find(s, "</function>", 11, true)
    if not a then return final and "fail" or "more" end
    local name, body = s:sub(1, a - 1):match("^<function=([%w_%-%.]+)>(.*)$")
    if not name then return "fail" end
    local args = C.object(body)
    if not args then return "fail" end
    return "ok", { { name = name, arguments = args } }, b
end

-- What must follow each marker (failing early, so code or prose holding
-- one is text at once instead of held until the stream ends).
local LEADS = { ["```json"] = { "{" }, ['{"name"'] = { ":", '"' }, ['{"tool_calls"'] = { ":", "%[" } }

function D.parse(s, final)
    local c = s:sub(1, 1)
    if c == "<" then
        -- <function=NAME> with a name of word characters only.
        local after = s:match("^<function=[%w_%-%.]*()")
        if after <= #s and s:sub(after, after) ~= ">" then return "fail" end
        return function_tag(s, final)
    end
    for marker, want in pairs(LEADS) do
        if s:sub(1, #marker) == marker then
            local lead = C.leads(s, #marker + 1, want, final)
            if lead ~= "ok" then return lead end
            break
        end
    end
    if c == "`" then return fenced(s, final) end
    return bare(s, final)
end

-- The calls as the model is asked to write them (tool use emulation): a
-- fenced JSON block per call.
function D.render(calls)
    local out = {}
    for i, c in ipairs(calls) do
        out[i] = "```json\n" .. C.call_json(c, "arguments") .. "\n```"
    end
    return table.concat(out, "\n")
end

return D
