/*
 * error.c — messages and names for the SL_E* codes (see error.h). Codes
 * outside our range are libuv's negative errno values; libuv already knows
 * how to name those, so we defer to it instead of keeping a second table.
 */
#include "error.h"

#include <uv.h>

const char *sl_strerror(int err)
{
    switch (err) {
#define XX(name, val, msg)                                                 \
    case SL_E##name:                                                       \
        return msg;
        SL_ERRNO_MAP(XX)
#undef XX
    case 0:
        return "success";
    default:
        return uv_strerror(err);
    }
}

const char *sl_err_name(int err)
{
    switch (err) {
#define XX(name, val, msg)                                                 \
    case SL_E##name:                                                       \
        return "SL_E" #name;
        SL_ERRNO_MAP(XX)
#undef XX
    case 0:
        return "OK";
    default:
        return uv_err_name(err);
    }
}
