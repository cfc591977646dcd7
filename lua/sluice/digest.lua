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
-- Why not OpenSSL's one-shot SHA256(): in OpenSSL 3 it looks the algorithm
-- up in the provider registry on every call (name compares, locks), which
-- cost more than hashing a 2 KB prompt. The algorithm is fetched once per
-- VM and one digest context is reused; each VM is one thread.
--
--   D.hex(s, n?) -> the first n (default 32, at most 64) hex digits of SHA-256(s)

local ffi = require("ffi")

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;
EVP_MD *EVP_MD_fetch(void *libctx, const char *algorithm, const char *properties);
void EVP_MD_free(EVP_MD *md);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, const void *params);
int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt);
int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s);
]]

local function crypto()
    local ok = pcall(function() return ffi.C.EVP_MD_fetch end)
    if ok then return ffi.C end
    for _, name in ipairs({ "crypto", "libcrypto.so.3" }) do
        local lok, lib = pcall(ffi.load, name)
        if lok then return lib end
    end
    error("sluice.digest: libcrypto (OpenSSL 3) not found")
end

local C = crypto()
-- Both live as long as the VM: freed by their finalizers when it closes
-- (a reload's old VM, a worker's at exit).
local sha256 = C.EVP_MD_fetch(nil, "SHA256", nil)
local mdctx = C.EVP_MD_CTX_new()
assert(sha256 ~= nil and mdctx ~= nil, "sluice.digest: SHA-256 unavailable in libcrypto")
sha256, mdctx = ffi.gc(sha256, C.EVP_MD_free), ffi.gc(mdctx, C.EVP_MD_CTX_free)

local md = ffi.new("unsigned char[32]")
local hex = ffi.new("char[64]")
local DIGITS = ffi.new("const char[17]", "0123456789abcdef")
local rshift, band = bit.rshift, bit.band

local D = {}

function D.hex(s, n)
    n = n or 32
    if C.EVP_DigestInit_ex2(mdctx, sha256, nil) ~= 1 or C.EVP_DigestUpdate(mdctx, s, #s) ~= 1
        or C.EVP_DigestFinal_ex(mdctx, md, nil) ~= 1 then
        error("sluice.digest: SHA-256 failed")
    end
    for i = 0, 31 do
        local b = md[i]
        hex[2 * i], hex[2 * i + 1] = DIGITS[rshift(b, 4)], DIGITS[band(b, 15)]
    end
    return ffi.string(hex, n < 64 and n or 64)
end

return D
