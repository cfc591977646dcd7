-- spec.helpers.sse — a tiny pure-Lua SSE framer for specs.
--
-- The real framer lives in C (core/sse.c); protocol specs need the same
-- framing without the core, to turn captured upstream bytes into the
-- { event = name|nil, data = s } records a stream decoder is fed, and to read
-- back the bytes an encoder produced. It follows the WHATWG rules the four
-- vendors rely on: \n, \r\n and \r line endings, several data: lines joined
-- with \n, comment lines (":") ignored, a record ends at a blank line.

local M = {}

local find, sub, byte = string.find, string.sub, string.byte

-- An incremental framer: f:push(chunk) -> { record... } for every record
-- completed by this chunk; bytes of an unfinished record stay buffered.
function M.framer()
    local f = { buf = "", event = nil, data = nil, pending_cr = false }

    local function line(self, l, out)
        if l == "" then
            if self.data then
                out[#out + 1] = { event = self.event, data = self.data }
            end
            self.event, self.data = nil, nil
            return
        end
        if byte(l, 1) == 58 then return end -- ":" comment
        local c = find(l, ":", 1, true)
        local field, value
        if c then
            field, value = sub(l, 1, c - 1), sub(l, c + 1)
            if byte(value, 1) == 32 then value = sub(value, 2) end
        else
            field, value = l, ""
        end
        if field == "event" then
            self.event = value
        elseif field == "data" then
            self.data = self.data and (self.data .. "\n" .. value) or value
        end
    end

    function f:push(chunk)
        local out = {}
        local s = self.buf .. chunk
        local pos = 1
        -- A lone \r at the end of the previous chunk already ended a line;
        -- a \n that starts this chunk belongs to it (CRLF split in two).
        if self.pending_cr and byte(s, 1) == 10 then pos = 2 end
        self.pending_cr = false
        while true do
            local a, b = find(s, "[\r\n]", pos)
            if not a then break end
            local l = sub(s, pos, a - 1)
            if byte(s, a) == 13 then
                if a == #s then
                    self.pending_cr = true
                elseif byte(s, a + 1) == 10 then
                    b = a + 1
                end
            end
            line(self, l, out)
            pos = b + 1
        end
        self.buf = sub(s, pos)
        return out
    end

    return f
end

-- Frame a whole byte string at once.
function M.parse(bytes)
    return M.framer():push(bytes)
end

-- Frame bytes delivered in pieces: `cuts` is a list of cut offsets, or a
-- number n meaning "chunks of n bytes".
function M.parse_chunked(bytes, cuts)
    local f, out = M.framer(), {}
    local function add(evs) for i = 1, #evs do out[#out + 1] = evs[i] end end
    if type(cuts) == "number" then
        for i = 1, #bytes, cuts do add(f:push(sub(bytes, i, i + cuts - 1))) end
    else
        local prev = 0
        for _, c in ipairs(cuts) do
            add(f:push(sub(bytes, prev + 1, c)))
            prev = c
        end
        add(f:push(sub(bytes, prev + 1)))
    end
    return out
end

-- Serialise records back to bytes (for building split inputs from records).
function M.serialise(records)
    local t = {}
    for _, r in ipairs(records) do
        if r.event then t[#t + 1] = "event: " .. r.event .. "\n" end
        t[#t + 1] = "data: " .. r.data .. "\n\n"
    end
    return table.concat(t)
end

return M
