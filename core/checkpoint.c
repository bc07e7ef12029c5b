/* checkpoint.c - a checkpoint directory: config.json, the shard index (or one
 * model.safetensors), every shard's header checked on open, tensors mapped on request with
 * dtype and shape checked. It must not interpret tensors: that is weights.c's job. */
#include "checkpoint.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors.h"

struct mx_checkpoint {
    char *dir;
    mx_config cfg;
    int n_shards;
    mx_st_file **shards;
    char **shard_names;   /* as written in the index (relative to dir) */
    json_t *where;        /* tensor name -> integer shard number */
};

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* An index must not make us open files outside the checkpoint directory. */
static int shard_name_ok(const char *name)
{
    if (name[0] == '\0' || name[0] == '/')
        return 0;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return 0;
        p += len + (slash ? 1 : 0);
    }
    return 1;
}

static int shard_index(mx_checkpoint *ck, const char *name, const char *tensor, mx_error *err)
{
    for (int i = 0; i < ck->n_shards; i++)
        if (strcmp(ck->shard_names[i], name) == 0)
            return i;
    if (!shard_name_ok(name))
        return mx_fail(err, MX_EFORMAT,
                       "model.safetensors.index.json: tensor %s: shard file name \"%s\" leaves the checkpoint directory",
                       tensor, name);
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", ck->dir, name) >= sizeof path)
        return mx_fail(err, MX_EINVAL, "%s: path too long", name);
    if (!file_exists(path))
        return mx_fail(err, MX_ENOTFOUND,
                       "model.safetensors.index.json: tensor %s: shard file %s does not exist", tensor, path);
    char **names = realloc(ck->shard_names, (size_t)(ck->n_shards + 1) * sizeof *names);
    if (names)
        ck->shard_names = names;
    mx_st_file **shards = realloc(ck->shards, (size_t)(ck->n_shards + 1) * sizeof *shards);
    if (shards)
        ck->shards = shards;
    if (!names || !shards)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    mx_st_file *f;
    int rc = mx_st_open(path, &f, err);
    if (rc)
        return rc;
    if (!(ck->shard_names[ck->n_shards] = strdup(name))) {
        mx_st_close(f);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    ck->shards[ck->n_shards] = f;
    return ck->n_shards++;
}

static int load_index(mx_checkpoint *ck, const char *path, mx_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return mx_fail(err, MX_EFORMAT, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
    json_t *map = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(map))
        rc = mx_fail(err, MX_EFORMAT, "%s: 'weight_map' is missing or not an object", path);
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        if (rc)
            break;
        if (!json_is_string(v)) {
            rc = mx_fail(err, MX_EFORMAT, "%s: tensor %s: shard file name is not a string", path, name);
            break;
        }
        const char *shard = json_string_value(v);
        int s = shard_index(ck, shard, name, err);
        if (s < 0) {
            rc = s;
            break;
        }
        if (!mx_st_find(ck->shards[s], name)) {
            rc = mx_fail(err, MX_EFORMAT, "%s: tensor %s is listed in the index but missing from the shard's header",
                         shard, name);
            break;
        }
        json_object_set_new(ck->where, name, json_integer(s));
    }
    json_decref(root);
    return rc;
}

static int load_single(mx_checkpoint *ck, mx_error *err)
{
    int s = shard_index(ck, "model.safetensors", "(all)", err);
    if (s < 0)
        return s;
    for (int i = 0; i < mx_st_count(ck->shards[s]); i++)
        json_object_set_new(ck->where, mx_st_entry_at(ck->shards[s], i)->name, json_integer(s));
    return 0;
}

static int open_dir(mx_checkpoint *ck, mx_error *err)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", ck->dir) >= sizeof path)
        return mx_fail(err, MX_EINVAL, "%s: path too long", ck->dir);
    int rc = mx_config_load(path, &ck->cfg, err);
    if (!rc && (rc = mx_config_validate(&ck->cfg, err)))
        mx_error_prefix(err, "%s", path);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", ck->dir);
    if (file_exists(path))
        return load_index(ck, path, err);
    snprintf(path, sizeof path, "%s/model.safetensors", ck->dir);
    if (file_exists(path))
        return load_single(ck, err);
    return mx_fail(err, MX_ENOTFOUND, "%s: neither model.safetensors.index.json nor model.safetensors exists",
                   ck->dir);
}

int mx_checkpoint_open(const char *dir, mx_checkpoint **out, mx_error *err)
{
    *out = NULL;
    mx_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->dir = strdup(dir)) || !(ck->where = json_object())) {
        mx_checkpoint_close(ck);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    int rc = open_dir(ck, err);
    if (rc) {
        mx_checkpoint_close(ck);
        return rc;
    }
    *out = ck;
    return 0;
}

void mx_checkpoint_close(mx_checkpoint *ck)
{
    if (!ck)
        return;
    for (int i = 0; i < ck->n_shards; i++) {
        mx_st_close(ck->shards[i]);
        free(ck->shard_names[i]);
    }
    free(ck->shards);
    free(ck->shard_names);
    json_decref(ck->where);
    free(ck->dir);
    free(ck);
}

const mx_config *mx_checkpoint_config(const mx_checkpoint *ck) { return &ck->cfg; }
const char *mx_checkpoint_dir(const mx_checkpoint *ck) { return ck->dir; }

int mx_checkpoint_has(const mx_checkpoint *ck, const char *name)
{
    return json_object_get(ck->where, name) != NULL;
}

int mx_checkpoint_entry(const mx_checkpoint *ck, const char *name, const mx_st_entry **entry,
                        const char **shard, mx_error *err)
{
    json_t *s = json_object_get(ck->where, name);
    if (!s)
        return mx_fail(err, MX_ENOTFOUND, "%s: tensor %s is not in the checkpoint", ck->dir, name);
    int i = (int)json_integer_value(s);
    *entry = mx_st_find(ck->shards[i], name);
    if (shard)
        *shard = ck->shard_names[i];
    return 0;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

int mx_checkpoint_get(mx_checkpoint *ck, const char *name, unsigned allowed_dtypes, int ndim,
                      const int64_t *shape, mx_tensor *out, mx_error *err)
{
    const mx_st_entry *e;
    const char *shard;
    int rc = mx_checkpoint_entry(ck, name, &e, &shard, err);
    if (rc)
        return rc;
    if (!(allowed_dtypes & (1u << e->dtype))) {
        char allowed[128] = "";
        for (int d = 0; d < MX_DTYPE_COUNT; d++)
            if (allowed_dtypes & (1u << d))
                snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s",
                         allowed[0] ? "/" : "", mx_dtype_name((mx_dtype)d));
        return mx_fail(err, MX_EFORMAT, "%s: tensor %s has dtype %s, expected %s", shard, name,
                       mx_dtype_name(e->dtype), allowed);
    }
    int same = e->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = e->shape[d] == shape[d];
    if (!same) {
        char got[96], want[96];
        format_shape(got, sizeof got, e->ndim, e->shape);
        format_shape(want, sizeof want, ndim, shape);
        return mx_fail(err, MX_EFORMAT, "%s: tensor %s has shape %s, expected %s", shard, name, got, want);
    }
    json_t *s = json_object_get(ck->where, name);
    return mx_st_map(ck->shards[json_integer_value(s)], e, out, err);
}
