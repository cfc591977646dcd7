/*
 * ui_assets.h — the operator console's files, compiled into the binary.
 * The table is generated at build time from ui/ by cmake/embed_ui.cmake, so
 * the page is served with nothing to deploy and works offline.
 */
#ifndef SL_UI_ASSETS_H
#define SL_UI_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *name; /* file name in ui/, e.g. "app.js"; NULL ends the table */
    const char *content_type;
    const unsigned char *data;
    size_t len;
} sl_ui_asset_t;

extern const sl_ui_asset_t sl_ui_assets[];

#endif
