-- sluice.tools.kimi_k2 — Kimi K2's tool-call section:
--   <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0
--   <|tool_call_argument_begin|>{"location":"Seoul"}<|tool_call_end|>
--   <|tool_calls_section_end|>
-- (without the line breaks), one <|tool_call_begin|>…<|tool_call_end|> per
-- call. The call id `functions.NAME:IDX` is the model's own: it is kept as
-- the call's id (an Anthropic client gets it mapped reversibly by its
-- codec), since Kimi answers worse when its ids come back rewritten; an id
-- the answer already used gets a fresh one (sluice.tooltext). Some servers write the
-- section markers in the singular (<|tool_call_section_begin|>).

local C = require("sluice.tools.common")
local X = require("sluice.tools.xmlish")

local D = { name = "kimi_k2", markers = { "<|tool_calls_section_begin|>", "<|tool_call_section_begin|>" } }

local CALL = "^%s*<|tool_call_begin|>%s*([^<]-)%s*<|tool_call_argument_begin|>(.-)<|tool_call_end|>()"

function D.parse(s, final)
    local open = s:match("^<|tool_calls?_section_begin|>")
    local close = open:find("calls", 1, true) and "<|tool_calls_section_end|>" or "<|tool_call_section_end|>"
    return X.section(s, #open, close, final, function(rest)
        local id, args, after = rest:match(CALL)
        if not id then return nil end
        local name = id:match("^functions%.(.+):%d+$") or id:match("^(.+):%d+$") or id
        args = C.object(args)
        return args and { name = name, arguments = args, id = id }, after
    end)
end

-- The calls as the model writes them (tool use emulation), with Kimi's
-- own ids where the conversation kept them.
function D.render(calls)
    local json = require("sluice.json")
    local t = { "<|tool_calls_section_begin|>" }
    for i, c in ipairs(calls) do
        local id = type(c.id) == "string" and c.id:match("^functions%..+:%d+$") and c.id
            or ("functions." .. c.name .. ":" .. (i - 1))
        t[#t + 1] = "<|tool_call_begin|>" .. id .. "<|tool_call_argument_begin|>" .. json.encode(c.arguments)
            .. "<|tool_call_end|>"
    end
    t[#t + 1] = "<|tool_calls_section_end|>"
    return table.concat(t)
end

return D
