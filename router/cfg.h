/* cfg.h - small functions over libconfig so every config error names the file, the line and the
 * full key path ("expert.conf:12: `experts.shards.[1].replicas`: ..."). Used by the config readers
 * of the router and the three services; reads settings only, keeps nothing. */
#ifndef MX_ROUTER_CFG_H
#define MX_ROUTER_CFG_H

#include <libconfig.h>
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

/* Reads the string member name of group g (borrowed from the config). Absent: *v = def. */
int mx_cfg_string(const config_setting_t *g, const char *name, int required, const char *def,
                  const char **v, mx_error *err);

/* Reads the array/list member name of group g as integers in [lo, hi] into a malloc'd array
 * (sorted, duplicates rejected). Absent: *n = -1, *out = NULL, returns 0 (unless required). */
int mx_cfg_int_list(const config_setting_t *g, const char *name, int required, int64_t lo, int64_t hi,
                    int **out, int *n, mx_error *err);

#endif
