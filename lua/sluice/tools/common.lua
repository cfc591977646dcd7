-- sluice.tools.common — what the text tool-call dialects share.
--
-- A dialect (lua/sluice/tools/<name>.lua) knows how one model family writes
-- a tool call into its text. It declares
--   D.name     its config name
--   D.markers  the strings that open a call region ("<tool_call>")
--   D.parse(s, final, tools) where s begins with one of its markers:
--       "more"               undecided: the region is not complete yet
--       "fail"               not a call of this dialect (the marker stays text)
--       "ok", calls, used    calls = { { name = s, arguments = table, id = s|nil }... },
--                            used = how many bytes of s the region took
--   `final` is true when no more text will come (the region ends with s).
--   `tools` maps each declared tool name to its JSON schema (or true).
-- Dialects must never answer "fail" or "ok" on a prefix of a region they
-- would read differently whole: the stream split at any byte must parse
-- as the whole answer does. Validation (declared tool, object arguments)
-- happens once in sluice.tooltext. A dialect should answer "fail" as soon as
-- the bytes after its marker cannot be its format (C.leads, C.starts):
-- until it decides, the stream holds the region back from the client.

local json = require("sluice.json")

local type, next, ipairs, find, sub, gsub, byte, match = type, next, ipairs, string.find, string.sub, string.gsub,
    string.byte, string.match

local C = {}

function C.trim(s)
    return (gsub(gsub(s, "^%s+", ""), "%s+$", ""))
end

-- The arguments of a call as a table: a JSON object text, or already one.
-- Nil when they are not a JSON object.
function C.object(v)
    if type(v) == "string" then v = json.decode(C.trim(v)) end
    if type(v) ~= "table" or (json.is_array(v) and next(v) ~= nil) then return nil end
    return v
end

-- The property schema of `param` in a tool's schema, or nil.
local function property(schema, param)
    if type(schema) ~= "table" then return nil end
    local props = schema.properties
    return type(props) == "table" and type(props[param]) == "table" and props[param] or nil
end

-- An XML-style parameter value typed by the tool's JSON schema: a string
-- property (or one the schema does not describe) keeps the raw text; any
-- other type is JSON-decoded, falling back to the string when it is not JSON.
function C.typed(value, schema, param)
    local p = property(schema, param)
    local t = p and p.type
    if t == nil or t == "string" or (type(t) == "table" and t[1] == "string") then return value end
    local v = json.decode(C.trim(value))
    if v == nil then return value end
    return v
end

-- The end of a region: the position just past `close` searched from `init`,
-- or nil (with "more", or "fail" when final).
function C.find_close(s, close, init, final)
    local a, b = find(s, close, init, true)
    if a then return a, b end
    return nil, final and "fail" or "more"
end

-- Failing early: whether the bytes from s[i] on go on as `want` says, a
-- list of byte classes (Lua pattern items such as "{" or "%["), each after
-- optional whitespace. "ok" when they do; "fail" as soon as a byte cannot
-- fit, so prose that merely mentions a marker is text at once instead of
-- held until a close tag that may never come; "more" when s ends first
-- ("fail" when final).
function C.leads(s, i, want, final)
    for _, class in ipairs(want) do
        i = match(s, "^%s*()", i)
        if i > #s then return final and "fail" or "more" end
        if not find(sub(s, i, i), "^" .. class) then return "fail" end
        i = i + 1
    end
    return "ok"
end

-- Failing early on a literal: "ok" when s holds `lit` at i, "more" when s
-- ends inside a prefix of it ("fail" when final), else "fail".
function C.starts(s, i, lit, final)
    local have = sub(s, i, i + #lit - 1)
    if have == lit then return "ok" end
    if have == sub(lit, 1, #have) then return final and "fail" or "more" end
    return "fail"
end

-- Where the JSON value that starts at s[i] ('{' or '[') ends: its last
-- byte's position, or nil when s ends first (strings and escapes are
-- skipped, so braces inside strings do not count).
function C.json_extent(s, i)
    local depth, n, in_str = 0, #s, false
    while i <= n do
        local c = byte(s, i)
        if in_str then
            if c == 92 then i = i + 1 -- backslash: skip the escaped byte
            elseif c == 34 then in_str = false end
        elseif c == 34 then in_str = true
        elseif c == 123 or c == 91 then depth = depth + 1
        elseif c == 125 or c == 93 then
            depth = depth - 1
            if depth == 0 then return i end
        end
        i = i + 1
    end
    return nil
end

-- One call from a JSON object the way most formats spell it: name plus
-- arguments (or parameters), the arguments an object or a JSON string of
-- one; OpenAI's { function = { name, arguments } } shape too. Nil if not.
function C.json_call(v)
    if type(v) ~= "table" then return nil end
    if type(v["function"]) == "table" then v = v["function"] end
    if type(v.name) ~= "string" then return nil end
    local args = v.arguments
    if args == nil then args = v.parameters end
    if args == nil or args == json.null then args = {} end
    args = C.object(args)
    if not args then return nil end
    return { name = v.name, arguments = args }
end

-- A call as JSON text with its name first, as models write it:
-- {"name": "f", "<key>": {...}} (key: "arguments" or "parameters").
function C.call_json(c, key)
    return '{"name": ' .. json.encode(c.name) .. ', "' .. key .. '": ' .. json.encode(c.arguments) .. "}"
end

-- A parameter value as XML-style formats write it: strings raw, other
-- values as JSON (the reading side types them back by the schema).
function C.value_text(v)
    return type(v) == "string" and v or json.encode(v)
end

C.sub = sub
return C
