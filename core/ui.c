/*
 * ui.c — serves the operator console's embedded files (see ui.h). "ui"
 * redirects to "ui/" so the page's relative links resolve; "ui/" is
 * index.html. A Content-Security-Policy confines the page to this origin:
 * no script, style or fetch can come from or go anywhere else, so history
 * text that looks like markup cannot load anything, and the page works
 * offline by construction.
 */
#include "ui.h"

#include <string.h>

#include "ui_assets.h"

static const sl_header_t common[] = {
    {SL_STR("cache-control"), SL_STR("no-cache")},
    {SL_STR("x-content-type-options"), SL_STR("nosniff")},
    {SL_STR("referrer-policy"), SL_STR("no-referrer")},
    {SL_STR("content-security-policy"),
     SL_STR("default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")},
};
#define NCOMMON (sizeof common / sizeof common[0])

static void respond_text(sl_request_t *req, int status, const char *text)
{
    static const sl_header_t h[] = {{SL_STR("content-type"), SL_STR("text/plain; charset=utf-8")}};
    sl_conn_respond(req->conn, status, h, 1, sl_str(text, strlen(text)));
}

int sl_ui_handle(sl_request_t *req, sl_str_t path)
{
    if (!sl_str_eq(path, SL_STR("ui")) && !sl_str_has_prefix(path, "ui/"))
        return 0;
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        respond_text(req, 405, "use GET\n");
        return 1;
    }
    if (path.len == 2) {
        static const sl_header_t h[] = {{SL_STR("location"), SL_STR("/_sluice/ui/")}};
        sl_conn_respond(req->conn, 308, h, 1, SL_STR(""));
        return 1;
    }
    sl_str_t name = sl_str(path.base + 3, path.len - 3);
    if (name.len == 0)
        name = SL_STR("index.html");
    for (const sl_ui_asset_t *a = sl_ui_assets; a->name; a++) {
        if (!sl_str_eq(name, sl_str(a->name, strlen(a->name))))
            continue;
        sl_header_t h[NCOMMON + 1];
        memcpy(h, common, sizeof common);
        h[NCOMMON] =
            (sl_header_t){SL_STR("content-type"), sl_str(a->content_type, strlen(a->content_type))};
        sl_conn_respond(req->conn, 200, h, NCOMMON + 1, sl_str((const char *)a->data, a->len));
        return 1;
    }
    respond_text(req, 404, "no such file in the console\n");
    return 1;
}
