/*
 * luahost_config.c — the settings the C core reads, from the config view.
 *
 * lua/sluice/config.lua validates the config and fills in every default;
 * config.core_view() flattens what C needs into one table, which host.init
 * returns. This file copies that table into sl_config_t, and nothing more:
 * it has no default of its own. A field the view lacks, or one of the wrong
 * type, fails the load with a message naming it — a view and a reader that
 * drifted apart must stop sluice, not quietly run it on a number nobody set.
 *
 * The reader is a table (FIELDS below): one row per setting, saying which
 * view key lands in which sl_config_t member and how it is converted. The
 * same table frees and copies the strings, so a new setting is one row here.
 */
#include <lauxlib.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "luahost_int.h"

typedef enum {
    F_ADDRS, /* array of "host:port" strings -> listen, nlisten */
    F_INT,   /* number -> int */
    F_SIZE,  /* number -> size_t */
    F_U64,   /* number -> uint64_t */
    F_MS,    /* seconds -> uint64_t milliseconds */
    F_BOOL,  /* boolean -> int */
    F_STR,   /* string -> char * (owned) */
    F_NONE,  /* string, or false for "none" -> char * (owned) or NULL */
} kind_t;

#define AT(member) offsetof(sl_config_t, member)

static const struct {
    const char *key;
    kind_t kind;
    size_t off;
} FIELDS[] = {
    {"listen", F_ADDRS, AT(listen)},
    {"workers", F_INT, AT(workers)},
    {"max_body", F_SIZE, AT(limits.max_body)},
    {"max_header", F_SIZE, AT(limits.max_header)},
    {"max_headers", F_SIZE, AT(limits.max_headers_count)},
    {"header_timeout", F_MS, AT(limits.header_timeout_ms)},
    {"body_timeout", F_MS, AT(limits.body_timeout_ms)},
    {"body_total_timeout", F_MS, AT(limits.body_total_timeout_ms)},
    {"keepalive_timeout", F_MS, AT(limits.keepalive_timeout_ms)},
    {"max_connections", F_SIZE, AT(limits.max_connections)},
    {"connect_timeout", F_MS, AT(t_connect)},
    {"first_byte_timeout", F_MS, AT(t_first_byte)},
    {"idle_timeout", F_MS, AT(t_idle)},
    {"total_timeout", F_MS, AT(t_total)},
    {"max_event", F_SIZE, AT(max_event)},
    {"max_response", F_SIZE, AT(max_response)},
    {"script_budget", F_U64, AT(script_budget)},
    {"shutdown_timeout", F_MS, AT(shutdown_timeout_ms)},
    {"access_log", F_STR, AT(access_log)},
    {"log_level", F_STR, AT(log_level)},
    {"admin_token", F_NONE, AT(admin_token)},
    {"history_path", F_NONE, AT(history_path)},
    {"history_max", F_INT, AT(history_max)},
    {"history_bodies", F_BOOL, AT(history_bodies)},
    {"watch_usage", F_BOOL, AT(watch_usage)},
    {"ops_code", F_BOOL, AT(ops_code)},
};

#define NFIELDS (sizeof FIELDS / sizeof FIELDS[0])
#define MEMBER(c, i, type) ((type *)((char *)(c) + FIELDS[i].off))
#define CMEMBER(c, i, type) ((type const *)((const char *)(c) + FIELDS[i].off))

static int is_string_kind(kind_t k)
{
    return k == F_STR || k == F_NONE;
}

void sl_config_free(sl_config_t *c)
{
    for (size_t i = 0; i < c->nlisten; i++) {
        free(c->listen[i]);
        if (c->tls_cert)
            free(c->tls_cert[i]);
        if (c->tls_key)
            free(c->tls_key[i]);
    }
    free(c->listen);
    free(c->tls_cert);
    free(c->tls_key);
    for (size_t i = 0; i < NFIELDS; i++)
        if (is_string_kind(FIELDS[i].kind))
            free(*MEMBER(c, i, char *));
    memset(c, 0, sizeof *c);
}

static int read_addrs(lua_State *L, sl_config_t *c, const char *key, char *err, size_t errlen)
{
    size_t n = lua_objlen(L, -1);
    c->listen = calloc(n ? n : 1, sizeof *c->listen);
    if (!c->listen)
        return SL_ENOMEM;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errlen, "config.core_view: %s[%zu] is %s, expected a string", key, i,
                     luaL_typename(L, -1));
            lua_pop(L, 1);
            return SL_ECONFIG;
        }
        c->listen[c->nlisten] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!c->listen[c->nlisten])
            return SL_ENOMEM;
        c->nlisten++;
    }
    return 0;
}

/* `listen_tls`: one entry per listener, { cert, key } or false (plain). It
 * is read after `listen`, whose length it must match. */
static int read_listen_tls(lua_State *L, int idx, sl_config_t *c, char *err, size_t errlen)
{
    c->tls_cert = calloc(c->nlisten ? c->nlisten : 1, sizeof *c->tls_cert);
    c->tls_key = calloc(c->nlisten ? c->nlisten : 1, sizeof *c->tls_key);
    if (!c->tls_cert || !c->tls_key)
        return SL_ENOMEM;
    lua_getfield(L, idx, "listen_tls");
    int rc = 0;
    if (!lua_istable(L, -1) || lua_objlen(L, -1) != c->nlisten) {
        snprintf(err, errlen, "config.core_view: listen_tls is missing or not one entry a listener");
        rc = SL_ECONFIG;
    }
    for (size_t i = 0; i < c->nlisten && !rc; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "cert");
            lua_getfield(L, -2, "key");
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                snprintf(err, errlen, "config.core_view: listen_tls[%zu] lacks cert or key", i + 1);
                rc = SL_ECONFIG;
            } else if (!(c->tls_cert[i] = strdup(lua_tostring(L, -2))) ||
                       !(c->tls_key[i] = strdup(lua_tostring(L, -1)))) {
                rc = SL_ENOMEM;
            }
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

/* The value of FIELDS[i] is on top of the stack. */
static int read_field(lua_State *L, size_t i, sl_config_t *c, char *err, size_t errlen)
{
    static const char *const want[] = {
        [F_ADDRS] = "a table", [F_INT] = "a number",
        [F_SIZE] = "a number", [F_U64] = "a number",
        [F_MS] = "a number",   [F_BOOL] = "a boolean",
        [F_STR] = "a string",  [F_NONE] = "a string or false",
    };
    static const int type_of[] = {
        [F_ADDRS] = LUA_TTABLE, [F_INT] = LUA_TNUMBER,  [F_SIZE] = LUA_TNUMBER,
        [F_U64] = LUA_TNUMBER,  [F_MS] = LUA_TNUMBER,   [F_BOOL] = LUA_TBOOLEAN,
        [F_STR] = LUA_TSTRING,  [F_NONE] = LUA_TSTRING,
    };
    kind_t k = FIELDS[i].kind;
    int t = lua_type(L, -1);
    if (k == F_NONE && t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        *MEMBER(c, i, char *) = NULL;
        return 0;
    }
    if (t != type_of[k]) {
        snprintf(err, errlen, "config.core_view: %s is %s, expected %s", FIELDS[i].key,
                 t == LUA_TNIL ? "missing" : lua_typename(L, t), want[k]);
        return SL_ECONFIG;
    }
    double v = t == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
    switch (k) {
    case F_ADDRS:
        return read_addrs(L, c, FIELDS[i].key, err, errlen);
    case F_INT:
        *MEMBER(c, i, int) = (int)v;
        break;
    case F_SIZE:
        *MEMBER(c, i, size_t) = (size_t)v;
        break;
    case F_U64:
        *MEMBER(c, i, uint64_t) = (uint64_t)v;
        break;
    case F_MS:
        *MEMBER(c, i, uint64_t) = sl__secs_to_ms(v);
        break;
    case F_BOOL:
        *MEMBER(c, i, int) = lua_toboolean(L, -1);
        break;
    case F_STR:
    case F_NONE: {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (!(*MEMBER(c, i, char *) = sl__lua_dup(s, n)))
            return SL_ENOMEM;
        break;
    }
    }
    return 0;
}

int sl__config_read(lua_State *L, int idx, sl_config_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (idx < 0)
        idx = lua_gettop(L) + idx + 1;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "config.core_view returned %s, expected a table",
                 luaL_typename(L, idx));
        return SL_ECONFIG;
    }
    for (size_t i = 0; i < NFIELDS; i++) {
        lua_getfield(L, idx, FIELDS[i].key);
        int rc = read_field(L, i, c, err, errlen);
        lua_pop(L, 1);
        if (rc) {
            sl_config_free(c);
            return rc;
        }
    }
    int rc = read_listen_tls(L, idx, c, err, errlen);
    if (rc)
        sl_config_free(c);
    return rc;
}

const sl_config_t *sl_luahost_config(const sl_luahost_t *h)
{
    return &h->cfg;
}

int sl_luahost_config_copy(const sl_luahost_t *h, sl_config_t *out)
{
    const sl_config_t *c = &h->cfg;
    *out = *c;
    out->nlisten = 0;
    out->listen = calloc(c->nlisten ? c->nlisten : 1, sizeof *out->listen);
    for (size_t i = 0; i < NFIELDS; i++)
        if (is_string_kind(FIELDS[i].kind))
            *MEMBER(out, i, char *) = NULL;
    out->tls_cert = calloc(c->nlisten ? c->nlisten : 1, sizeof *out->tls_cert);
    out->tls_key = calloc(c->nlisten ? c->nlisten : 1, sizeof *out->tls_key);
    int rc = out->listen && out->tls_cert && out->tls_key ? 0 : SL_ENOMEM;
    for (size_t i = 0; i < c->nlisten && !rc; i++) {
        if (!(out->listen[i] = strdup(c->listen[i])))
            rc = SL_ENOMEM;
        else
            out->nlisten++;
        if (c->tls_cert[i] && (!(out->tls_cert[i] = strdup(c->tls_cert[i])) ||
                               !(out->tls_key[i] = strdup(c->tls_key[i]))))
            rc = SL_ENOMEM;
    }
    for (size_t i = 0; i < NFIELDS && !rc; i++) {
        if (!is_string_kind(FIELDS[i].kind))
            continue;
        const char *s = *CMEMBER(c, i, char *);
        if (s && !(*MEMBER(out, i, char *) = strdup(s)))
            rc = SL_ENOMEM;
    }
    if (rc)
        sl_config_free(out);
    return rc;
}
