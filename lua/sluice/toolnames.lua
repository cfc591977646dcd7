-- sluice.toolnames — reversible shortening of tool names for strict suppliers.
--
-- Each protocol limits tool names; its module declares the rule as the fact
-- `tool_names` = { max, pattern, bad, first? } (OpenAI: ^[a-zA-Z0-9_-]+$, at
-- most 64; Anthropic: the same class, at most 128; Gemini: a letter or _
-- first, then [A-Za-z0-9_.:-], kept to 64 to satisfy older model versions):
-- at most `max` bytes matching `pattern`; a shortened name has every byte
-- matching `bad` replaced by "_", and "_" put in front unless it matches
-- `first`. MCP-style names such as
-- "mcp__github.com/server__create_pull_request_review_comment" break those
-- rules. A name that fits is left alone; one that does not gets
-- a deterministic short form: its sanitised prefix + "_" + 8 hex digits of a
-- hash of the whole name, so the same history maps the same way on every
-- turn. The map lives in the request state; responses and streams get the
-- original names back through names:down().

local protocols = require("sluice.protocols")
local bit = require("bit")
local bxor, tobit, tohex, lshift = bit.bxor, bit.tobit, bit.tohex, bit.lshift
local byte, type, ipairs, setmetatable = string.byte, type, ipairs, setmetatable

local M = {}

-- protocol -> its rule: the `tool_names` fact of that protocol's module,
-- looked up (and the codec loaded) the first time a request needs it.
M.RULES = setmetatable({}, { __index = function(rules, name)
    local m = protocols.get(name)
    if not m then return nil end
    rules[name] = m.tool_names
    return m.tool_names
end })

-- FNV-1a, 32 bits; the multiply by 16777619 = 2^24 + 403 is split so the
-- product stays exact in a double.
local function fnv1a(s)
    local h = tobit(2166136261)
    for i = 1, #s do
        h = bxor(h, byte(s, i))
        h = tobit(lshift(h, 24) + (h % 0x100000000) * 403)
    end
    return tohex(h, 8)
end
M.hash = fnv1a

local Names = {}
Names.__index = Names

-- A map for one request towards `protocol`; nil rules (unknown protocol)
-- means names pass unchanged.
function M.new(protocol)
    return setmetatable({ rule = M.RULES[protocol], up_map = {}, down_map = {}, renamed = 0 }, Names)
end

-- Agents send the same tools on every turn (Claude Code ~20): a name's
-- verdict is remembered per rule, so the pattern (which LuaJIT does not
-- compile) runs once per name. Bounded: MEMO_MAX names per rule, then the
-- memo starts over.
local MEMO_MAX = 2048
local verdicts = setmetatable({}, { __mode = "k" }) -- rule -> { n, by_name }

function Names:valid(name)
    local r = self.rule
    if not r then return true end
    local memo = verdicts[r]
    if not memo or memo.n == MEMO_MAX then
        memo = { n = 0, by_name = {} }
        verdicts[r] = memo
    end
    local v = memo.by_name[name]
    if v == nil then
        v = #name <= r.max and name:find(r.pattern) ~= nil
        memo.by_name[name], memo.n = v, memo.n + 1
    end
    return v
end

local function shorten(rule, name, salt)
    local clean = name:gsub(rule.bad, "_")
    if clean == "" then clean = "_" end
    if rule.first and not clean:find(rule.first) then clean = "_" .. clean end
    local h = fnv1a(salt and (name .. "#" .. salt) or name)
    return clean:sub(1, rule.max - 9) .. "_" .. h
end

-- Original name -> the name the supplier sees.
function Names:up(name)
    if type(name) ~= "string" then return name end
    local s = self.up_map[name]
    if s then return s end
    if self:valid(name) then
        s = name
    else
        local salt = nil
        s = shorten(self.rule, name)
        while self.down_map[s] and self.down_map[s] ~= name do
            salt = (salt or 0) + 1
            s = shorten(self.rule, name, salt)
        end
        self.renamed = self.renamed + 1
    end
    self.up_map[name] = s
    self.down_map[s] = self.down_map[s] or name
    return s
end

-- Supplier's name -> the client's original name (unknown names pass through).
function Names:down(name)
    return self.down_map[name] or name
end

-- Rewrite every tool name in an IR request in place. Names that already fit
-- are registered first so a shortened name can never take one of them.
function M.apply_request(req, names)
    local tools = req.tools or {}
    for _, t in ipairs(tools) do
        if type(t.name) == "string" and names:valid(t.name) then names:up(t.name) end
    end
    for _, t in ipairs(tools) do t.name = names:up(t.name) end
    if req.tool_choice and req.tool_choice.name then
        req.tool_choice.name = names:up(req.tool_choice.name)
    end
    for _, m in ipairs(req.messages or {}) do
        for _, p in ipairs(m.content or {}) do
            if (p.type == "tool_call" or p.type == "tool_result") and p.name then
                p.name = names:up(p.name)
            end
        end
    end
    return req
end

-- Give tool calls of an IR response their original names back.
function M.restore_response(resp, names)
    for _, p in ipairs(resp.content or {}) do
        if p.type == "tool_call" and p.name then p.name = names:down(p.name) end
    end
    return resp
end

return M
