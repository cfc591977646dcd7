-- sluice.digest — the one-way hash sluice puts on session keys (and on
-- inbound gateway keys when they name a tenant) before they reach a log,
-- the history, the session store or an upstream's prompt_cache_key.
--
-- SHA-256 from OpenSSL's libcrypto, called through the FFI: the binary
-- already links it (ffi.C finds it), plain busted loads it by name. Session
-- keys are hashed on every request and the stable-prefix rule hashes a whole
-- system prompt (tens of KB for coding agents), which a pure-Lua hash could
-- not do within the per-request budget.
--
--   D.hex(s, n?) -> the first n (default 32) hex digits of SHA-256(s)

local ffi = require("ffi")

ffi.cdef [[ unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md); ]]

local function crypto()
    local ok = pcall(function() return ffi.C.SHA256 end)
    if ok then return ffi.C end
    for _, name in ipairs({ "crypto", "libcrypto.so.3", "libcrypto.so.1.1" }) do
        local lok, lib = pcall(ffi.load, name)
        if lok then return lib end
    end
    error("sluice.digest: libcrypto (OpenSSL) not found")
end

local C = crypto()
local md = ffi.new("unsigned char[32]")
local byte, fmt, concat = string.byte, string.format, table.concat

local D = {}

function D.hex(s, n)
    n = n or 32
    C.SHA256(s, #s, md)
    local raw = ffi.string(md, 32)
    local out = {}
    for i = 1, math.ceil(n / 2) do out[i] = fmt("%02x", byte(raw, i)) end
    return concat(out):sub(1, n)
end

return D
