/* error.h - the one error type every mx function reports through.
 * Functions that can fail return 0 on success or a negative mx_code and fill an mx_error
 * the caller owns; nothing prints and nothing exits on the caller's behalf. */
#ifndef MX_ERROR_H
#define MX_ERROR_H

#include <stddef.h>

/* Error classes; they map one-to-one onto gRPC status codes at the service edge. */
typedef enum {
    MX_OK = 0,
    MX_EINVAL = -1,       /* bad argument or bad input value (INVALID_ARGUMENT) */
    MX_EIO = -2,          /* a file could not be opened, read or mapped (UNAVAILABLE/INTERNAL) */
    MX_EFORMAT = -3,      /* a file is malformed: corrupt header, bad JSON, wrong shape (INVALID_ARGUMENT) */
    MX_ENOTFOUND = -4,    /* a named thing does not exist (NOT_FOUND) */
    MX_ENOMEM = -5,       /* allocation failed or a size limit was hit (RESOURCE_EXHAUSTED) */
    MX_EUNSUPPORTED = -6, /* valid input we do not implement (UNIMPLEMENTED) */
    MX_ERANGE = -7,       /* a value is outside its allowed range (OUT_OF_RANGE / INVALID_ARGUMENT) */
    MX_EDEVICE = -8,      /* accelerator missing or failed (UNAVAILABLE) */
    MX_ECANCELLED = -9,   /* the work was cancelled (CANCELLED) */
    MX_ETIMEOUT = -10,    /* a deadline passed (DEADLINE_EXCEEDED) */
    MX_EUNAVAILABLE = -11,/* a peer could not be reached (UNAVAILABLE) */
    MX_EINTERNAL = -12    /* a broken invariant: a bug in mx (INTERNAL) */
} mx_code;

#define MX_ERROR_MSG_MAX 512

typedef struct mx_error {
    mx_code code;
    char msg[MX_ERROR_MSG_MAX];
} mx_error;

/* Records code and a printf-style message in err (err may be NULL) and returns code,
 * so a failing function can end with `return mx_fail(err, MX_EFORMAT, "...", ...);`. */
int mx_fail(mx_error *err, mx_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "context: " to an error already recorded (e.g. the file name). Returns err->code. */
int mx_error_prefix(mx_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Returns from the calling function with the code of a failing call. */
#define MX_TRY(expr)                    \
    do {                                \
        int mx_try_rc_ = (expr);        \
        if (mx_try_rc_)                 \
            return mx_try_rc_;          \
    } while (0)

/* Clears err to MX_OK with an empty message. */
void mx_error_clear(mx_error *err);

/* A short constant name for a code ("invalid argument", "format error", ...). */
const char *mx_code_name(mx_code code);

#endif
