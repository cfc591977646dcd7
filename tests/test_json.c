/*
 * test_json.c — unit tests for sluice.json's C side (core/json.c): the C API
 * the core uses (sl_json_decode, sl_json_encode_value), stack hygiene, buffer
 * limits, inputs that are not NUL-terminated, the big-object and deep-nesting
 * paths that switch strategy at the Lua stack budget, and a crash hunt over
 * truncated and mutated documents. Behaviour seen from Lua is covered in
 * spec/json_spec.lua.
 *
 * `test_json bench [bytes]` instead prints decode/encode throughput for a
 * synthetic coding-agent request body (no assertions; see the report).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "error.h"
#include "json.h"
#include "test_helpers.h"

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_sluice_json);
    lua_setfield(L, -2, "sluice.json");
    lua_pop(L, 2);
    return L;
}

/* Runs a Lua chunk that returns a string; returns a static copy (or the
 * error text prefixed with "ERROR: "). */
static const char *run(lua_State *L, const char *code)
{
    static char result[4096];
    int top = lua_gettop(L);
    if (luaL_loadstring(L, code) || lua_pcall(L, 0, 1, 0)) {
        snprintf(result, sizeof result, "ERROR: %s", lua_tostring(L, -1));
    } else {
        const char *s = lua_tostring(L, -1);
        snprintf(result, sizeof result, "%s", s ? s : "(nil)");
    }
    lua_settop(L, top);
    return result;
}

/* decode(s) then encode, both through the C API; returns the text or the
 * error message. */
static const char *c_roundtrip(lua_State *L, const char *s, size_t n)
{
    static char result[4096];
    char err[160];
    sl_buf_t out;
    int top = lua_gettop(L);
    if (sl_json_decode(L, s, n, err, sizeof err) != 0) {
        snprintf(result, sizeof result, "%s", err);
        return result;
    }
    if (lua_gettop(L) != top + 1)
        return "stack not balanced after decode";
    sl_buf_init(&out, 0);
    int rc = sl_json_encode_value(L, -1, &out, err, sizeof err);
    if (lua_gettop(L) != top + 1)
        snprintf(result, sizeof result, "stack not balanced after encode");
    else if (rc)
        snprintf(result, sizeof result, "%s", err);
    else
        snprintf(result, sizeof result, "%.*s", (int)out.len, out.base);
    sl_buf_free(&out);
    lua_settop(L, top);
    return result;
}

static void test_c_api_roundtrip(void)
{
    lua_State *L = new_state(); /* note: module not required yet */
    const char *doc = "{\"tools\":[{\"input_schema\":{\"required\":[],\"type\":\"object\"}}],"
                      "\"n\":null,\"big\":-9007199254740993,\"f\":-2.5e-07,\"s\":\"\\u00e9\\n\"}";
    const char *want = "{\"big\":-9007199254740993,\"f\":-2.5e-07,\"n\":null,\"s\":\"\xc3\xa9\\n\","
                       "\"tools\":[{\"input_schema\":{\"required\":[],\"type\":\"object\"}}]}";
    CHECK_EQ_STR(c_roundtrip(L, doc, strlen(doc)), want);
    lua_close(L);
}

static void test_c_api_errors_leave_stack_alone(void)
{
    lua_State *L = new_state();
    char err[160];
    lua_pushinteger(L, 7);
    int rc = sl_json_decode(L, "[1,2,{\"a\":x}]", 13, err, sizeof err);
    CHECK(rc == SL_EPARSE);
    CHECK_EQ_STR(err, "json: unexpected character 'x' at byte 11");
    CHECK(lua_gettop(L) == 1 && lua_tointeger(L, 1) == 7);

    sl_buf_t out;
    sl_buf_init(&out, 0);
    lua_newtable(L);
    lua_pushcfunction(L, luaopen_sluice_json);
    lua_setfield(L, -2, "f");
    rc = sl_json_encode_value(L, -1, &out, err, sizeof err);
    CHECK(rc == SL_EINVAL);
    CHECK_EQ_STR(err, "json: cannot encode function");
    CHECK(lua_gettop(L) == 2);
    sl_buf_free(&out);
    lua_close(L);
}

/* The C API and the Lua module share one array metatable per VM, so arrays
 * decoded in C are arrays to Lua code and vice versa. */
static void test_shared_metatables(void)
{
    lua_State *L = new_state();
    char err[160];
    CHECK(sl_json_decode(L, "[]", 2, err, sizeof err) == 0);
    lua_setglobal(L, "from_c");
    CHECK_EQ_STR(run(L, "local j = require 'sluice.json' return tostring(j.is_array(from_c)) .."
                        " j.encode({ x = from_c, y = j.array() })"),
                 "true{\"x\":[],\"y\":[]}");
    lua_close(L);
}

static void test_buffer_limit(void)
{
    lua_State *L = new_state();
    char err[160];
    sl_buf_t out;
    sl_buf_init(&out, 64);
    lua_pushstring(L, "this string is long enough to blow a sixty-four byte output limit.");
    CHECK(sl_json_encode_value(L, -1, &out, err, sizeof err) == SL_ELIMIT);
    CHECK(out.len <= 64);
    out.len = 0;
    lua_pushstring(L, "short");
    CHECK(sl_json_encode_value(L, -1, &out, err, sizeof err) == 0);
    CHECK(out.len == 7 && memcmp(out.base, "\"short\"", 7) == 0);
    /* fits exactly, although its worst case (6 bytes per input byte) would not */
    out.len = 0;
    lua_pushstring(L, "tab\there, quote \" and caf\xc3\xa9 \xff end");
    CHECK(sl_json_encode_value(L, -1, &out, err, sizeof err) == 0);
    const char *want = "\"tab\\there, quote \\\" and caf\xc3\xa9 \\ufffd end\"";
    CHECK(out.len == strlen(want) && memcmp(out.base, want, out.len) == 0);
    sl_buf_free(&out);
    lua_close(L);
}

/* Borrowed input need not be NUL-terminated: every number form at the very
 * end of an exactly-sized heap block (ASan builds catch any overread). */
static void test_unterminated_input(void)
{
    static const char *docs[] = {"0.1", "-2.5e-7", "1e400", "123456789012345678901234567890",
                                 "1.00000000000000000000001", "9007199254740993", "true",
                                 "\"\\u00e9\"", "[1,2,3]"};
    static const char *want[] = {"0.1", "-2.5e-07", "1e400", "123456789012345678901234567890",
                                 "1", "9007199254740993", "true", "\"\xc3\xa9\"", "[1,2,3]"};
    lua_State *L = new_state();
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        size_t n = strlen(docs[i]);
        char *p = malloc(n);
        memcpy(p, docs[i], n);
        const char *got = c_roundtrip(L, p, n);
        free(p);
        CHECK_EQ_STR(got, want[i]);
    }
    lua_close(L);
}

/* Objects past the stack budget take the look-values-up-again path; the
 * output must be the same sorted object. */
static void test_huge_object_and_array(void)
{
    lua_State *L = new_state();
    const char *r = run(L, "local j = require 'sluice.json'\n"
                           "local t, keys = {}, {}\n"
                           "for i = 1, 20000 do t['k' .. i] = i; keys[i] = 'k' .. i end\n"
                           "table.sort(keys)\n"
                           "local s = assert(j.encode(t))\n"
                           "local parts = {}\n"
                           "for i, k in ipairs(keys) do parts[i] = '\"' .. k .. '\":' .. t[k] end\n"
                           "if s ~= '{' .. table.concat(parts, ',') .. '}' then return 'order' end\n"
                           "local back = assert(j.decode(s))\n"
                           "for k, v in pairs(t) do if back[k] ~= v then return 'lost ' .. k end end\n"
                           "local a = {}\n"
                           "for i = 1, 50000 do a[i] = i % 7 == 0 and j.null or i end\n"
                           "local sa = assert(j.encode(j.array(a)))\n"
                           "local ba = assert(j.decode(sa))\n"
                           "if #ba ~= 50000 or ba[7] ~= j.null or ba[50000] ~= 50000 then"
                           " return 'array' end\n"
                           "return assert(j.encode(ba)) == sa and 'ok' or 'array text'");
    CHECK_EQ_STR(r, "ok");
    lua_close(L);
}

/* 1000 levels of wide containers: the pending/stack strategies must fall back
 * before LuaJIT's per-call stack cap, in both directions. */
static void test_deep_and_wide(void)
{
    lua_State *L = new_state();
    const char *r = run(L, "local j = require 'sluice.json'\n"
                           "local root = {}\n"
                           "local t = root\n"
                           "for d = 1, 999 do\n"
                           "  for i = 1, 20 do t['a' .. i] = i end\n"
                           "  t.arr = j.array({1, 2, 3, 4, 5, 6, 7, 8, 9, 10})\n"
                           "  t.z = {} t = t.z\n"
                           "end\n"
                           "local s = assert(j.encode(root))\n"
                           "local back, err = j.decode(s)\n"
                           "if not back then return err end\n"
                           "return assert(j.encode(back)) == s and 'ok' or 'differs'");
    CHECK_EQ_STR(r, "ok");
    /* one more level than allowed: the innermost {} is level 1001 */
    r = run(L, "local j = require 'sluice.json'\n"
               "local root = {} local t = root\n"
               "for d = 1, 1000 do t.z = {} t = t.z end\n"
               "local s, err = j.encode(root) return s or err");
    CHECK_EQ_STR(r, "json: nesting deeper than 1000 (or a cycle)");
    lua_close(L);
}

/* Every strict prefix of a document is an error (never a crash, never a
 * silently shorter value), and random byte flips never crash: whatever
 * decodes re-encodes to something that decodes again. */
static void test_truncations_and_mutations(void)
{
    const char *doc = "{\"a\":[1,-2.5e-3,true,false,null,\"x\\\"\\u00e9\\ud83d\\ude00\"],"
                      "\"b\":{\"c\":{}},\"d\":[],\"e\":12345678901234567890}";
    size_t n = strlen(doc);
    lua_State *L = new_state();
    char err[160];
    for (size_t i = 0; i < n; i++) {
        char *p = malloc(i ? i : 1);
        memcpy(p, doc, i);
        int rc = sl_json_decode(L, p, i, err, sizeof err);
        free(p);
        CHECK(rc == SL_EPARSE);
        CHECK(lua_gettop(L) == 0);
    }
    srand(12345);
    char *m = malloc(n);
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(m, doc, n);
        for (int k = 1 + rand() % 3; k > 0; k--)
            m[rand() % n] = (char)(rand() % 256);
        const char *got = c_roundtrip(L, m, n);
        CHECK(strncmp(got, "stack", 5) != 0);
        if (strncmp(got, "json:", 5) != 0) {
            char again[4096];
            snprintf(again, sizeof again, "%s", got);
            CHECK_EQ_STR(c_roundtrip(L, again, strlen(again)), again);
        }
    }
    free(m);
    lua_close(L);
}

static void test_lua_api_from_c(void)
{
    lua_State *L = new_state();
    CHECK_EQ_STR(run(L, "local j = require 'sluice.json'\n"
                        "local v = assert(j.decode('[12345678901234567890]'))\n"
                        "return getmetatable(v[1]) == j.number_mt and tostring(v[1])"),
                 "12345678901234567890");
    CHECK_EQ_STR(run(L, "local j = require 'sluice.json'\n"
                        "return j.encode({ s = '\\226\\128\\168</script>\\127' })"),
                 "{\"s\":\"\xe2\x80\xa8</script>\x7f\"}");
    CHECK_EQ_STR(run(L, "local j = require 'sluice.json'\n"
                        "return select(2, j.encode({ [1] = 'a', ['1'] = 'b' }))"),
                 "json: duplicate key \"1\" (number and string keys)");
    CHECK_EQ_STR(run(L, "local j = require 'sluice.json' return select(2, j.decode(42))"),
                 "json: cannot decode a number (expected a string)");
    lua_close(L);
}

/* ---- benchmark (not a test) ---------------------------------------------------------------- */

static const char *bench_doc_lua =
    "local j = require 'sluice.json'\n"
    "local target = ...\n"
    "local code = {}\n"
    "for i = 1, 40 do code[i] = ('    local x%d = foo(\"bar\", %d) -- tab\\there \\\\ \"q\"\\n'):format(i, i) end\n"
    "code = table.concat(code)\n"
    "local tools = {}\n"
    "for i = 1, 20 do tools[i] = { name = 'tool_' .. i, description = ('Runs a thing. '):rep(20),\n"
    "  input_schema = { type = 'object', required = j.array(), additionalProperties = false,\n"
    "    properties = { path = { type = 'string', description = 'file path' },\n"
    "      limit = { type = 'integer', minimum = 1 }, opts = { type = 'array', items = { type = 'string' } } } } } end\n"
    "local msgs = j.array()\n"
    "local body = { model = 'claude-sonnet-4-5', max_tokens = 32000, temperature = 0.7, stream = true,\n"
    "  system = j.array({ { type = 'text', text = ('You are a coding agent. '):rep(50) } }), tools = tools, messages = msgs }\n"
    "local i = 0\n"
    "while #j.encode(body) < target do i = i + 1\n"
    "  msgs[#msgs + 1] = { role = 'assistant', content = j.array({ { type = 'text', text = 'Let me look at that file: caf\\195\\169 \\226\\156\\147' },\n"
    "    { type = 'tool_use', id = 'toolu_' .. i, name = 'read', input = { path = '/src/file' .. i .. '.lua', limit = 2000 } } }) }\n"
    "  msgs[#msgs + 1] = { role = 'user', content = j.array({ { type = 'tool_result', tool_use_id = 'toolu_' .. i,\n"
    "    content = code, is_error = false, cache_control = { type = 'ephemeral' } } }) }\n"
    "end\n"
    "return j.encode(body)";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: robust on a busy box */
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bench(size_t target)
{
    lua_State *L = new_state();
    if (luaL_loadstring(L, bench_doc_lua))
        return fprintf(stderr, "%s\n", lua_tostring(L, -1)), 1;
    lua_pushinteger(L, (lua_Integer)target);
    if (lua_pcall(L, 1, 1, 0))
        return fprintf(stderr, "%s\n", lua_tostring(L, -1)), 1;
    size_t n;
    const char *doc = lua_tolstring(L, -1, &n);
    char err[160];
    sl_buf_t out;
    sl_buf_init(&out, 0);
    int iters = 300;
    double dec = 1e9, enc = 1e9;
    for (int round = 0; round < 10; round++) {
        double t0 = now_s();
        for (int i = 0; i < iters; i++) {
            if (sl_json_decode(L, doc, n, err, sizeof err))
                return fprintf(stderr, "%s\n", err), 1;
            lua_pop(L, 1);
        }
        double t1 = now_s();
        sl_json_decode(L, doc, n, err, sizeof err);
        lua_gc(L, LUA_GCCOLLECT, 0);
        double t2 = now_s();
        for (int i = 0; i < iters; i++) {
            out.len = 0;
            if (sl_json_encode_value(L, -1, &out, err, sizeof err))
                return fprintf(stderr, "%s\n", err), 1;
        }
        double t3 = now_s();
        lua_pop(L, 1);
        if ((t1 - t0) / iters < dec)
            dec = (t1 - t0) / iters;
        if ((t3 - t2) / iters < enc)
            enc = (t3 - t2) / iters;
    }
    int same = out.len == n && memcmp(out.base, doc, n) == 0;
    printf("body %zu bytes (re-encode identical: %s)\n", n, same ? "yes" : "no");
    printf("decode %.3f ms  %.0f MB/s (incl. GC of the decoded tables)\n", dec * 1e3, n / dec / 1e6);
    printf("encode %.3f ms  %.0f MB/s\n", enc * 1e3, n / enc / 1e6);
    sl_buf_free(&out);
    lua_close(L);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return bench(argc > 2 ? (size_t)atol(argv[2]) : 300000);
    RUN(test_c_api_roundtrip);
    RUN(test_c_api_errors_leave_stack_alone);
    RUN(test_shared_metatables);
    RUN(test_buffer_limit);
    RUN(test_unterminated_input);
    RUN(test_huge_object_and_array);
    RUN(test_deep_and_wide);
    RUN(test_truncations_and_mutations);
    RUN(test_lua_api_from_c);
    return TEST_SUMMARY();
}
