/*
 * json.h — sluice.json, the lossless JSON codec shared by the core and Lua.
 *
 * Why not lua-cjson: Debian's 2.1.0 turns `[]` into `{}` and rounds integers
 * past 14 digits, which silently breaks forwarded tool schemas. This codec
 * keeps every JSON document's meaning through decode -> Lua -> encode:
 *   - arrays are tables with the shared metatable json.array_mt (so `[]`
 *     survives); objects are plain tables without a metatable;
 *   - `null` is json.null, the NULL lightuserdata (the same value as
 *     cjson.null);
 *   - integers with |n| <= 2^53 and every fractional/exponent number become
 *     Lua numbers; larger integer literals become a boxed number
 *     setmetatable({ "<text>" }, json.number_mt) that encodes verbatim;
 *   - strings are validated UTF-8 (all escapes, surrogate pairs); encode
 *     replaces invalid UTF-8 with U+FFFD and never emits invalid JSON.
 * Encode writes object keys in sorted (bytewise) order: LuaJIT randomises
 * table iteration order per VM, and a gateway must send the same bytes for
 * the same request (prompt caches, golden fixtures).
 *
 * Lua API (module "sluice.json"): decode(s [, i, j]) -> v | nil, err;
 * encode(v) -> s | nil, err; null; array_mt; number_mt; array(t) -> t;
 * is_array(t) -> bool; number(text) -> boxed | nil, err;
 * members(s [, i, j, max]) -> spans, kind (byte ranges of the top-level
 * members, nothing decoded); selector({ "a.b", "c.1.d", ... }) -> sel and
 * select(sel, s) -> true, v1, ..., vn | false, err (only the values at those
 * paths decoded, the rest checked: what stream decoders read per event).
 *
 * Numbers print as integers within +-2^53, else via %.15g/%.16g/%.17g (the
 * first that reads back exactly; exponent form when that would look like a
 * big integer literal). Invalid UTF-8 becomes one U+FFFD per bad byte.
 *
 * Threads: all state is per lua_State (a registry userdata), so each worker
 * VM may use the codec concurrently; number parsing ignores setlocale().
 *
 * The C helpers below work in any lua_State; they create the shared
 * metatables in the registry on first use, so they need not be preceded by
 * require("sluice.json"). They never raise a Lua error for bad JSON or
 * unencodable values (only for out-of-memory, like any Lua API call).
 */
#ifndef SL_JSON_H
#define SL_JSON_H

#include <stddef.h>

#include <lua.h>

#include "buf.h"

/* Nesting limit for both directions; deeper documents (and cycles) fail. */
#define SL_JSON_MAX_DEPTH 1000

/* Lua entry point; the binary registers it in package.preload["sluice.json"]. */
int luaopen_sluice_json(lua_State *L);

/*
 * Decodes the document s[0..len) and pushes its value on L's stack.
 * The bytes are borrowed for the duration of the call only. Returns 0, or
 * SL_EPARSE with a message ("json: ... at byte N") in err (pushes nothing).
 */
int sl_json_decode(lua_State *L, const char *s, size_t len, char *err, size_t errlen);

/*
 * Encodes the Lua value at idx and appends the JSON text to out (which the
 * caller owns; its limit is honoured). Returns 0, SL_EINVAL with a message
 * in err (unencodable value, NaN/Inf, depth/cycle), or SL_ENOMEM/SL_ELIMIT
 * from the buffer. On failure out may hold a partial document: the caller
 * truncates it (out->len) if it keeps the buffer.
 */
int sl_json_encode_value(lua_State *L, int idx, sl_buf_t *out, char *err, size_t errlen);

#endif
