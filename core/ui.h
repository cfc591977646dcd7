/*
 * ui.h — GET /_sluice/ui/...: the operator console's static files (ui/,
 * compiled in: ui_assets.h). The files hold no data and no secret, so they
 * are served without the admin token — a browser cannot send one when it
 * navigates; the page then asks for the token and sends it on every admin
 * API call, which is where the data is.
 */
#ifndef SL_UI_H
#define SL_UI_H

#include "server.h"

/* Answers req if its path (after "/_sluice/") is "ui" or under "ui/";
 * returns 1 then, 0 if the path is not the console's. */
int sl_ui_handle(sl_request_t *req, sl_str_t path);

#endif
