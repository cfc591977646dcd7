-- sluice.tools.xmlish — what the section-shaped dialects share: a section
-- between an open and a close marker holding a run of calls (X.section:
-- Kimi K2, DeepSeek V3/V3.1 and V3.2's DSML, MiniMax-M2); a run of
-- `<open NAME>VALUE</close>` parameter tags with only whitespace between
-- them, each value typed by the tool's JSON schema
-- (sluice.tools.common.typed; X.params: DSML and MiniMax-M2); and the
-- <invoke name=…><parameter name=…> rendering DSML and MiniMax-M2 share
-- (X.render). Qwen3-Coder and GLM have their own shapes.

local C = require("sluice.tools.common")

local sub, match = string.sub, string.match

local X = {}

-- section(s, open_len, close, final, one) -> "ok", calls, used | "more" | "fail".
-- s opens with a marker open_len bytes long; the section ends at the first
-- `close`. Between them, only calls and whitespace: one(rest) reads the
-- call at the start of rest -> call, position after it | nil (then the
-- section is not one). An empty section is not one either.
function X.section(s, open_len, close, final, one)
    local a, b = C.find_close(s, close, open_len + 1, final)
    if not a then return b end
    local rest, calls = sub(s, open_len + 1, a - 1), {}
    while not match(rest, "^%s*$") do
        local c, after = one(rest)
        if not c then return "fail" end
        calls[#calls + 1] = c
        rest = sub(rest, after)
    end
    if #calls == 0 then return "fail" end
    return "ok", calls, b
end

-- render(calls, open, close, ns, string_attr) -> text: each call as
-- <NSinvoke name="f"> with a <NSparameter name="k">v</NSparameter> per
-- argument (strings raw, other values JSON; string="true|false" added when
-- string_attr), the whole between open and close, a tag per line.
function X.render(calls, open, close, ns, string_attr)
    local t = { open }
    for _, c in ipairs(calls) do
        t[#t + 1] = "\n<" .. ns .. 'invoke name="' .. c.name .. '">'
        for k, v in pairs(c.arguments) do
            local attr = string_attr and (' string="' .. tostring(type(v) == "string") .. '"') or ""
            t[#t + 1] = "\n<" .. ns .. 'parameter name="' .. k .. '"' .. attr .. ">" .. C.value_text(v)
                .. "</" .. ns .. "parameter>"
        end
        t[#t + 1] = "\n</" .. ns .. "invoke>"
    end
    t[#t + 1] = "\n" .. close
    return table.concat(t)
end

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
