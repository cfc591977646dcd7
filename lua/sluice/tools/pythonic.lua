-- sluice.tools.pythonic — calls written as a Python list of calls (Llama
-- 3.2/4 and others prompted with the "pythonic" format):
--   [get_weather(city='SF', days=3), get_time(tz="UTC")]
-- Keyword arguments only; values are Python literals (strings in either
-- quote with escapes, numbers, True/False/None, lists, dicts; nested at
-- most MAX_DEPTH deep, deeper is text). Any "[" can
-- open a region, so this dialect decides as early as it can: a "[" not
-- followed by `name(` is text at once.

local json = require("sluice.json")

local D = { name = "pythonic", markers = { "[" } }

local MORE, FAIL = {}, {}
-- How deep lists and dicts may nest in an argument: value() recurses once
-- per level, and supplier text like "[f(a=" then thousands of "[" would
-- otherwise overflow the Lua stack (an error that is not FAIL and would end
-- the request). Tool arguments never nest this deep; deeper is text.
local MAX_DEPTH = 64
local sub = string.sub

local ESC = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"', ["0"] = "\0" }

local function reader(s)
    local r = { s = s, i = 1 }
    function r.ws()
        r.i = s:match("^%s*()", r.i)
        if r.i > #s then error(MORE) end
    end
    function r.peek()
        if r.i > #s then error(MORE) end
        return sub(s, r.i, r.i)
    end
    function r.expect(c)
        r.ws()
        if r.peek() ~= c then error(FAIL) end
        r.i = r.i + 1
    end
    function r.ident()
        r.ws()
        local name, after = s:match("^([%a_][%w_%.]*)()", r.i)
        if not name then error(FAIL) end
        if after > #s then error(MORE) end
        r.i = after
        return name
    end
    return r
end

local value

local function str(r, q)
    local out, s = {}, r.s
    r.i = r.i + 1
    while true do
        if r.i > #s then error(MORE) end
        local c = sub(s, r.i, r.i)
        if c == q then r.i = r.i + 1 return table.concat(out) end
        if c == "\\" then
            if r.i + 1 > #s then error(MORE) end
            local e = sub(s, r.i + 1, r.i + 1)
            out[#out + 1] = ESC[e] or ("\\" .. e)
            r.i = r.i + 2
        else
            out[#out + 1] = c
            r.i = r.i + 1
        end
    end
end

local function seq(r, close, item)
    r.i = r.i + 1
    r.ws()
    if r.peek() == close then r.i = r.i + 1 return end
    while true do
        item()
        r.ws()
        local c = r.peek()
        r.i = r.i + 1
        if c == close then return end
        if c ~= "," then error(FAIL) end
        r.ws()
        if r.peek() == close then r.i = r.i + 1 return end
    end
end

function value(r, depth)
    depth = depth or 1
    r.ws()
    local c, s = r.peek(), r.s
    if c == "'" or c == '"' then return str(r, c) end
    if (c == "[" or c == "{") and depth > MAX_DEPTH then error(FAIL) end
    if c == "[" then
        local t = json.array({})
        seq(r, "]", function() t[#t + 1] = value(r, depth + 1) end)
        return t
    end
    if c == "{" then
        local t = {}
        seq(r, "}", function()
            local k = value(r, depth + 1)
            r.expect(":")
            t[tostring(k)] = value(r, depth + 1)
        end)
        return t
    end
    local word, after = s:match("^([%w_%.%-+]+)()", r.i)
    if not word then error(FAIL) end
    if after > #s then error(MORE) end
    r.i = after
    if word == "True" then return true elseif word == "False" then return false
    elseif word == "None" then return json.null end
    local n = tonumber(word)
    if n == nil then error(FAIL) end
    return n
end

-- Keyword arguments up to the closing parenthesis (the "(" is read).
local function kwargs(r)
    local args = {}
    r.ws()
    if r.peek() == ")" then r.i = r.i + 1 return args end
    while true do
        local k = r.ident()
        r.expect("=")
        args[k] = value(r)
        r.ws()
        local c = r.peek()
        r.i = r.i + 1
        if c == ")" then return args end
        if c ~= "," then error(FAIL) end
    end
end

function D.parse(s, final)
    local r = reader(s)
    local ok, res = pcall(function()
        local out = {}
        r.i = 2
        while true do
            local name = r.ident()
            r.expect("(")
            out[#out + 1] = { name = name, arguments = kwargs(r) }
            r.ws()
            local c = r.peek()
            r.i = r.i + 1
            if c == "]" then return out end
            if c ~= "," then error(FAIL) end
        end
    end)
    if ok then return "ok", res, r.i - 1 end
    if res == MORE and not final then return "more" end
    if res == MORE or res == FAIL then return "fail" end
    error(res, 0)
end


-- A value as a Python literal (tool use emulation).
local function literal(v)
    local t = type(v)
    if t == "string" then
        return "'" .. v:gsub("[\\'\n\r\t]", { ["\\"] = "\\\\", ["'"] = "\\'", ["\n"] = "\\n",
                                                  ["\r"] = "\\r", ["\t"] = "\\t" }) .. "'"
    elseif t == "boolean" then return v and "True" or "False"
    elseif t == "number" then return json.encode(v)
    elseif t == "table" then
        local out = {}
        if json.is_array(v) then
            for i = 1, #v do out[i] = literal(v[i]) end
            return "[" .. table.concat(out, ", ") .. "]"
        end
        for k, x in pairs(v) do out[#out + 1] = literal(tostring(k)) .. ": " .. literal(x) end
        return "{" .. table.concat(out, ", ") .. "}"
    end
    return "None"
end

-- The calls as the model writes them (tool use emulation).
function D.render(calls)
    local out = {}
    for i, c in ipairs(calls) do
        local args = {}
        for k, v in pairs(c.arguments) do args[#args + 1] = k .. "=" .. literal(v) end
        out[i] = c.name .. "(" .. table.concat(args, ", ") .. ")"
    end
    return "[" .. table.concat(out, ", ") .. "]"
end

return D
