/* safetensors.c - one .safetensors file: header validation on open (pread, no data read),
 * per-tensor read-only mmaps on demand, and a writer (whole buffers or streamed chunks).
 * It knows nothing about models: names, shapes and dtypes are checked by the caller. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MX_ST_HEADER_LIMIT (100u << 20) /* real headers are < 1 MB; more means corruption */

typedef struct mapping {
    void *addr;
    size_t len;
} mapping;

struct mx_st_file {
    char *path;
    int fd;
    uint64_t file_size, data_start;
    int n;
    mx_st_entry *entries;
    mapping *maps;
    int n_maps, cap_maps;
};

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int is_nonneg_int(json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) >= 0;
}

/* Fills e from one header entry; errors name the tensor (the caller prefixes the file). */
static int parse_entry(const char *name, json_t *v, uint64_t data_size, mx_st_entry *e, mx_error *err)
{
    if (!json_is_object(v))
        return mx_fail(err, MX_EFORMAT, "tensor %s: header entry is not an object", name);
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!dt || !shape || !offs)
        return mx_fail(err, MX_EFORMAT, "tensor %s: header entry lacks '%s'", name,
                       !dt ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!json_is_string(dt) || mx_dtype_from_name(json_string_value(dt), &e->dtype) != 0)
        return mx_fail(err, MX_EFORMAT, "tensor %s: unknown dtype %s", name,
                       json_is_string(dt) ? json_string_value(dt) : "(not a string)");
    if (!json_is_array(shape) || json_array_size(shape) > MX_MAX_DIMS)
        return mx_fail(err, MX_EFORMAT, "tensor %s: shape must be a list of at most %d dimensions",
                       name, MX_MAX_DIMS);
    e->ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    for (int d = 0; d < e->ndim; d++) {
        json_t *x = json_array_get(shape, (size_t)d);
        if (!is_nonneg_int(x))
            return mx_fail(err, MX_EFORMAT, "tensor %s: shape dimension %d is not a non-negative integer",
                           name, d);
        e->shape[d] = json_integer_value(x);
        uint64_t dim = (uint64_t)e->shape[d];
        if (dim != 0 && numel > UINT64_MAX / 16 / dim)
            return mx_fail(err, MX_EFORMAT, "tensor %s: shape is absurdly large", name);
        numel *= dim;
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !is_nonneg_int(json_array_get(offs, 0)) ||
        !is_nonneg_int(json_array_get(offs, 1)))
        return mx_fail(err, MX_EFORMAT, "tensor %s: data_offsets must be two non-negative integers", name);
    e->begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
    e->end = (uint64_t)json_integer_value(json_array_get(offs, 1));
    if (e->end < e->begin)
        return mx_fail(err, MX_EFORMAT, "tensor %s: data_offsets end %llu is before begin %llu", name,
                       (unsigned long long)e->end, (unsigned long long)e->begin);
    if (e->end > data_size)
        return mx_fail(err, MX_EFORMAT,
                       "tensor %s: data_offsets [%llu, %llu] run past the data section (%llu bytes)", name,
                       (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)data_size);
    uint64_t want = numel * mx_dtype_size(e->dtype);
    if (e->end - e->begin != want)
        return mx_fail(err, MX_EFORMAT,
                       "tensor %s: byte size %llu does not match dtype %s x shape (%llu bytes)", name,
                       (unsigned long long)(e->end - e->begin), mx_dtype_name(e->dtype),
                       (unsigned long long)want);
    return 0;
}

static int by_begin(const void *a, const void *b)
{
    const mx_st_entry *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const mx_st_entry *)a)->name, ((const mx_st_entry *)b)->name);
}

static int parse_header(mx_st_file *f, json_t *root, mx_error *err)
{
    if (!json_is_object(root))
        return mx_fail(err, MX_EFORMAT, "header is not a JSON object");
    size_t cap = json_object_size(root);
    f->entries = calloc(cap ? cap : 1, sizeof *f->entries);
    if (!f->entries)
        return mx_fail(err, MX_ENOMEM, "out of memory for %zu header entries", cap);
    uint64_t data_size = f->file_size - f->data_start;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        mx_st_entry *e = &f->entries[f->n];
        int rc = parse_entry(key, v, data_size, e, err);
        if (rc)
            return rc;
        if (!(e->name = strdup(key)))
            return mx_fail(err, MX_ENOMEM, "out of memory");
        f->n++;
    }
    /* Overlap check on a begin-sorted copy; empty tensors occupy no bytes and cannot overlap. */
    mx_st_entry *sorted = malloc((f->n ? (size_t)f->n : 1) * sizeof *sorted);
    if (!sorted)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    memcpy(sorted, f->entries, (size_t)f->n * sizeof *sorted);
    qsort(sorted, (size_t)f->n, sizeof *sorted, by_begin);
    const mx_st_entry *prev = NULL;
    int rc = 0;
    for (int i = 0; i < f->n && !rc; i++) {
        if (sorted[i].begin == sorted[i].end)
            continue;
        if (prev && sorted[i].begin < prev->end)
            rc = mx_fail(err, MX_EFORMAT, "tensor %s: data_offsets [%llu, %llu] overlap tensor %s",
                         sorted[i].name, (unsigned long long)sorted[i].begin,
                         (unsigned long long)sorted[i].end, prev->name);
        prev = &sorted[i];
    }
    free(sorted);
    /* Sorted by name so mx_st_find is a binary search. */
    if (!rc)
        qsort(f->entries, (size_t)f->n, sizeof *f->entries, by_name);
    return rc;
}

static int open_checked(mx_st_file *f, mx_error *err)
{
    f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        return mx_fail(err, errno == ENOENT ? MX_ENOTFOUND : MX_EIO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0)
        return mx_fail(err, MX_EIO, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode))
        return mx_fail(err, MX_EIO, "not a regular file");
    f->file_size = (uint64_t)st.st_size;
    if (f->file_size < 8)
        return mx_fail(err, MX_EFORMAT, "truncated: %llu bytes, shorter than the 8-byte header length",
                       (unsigned long long)f->file_size);
    unsigned char lenbuf[8];
    if (read_full(f->fd, lenbuf, 8, 0) != 0)
        return mx_fail(err, MX_EIO, "cannot read the header length");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenbuf[i];
    if (hlen > MX_ST_HEADER_LIMIT)
        return mx_fail(err, MX_EFORMAT, "header length %llu is absurd (limit %u bytes): not a safetensors file",
                       (unsigned long long)hlen, MX_ST_HEADER_LIMIT);
    if (hlen > f->file_size - 8)
        return mx_fail(err, MX_EFORMAT, "header length %llu runs past the end of the file (%llu bytes)",
                       (unsigned long long)hlen, (unsigned long long)f->file_size);
    f->data_start = 8 + hlen;
    char *text = malloc(hlen + 1);
    if (!text)
        return mx_fail(err, MX_ENOMEM, "out of memory for a %llu-byte header", (unsigned long long)hlen);
    if (read_full(f->fd, text, hlen, 8) != 0) {
        free(text);
        return mx_fail(err, MX_EIO, "cannot read the header");
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, hlen, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return mx_fail(err, MX_EFORMAT, "header is not valid JSON (column %d: %s)", jerr.column, jerr.text);
    int rc = parse_header(f, root, err);
    json_decref(root);
    return rc;
}

int mx_st_open(const char *path, mx_st_file **out, mx_error *err)
{
    *out = NULL;
    mx_st_file *f = calloc(1, sizeof *f);
    if (!f)
        return mx_fail(err, MX_ENOMEM, "%s: out of memory", path);
    f->fd = -1;
    if (!(f->path = strdup(path))) {
        free(f);
        return mx_fail(err, MX_ENOMEM, "%s: out of memory", path);
    }
    int rc = open_checked(f, err);
    if (rc) {
        mx_error_prefix(err, "%s", path);
        mx_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void mx_st_close(mx_st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n_maps; i++)
        munmap(f->maps[i].addr, f->maps[i].len);
    free(f->maps);
    for (int i = 0; i < f->n; i++)
        free(f->entries[i].name);
    free(f->entries);
    if (f->fd >= 0)
        close(f->fd);
    free(f->path);
    free(f);
}

const char *mx_st_path(const mx_st_file *f) { return f->path; }
int mx_st_count(const mx_st_file *f) { return f->n; }

const mx_st_entry *mx_st_entry_at(const mx_st_file *f, int i)
{
    return i >= 0 && i < f->n ? &f->entries[i] : NULL;
}

const mx_st_entry *mx_st_find(const mx_st_file *f, const char *name)
{
    mx_st_entry key = {.name = (char *)name};
    return bsearch(&key, f->entries, (size_t)f->n, sizeof key, by_name);
}

int mx_st_map(mx_st_file *f, const mx_st_entry *e, mx_tensor *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    out->dtype = e->dtype;
    out->device = MX_DEVICE_CPU;
    out->ndim = e->ndim;
    memcpy(out->shape, e->shape, sizeof out->shape);
    static const char empty[8];
    if (e->end == e->begin) { /* nothing to map; point at a valid zero-length buffer */
        out->data = (void *)empty;
        return 0;
    }
    if (f->n_maps == f->cap_maps) {
        int cap = f->cap_maps ? 2 * f->cap_maps : 16;
        mapping *m = realloc(f->maps, (size_t)cap * sizeof *m);
        if (!m)
            return mx_fail(err, MX_ENOMEM, "%s: tensor %s: out of memory", f->path, e->name);
        f->maps = m;
        f->cap_maps = cap;
    }
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t off = f->data_start + e->begin, aligned = off - off % page;
    size_t len = (size_t)(e->end - e->begin + (off - aligned));
    void *addr = mmap(NULL, len, PROT_READ, MAP_PRIVATE, f->fd, (off_t)aligned);
    if (addr == MAP_FAILED)
        return mx_fail(err, MX_EIO, "%s: tensor %s: mmap of %zu bytes failed: %s", f->path, e->name, len,
                       strerror(errno));
    f->maps[f->n_maps++] = (mapping){addr, len};
    out->data = (char *)addr + (off - aligned);
    return 0;
}

/* ---- writer ---- */

static size_t item_bytes(const mx_st_write_item *it)
{
    size_t n = mx_dtype_size(it->dtype);
    for (int d = 0; d < it->ndim; d++)
        n *= (size_t)it->shape[d];
    return n;
}

static char *build_header(const mx_st_write_item *items, int n, size_t *len_out)
{
    json_t *root = json_object(), *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(root, "__metadata__", meta);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        json_object_set_new(e, "dtype", json_string(mx_dtype_name(items[i].dtype)));
        for (int d = 0; d < items[i].ndim; d++)
            json_array_append_new(shape, json_integer(items[i].shape[d]));
        json_object_set_new(e, "shape", shape);
        uint64_t end = off + item_bytes(&items[i]);
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)end));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(root, items[i].name, e);
        off = end;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return NULL;
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + len, ' ', padded - len);
    out[padded] = '\0';
    *len_out = padded;
    return out;
}

int mx_st_write_stream(const char *path, const mx_st_write_item *items, int n, mx_st_fill_fn fill,
                       void *ctx, mx_error *err)
{
    for (int i = 0; i < n; i++) {
        if (!items[i].name || items[i].ndim < 0 || items[i].ndim > MX_MAX_DIMS ||
            (unsigned)items[i].dtype >= MX_DTYPE_COUNT)
            return mx_fail(err, MX_EINVAL, "%s: item %d is malformed", path, i);
        if (!items[i].data && !fill)
            return mx_fail(err, MX_EINVAL, "%s: item %s has no data", path, items[i].name);
        for (int j = 0; j < i; j++)
            if (strcmp(items[i].name, items[j].name) == 0)
                return mx_fail(err, MX_EINVAL, "%s: tensor %s is listed twice", path, items[i].name);
    }
    size_t hlen;
    char *header = build_header(items, n, &hlen);
    if (!header)
        return mx_fail(err, MX_ENOMEM, "%s: out of memory building the header", path);
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(header);
        return mx_fail(err, MX_EIO, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(header, 1, hlen, fp) == hlen;
    free(header);
    enum { CHUNK = 8 << 20 };
    char *buf = NULL;
    int rc = 0;
    for (int i = 0; i < n && ok && !rc; i++) {
        size_t total = item_bytes(&items[i]);
        if (items[i].data) {
            ok = total == 0 || fwrite(items[i].data, 1, total, fp) == total;
            continue;
        }
        if (!buf && !(buf = malloc(CHUNK))) {
            rc = mx_fail(err, MX_ENOMEM, "%s: out of memory", path);
            break;
        }
        for (size_t done = 0; done < total && ok && !rc; done += CHUNK) {
            size_t len = total - done < CHUNK ? total - done : CHUNK;
            rc = fill(ctx, i, done, buf, len, err);
            ok = !rc && fwrite(buf, 1, len, fp) == len;
        }
    }
    free(buf);
    if (fclose(fp) != 0)
        ok = 0;
    if (!rc && !ok)
        rc = mx_fail(err, MX_EIO, "%s: write failed: %s", path, strerror(errno));
    return rc;
}

int mx_st_write(const char *path, const mx_st_write_item *items, int n, mx_error *err)
{
    return mx_st_write_stream(path, items, n, NULL, NULL, err);
}
