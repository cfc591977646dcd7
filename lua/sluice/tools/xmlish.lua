-- sluice.tools.xmlish — the reading the XML-flavoured dialects share:
-- a run of `<open NAME>VALUE</close>` parameter tags with only whitespace
-- between them, each value typed by the tool's JSON schema
-- (sluice.tools.common.typed). DeepSeek V3.2's DSML and MiniMax-M2 write
-- parameters this way; Qwen3-Coder and GLM have their own shapes.

local C = require("sluice.tools.common")

local X = {}

-- params(body, schema, pattern) -> args table | nil. `pattern` matches one
-- parameter at the start of the text and captures name, attributes
-- (string="true"/"false" or ""), value and the position after it.
function X.params(body, schema, pattern)
    local args, rest = {}, body
    while true do
        rest = rest:gsub("^%s+", "")
        if rest == "" then return args end
        local name, attrs, value, after = rest:match(pattern)
        if not name then return nil end
        local is_string = attrs and attrs:match('string%s*=%s*"(%a+)"')
        if is_string == "true" then
            args[name] = value
        elseif is_string == "false" then
            args[name] = C.typed(value, { properties = { [name] = { type = "object" } } }, name)
        else
            args[name] = C.typed(value, schema, name)
        end
        rest = rest:sub(after)
    end
end

return X
