-- sluice.tools.deepseek_section — the tool-call section DeepSeek V3 and
-- V3.1 share: <｜tool▁calls▁begin｜> (<｜tool▁call▁begin｜> CALL
-- <｜tool▁call▁end｜>)+ <｜tool▁calls▁end｜>. The dialects differ only in
-- how CALL names the tool and carries its arguments.

local C = require("sluice.tools.common")
local X = require("sluice.tools.xmlish")

local S = {}

S.OPEN = "<｜tool▁calls▁begin｜>"
local CLOSE = "<｜tool▁calls▁end｜>"
local CALL_OPEN, CALL_CLOSE = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"

-- call(body) -> name, arguments text | nil
function S.parse(s, final, call)
    return X.section(s, #S.OPEN, CLOSE, final, function(rest)
        local p = rest:match("^%s*()")
        if rest:sub(p, p + #CALL_OPEN - 1) ~= CALL_OPEN then return nil end
        local e = string.find(rest, CALL_CLOSE, p + #CALL_OPEN, true)
        if not e then return nil end
        local name, args = call(rest:sub(p + #CALL_OPEN, e - 1))
        args = args and C.object(args)
        return args and { name = C.trim(name), arguments = args }, e + #CALL_CLOSE
    end)
end

-- The section around calls each written by one(call, arguments JSON).
function S.render(calls, one)
    local json = require("sluice.json")
    local t = { S.OPEN }
    for _, c in ipairs(calls) do t[#t + 1] = CALL_OPEN .. one(c, json.encode(c.arguments)) .. CALL_CLOSE end
    t[#t + 1] = CLOSE
    return table.concat(t)
end

return S
