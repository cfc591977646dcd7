-- sluice.tools.emulate — tool use for suppliers that have none.
--
-- With a supplier's `tool_text = { emulate = "<dialect>" }`, a request's
-- tools never reach the supplier as tools: the system prompt describes them
-- and the format to call them in (the dialect's own, with an example), the
-- conversation's earlier calls become assistant text in that format and
-- their results user text in <tool_response> tags, and `tool_choice` becomes
-- an instruction. The answer is then parsed back with the same dialect
-- (sluice.tooltext), so the client sees real tool calls.
--
--   E.apply(req, dialect_name) -> req without tools/tool_choice (in place)
--   E.can(dialect_name) -> true when the dialect can render calls

local json = require("sluice.json")

local type, ipairs, concat = type, ipairs, table.concat

local E = {}

local function dialect(name)
    local ok, d = pcall(require, "sluice.tools." .. name)
    return ok and type(d) == "table" and d or nil
end

function E.can(name)
    local d = dialect(name)
    return d ~= nil and type(d.render) == "function"
end

-- The tool list the model reads: name, description, JSON schema.
local function tool_list(tools)
    local list = json.array({})
    for i, t in ipairs(tools) do
        list[i] = { name = t.name, description = t.description, parameters = t.parameters or {} }
    end
    return json.encode(list)
end

local function choice_rule(choice)
    if not choice then return nil end
    if choice.type == "required" then return "In this answer you must call at least one of the tools." end
    if choice.type == "tool" and choice.name then
        return "In this answer you must call the tool `" .. choice.name .. "`."
    end
    if choice.type == "none" then return "In this answer do not call any tool; answer in plain text." end
    return nil
end

local function instructions(req, d)
    local example = d.render({ { name = "example_tool", arguments = { argument = "value" } } })
    local t = {
        "# Tools",
        "You can call these tools (name, description and JSON schema of the arguments):",
        tool_list(req.tools),
        "",
        "To call a tool, write the call exactly in this format, with the tool's name and its arguments "
            .. "(several calls one after another if needed), and then stop writing:",
        example,
        "",
        "The results come back in <tool_response> tags. Call only the tools listed above; "
            .. "when no tool is needed, answer normally.",
    }
    local rule = choice_rule(req.tool_choice)
    if rule then t[#t + 1] = rule end
    return concat(t, "\n")
end

-- A tool result's text for the conversation.
local function result_text(p, names)
    local b = {}
    for _, c in ipairs(p.content or {}) do
        if c.type == "text" then b[#b + 1] = c.text
        elseif c.type == "image" then b[#b + 1] = "[image omitted]" end
    end
    local name = p.name or names[p.tool_call_id] or ""
    return '<tool_response name="' .. name .. '">\n' .. concat(b, "\n") .. "\n</tool_response>"
        .. (p.is_error and " (the tool reported an error)" or "")
end

-- One message's content with calls and results written as text; adjacent
-- texts merged.
local function rewrite(content, d, names)
    local out, calls = {}, {}
    local function text(s)
        local last = out[#out]
        if last and last.type == "text" and not last.cache_control then
            last.text = last.text .. "\n" .. s
        else
            out[#out + 1] = { type = "text", text = s }
        end
    end
    local function flush()
        if #calls > 0 then
            text(d.render(calls))
            calls = {}
        end
    end
    for _, p in ipairs(content or {}) do
        if p.type == "tool_call" then
            names[p.id or ""] = p.name
            calls[#calls + 1] = { name = p.name, arguments = type(p.arguments) == "table" and p.arguments or {},
                                  id = p.id }
        else
            flush()
            if p.type == "tool_result" then text(result_text(p, names))
            else out[#out + 1] = p end
        end
    end
    flush()
    return out
end

function E.apply(req, name)
    local d = dialect(name)
    local has_tools = type(req.tools) == "table" and #req.tools > 0
    local names = {}
    for _, m in ipairs(req.messages or {}) do m.content = rewrite(m.content, d, names) end
    if has_tools then
        local sys = req.system or {}
        sys[#sys + 1] = { type = "text", text = instructions(req, d) }
        req.system = sys
    end
    req.tools, req.tool_choice, req.parallel_tool_calls = nil, nil, nil
    return req
end

return E
