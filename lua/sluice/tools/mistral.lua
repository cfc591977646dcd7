-- sluice.tools.mistral — Mistral's calls, in the spellings its tokenizer
-- versions use:
--   [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "SF"}}, …]   (a JSON list)
--   [TOOL_CALLS]get_weather{"city": "SF"}                                   (name, then arguments)
--   [TOOL_CALLS]get_weather[ARGS]{"city": "SF"}   ([CALL_ID]id may come before [ARGS])
-- the latter once per call, and the list form with [TOOL_CALLS] stripped
-- (a server decoding with skip_special_tokens): [{"name": …}]. There is no
-- closing marker: a call ends where its JSON ends.

local C = require("sluice.tools.common")
local json = require("sluice.json")

local D = { name = "mistral", markers = { "[TOOL_CALLS]", '[{"name"' } }

local TAG = "[TOOL_CALLS]"

-- A JSON list of calls starting at s[i] -> "ok", calls, used | "more" | "fail".
local function list(s, i, final)
    local e = C.json_extent(s, i)
    if not e then return final and "fail" or "more" end
    local v = json.decode(s:sub(i, e))
    if type(v) ~= "table" or not json.is_array(v) or #v == 0 then return "fail" end
    local calls = {}
    for k = 1, #v do
        calls[k] = C.json_call(v[k])
        if not calls[k] then return "fail" end
    end
    return "ok", calls, e
end

function D.parse(s, final)
    if s:sub(1, 1) == "[" and s:sub(1, #TAG) ~= TAG then
        -- [{"name" is a list of calls only if a string name follows (fail early).
        local lead = C.leads(s, 9, { ":", '"' }, final)
        if lead ~= "ok" then return lead end
        return list(s, 1, final)
    end
    local i = s:match("^%s*()", #TAG + 1)
    if i > #s then return final and "fail" or "more" end
    if s:sub(i, i) == "[" then return list(s, i, final) end
    local name, after = s:match("^([%a_][%w_%-%.]*)()", i)
    if not name then return "fail" end
    if after > #s then return final and "fail" or "more" end
    local rest = s:sub(after)
    local id
    -- [CALL_ID]id and [ARGS] markers, each whole before it is read.
    local cid, a2 = rest:match("^%[CALL_ID%]([%w_%-]+)()")
    if cid then
        if a2 > #rest then return final and "fail" or "more" end
        id, after, rest = cid, after + a2 - 1, rest:sub(a2)
    end
    if rest:sub(1, 6) == "[ARGS]" then
        after, rest = after + 6, rest:sub(7)
    elseif rest:match("^%s*$") or ("[ARGS]"):sub(1, #rest) == rest or ("[CALL_ID]"):sub(1, #rest) == rest then
        return final and "fail" or "more"
    end
    local j = rest:match("^%s*(){")
    if not j then return rest:match("^%s*$") and (final and "fail" or "more") or "fail" end
    local e = C.json_extent(rest, j)
    if not e then return final and "fail" or "more" end
    local args = C.object(rest:sub(j, e))
    if not args then return "fail" end
    return "ok", { { name = name, arguments = args, id = id } }, after + e - 1
end

-- The calls as the model writes them (tool use emulation): the list form.
function D.render(calls)
    local list = {}
    for i, c in ipairs(calls) do list[i] = C.call_json(c, "arguments") end
    return TAG .. "[" .. table.concat(list, ", ") .. "]"
end

return D
