/*
 * test_luahost.c — the worker's LuaJIT host (core/luahost.h).
 *
 * Two kinds of host are built here. Config checks and the instruction
 * budget run against the real library (lua/): a bad config must be refused
 * with a message naming the field, and an ops-written on_request hook that
 * loops forever must be stopped even though LuaJIT would compile the loop
 * (the loader runs ops code with the JIT off). Everything else runs against
 * a small stand-in host glue in tests/fixtures/luahost/lua/sluice/host.lua
 * whose hooks do one thing per request path, so each case can check what C
 * hands to Lua (ctx fields, lower-cased headers, batches of events) and what
 * it copies back (plans, heads, bytes), that errors come back as SL_ESCRIPT
 * or SL_EBUDGET with a traceback and leave the host usable, that header
 * values with CR/LF never make it out, that sleeping request coroutines
 * resume from the loop, and that a host released by a reload stays alive
 * for the request still running on it.
 *
 * The loop is a real uv loop driven by the test; a watchdog alarm turns a
 * hang (a budget that does not fire) into a failure instead of a stuck run.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "error.h"
#include "luahost.h"
#include "server.h"
#include "sse.h"
#include "test_helpers.h"
#include "upstream.h"

#define FIXTURE_LUA "tests/fixtures/luahost/lua"

static uv_loop_t loop;
static sl_upstream_t *up;
static char tmpdir[] = "/tmp/sluice-test-luahost-XXXXXX";

/* ---- helpers ---- */

/* Writes a config file into the temp dir; returns its path (static). */
static const char *write_config(const char *text)
{
    static char path[256];
    static int seq;
    snprintf(path, sizeof path, "%s/config%d.lua", tmpdir, ++seq);
    FILE *f = fopen(path, "w");
    if (!f)
        return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

static int new_host(sl_luahost_t **h, const char *lua_dir, const char *config_text, char *err,
                    size_t errlen)
{
    sl_luahost_opts_t o = {
        .config_path = write_config(config_text),
        .lua_dir = lua_dir,
        .worker_id = 1,
        .loop = &loop,
        .upstream = up,
    };
    err[0] = '\0';
    *h = NULL;
    return sl_luahost_new(h, &o, err, errlen);
}

/* A host on the fixture glue whose config says only its name. */
static sl_luahost_t *fixture_host(const char *name)
{
    char text[256], err[1024];
    snprintf(text, sizeof text, "return { name = %s, spin = function() while true do end end }",
             name);
    sl_luahost_t *h;
    int rc = new_host(&h, FIXTURE_LUA, text, err, sizeof err);
    if (rc) {
        fprintf(stderr, "  fixture host failed: %s\n", err);
        return NULL;
    }
    return h;
}

/* A host on config in lua_dir; NULL, with the case failed and the error
 * shown, when it will not load. */
static sl_luahost_t *loaded_host(const char *lua_dir, const char *config)
{
    sl_luahost_t *h;
    char err[1024];
    int rc = new_host(&h, lua_dir, config, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    if (rc) {
        fprintf(stderr, "  %s\n", err);
        return NULL;
    }
    return h;
}

/* config must be refused (SL_ECONFIG, no host) with an error that names
 * `needle`, and `where` too unless it is NULL. */
static void expect_refused(const char *lua_dir, const char *config, const char *where,
                           const char *needle)
{
    sl_luahost_t *h;
    char err[1024];
    int rc = new_host(&h, lua_dir, config, err, sizeof err);
    CHECK_EQ_INT(rc, SL_ECONFIG);
    CHECK(h == NULL);
    if (where)
        CHECK_STR_HAS(err, where);
    CHECK_STR_HAS(err, needle);
    if (rc == 0)
        sl_luahost_release(h);
}

typedef struct {
    int called;
    int rc;
    sl_plan_t plan;
    char err[4096];
} done_t;

static void on_done(void *ud, int rc, sl_plan_t *plan, const char *err)
{
    done_t *d = ud;
    d->called++;
    d->rc = rc;
    if (plan)
        d->plan = *plan; /* the plan is ours now */
    snprintf(d->err, sizeof d->err, "%s", err ? err : "");
}

static void done_free(done_t *d)
{
    if (d->called && d->rc == 0)
        sl_plan_free(&d->plan);
}

static sl_request_t make_req(const char *method, const char *path, const char *query,
                             sl_header_t *hv, size_t n, sl_str_t body)
{
    sl_request_t r;
    memset(&r, 0, sizeof r);
    r.method = method;
    r.path = sl_str_c(path);
    r.query = sl_str_c(query);
    r.url = r.path;
    r.headers = hv;
    r.nheaders = n;
    r.body = body;
    r.peer = "127.0.0.1:5555";
    r.keep_alive = 1;
    return r;
}

/* Runs the loop until the task reported (or nothing is left to run). */
static void wait_done(done_t *d)
{
    while (!d->called)
        if (uv_run(&loop, UV_RUN_ONCE) == 0 && !d->called)
            break;
}

/* Runs the request hook for a simple request and waits for its plan. */
static void run_request(sl_luahost_t *h, const char *method, const char *path, const char *query,
                        const char *body, done_t *d)
{
    memset(d, 0, sizeof *d);
    sl_request_t req = make_req(method, path, query, NULL, 0, sl_str_c(body));
    int ctx = sl_lua_ctx_new(h, &req, "req-test");
    sl_lua_task_t *task;
    int rc = sl_lua_request(h, ctx, on_done, d, &task);
    CHECK_EQ_INT(rc, 0);
    wait_done(d);
    CHECK_EQ_INT(d->called, 1);
    sl_lua_ctx_free(h, ctx);
}

/* 1 if the plan's body contains needle (the body may hold NUL bytes). */
static int body_has(const sl_plan_t *p, const char *needle, size_t n)
{
    return p->body.base && memmem(p->body.base, p->body.len, needle, n) != NULL;
}

static int plan_header(const sl_plan_t *p, const char *name, const char *value)
{
    for (size_t i = 0; i < p->nheaders; i++)
        if (sl_str_ieq_c(p->headers[i].name, name) &&
            sl_str_eq(p->headers[i].value, sl_str_c(value)))
            return 1;
    return 0;
}

/* ---- config (the real library) ---- */

static void test_config_errors_name_the_field(void)
{
    static const struct {
        const char *config, *needle;
    } rows[] = {
        {"return { listen = \"x\" }", "listen"},
        {"return { listen = { \"nohost\" } }", "listen[1]"},
        {"return { limits = { max_body = -1 } }", "limits.max_body"},
        {"return { limts = {} }", "limts"},
        {"return { suppliers = { a = { protocol = \"nope\", base_url = \"http://x\" } } }",
         "suppliers.a.protocol"},
        {"return { listen = { \"0.0.0.0:8080\" } }", "keys"},
        {"return { log = { level = \"loud\" } }", "log.level"},
        {"return {", "cannot load config"},
        {"error(\"ops typo here\")", "ops typo here"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        expect_refused("lua", rows[i].config, NULL, rows[i].needle);
}

static void test_config_missing_file(void)
{
    sl_luahost_opts_t o = {.config_path = "/nonexistent/sluice.lua", .lua_dir = "lua"};
    sl_luahost_t *h = NULL;
    char err[1024] = "";
    int rc = sl_luahost_new(&h, &o, err, sizeof err);
    CHECK_EQ_INT(rc, SL_ECONFIG);
    CHECK_STR_HAS(err, "/nonexistent/sluice.lua");
}

static void test_config_values_reach_c(void)
{
    sl_luahost_t *h = loaded_host(
        "lua",
        "return { listen = { \"127.0.0.1:7171\", \"[::1]:7172\" }, workers = 3,\n"
        "  limits = { max_body = 1000, header_timeout = 2.5, max_headers = 7 },\n"
        "  timeouts = { connect = 3, first_byte = 4 }, script_budget = 123456,\n"
        "  log = { access = \"off\", level = \"warn\" }, admin = { token = \"t0psecret\" },\n"
        "  history = false }");
    if (!h)
        return;
    const sl_config_t *c = sl_luahost_config(h);
    CHECK_EQ_INT(c->nlisten, 2);
    CHECK(c->nlisten == 2 && strcmp(c->listen[0], "127.0.0.1:7171") == 0 &&
          strcmp(c->listen[1], "[::1]:7172") == 0);
    CHECK_EQ_INT(c->workers, 3);
    CHECK_EQ_INT(c->limits.max_body, 1000);
    CHECK_EQ_INT(c->limits.max_headers_count, 7);
    CHECK_EQ_INT(c->limits.header_timeout_ms, 2500);
    CHECK_EQ_INT(c->t_connect, 3000);
    CHECK_EQ_INT(c->t_first_byte, 4000);
    CHECK_EQ_INT(c->script_budget, 123456);
    CHECK(c->access_log && strcmp(c->access_log, "off") == 0);
    CHECK(c->log_level && strcmp(c->log_level, "warn") == 0);
    CHECK(c->admin_token && strcmp(c->admin_token, "t0psecret") == 0);
    CHECK(c->history_path == NULL);

    /* The copy outlives the host (main keeps it across reloads). */
    sl_config_t copy;
    CHECK_EQ_INT(sl_luahost_config_copy(h, &copy), 0);
    sl_luahost_release(h);
    CHECK(copy.nlisten == 2 && strcmp(copy.listen[1], "[::1]:7172") == 0);
    CHECK(copy.admin_token && strcmp(copy.admin_token, "t0psecret") == 0);
    sl_config_free(&copy);
}

/* Every default lives in lua/sluice/config.lua: an empty config reaches C
 * whole, with settings that are off (admin token, history) as NULL. */
static void test_config_defaults_come_from_lua(void)
{
    sl_luahost_t *h = loaded_host("lua", "return {}");
    if (!h)
        return;
    const sl_config_t *c = sl_luahost_config(h);
    CHECK(c->nlisten == 1 && strcmp(c->listen[0], "127.0.0.1:7070") == 0);
    CHECK_EQ_INT(c->workers, 0);
    CHECK_EQ_INT(c->limits.max_body, 32 << 20);
    CHECK_EQ_INT(c->limits.max_header, 64 << 10);
    CHECK_EQ_INT(c->limits.max_headers_count, 100);
    CHECK_EQ_INT(c->limits.header_timeout_ms, 10000);
    CHECK_EQ_INT(c->limits.body_timeout_ms, 60000);
    CHECK_EQ_INT(c->limits.body_total_timeout_ms, 300000);
    CHECK_EQ_INT(c->limits.keepalive_timeout_ms, 60000);
    CHECK_EQ_INT(c->limits.max_connections, 4096);
    CHECK_EQ_INT(c->t_connect, 10000);
    CHECK_EQ_INT(c->t_first_byte, 120000);
    CHECK_EQ_INT(c->t_idle, 300000);
    CHECK_EQ_INT(c->t_total, 3600000);
    CHECK_EQ_INT(c->max_event, 4 << 20);
    CHECK_EQ_INT(c->max_response, 64 << 20);
    CHECK_EQ_INT(c->script_budget, 50000000);
    CHECK_EQ_INT(c->shutdown_timeout_ms, 30000);
    CHECK(c->access_log && strcmp(c->access_log, "stderr") == 0);
    CHECK(c->log_level && strcmp(c->log_level, "info") == 0);
    CHECK(c->admin_token == NULL);
    CHECK(c->history_path && strcmp(c->history_path, "var/history.db") == 0);
    CHECK_EQ_INT(c->history_max, 1000);
    CHECK_EQ_INT(c->history_bodies, 0);
    CHECK_EQ_INT(c->watch_usage, 0);
    sl_luahost_release(h);
}

/* C keeps no default of its own: a view that lacks a setting, or has one of
 * the wrong type, is refused with the setting's name (the fixture glue can
 * drop or replace entries of its otherwise complete view). */
static void test_config_view_must_be_complete(void)
{
    static const struct {
        const char *config, *needle;
    } rows[] = {
        {"return { name = 'A', drop = { 'max_event' } }", "max_event is missing"},
        {"return { name = 'A', drop = { 'listen' } }", "listen is missing"},
        {"return { name = 'A', drop = { 'history_bodies' } }", "history_bodies is missing"},
        {"return { name = 'A', drop = { 'admin_token' } }", "admin_token is missing"},
        {"return { name = 'A', set = { workers = 'auto' } }",
         "workers is string, expected a number"},
        {"return { name = 'A', set = { listen = { 7070 } } }", "listen[1]"},
        {"return { name = 'A', set = { admin_token = true } }", "admin_token is boolean"},
        {"return { name = 'A', set = { log_level = false } }", "log_level is boolean"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        expect_refused(FIXTURE_LUA, rows[i].config, "config.core_view", rows[i].needle);
    /* false is how a view says "none" for the settings that may be off. */
    sl_luahost_t *h = loaded_host(
        FIXTURE_LUA, "return { name = 'A', set = { admin_token = 'tok', history_path = false } }");
    if (h) {
        const sl_config_t *c = sl_luahost_config(h);
        CHECK(c->admin_token && strcmp(c->admin_token, "tok") == 0);
        CHECK(c->history_path == NULL);
        sl_luahost_release(h);
    }
}

/* ---- the budget ---- */

static void test_budget_stops_runaway_on_request(void)
{
    /* A loop LuaJIT would compile after a few dozen iterations; only the
     * loader's jit.off keeps it under the count hook. */
    sl_luahost_t *h = loaded_host(
        "lua", "return { script_budget = 2000000,\n"
               "  on_request = function(ctx) local n = 0 while true do n = n + 1 end end }");
    if (!h)
        return;
    done_t d;
    run_request(h, "POST", "/v1/chat/completions", "",
                "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &d);
    CHECK_EQ_INT(d.rc, SL_EBUDGET);
    CHECK_STR_HAS(d.err, "budget");
    CHECK_EQ_INT(sl_luahost_script_errors(h), 1);
    done_free(&d);

    /* The same host answers the next request. */
    run_request(h, "GET", "/v1/models", "", "", &d);
    CHECK_EQ_INT(d.rc, 0);
    CHECK(d.rc == 0 && d.plan.direct && d.plan.status == 200);
    done_free(&d);
    sl_luahost_release(h);
}

/* The count hook is left off for a config that runs no code ops wrote
 * (luahost.c); code that reaches the config some other way than being
 * written in its file still runs under the budget. */
static void test_budget_covers_ops_code_the_config_loads(void)
{
    const char *loop_cfg =
        write_config("return { script_budget = 2000000,\n"
                     "  on_request = function(ctx) local n = 0 while true do n = n + 1 end end }");
    char dofile_cfg[512];
    snprintf(dofile_cfg, sizeof dofile_cfg, "return dofile(\"%s\")", loop_cfg);
    const char *configs[] = {
        dofile_cfg,
        "return loadstring(\"return { script_budget = 2000000, on_request = function(ctx) "
        "while true do end end }\")()",
    };
    for (size_t i = 0; i < sizeof configs / sizeof *configs; i++) {
        sl_luahost_t *h = loaded_host("lua", configs[i]);
        if (!h)
            return;
        done_t d;
        run_request(h, "POST", "/v1/chat/completions", "",
                    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                    &d);
        CHECK_EQ_INT(d.rc, SL_EBUDGET);
        CHECK_STR_HAS(d.err, "budget");
        done_free(&d);
        sl_luahost_release(h);
    }
}

static void test_budget_stops_runaway_at_config_load(void)
{
    sl_luahost_t *h;
    char err[1024];
    int rc = new_host(&h, "lua", "while true do end", err, sizeof err);
    CHECK(rc < 0);
    CHECK(h == NULL);
    CHECK_STR_HAS(err, "budget");
}

static void test_budget_in_streaming_hook(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    sl_request_t req = make_req("POST", "/stream", "", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r1");
    sl_sse_event_t ev = {.data = SL_STR("spin")};
    sl_buf_t out;
    sl_buf_init(&out, 0);
    char err[2048];
    sl_lua_events_begin(h);
    sl_lua_events_add(h, &ev);
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), SL_EBUDGET);
    CHECK_STR_HAS(err, "budget");
    CHECK_EQ_INT(out.len, 0);

    ev.data = SL_STR("ok");
    sl_lua_events_begin(h);
    sl_lua_events_add(h, &ev);
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), 0);
    CHECK_EQ_MEM(out.base, out.len, "#2:-=ok;");
    sl_buf_free(&out);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

/* ---- the request hook ---- */

static void test_request_error_has_traceback(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    done_t d;
    run_request(h, "POST", "/error", "", "", &d);
    CHECK_EQ_INT(d.rc, SL_ESCRIPT);
    CHECK_STR_HAS(d.err, "boom from the fixture");
    CHECK_STR_HAS(d.err, "stack traceback");
    CHECK_STR_HAS(d.err, "host.lua");
    done_free(&d);

    run_request(h, "POST", "/not-a-table", "", "", &d);
    CHECK_EQ_INT(d.rc, SL_ESCRIPT);
    CHECK_STR_HAS(d.err, "expected a table");
    done_free(&d);

    run_request(h, "POST", "/bad-yield", "", "", &d);
    CHECK_EQ_INT(d.rc, SL_ESCRIPT);
    CHECK_STR_HAS(d.err, "yielded");
    done_free(&d);

    run_request(h, "POST", "/echo", "", "after", &d);
    CHECK_EQ_INT(d.rc, 0);
    CHECK_EQ_INT(sl_luahost_script_errors(h), 3);
    done_free(&d);
    sl_luahost_release(h);
}

static void test_ctx_fields_reach_lua(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    sl_header_t hv[] = {
        {SL_STR("X-Mixed-Case"), SL_STR("V1")},
        {SL_STR("X-Twice"), SL_STR("1")},
        {SL_STR("x-twice"), SL_STR("2")},
    };
    static const char body[] = "hello\0world";
    sl_request_t req = make_req("GET", "/echo", "a=1&b=2", hv, 3, sl_str(body, sizeof body - 1));
    int ctx = sl_lua_ctx_new(h, &req, "req-42");
    CHECK(ctx > 0);
    done_t d;
    memset(&d, 0, sizeof d);
    sl_lua_task_t *task;
    CHECK_EQ_INT(sl_lua_request(h, ctx, on_done, &d, &task), 0);
    wait_done(&d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        CHECK(d.plan.direct);
        CHECK_EQ_INT(d.plan.status, 200);
        CHECK(plan_header(&d.plan, "content-type", "text/plain"));
        static const char *lines[] = {
            "method=GET\n",          "path=/echo\n",       "query=a=1&b=2\n",
            "x-mixed-case=V1\n",     "X-Mixed-Case=nil\n", /* names are lower-cased */
            "x-twice=1, 2\n",                              /* repeats joined */
            "bodylen=11\n",                                /* binary-safe body */
            "peer=127.0.0.1:5555\n", "id=req-42\n",
        };
        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
            if (!body_has(&d.plan, lines[i], strlen(lines[i])))
                TH_FAIL("echo lacks %s\n", lines[i]);
        }
        CHECK(body_has(&d.plan, "body=hello\0world\n", 17));
    }
    done_free(&d);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

static void test_plan_is_copied_out(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    done_t d;
    run_request(h, "POST", "/plan", "", "client body", &d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        sl_plan_t *p = &d.plan;
        CHECK(!p->direct);
        CHECK(p->url && strcmp(p->url, "http://127.0.0.1:9/v1/messages") == 0);
        CHECK(p->method && strcmp(p->method, "PUT") == 0);
        CHECK_EQ_INT(p->nheaders, 2);
        CHECK(plan_header(p, "x-api-key", "k"));
        CHECK_EQ_MEM(p->body.base, p->body.len, "{}");
        CHECK(!p->body_original);
        CHECK(p->stream && p->transform && p->verify_tls);
        CHECK_EQ_INT(p->nmarkers, 2);
        CHECK(p->nmarkers == 2 && p->markers[0].kind == SL_SSE_MARK_EVENT &&
              sl_str_eq(p->markers[0].value, SL_STR("message_stop")) &&
              p->markers[1].kind == SL_SSE_MARK_DATA &&
              sl_str_eq(p->markers[1].value, SL_STR("[DONE]")));
        CHECK_EQ_INT(p->t_connect, 1500);
        CHECK_EQ_INT(p->t_first_byte, 2000);
        CHECK_EQ_INT(p->t_idle, sl_luahost_config(h)->t_idle); /* not in the plan: default */
        CHECK(p->service && strcmp(p->service, "claude") == 0);
        CHECK(p->supplier && strcmp(p->supplier, "s1") == 0);
        CHECK(p->model_out && strcmp(p->model_out, "b") == 0);
    }
    done_free(&d);

    /* No body in the plan: the client's body goes upstream untouched. */
    run_request(h, "POST", "/passthrough", "", "client body", &d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        CHECK(d.plan.body_original);
        CHECK(d.plan.method && strcmp(d.plan.method, "POST") == 0);
    }
    done_free(&d);
    sl_luahost_release(h);
}

static void test_crlf_header_values_rejected(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    static const char *paths[] = {"/crlf-direct", "/crlf-plan", "/crlf-name"};
    for (size_t i = 0; i < 3; i++) {
        done_t d;
        run_request(h, "POST", paths[i], "", "", &d);
        CHECK_EQ_INT(d.rc, SL_ESCRIPT);
        CHECK_STR_HAS(d.err, "CR/LF");
        done_free(&d);
    }
    /* The same check guards heads returned by the response hook. */
    sl_lua_resp_t r;
    char err[1024];
    sl_request_t req = make_req("POST", "/x", "", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r");
    sl_header_t bad[] = {{SL_STR("content-type"), SL_STR("a\nb")}};
    /* The fixture echoes the upstream content-type into a header. */
    int rc = sl_lua_response(h, ctx, 200, bad, 1, &r, err, sizeof err);
    CHECK_EQ_INT(rc, SL_ESCRIPT);
    CHECK_STR_HAS(err, "CR/LF");
    sl_lua_resp_free(&r);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

/* ---- yields ---- */

static void test_sleep_yields_and_resumes(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    done_t d;
    memset(&d, 0, sizeof d);
    sl_request_t req = make_req("GET", "/sleep", "0.05", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r");
    sl_lua_task_t *task;
    /* Timers count from the loop's cached time; in a worker the hook runs
     * inside a loop callback, where that time is current. */
    uv_update_time(&loop);
    CHECK_EQ_INT(sl_lua_request(h, ctx, on_done, &d, &task), 0);
    CHECK_EQ_INT(d.called, 0); /* suspended until the timer fires */

    /* While it sleeps the VM serves other hooks. */
    sl_lua_logfields_t lf;
    char err[256];
    CHECK_EQ_INT(sl_lua_log(h, ctx, &lf, err, sizeof err), 0);
    sl_lua_logfields_free(&lf);

    wait_done(&d);
    CHECK_EQ_INT(d.called, 1);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        double slept = -1;
        sl_buf_cstr(&d.plan.body);
        CHECK(sscanf(d.plan.body.base, "slept %lf", &slept) == 1);
        if (slept < 0.045)
            fprintf(stderr, "  slept only %.3f s\n", slept);
        CHECK(slept >= 0.045);
    }
    done_free(&d);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

static void test_cancel_sleeping_task(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    done_t d;
    memset(&d, 0, sizeof d);
    sl_request_t req = make_req("GET", "/sleep", "30", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r");
    sl_lua_task_t *task;
    CHECK_EQ_INT(sl_lua_request(h, ctx, on_done, &d, &task), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    sl_lua_task_cancel(task);
    /* Nothing may keep the loop alive for 30 s, and done never comes. */
    uint64_t t0 = uv_hrtime();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK((uv_hrtime() - t0) / 1000000 < 5000);
    CHECK_EQ_INT(d.called, 0);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

/* A one-shot supplier for sluice.http: answers one request, keeps a copy. */
typedef struct {
    int lfd, port;
    char req[4096];
    pthread_t th;
} oneshot_t;

static void *oneshot_main(void *arg)
{
    oneshot_t *o = arg;
    int fd = accept(o->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    th_recv_until(fd, o->req, sizeof o->req, "q=1", NULL);
    static const char resp[] =
        "HTTP/1.1 201 Created\r\nX-Up: yes\r\nContent-Length: 5\r\n\r\nfresh";
    th_send_all(fd, resp, sizeof resp - 1);
    close(fd);
    return NULL;
}

static void test_http_yield_resumes_with_answer(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    oneshot_t o = {0};
    o.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    CHECK(bind(o.lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(o.lfd, 4) == 0 &&
          getsockname(o.lfd, (struct sockaddr *)&sa, &len) == 0);
    o.port = ntohs(sa.sin_port);
    pthread_create(&o.th, NULL, oneshot_main, &o);

    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/token", o.port);
    done_t d;
    run_request(h, "POST", "/http", url, "", &d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        CHECK_EQ_INT(d.plan.status, 200);
        CHECK_EQ_MEM(d.plan.body.base, d.plan.body.len, "201|yes|fresh");
    }
    done_free(&d);
    pthread_join(o.th, NULL);
    close(o.lfd);
    CHECK(strncmp(o.req, "POST /token HTTP/1.1\r\n", 22) == 0);
    CHECK_STR_HAS(o.req, "\r\nx-from: lua\r\n");
    CHECK_STR_HAS(o.req, "\r\n\r\nq=1");

    /* A refused connection resumes the coroutine with nil, err. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/token", th_free_port());
    run_request(h, "POST", "/http", url, "", &d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        CHECK_EQ_INT(d.plan.status, 502);
        sl_buf_cstr(&d.plan.body);
        CHECK_STR_HAS(d.plan.body.base, "error: http request failed");
    }
    done_free(&d);
    sl_luahost_release(h);
}

/* ---- streaming and closing hooks ---- */

static void add_event(sl_luahost_t *h, const char *event, const char *data)
{
    sl_sse_event_t ev = {.event = event ? sl_str_c(event) : SL_STR_NULL, .data = sl_str_c(data)};
    sl_lua_events_add(h, &ev);
}

static void test_events_batch_returns_hook_bytes(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    sl_request_t req = make_req("POST", "/stream", "", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r");
    sl_buf_t out;
    sl_buf_init(&out, 0);
    char err[1024];

    sl_lua_events_begin(h);
    add_event(h, "message_start", "{\"a\":1}");
    add_event(h, NULL, "2");
    add_event(h, "ping", "");
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), 0);
    const char *first = "#1:message_start={\"a\":1};-=2;ping=;";
    CHECK_EQ_MEM(out.base, out.len, first);

    /* A read that completed no event calls no hook and adds nothing. */
    sl_lua_events_begin(h);
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), 0);
    CHECK_EQ_INT(out.len, strlen(first));

    /* ctx state persists across batches; output is appended. */
    sl_lua_events_begin(h);
    add_event(h, "x", "y");
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), 0);
    CHECK_EQ_MEM(out.base + strlen(first), out.len - strlen(first), "#2:x=y;");

    /* A failing batch reports a traceback and leaves the host working. */
    sl_buf_reset(&out);
    sl_lua_events_begin(h);
    add_event(h, NULL, "error");
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), SL_ESCRIPT);
    CHECK_STR_HAS(err, "events hook");
    CHECK_STR_HAS(err, "bad event 1");
    CHECK_STR_HAS(err, "stack traceback");
    sl_lua_events_begin(h);
    add_event(h, NULL, "z");
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err), 0);
    CHECK_EQ_MEM(out.base, out.len, "#4:-=z;");

    /* The observe hook (passthrough) reads the batch and writes nothing. */
    sl_lua_events_begin(h);
    add_event(h, "message_delta", "{\"usage\":{}}");
    CHECK_EQ_INT(sl_lua_events_flush(h, ctx, "observe", NULL, err, sizeof err), 0);
    sl_lua_logfields_t lf;
    CHECK_EQ_INT(sl_lua_log(h, ctx, &lf, err, sizeof err), 0);
    CHECK(lf.extra_json && strcmp(lf.extra_json, "{\"observed\":1}") == 0);
    sl_lua_logfields_free(&lf);
    sl_buf_free(&out);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

static void test_many_calls_keep_the_stack_balanced(void)
{
    /* LuaJIT grows the C stack silently up to ~65000 slots; a slot leaked
     * per call would end in a "stack overflow" panic on a busy worker. */
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    sl_request_t req = make_req("POST", "/pass", "", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r");
    sl_buf_t out;
    sl_buf_init(&out, 0);
    char err[1024];
    int bad = 0;
    for (int i = 0; i < 70000 && !bad; i++) {
        sl_lua_resp_t r;
        sl_buf_reset(&out);
        sl_lua_events_begin(h);
        add_event(h, NULL, (i & 1) ? "error" : "ok");
        int rc = sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err);
        bad |= rc != ((i & 1) ? SL_ESCRIPT : 0);
        sl_lua_events_begin(h);
        bad |= sl_lua_events_flush(h, ctx, "events", &out, err, sizeof err) != 0;
        bad |= sl_lua_response(h, ctx, 200, NULL, 0, &r, err, sizeof err) != 0 || r.status != 0;
        sl_lua_resp_free(&r);
        double delay;
        sl_lua_failure_t f = {.kind = "error", .reason = "UPSTREAM_RESET"};
        bad |= sl_lua_retry(h, ctx, &f, &delay, err, sizeof err) != 0 || delay >= 0;
        if (bad)
            fprintf(stderr, "  call %d failed: %s\n", i, err);
    }
    CHECK(!bad);
    sl_buf_free(&out);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

static void test_response_body_finish_retry_log(void)
{
    sl_luahost_t *h = fixture_host("'A'");
    CHECK(h != NULL);
    if (!h)
        return;
    sl_request_t req = make_req("POST", "/x", "", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(h, &req, "r");
    char err[1024];

    sl_lua_resp_t r;
    sl_header_t uh[] = {{SL_STR("Content-Type"), SL_STR("text/event-stream")}};
    CHECK_EQ_INT(sl_lua_response(h, ctx, 200, uh, 1, &r, err, sizeof err), 0);
    CHECK_EQ_INT(r.status, 201);
    CHECK(r.nheaders == 1 && sl_str_eq(r.headers[0].value, SL_STR("text/event-stream")));
    sl_lua_resp_free(&r);

    CHECK_EQ_INT(sl_lua_body(h, ctx, 202, uh, 1, SL_STR("{\"x\":1}"), &r, err, sizeof err), 0);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_MEM(r.body.base, r.body.len, "{\"X\":1}");
    CHECK(r.nheaders == 2 && sl_str_eq(r.headers[0].value, SL_STR("7")) &&
          sl_str_eq(r.headers[1].value, SL_STR("text/event-stream")));
    sl_lua_resp_free(&r);

    sl_buf_t bytes;
    sl_buf_init(&bytes, 0);
    sl_lua_outcome_t oc = {"UPSTREAM_EOF_EARLY", 0, 1, 1, 200, "cut", 1, 7};
    int ended = 0;
    CHECK_EQ_INT(sl_lua_finish(h, ctx, &oc, &bytes, &ended, &r, err, sizeof err), 0);
    CHECK_EQ_MEM(bytes.base, bytes.len, "closing UPSTREAM_EOF_EARLY");
    CHECK(ended);
    CHECK_EQ_INT(r.status, 0);
    sl_lua_resp_free(&r);
    sl_buf_reset(&bytes);
    oc.committed = 0;
    oc.upstream_status = 503;
    CHECK_EQ_INT(sl_lua_finish(h, ctx, &oc, &bytes, &ended, &r, err, sizeof err), 0);
    CHECK_EQ_INT(bytes.len, 0);
    CHECK_EQ_INT(r.status, 502);
    CHECK_EQ_MEM(r.body.base, r.body.len, "failed: UPSTREAM_EOF_EARLY cut 503");
    sl_lua_resp_free(&r);
    sl_buf_free(&bytes);

    double delay = -2;
    sl_header_t rh[] = {{SL_STR("Retry-After"), SL_STR("3")}};
    sl_lua_failure_t f = {"status", 429, rh, 1, NULL, NULL};
    CHECK_EQ_INT(sl_lua_retry(h, ctx, &f, &delay, err, sizeof err), 0);
    CHECK(delay == 3.0);
    sl_lua_failure_t f2 = {"error", 0, NULL, 0, "UPSTREAM_CONNECT", "refused"};
    CHECK_EQ_INT(sl_lua_retry(h, ctx, &f2, &delay, err, sizeof err), 0);
    CHECK(delay == 0.0);
    sl_lua_failure_t f3 = {"status", 500, NULL, 0, NULL, NULL};
    CHECK_EQ_INT(sl_lua_retry(h, ctx, &f3, &delay, err, sizeof err), 0);
    CHECK(delay < 0);

    sl_lua_logfields_t lf;
    CHECK_EQ_INT(sl_lua_log(h, ctx, &lf, err, sizeof err), 0);
    CHECK_EQ_INT(lf.input_tokens, 12);
    CHECK_EQ_INT(lf.output_tokens, 34);
    CHECK_EQ_INT(lf.cache_read_tokens, -1);
    CHECK(lf.model_out && strcmp(lf.model_out, "m-out") == 0);
    CHECK(lf.extra_json && strcmp(lf.extra_json, "{\"k\":1}") == 0);
    CHECK(lf.request_body == NULL);
    sl_lua_logfields_free(&lf);
    sl_lua_ctx_free(h, ctx);
    sl_luahost_release(h);
}

/* The real glue: the log hook reports the model asked of the supplier (the
 * record's model_out), and the config hook answers by name. */
static void test_real_log_and_config_hooks(void)
{
    sl_luahost_t *h = loaded_host(
        "lua", "return { history = false,\n"
               "  suppliers = { up = { protocol = 'openai-chat',\n"
               "                       base_url = 'http://127.0.0.1:9' } },\n"
               "  routes = { chat = { { match = '*', supplier = 'up', model = 'up-m' } } } }");
    if (!h)
        return;
    char err[2048];
    static const char body[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                               "\"content\":\"hi\"}]}";
    sl_request_t req = make_req("POST", "/v1/chat/completions", "", NULL, 0, SL_STR(body));
    int ctx = sl_lua_ctx_new(h, &req, "r-log");
    done_t d;
    memset(&d, 0, sizeof d);
    sl_lua_task_t *task;
    CHECK_EQ_INT(sl_lua_request(h, ctx, on_done, &d, &task), 0);
    wait_done(&d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        CHECK(!d.plan.direct);
        CHECK(d.plan.model_out && strcmp(d.plan.model_out, "up-m") == 0);
    }
    sl_lua_logfields_t lf;
    CHECK_EQ_INT(sl_lua_log(h, ctx, &lf, err, sizeof err), 0);
    CHECK(lf.model_out && strcmp(lf.model_out, "up-m") == 0);
    CHECK(lf.model_in && strcmp(lf.model_in, "m") == 0);
    CHECK(lf.service && strcmp(lf.service, "chat") == 0);
    sl_lua_logfields_free(&lf);
    done_free(&d);
    sl_lua_ctx_free(h, ctx);

    sl_buf_t out;
    sl_buf_init(&out, 0);
    CHECK_EQ_INT(sl_lua_call_string(h, "config", &out, err, sizeof err), 0);
    CHECK(out.len && sl_buf_cstr(&out) && strstr(out.base, "\"up\"") != NULL);
    CHECK_EQ_INT(sl_lua_call_string(h, "no-such-hook", &out, err, sizeof err), SL_ENOTFOUND);
    sl_buf_free(&out);
    sl_luahost_release(h);
}

/* ---- reload ---- */

static void test_retained_host_outlives_reload(void)
{
    sl_luahost_t *a = fixture_host("'A'");
    CHECK(a != NULL);
    if (!a)
        return;
    /* A request starts on A and holds it, as an exchange does. */
    sl_luahost_retain(a);
    done_t d;
    memset(&d, 0, sizeof d);
    sl_request_t req = make_req("GET", "/sleep", "0.02", NULL, 0, SL_STR(""));
    int ctx = sl_lua_ctx_new(a, &req, "r");
    sl_lua_task_t *task;
    CHECK_EQ_INT(sl_lua_request(a, ctx, on_done, &d, &task), 0);

    /* Reload: the worker swaps in B and drops its reference to A. */
    sl_luahost_t *b = fixture_host("'B'");
    CHECK(b != NULL);
    sl_luahost_release(a);

    wait_done(&d);
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc == 0) {
        sl_buf_cstr(&d.plan.body);
        CHECK_STR_HAS(d.plan.body.base, " on A");
    }
    done_free(&d);
    sl_lua_ctx_free(a, ctx);
    sl_luahost_release(a); /* the request ends: A goes (ASan checks it is freed) */

    if (b) {
        run_request(b, "GET", "/echo", "", "", &d);
        CHECK_EQ_INT(d.rc, 0);
        if (d.rc == 0) {
            sl_buf_cstr(&d.plan.body);
            CHECK_STR_HAS(d.plan.body.base, "host=B");
        }
        done_free(&d);
        sl_luahost_release(b);
    }
}

int main(void)
{
    th_watchdog(90);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    uv_loop_init(&loop);
    if (sl_upstream_new(&up, &loop) != 0) {
        fprintf(stderr, "sl_upstream_new failed\n");
        return 1;
    }
    RUN(test_config_errors_name_the_field);
    RUN(test_config_missing_file);
    RUN(test_config_values_reach_c);
    RUN(test_config_defaults_come_from_lua);
    RUN(test_config_view_must_be_complete);
    RUN(test_budget_stops_runaway_on_request);
    RUN(test_budget_covers_ops_code_the_config_loads);
    RUN(test_budget_stops_runaway_at_config_load);
    RUN(test_budget_in_streaming_hook);
    RUN(test_request_error_has_traceback);
    RUN(test_ctx_fields_reach_lua);
    RUN(test_plan_is_copied_out);
    RUN(test_crlf_header_values_rejected);
    RUN(test_sleep_yields_and_resumes);
    RUN(test_cancel_sleeping_task);
    RUN(test_http_yield_resumes_with_answer);
    RUN(test_events_batch_returns_hook_bytes);
    RUN(test_many_calls_keep_the_stack_balanced);
    RUN(test_response_body_finish_retry_log);
    RUN(test_real_log_and_config_hooks);
    RUN(test_retained_host_outlives_reload);

    sl_upstream_free(up);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "FAIL: handles left open on the loop\n");
        th_failed++;
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_SUMMARY();
}
