-- sluice.tooltext — tool calls that models write as text, turned back into
-- real tool calls.
--
-- Many suppliers (self-hosted servers without a tool parser, relays of
-- DeepSeek, Qwen, Kimi, GLM, MiniMax…) answer with the call written into the
-- text, and an agent then sees prose instead of a call. With a supplier's
-- `tool_text = { parse = "<dialect>" | "auto" }`, translate runs the IR
-- answer through a filter between the supplier's decoder and the client's
-- encoder, so every client protocol gets real calls, streamed or whole.
--
-- The filter only touches text blocks. Text streams on as it comes, except a
-- suffix that could begin a marker of the dialect, which is held until it is
-- decided (and is text again when it was not one). A region that opens with
-- a marker is held until the dialect decides: it fails as soon as the bytes
-- after the marker cannot be its format, and a region longer than
-- MAX_REGION is text. When it reads the region whole it becomes tool
-- calls, each a complete block (id, name, the arguments in one piece), or —
-- when the dialect cannot read it, it names a tool the request did not
-- declare, or its arguments are not a JSON object — it stays text, never a
-- broken call. Whitespace between and after calls is dropped. What is held
-- when the answer ends is text. A finish of end_turn/stop_sequence (or
-- none) becomes tool_use when a call was extracted (a max_tokens end stays
-- max_tokens), streamed and whole alike.
--
--   M.DIALECTS                  the dialect names (plus "auto")
--   M.check(v, field, bad)      a supplier's tool_text, normalised (config)
--   M.setup(cfg, tools, ids) -> state table | nil (parse off, or no tools)
--   M.filter(st) -> f ; f:feed(ev) -> { ev... } ; f:finish() -> { ev... }
--   M.answer(st, resp)          a whole IR answer, its text parts parsed in place
--   M.parser(st) -> p ; p:push(text, final, out)   (the text-level machine)
-- st.calls counts the calls extracted (the history record reports it with
-- st.dialect).

local json = require("sluice.json")
local S = require("sluice.ir_stream")
local ir = require("sluice.ir")

local type, ipairs, pairs, find, sub, byte = type, ipairs, pairs, string.find, string.sub, string.byte
local setmetatable, require = setmetatable, require

local M = {}

-- Every dialect, in the order `auto` tries them where their markers meet
-- (several read <tool_call>: Hermes' JSON first, then Qwen3-Coder's XML,
-- then GLM's key/value pairs; a bare {"name" is Llama's before it is
-- loose). `auto` leaves out pythonic, whose marker is any "[": a supplier
-- that writes Python lists of calls names it.
M.DIALECTS = { "kimi_k2", "deepseek_v32", "deepseek_v3", "deepseek_v31", "minimax_m2",
               "hermes", "qwen3_coder", "glm45", "glm47", "harmony", "mistral", "llama3_json",
               "loose", "pythonic" }
local NOT_AUTO = { pythonic = true }

local KNOWN = {}
for _, n in ipairs(M.DIALECTS) do KNOWN[n] = true end

local function dialect(name)
    return require("sluice.tools." .. name)
end

local function names_list()
    return "auto, " .. table.concat(M.DIALECTS, ", ")
end

-- A supplier's `tool_text` config: nil/false (off) or { parse = name|false,
-- emulate = name|nil } (emulate: tools go into the prompt, see
-- sluice.tools.emulate, and answers are parsed with the same dialect unless
-- parse names another; parse = false with emulate is an error).
-- `bad(field, fmt, ...)` raises the config error.
function M.check(v, field, bad)
    if v == nil or v == false then return nil end
    if type(v) ~= "table" then bad(field, "expected a table like { parse = \"auto\" }") end
    for k in pairs(v) do
        if k ~= "parse" and k ~= "emulate" then
            bad(field .. "." .. tostring(k), "unknown field (expected parse or emulate)")
        end
    end
    local p, e = v.parse, v.emulate
    if e ~= nil then
        local emulate = require("sluice.tools.emulate")
        if type(e) ~= "string" or not KNOWN[e] or not emulate.can(e) then
            local can = {}
            for _, n in ipairs(M.DIALECTS) do if emulate.can(n) then can[#can + 1] = n end end
            bad(field .. ".emulate", "cannot emulate tool use with %q (expected one of: %s)", tostring(e),
                table.concat(can, ", "))
        end
        if p == nil then p = e end
        -- Emulation sends no tools to the supplier: unparsed, its calls
        -- would reach the client as prose, and a check that returned nil
        -- here would switch emulation off and send the tools as real ones
        -- to a supplier that has none.
        if p == false then
            bad(field .. ".parse", "cannot be false with emulate = %q (its calls come back as text to parse)", e)
        end
    end
    if p == nil or p == false then return nil end
    if type(p) ~= "string" or not (p == "auto" or KNOWN[p]) then
        bad(field .. ".parse", "unknown dialect %q (expected false or one of: %s)", tostring(p), names_list())
    end
    return { parse = p, emulate = e }
end

-- The per-request state, or nil when nothing can be parsed: parsing is off,
-- or the request declares no tools (only declared tools become calls).
-- tools: IR tools as the supplier sees them (upstream names); ids: the
-- client codec's `tool_call_ids` fact ({ prefix, pattern|nil }: the style
-- of a new call id, and which ids its clients take — a dialect's own id
-- that does not match is replaced).
local DEFAULT_IDS = { prefix = "call_" }

function M.setup(cfg, tools, ids)
    if not cfg or not cfg.parse or type(tools) ~= "table" or #tools == 0 then return nil end
    local declared = {}
    for _, t in ipairs(tools) do
        if type(t.name) == "string" then declared[t.name] = type(t.parameters) == "table" and t.parameters or true end
    end
    return { dialect = cfg.parse, emulate = cfg.emulate, tools = declared, ids = ids or DEFAULT_IDS, calls = 0 }
end

-- ---------------------------------------------------------------- the text machine

-- The markers of the configured dialect(s): { text, dialects = {...} },
-- dialects in DIALECTS order; built once per dialect name.
local MARKERS = {}

local function markers_for(name)
    local m = MARKERS[name]
    if m then return m end
    local list, by_text = {}, {}
    local names = { name }
    if name == "auto" then
        names = {}
        for _, n in ipairs(M.DIALECTS) do if not NOT_AUTO[n] then names[#names + 1] = n end end
    end
    for _, n in ipairs(names) do
        local d = dialect(n)
        for _, text in ipairs(d.markers) do
            local e = by_text[text]
            if not e then
                e = { text = text, dialects = {} }
                by_text[text] = e
                list[#list + 1] = e
            end
            e.dialects[#e.dialects + 1] = d
        end
    end
    local by_first, firsts = {}, {}
    for _, e in ipairs(list) do
        local b = byte(e.text, 1)
        if not by_first[b] then
            by_first[b] = {}
            firsts[#firsts + 1] = string.char(b)
        end
        local l = by_first[b]
        l[#l + 1] = e
        e.b2 = byte(e.text, 2)
    end
    m = { list = list, by_first = by_first, firsts = firsts }
    MARKERS[name] = m
    return m
end

-- Whether an answer that carried extracted calls ends in tool_use: a
-- natural end (or none given, as some decoders leave it) does, a
-- max_tokens end stays. The stream filter and whole answers share it so
-- both give a client the same stop reason.
local function ends_in_tool_use(reason)
    return reason == nil or reason == "end_turn" or reason == "stop_sequence"
end

local Parser = {}
Parser.__index = Parser

function M.parser(st)
    return setmetatable({ st = st, m = markers_for(st.dialect), buf = "", ws = nil, called = false }, Parser)
end

local function is_ws(s)
    return not find(s, "%S")
end

-- Text out; whitespace right after a call waits to see whether text follows.
function Parser:text(s, out)
    if s == "" then return end
    if self.called and self.ws then
        if is_ws(s) then
            self.ws = self.ws .. s
            return
        end
        s = self.ws .. s
        self.ws = nil
    end
    out[#out + 1] = { text = s }
end

-- Only declared tools with object arguments: all the region's calls, or none.
local function valid(calls, tools)
    if type(calls) ~= "table" or #calls == 0 then return false end
    for _, c in ipairs(calls) do
        if type(c.name) ~= "string" or not tools[c.name] or type(c.arguments) ~= "table" then return false end
    end
    return true
end

-- The longest region read as calls. A region is held back from a streaming
-- client until it is decided; one still open past this bound (a marker in
-- prose or code whose format the dialect could not rule out early) is
-- text, so the stream goes on. A whole answer applies the same bound, so
-- both read a long region alike.
local MAX_REGION = 256 * 1024
M.MAX_REGION = MAX_REGION

-- The region at the start of s opening with marker e: "more", "fail" or
-- "ok", calls, used. The dialects sharing the marker are tried in order.
function Parser:region(e, s, final)
    local tools = self.st.tools
    for _, d in ipairs(e.dialects) do
        local status, calls, used = d.parse(s, final, tools)
        if status == "more" then
            if not final and #s <= MAX_REGION then return "more" end
        elseif status == "ok" and used <= MAX_REGION and valid(calls, tools) then
            return "ok", calls, used, d.name
        end
    end
    return "fail"
end

-- The first place in buf, from `from` on, where a marker is or may be
-- starting: p, e (marker e is whole at p; `partial` when a longer marker
-- may still be too) or p, nil (the rest of buf from p begins a marker:
-- held unless final). Nil when there is none. Only bytes that begin a
-- marker are looked at (a plain search per distinct first byte: plain
-- finds stay compiled, a pattern class would not), so plain text costs little.
local function scan(m, buf, from, final)
    local n, p, firsts = #buf, from, m.firsts
    while true do
        local q = nil
        for i = 1, #firsts do
            local f = find(buf, firsts[i], p, true)
            if f and (not q or f < q) then q = f end
        end
        if not q then return nil end
        p = q
        local best, partial = nil, false
        local cands = m.by_first[byte(buf, p)]
        local b2 = byte(buf, p + 1) -- nil at the end of buf
        for i = 1, #cands do
            local t = cands[i].text
            local len = #t
            if b2 and len > 1 and b2 ~= cands[i].b2 then
                -- the second byte already differs: neither whole nor partial
            elseif sub(buf, p, p + len - 1) == t then
                if not best or len > #best.text then best = cands[i] end
            elseif not final and n - p + 1 < len and sub(t, 1, n - p + 1) == sub(buf, p) then
                partial = true
            end
        end
        if best then return p, best, partial end
        if partial then return p, nil end
        p = p + 1
    end
end

-- Feeds text; appends { text = s } and { call = c } items to out. final:
-- no more text follows (everything held is decided now).
-- A region still undecided at BIG bytes is read again only once it has
-- grown by a quarter (or the text ends): a long call (a file's content in
-- its arguments) then costs a few reads, not one per chunk, and its chunks
-- wait in a list instead of being joined every time. The outcome is the
-- same (dialects read a longer region as they read its prefix), only the
-- moment it is decided moves.
local BIG = 1024

function Parser:push(s, final, out)
    local waiting = self.waiting
    if waiting then
        waiting[#waiting + 1] = s
        self.waiting_len = self.waiting_len + #s
        if not final and self.waiting_len < self.wait_until then return end
        s = table.concat(waiting)
        self.waiting = nil
    end
    local buf = self.buf
    if buf == "" then buf = s else buf = buf .. s end
    local m = self.m
    while true do
        local bp, be, longer = scan(m, buf, 1, final)
        if not bp then
            self:text(buf, out)
            buf = ""
            break
        end
        self:text(sub(buf, 1, bp - 1), out)
        buf = sub(buf, bp)
        if not be or longer then break end -- held until decided
        local status, calls, used, dname = self:region(be, buf, final)
        if status == "more" then
            if #buf >= BIG then
                self.waiting, self.waiting_len = {}, #buf
                self.wait_until = math.min(#buf + #buf / 4, MAX_REGION + 1)
            end
            break
        end
        if status == "ok" then
            for _, c in ipairs(calls) do out[#out + 1] = { call = c, dialect = dname } end
            self.called, self.ws = true, ""
            self.st.calls = self.st.calls + #calls
            self.st.parsed_with = dname
            buf = sub(buf, used + 1)
        else
            self:text(be.text, out)
            buf = sub(buf, #be.text + 1)
        end
    end
    self.buf = buf
    if final then self.ws = self.called and "" or nil end
end

-- The id a call goes out with: the dialect's own when the client protocol
-- allows it and this answer has not used it yet, else a new one in the
-- client's style. Models number their own ids (Kimi's functions.f:0) and
-- may repeat one; two calls sharing an id would leave the client unable to
-- tell their results apart.
local function call_id(st, c)
    local id, ids = c.id, st.ids
    local seen = st.seen_ids
    if not seen then
        seen = {}
        st.seen_ids = seen
    end
    if type(id) ~= "string" or (ids.pattern and not find(id, ids.pattern)) or seen[id] then
        id = ir.new_id(ids.prefix or "call_")
    end
    seen[id] = true
    return id
end

-- ---------------------------------------------------------------- the IR stream filter

local Filter = {}
Filter.__index = Filter

function M.filter(st)
    return setmetatable({ st = st, p = M.parser(st), blocks = S.blocks(), map = {}, text_up = {},
                          text_idx = nil }, Filter)
end

function Filter:emit(items, out)
    local blocks = self.blocks
    for _, it in ipairs(items) do
        if it.text then
            if not self.text_idx then self.text_idx = blocks:start(out, "text") end
            out[#out + 1] = { type = "text", index = self.text_idx, text = it.text }
        else
            blocks:stop(out, self.text_idx)
            self.text_idx = nil
            local c = it.call
            local i = blocks:start(out, "tool_call", { id = call_id(self.st, c), name = c.name })
            out[#out + 1] = { type = "tool_args", index = i, json = json.encode(c.arguments) }
            blocks:stop(out, i)
        end
    end
end

-- Decide everything held: the text so far is complete.
function Filter:flush(out)
    local items = {}
    self.p:push("", true, items)
    self:emit(items, out)
    self.blocks:stop(out, self.text_idx)
    self.text_idx = nil
end

function Filter:feed(ev, out)
    out = out or {}
    local t = ev.type
    if t == "text" and self.text_up[ev.index] then
        local items = {}
        self.p:push(ev.text or "", false, items)
        local it = items[1]
        if #items == 1 and it.text == ev.text and self.text_idx then
            ev.index = self.text_idx -- the usual case: the chunk goes on as it came
            out[#out + 1] = ev
        else
            self:emit(items, out)
        end
    elseif t == "block_start" then
        if ev.kind == "text" then
            self.text_up[ev.index] = true
        else
            self:flush(out)
            local up = ev.index
            self.map[up] = self.blocks:start(out, ev.kind, ev)
        end
    elseif t == "block_stop" then
        if not self.text_up[ev.index] then self.blocks:stop(out, self.map[ev.index]) end
    elseif t == "text" or t == "thinking" or t == "signature" or t == "tool_args" then
        local i = self.map[ev.index]
        if i then
            ev.index = i
            out[#out + 1] = ev
        end
    elseif t == "finish" then
        self:flush(out)
        if self.st.calls > 0 and ends_in_tool_use(ev.stop_reason) then
            ev.stop_reason, ev.stop_sequence = "tool_use", nil
        end
        out[#out + 1] = ev
    elseif t == "error" then
        self:flush(out)
        out[#out + 1] = ev
    else
        out[#out + 1] = ev
    end
    return out
end

function Filter:feed_list(evs)
    local out = {}
    for i = 1, #evs do self:feed(evs[i], out) end
    return out
end

-- The upstream ended without a finish: what is held goes out as text.
function Filter:finish()
    local out = {}
    self:flush(out)
    self.blocks:stop_all(out)
    return out
end

-- ---------------------------------------------------------------- whole answers

-- Each text part is read whole (the same machine, every byte at once); a
-- part holding calls becomes its text and call parts, in order.
function M.answer(st, resp)
    local content, before = {}, st.calls
    for _, part in ipairs(resp.content or {}) do
        if part.type == "text" and type(part.text) == "string" then
            local items = {}
            local p = M.parser(st)
            p:push(part.text, true, items)
            local text = nil
            for _, it in ipairs(items) do
                if it.text then
                    text = (text or "") .. it.text
                else
                    if text then content[#content + 1] = { type = "text", text = text } end
                    text = nil
                    local c = it.call
                    content[#content + 1] = { type = "tool_call", id = call_id(st, c), name = c.name,
                                              arguments = c.arguments }
                end
            end
            if text then
                part.text = text
                content[#content + 1] = part
            end
        else
            content[#content + 1] = part
        end
    end
    resp.content = content
    if st.calls > before and ends_in_tool_use(resp.stop_reason) then
        resp.stop_reason, resp.stop_sequence = "tool_use", nil
    end
    return resp
end

return M
