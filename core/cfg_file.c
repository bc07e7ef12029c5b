/* cfg_file.c - libconfig reading functions with errors that name file, line and key path.
 * Reads settings only; never keeps pointers into the config beyond what callers borrow. */
#include "cfg_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes s's key path ("experts.shards.[1]") into buf. */
static void key_path(const config_setting_t *s, char *buf, size_t n)
{
    const config_setting_t *chain[32];
    int depth = 0;
    for (const config_setting_t *p = s; p && !config_setting_is_root(p) && depth < 32; p = p->parent)
        chain[depth++] = p;
    size_t used = 0;
    buf[0] = 0;
    for (int i = depth - 1; i >= 0 && used < n; i--) {
        const char *sep = used ? "." : "";
        int w = chain[i]->name ? snprintf(buf + used, n - used, "%s%s", sep, chain[i]->name)
                               : snprintf(buf + used, n - used, "%s[%d]", sep, config_setting_index(chain[i]));
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

int mx_cfg_fail(mx_error *err, const config_setting_t *s, const char *member, const char *fmt, ...)
{
    char path[256], msg[MX_ERROR_MSG_MAX];
    key_path(s, path, sizeof path);
    if (member) {
        size_t used = strlen(path);
        snprintf(path + used, sizeof path - used, "%s%s", used ? "." : "", member);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *file = config_setting_source_file(s);
    return mx_fail(err, MX_EINVAL, "%s:%u: `%s`: %s", file ? file : "(config)",
                   (unsigned)config_setting_source_line(s), path, msg);
}

static int get_int(const config_setting_t *v, int64_t *out)
{
    int t = config_setting_type(v);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return -1;
    *out = config_setting_get_int64(v);
    return 0;
}

int mx_cfg_int(const config_setting_t *g, const char *name, int required, int64_t def, int64_t lo,
               int64_t hi, int64_t *v, mx_error *err)
{
    const config_setting_t *s = config_setting_get_member(g, name);
    if (!s) {
        if (required)
            return mx_cfg_fail(err, g, name, "missing (an integer is required)");
        *v = def;
        return 0;
    }
    if (get_int(s, v))
        return mx_cfg_fail(err, s, NULL, "expected an integer");
    if (*v < lo || *v > hi)
        return mx_cfg_fail(err, s, NULL, "%lld is out of range [%lld, %lld]", (long long)*v, (long long)lo,
                           (long long)hi);
    return 0;
}

int mx_cfg_string(const config_setting_t *g, const char *name, int required, const char *def,
                  const char **v, mx_error *err)
{
    const config_setting_t *s = config_setting_get_member(g, name);
    if (!s) {
        if (required)
            return mx_cfg_fail(err, g, name, "missing (a string is required)");
        *v = def;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return mx_cfg_fail(err, s, NULL, "expected a string");
    *v = config_setting_get_string(s);
    if (!*v || !**v)
        return mx_cfg_fail(err, s, NULL, "must not be empty");
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int mx_cfg_int_list(const config_setting_t *g, const char *name, int required, int64_t lo, int64_t hi,
                    int **out, int *n, mx_error *err)
{
    *out = NULL;
    *n = -1;
    const config_setting_t *s = config_setting_get_member(g, name);
    if (!s) {
        if (required)
            return mx_cfg_fail(err, g, name, "missing (a list of integers is required)");
        return 0;
    }
    if (!config_setting_is_array(s) && !config_setting_is_list(s))
        return mx_cfg_fail(err, s, NULL, "expected a list of integers like [0, 1]");
    int len = config_setting_length(s);
    if (len == 0)
        return mx_cfg_fail(err, s, NULL, "must not be empty");
    int *v = malloc((size_t)len * sizeof *v);
    if (!v)
        return mx_fail(err, MX_ENOMEM, "out of memory reading `%s`", name);
    for (int i = 0; i < len; i++) {
        int64_t x;
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (get_int(e, &x)) {
            free(v);
            return mx_cfg_fail(err, s, NULL, "element %d is not an integer", i);
        }
        if (x < lo || x > hi) {
            free(v);
            return mx_cfg_fail(err, s, NULL, "element %d (%lld) is out of range [%lld, %lld]", i, (long long)x,
                               (long long)lo, (long long)hi);
        }
        v[i] = (int)x;
    }
    qsort(v, (size_t)len, sizeof *v, cmp_int);
    for (int i = 1; i < len; i++)
        if (v[i] == v[i - 1]) {
            int dup = v[i];
            free(v);
            return mx_cfg_fail(err, s, NULL, "%d is listed twice", dup);
        }
    *out = v;
    *n = len;
    return 0;
}

int mx_cfg_read_file(config_t *cf, const char *path, mx_error *err)
{
    if (config_read_file(cf, path) == CONFIG_TRUE)
        return 0;
    if (config_error_type(cf) == CONFIG_ERR_FILE_IO)
        return mx_fail(err, MX_EIO, "%s: cannot read the file", path);
    const char *file = config_error_file(cf);
    return mx_fail(err, MX_EINVAL, "%s:%d: %s", file ? file : path, config_error_line(cf), config_error_text(cf));
}

int mx_cfg_bool(const config_setting_t *g, const char *name, bool def, bool *v, mx_error *err)
{
    *v = def;
    const config_setting_t *m = config_setting_get_member(g, name);
    if (!m)
        return 0;
    if (config_setting_type(m) != CONFIG_TYPE_BOOL)
        return mx_cfg_fail(err, m, NULL, "expected true or false");
    *v = config_setting_get_bool(m) != 0;
    return 0;
}

int mx_cfg_string_buf(const config_setting_t *g, const char *name, const char *def, char *buf, size_t cap,
                      mx_error *err)
{
    /* unlike mx_cfg_string, an optional key may be set to "" (e.g. port_file = "") */
    const config_setting_t *s = config_setting_get_member(g, name);
    if (!s && !def)
        return mx_cfg_fail(err, g, name, "missing (a string is required)");
    if (s && config_setting_type(s) != CONFIG_TYPE_STRING)
        return mx_cfg_fail(err, s, NULL, "expected a string");
    const char *v = s ? config_setting_get_string(s) : def;
    if (!def && !*v)
        return mx_cfg_fail(err, s, NULL, "must not be empty");
    if (strlen(v) >= cap)
        return mx_cfg_fail(err, config_setting_get_member(g, name), NULL, "must be shorter than %zu bytes", cap);
    snprintf(buf, cap, "%s", v);
    return 0;
}

int mx_cfg_group(const config_setting_t *g, const char *name, int required, const config_setting_t **out,
                 mx_error *err)
{
    *out = config_setting_get_member(g, name);
    if (!*out) {
        if (required)
            return mx_cfg_fail(err, g, name, "missing (a group `%s = { ... };` is required)", name);
        return 0;
    }
    if (!config_setting_is_group(*out))
        return mx_cfg_fail(err, *out, NULL, "expected a group `%s = { ... };`", name);
    return 0;
}

int mx_cfg_check_keys(const config_setting_t *g, const char *const *known, size_t n, mx_error *err)
{
    int len = config_setting_length(g);
    for (int i = 0; i < len; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        int ok = 0;
        for (size_t k = 0; k < n && !ok; k++)
            ok = s->name && !strcmp(s->name, known[k]);
        if (ok)
            continue;
        char list[1024];
        size_t used = 0;
        list[0] = 0;
        for (size_t k = 0; k < n && used < sizeof list; k++) {
            int w = snprintf(list + used, sizeof list - used, "%s%s", k ? ", " : "", known[k]);
            if (w < 0)
                break;
            used += (size_t)w;
        }
        return mx_cfg_fail(err, s, NULL, "unknown key (known: %s)", list);
    }
    return 0;
}
