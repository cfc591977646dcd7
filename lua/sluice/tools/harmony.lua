-- sluice.tools.harmony — gpt-oss (the Harmony format) calls, as a server
-- that keeps special tokens writes them:
--   <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"SF"}<|call|>
-- The recipient may also stand before the channel
-- (<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>…).
-- Only messages addressed to=functions.NAME are calls; any other channel
-- (analysis, final) stays text.

local C = require("sluice.tools.common")

local D = { name = "harmony", markers = { "<|channel|>", "<|start|>assistant to=" } }

local ENDS = { "<|call|>", "<|end|>" }

function D.parse(s, final)
    local m = string.find(s, "<|message|>", 1, true)
    if not m then return final and "fail" or "more" end
    local header = s:sub(1, m - 1)
    local name = header:match("to=functions%.([%w_%-%.]+)")
    if not name then return "fail" end
    local body_from, stop, stop_end = m + #"<|message|>", nil, nil
    for _, e in ipairs(ENDS) do
        local a, b = string.find(s, e, body_from, true)
        if a and (not stop or a < stop) then stop, stop_end = a, b end
    end
    if not stop then
        if not final then return "more" end
        stop, stop_end = #s + 1, #s
    end
    local args = C.object(s:sub(body_from, stop - 1))
    if not args then return "fail" end
    return "ok", { { name = name, arguments = args } }, stop_end
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    local json = require("sluice.json")
    local t = {}
    for i, c in ipairs(calls) do
        t[i] = "<|channel|>commentary to=functions." .. c.name .. " <|constrain|>json<|message|>"
            .. json.encode(c.arguments) .. "<|call|>"
    end
    return table.concat(t, "\n")
end

return D
