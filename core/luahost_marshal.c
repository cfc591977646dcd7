/*
 * luahost_marshal.c — C values into Lua tables and Lua tables back into C.
 *
 * Everything a hook receives is built here (the request's ctx, header maps,
 * event batches, the outcome of finish, the failure of retry) and everything
 * a hook returns is read here (plans, responses, log fields). What Lua
 * returns is copied into C-owned memory before the call's stack is popped:
 * a string taken from the VM is only valid while the VM still holds it, and
 * the next hook call may collect it.
 *
 * Header values from Lua are checked for CR, LF and NUL here, the one place
 * every header from a script passes through, so no script can split a
 * request or a response.
 */
#include <lauxlib.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "luahost_int.h"

/* ---- scalars ---- */

char *sl__lua_dup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

char *sl__lua_field_str(lua_State *L, int idx, const char *key, sl_arena_t *a)
{
    char *out = NULL;
    lua_getfield(L, idx, key);
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        out = sl_arena_strndup(a, s, n);
    }
    lua_pop(L, 1);
    return out;
}

double sl__lua_field_num(lua_State *L, int idx, const char *key, double dflt)
{
    lua_getfield(L, idx, key);
    double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

int sl__lua_field_bool(lua_State *L, int idx, const char *key, int dflt)
{
    lua_getfield(L, idx, key);
    int v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

uint64_t sl__secs_to_ms(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1000.0 + 0.5);
}

int sl__lua_append_string(lua_State *L, int idx, sl_buf_t *out, int *has)
{
    if (has)
        *has = 0;
    if (lua_type(L, idx) != LUA_TSTRING)
        return 0;
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (has)
        *has = 1;
    return sl_buf_append(out, s, n);
}

int sl__lua_read_body(lua_State *L, int idx, sl_buf_t *out, int *has)
{
    lua_getfield(L, idx, "body");
    int rc = sl__lua_append_string(L, -1, out, has);
    lua_pop(L, 1);
    return rc;
}

/* t[key] = v for the table at the top of the stack. */
static void set_lstr(lua_State *L, const char *key, const char *v, size_t n)
{
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, key);
}

static void set_str(lua_State *L, const char *key, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, key);
}

static void set_bool(lua_State *L, const char *key, int v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, key);
}

static void set_int(lua_State *L, const char *key, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, key);
}

/* Reads a struct's optional strings into an arena through a table of
 * {key, offset} rows, one row per field. */
typedef struct {
    const char *key;
    size_t off;
} str_field_t;

#define STR_MEMBER(obj, f) ((char **)((char *)(obj) + (f).off))

static void str_fields_read(lua_State *L, int idx, void *obj, const str_field_t *f, size_t n,
                            sl_arena_t *a)
{
    for (size_t i = 0; i < n; i++)
        *STR_MEMBER(obj, f[i]) = sl__lua_field_str(L, idx, f[i].key, a);
}

/* ---- headers ---- */

sl_header_t *sl__headers_copy(sl_arena_t *a, const sl_header_t *hv, size_t n)
{
    sl_header_t *out = sl_arena_alloc(a, (n ? n : 1) * sizeof *out);
    for (size_t i = 0; i < n && out; i++) {
        char *name = sl_arena_strndup(a, hv[i].name.base, hv[i].name.len);
        char *value = sl_arena_strndup(a, hv[i].value.base, hv[i].value.len);
        if (!name || !value)
            return NULL;
        out[i].name = sl_str(name, hv[i].name.len);
        out[i].value = sl_str(value, hv[i].value.len);
    }
    return out;
}

int sl__headers_read(lua_State *L, int idx, sl_arena_t *a, sl_header_t **out, size_t *nout,
                     char *err, size_t errlen)
{
    *out = NULL;
    *nout = 0;
    if (lua_isnil(L, idx))
        return 0;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "headers must be a table");
        return SL_ESCRIPT;
    }
    size_t cap = 16, n = 0;
    sl_header_t *hv = sl_arena_alloc(a, cap * sizeof *hv);
    if (!hv)
        return SL_ENOMEM;
    int array = lua_objlen(L, idx) > 0;
    lua_pushnil(L);
    while (lua_next(L, idx < 0 ? idx - 1 : idx)) {
        const char *name, *value;
        size_t nl, vl;
        if (array) {
            if (!lua_istable(L, -1)) {
                lua_pop(L, 1);
                continue;
            }
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
        } else {
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
        }
        /* Either way: key, value, name, value — four slots to pop. */
        name = lua_tolstring(L, -2, &nl);
        value = lua_tolstring(L, -1, &vl);
        if (!name || !value || nl == 0 || sl_http_has_ctl(sl_str(name, nl)) ||
            sl_http_has_ctl(sl_str(value, vl))) {
            snprintf(err, errlen, "invalid header %s (empty, or contains CR/LF/NUL)",
                     name ? name : "(non-string)");
            lua_pop(L, 4);
            return SL_ESCRIPT;
        }
        if (n == cap) { /* the old list stays in the arena until it is freed */
            sl_header_t *nh = sl_arena_alloc(a, cap * 2 * sizeof *hv);
            if (!nh) {
                lua_pop(L, 4);
                return SL_ENOMEM;
            }
            memcpy(nh, hv, n * sizeof *hv);
            hv = nh;
            cap *= 2;
        }
        char *nc = sl_arena_strndup(a, name, nl), *vc = sl_arena_strndup(a, value, vl);
        lua_pop(L, 3);
        if (!nc || !vc) {
            lua_pop(L, 1);
            return SL_ENOMEM;
        }
        hv[n].name = sl_str(nc, nl);
        hv[n].value = sl_str(vc, vl);
        n++;
    }
    *out = hv;
    *nout = n;
    return 0;
}

void sl__headers_push(lua_State *L, const sl_header_t *hv, size_t n)
{
    lua_createtable(L, 0, (int)n);
    char lower[256];
    for (size_t i = 0; i < n; i++) {
        size_t nl = hv[i].name.len < sizeof lower ? hv[i].name.len : sizeof lower - 1;
        for (size_t k = 0; k < nl; k++) {
            char ch = hv[i].name.base[k];
            lower[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        lua_pushlstring(L, lower, nl);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, hv[i].value.base, hv[i].value.len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, hv[i].value.base, hv[i].value.len);
        }
        lua_rawset(L, -3);
    }
}

/* ---- ctx ---- */

int sl_lua_ctx_new(sl_luahost_t *h, const sl_request_t *req, const char *request_id)
{
    lua_State *L = h->L;
    lua_createtable(L, 0, 12);
    set_str(L, "id", request_id);
    set_str(L, "method", req->method);
    set_lstr(L, "path", req->path.base, req->path.len);
    set_lstr(L, "query", req->query.base, req->query.len);
    sl__headers_push(L, req->headers, req->nheaders);
    lua_setfield(L, -2, "headers");
    set_lstr(L, "body", req->body.base, req->body.len);
    set_str(L, "peer", req->peer);
    if (req->error_status)
        set_int(L, "reject_status", req->error_status);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

void sl_lua_ctx_free(sl_luahost_t *h, int ctx)
{
    luaL_unref(h->L, LUA_REGISTRYINDEX, ctx);
}

void sl_lua_ctx_set(sl_luahost_t *h, int ctx, const char *key, sl_str_t value)
{
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, ctx);
    set_lstr(h->L, key, value.base, value.len);
    lua_pop(h->L, 1);
}

/* ---- event batches ---- */

/* The batch is built on the VM's stack: begin pushes it, add fills it, and
 * sl_lua_events_flush (luahost.c) hands it to the hook and pops it. */
void sl_lua_events_begin(sl_luahost_t *h)
{
    lua_createtable(h->L, 8, 0);
    h->batch_n = 0;
}

void sl_lua_events_add(sl_luahost_t *h, const sl_sse_event_t *ev)
{
    lua_State *L = h->L;
    lua_createtable(L, 0, 2);
    if (ev->event.len)
        set_lstr(L, "event", ev->event.base, ev->event.len);
    set_lstr(L, "data", ev->data.base, ev->data.len);
    lua_rawseti(L, -2, ++h->batch_n);
}

/* ---- plans and responses ---- */

/* The plan's names, for the record and the access log. */
static const str_field_t PLAN_NAMES[] = {
    {"service", offsetof(sl_plan_t, service)},   {"client", offsetof(sl_plan_t, client)},
    {"route", offsetof(sl_plan_t, route)},       {"supplier", offsetof(sl_plan_t, supplier)},
    {"model_in", offsetof(sl_plan_t, model_in)}, {"model_out", offsetof(sl_plan_t, model_out)},
};
#define NPLAN_NAMES (sizeof PLAN_NAMES / sizeof PLAN_NAMES[0])

void sl_plan_free(sl_plan_t *p)
{
    sl_arena_free(&p->arena);
    sl_buf_free(&p->body);
    memset(p, 0, sizeof *p);
}

void sl_lua_resp_free(sl_lua_resp_t *r)
{
    sl_arena_free(&r->arena);
    sl_buf_free(&r->body);
    memset(r, 0, sizeof *r);
}

int sl_lua_resp_set_head(sl_lua_resp_t *r, int status, const sl_header_t *hv, size_t n)
{
    sl_lua_resp_free(r);
    r->status = status;
    if (!(r->headers = sl__headers_copy(&r->arena, hv, n)))
        return SL_ENOMEM;
    r->nheaders = n;
    return 0;
}

int sl__resp_read(lua_State *L, int idx, sl_lua_resp_t *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    sl_buf_init(&r->body, 0);
    r->status = (int)sl__lua_field_num(L, idx, "status", 0);
    if (r->status && (r->status < 100 || r->status > 599)) {
        snprintf(err, errlen, "invalid status %d", r->status);
        return SL_ESCRIPT;
    }
    r->error = sl__lua_field_str(L, idx, "error", &r->arena);
    r->upstream_invalid = sl__lua_field_bool(L, idx, "upstream_invalid", 0);
    lua_getfield(L, idx, "headers");
    int rc = sl__headers_read(L, -1, &r->arena, &r->headers, &r->nheaders, err, errlen);
    lua_pop(L, 1);
    if (!rc)
        rc = sl__lua_read_body(L, idx, &r->body, NULL);
    return rc;
}

/* plan[field] = { { event = s } | { data = s } | { data_has = s }... } */
static void read_markers(lua_State *L, int idx, const char *field, sl_arena_t *a,
                         sl_sse_marker_t *markers, size_t *count)
{
    static const struct {
        const char *key;
        sl_sse_mark_kind_t kind;
    } kinds[] = {{"event", SL_SSE_MARK_EVENT},
                 {"data", SL_SSE_MARK_DATA},
                 {"data_has", SL_SSE_MARK_DATA_HAS}};
    lua_getfield(L, idx, field);
    if (lua_istable(L, -1)) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 1; i <= n && *count < SL_PLAN_MAX_MARKERS; i++) {
            lua_rawgeti(L, -1, (int)i);
            for (size_t k = 0; k < 3 && lua_istable(L, -1); k++) {
                char *v = sl__lua_field_str(L, -1, kinds[k].key, a);
                if (v) {
                    markers[*count].kind = kinds[k].kind;
                    markers[*count].value = sl_str_c(v);
                    (*count)++;
                    break;
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* plan.timeouts = { connect?, first_byte?, idle?, total? } (seconds) over
 * the config's; what the plan leaves out stays the config's. */
static void read_timeouts(lua_State *L, int idx, sl_plan_t *p, const sl_config_t *cfg)
{
    p->t_connect = cfg->t_connect;
    p->t_first_byte = cfg->t_first_byte;
    p->t_idle = cfg->t_idle;
    p->t_total = cfg->t_total;
    lua_getfield(L, idx, "timeouts");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        p->t_connect = sl__secs_to_ms(sl__lua_field_num(L, t, "connect", p->t_connect / 1000.0));
        p->t_first_byte =
            sl__secs_to_ms(sl__lua_field_num(L, t, "first_byte", p->t_first_byte / 1000.0));
        p->t_idle = sl__secs_to_ms(sl__lua_field_num(L, t, "idle", p->t_idle / 1000.0));
        p->t_total = sl__secs_to_ms(sl__lua_field_num(L, t, "total", p->t_total / 1000.0));
    }
    lua_pop(L, 1);
}

int sl__plan_read(lua_State *L, int idx, sl_plan_t *p, const sl_config_t *cfg, char *err,
                  size_t errlen)
{
    memset(p, 0, sizeof *p);
    sl_buf_init(&p->body, 0);
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "request hook returned %s, expected a table", luaL_typename(L, idx));
        return SL_ESCRIPT;
    }
    str_fields_read(L, idx, p, PLAN_NAMES, NPLAN_NAMES, &p->arena);
    p->status = (int)sl__lua_field_num(L, idx, "status", 0);
    lua_getfield(L, idx, "headers");
    int rc = sl__headers_read(L, -1, &p->arena, &p->headers, &p->nheaders, err, errlen);
    lua_pop(L, 1);
    if (rc)
        return rc;
    int has_body;
    if ((rc = sl__lua_read_body(L, idx, &p->body, &has_body)))
        return rc;
    if (p->status) { /* a direct response */
        if (p->status < 100 || p->status > 599) {
            snprintf(err, errlen, "invalid status %d", p->status);
            return SL_ESCRIPT;
        }
        p->direct = 1;
        p->error = sl__lua_field_str(L, idx, "error", &p->arena);
        return 0;
    }
    p->url = sl__lua_field_str(L, idx, "url", &p->arena);
    if (!p->url) {
        snprintf(err, errlen, "plan has neither `status` nor `url`");
        return SL_ESCRIPT;
    }
    p->method = sl__lua_field_str(L, idx, "method", &p->arena);
    if (!p->method)
        p->method = sl_arena_strndup(&p->arena, "POST", 4);
    p->body_original = !has_body;
    p->stream = sl__lua_field_bool(L, idx, "stream", 0);
    p->transform = sl__lua_field_bool(L, idx, "transform", 0);
    p->verify_tls = sl__lua_field_bool(L, idx, "verify_tls", 1);
    read_markers(L, idx, "terminal", &p->arena, p->markers, &p->nmarkers);
    read_markers(L, idx, "usage_events", &p->arena, p->usage_markers, &p->nusage_markers);
    read_timeouts(L, idx, p, cfg);
    return 0;
}

/* ---- what finish and retry are told ---- */

void sl__outcome_push(lua_State *L, const sl_lua_outcome_t *o)
{
    lua_createtable(L, 0, 8);
    set_str(L, "reason", o->reason);
    set_bool(L, "expected", o->expected);
    set_bool(L, "partial", o->partial);
    set_bool(L, "committed", o->committed);
    set_int(L, "status", o->upstream_status);
    set_str(L, "detail", o->detail ? o->detail : "");
    set_bool(L, "sse", o->sse);
    lua_pushnumber(L, (lua_Number)o->events);
    lua_setfield(L, -2, "events");
}

void sl__failure_push(lua_State *L, const sl_lua_failure_t *f)
{
    lua_createtable(L, 0, 5);
    set_str(L, "kind", f->kind);
    set_int(L, "status", f->status);
    sl__headers_push(L, f->headers, f->nheaders);
    lua_setfield(L, -2, "headers");
    if (f->reason)
        set_str(L, "reason", f->reason);
    if (f->detail)
        set_str(L, "detail", f->detail);
}

/* ---- log fields ---- */

static const str_field_t LOG_STRINGS[] = {
    {"model_out", offsetof(sl_lua_logfields_t, model_out)},
    {"extra_json", offsetof(sl_lua_logfields_t, extra_json)},
    {"request_body", offsetof(sl_lua_logfields_t, request_body)},
    {"response_body", offsetof(sl_lua_logfields_t, response_body)},
    {"service", offsetof(sl_lua_logfields_t, service)},
    {"client", offsetof(sl_lua_logfields_t, client)},
    {"model_in", offsetof(sl_lua_logfields_t, model_in)},
    {"gateway_key", offsetof(sl_lua_logfields_t, gateway_key)},
};
#define NLOG_STRINGS (sizeof LOG_STRINGS / sizeof LOG_STRINGS[0])

void sl__logfields_init(sl_lua_logfields_t *f)
{
    memset(f, 0, sizeof *f);
    f->input_tokens = f->output_tokens = -1;
    f->cache_read_tokens = f->cache_write_tokens = -1;
    f->cost = -1;
}

void sl_lua_logfields_free(sl_lua_logfields_t *f)
{
    sl_arena_free(&f->arena);
    memset(f, 0, sizeof *f);
}

static int64_t field_count(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    int64_t v = lua_isnumber(L, -1) ? (int64_t)lua_tonumber(L, -1) : -1;
    lua_pop(L, 1);
    return v;
}

void sl__logfields_read(lua_State *L, int idx, sl_lua_logfields_t *f)
{
    f->input_tokens = field_count(L, idx, "input_tokens");
    f->output_tokens = field_count(L, idx, "output_tokens");
    f->cache_read_tokens = field_count(L, idx, "cache_read_tokens");
    f->cache_write_tokens = field_count(L, idx, "cache_write_tokens");
    lua_getfield(L, idx, "cost");
    f->cost = lua_isnumber(L, -1) && lua_tonumber(L, -1) >= 0 ? lua_tonumber(L, -1) : -1;
    lua_pop(L, 1);
    str_fields_read(L, idx, f, LOG_STRINGS, NLOG_STRINGS, &f->arena);
}
