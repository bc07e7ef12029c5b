/* error.c - filling and naming mx_error values. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int mx_fail(mx_error *err, mx_code code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int mx_error_prefix(mx_error *err, const char *fmt, ...)
{
    if (!err)
        return MX_EINTERNAL;
    char joined[2 * MX_ERROR_MSG_MAX + 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(joined, MX_ERROR_MSG_MAX, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n > MX_ERROR_MSG_MAX - 1)
        n = MX_ERROR_MSG_MAX - 1;
    size_t len = (size_t)n;
    joined[len++] = ':';
    joined[len++] = ' ';
    size_t old = strnlen(err->msg, MX_ERROR_MSG_MAX - 1);
    memcpy(joined + len, err->msg, old);
    len += old;
    if (len > MX_ERROR_MSG_MAX - 1)
        len = MX_ERROR_MSG_MAX - 1; /* keep the start: it names the outermost context */
    memcpy(err->msg, joined, len);
    err->msg[len] = '\0';
    return err->code;
}

void mx_error_clear(mx_error *err)
{
    if (err) {
        err->code = MX_OK;
        err->msg[0] = '\0';
    }
}

const char *mx_code_name(mx_code code)
{
    switch (code) {
    case MX_OK: return "ok";
    case MX_EINVAL: return "invalid argument";
    case MX_EIO: return "i/o error";
    case MX_EFORMAT: return "format error";
    case MX_ENOTFOUND: return "not found";
    case MX_ENOMEM: return "resource exhausted";
    case MX_EUNSUPPORTED: return "unsupported";
    case MX_ERANGE: return "out of range";
    case MX_EDEVICE: return "device error";
    case MX_ECANCELLED: return "cancelled";
    case MX_ETIMEOUT: return "deadline exceeded";
    case MX_EUNAVAILABLE: return "unavailable";
    case MX_EINTERNAL: return "internal error";
    }
    return "unknown error";
}
