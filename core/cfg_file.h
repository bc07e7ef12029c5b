/* cfg_file.h - the config-file layer of every service (libconfig files given with --config; not
 * the model's config.json, see config.h): every error names the file, the line and the full key
 * path ("expert.conf:12: `experts.shards.[1].replicas`: ..."), and unknown keys are errors.
 * Used by the three services' config readers and the router's; reads settings only, keeps nothing. */
#ifndef MX_CFG_FILE_H
#define MX_CFG_FILE_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Reads and parses a libconfig file into cf (config_init'ed by the caller, who destroys it).
 * MX_EIO "path: cannot read the file" or MX_EINVAL "path:line: <libconfig's message>". */
int mx_cfg_read_file(config_t *cf, const char *path, mx_error *err);

/* Fails with code MX_EINVAL and "file:line: `path`: <message>" where path is s's full key path
 * (plus "." member when member != NULL, e.g. a missing key of group s). */
int mx_cfg_fail(mx_error *err, const config_setting_t *s, const char *member, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Reads the integer member name of group g into *v. Absent: *v = def and returns 0 when
 * required == 0, an error otherwise. Values outside [lo, hi] are errors. */
int mx_cfg_int(const config_setting_t *g, const char *name, int required, int64_t def, int64_t lo,
               int64_t hi, int64_t *v, mx_error *err);

/* Reads the boolean member name of group g (true / false) into *v. Absent: *v = def. */
int mx_cfg_bool(const config_setting_t *g, const char *name, bool def, bool *v, mx_error *err);

/* Reads the string member name of group g (borrowed from the config). Absent: *v = def. */
int mx_cfg_string(const config_setting_t *g, const char *name, int required, const char *def,
                  const char **v, mx_error *err);

/* Reads the array/list member name of group g as integers in [lo, hi] into a malloc'd array
 * (sorted, duplicates rejected). Absent: *n = -1, *out = NULL, returns 0 (unless required). */
int mx_cfg_int_list(const config_setting_t *g, const char *name, int required, int64_t lo, int64_t hi,
                    int **out, int *n, mx_error *err);

/* Reads the string member name of group g into buf (cap bytes, NUL included). Absent: def is
 * copied (def == NULL makes the key required). Too long for buf is an error naming the key. */
int mx_cfg_string_buf(const config_setting_t *g, const char *name, const char *def, char *buf, size_t cap,
                      mx_error *err);

/* The member group name of g. Absent: *out = NULL, and an error when required. */
int mx_cfg_group(const config_setting_t *g, const char *name, int required, const config_setting_t **out,
                 mx_error *err);

/* Fails naming the first member of g whose name is not in known[0..n) ("unknown key (known:
 * a, b, c)"), so a typo never falls back silently to a default. */
int mx_cfg_check_keys(const config_setting_t *g, const char *const *known, size_t n, mx_error *err);

#endif
