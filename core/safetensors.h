/* safetensors.h - reading and writing one .safetensors file.
 * Opening reads and validates only the header (JSON via jansson): every tensor's dtype,
 * shape and data_offsets are checked against the file size and each other. Tensor data is
 * memory-mapped on request, one tensor range at a time, so a process touches only what it uses. */
#ifndef MX_SAFETENSORS_H
#define MX_SAFETENSORS_H

#include <stdint.h>
#include <stddef.h>

#include "error.h"
#include "tensor.h"

typedef struct mx_st_entry {
    char *name;
    mx_dtype dtype;
    int ndim;
    int64_t shape[MX_MAX_DIMS];
    uint64_t begin, end;         /* byte offsets relative to the start of the data section */
} mx_st_entry;

typedef struct mx_st_file mx_st_file;

/* Opens path and validates its header. Errors name the file and, where it applies, the tensor:
 * truncated file, header length beyond the file, bad JSON, unknown dtype, offsets outside the
 * data section or overlapping, byte size not matching dtype x shape. */
int mx_st_open(const char *path, mx_st_file **out, mx_error *err);
void mx_st_close(mx_st_file *f);   /* unmaps every mapping made through mx_st_map */

const char *mx_st_path(const mx_st_file *f);
int mx_st_count(const mx_st_file *f);
const mx_st_entry *mx_st_entry_at(const mx_st_file *f, int i);
const mx_st_entry *mx_st_find(const mx_st_file *f, const char *name);

/* Maps one tensor's bytes read-only and fills a CPU tensor view of it. The mapping lives until
 * mx_st_close. Not thread-safe for one file: map from one thread (reading the views is safe). */
int mx_st_map(mx_st_file *f, const mx_st_entry *e, mx_tensor *out, mx_error *err);

/* One tensor to write: name, dtype, shape and data (numel * dtype size bytes). */
typedef struct mx_st_write_item {
    const char *name;
    mx_dtype dtype;
    int ndim;
    int64_t shape[MX_MAX_DIMS];
    const void *data;
} mx_st_write_item;

/* Writes a safetensors file (header padded to 8 bytes, "__metadata__": {"format": "pt"}). */
int mx_st_write(const char *path, const mx_st_write_item *items, int n, mx_error *err);

/* Produces bytes [offset, offset+len) of item `item`'s data; called in increasing offset order,
 * item by item, so a generator can stream tensors larger than memory. Returns 0 or an mx_code. */
typedef int (*mx_st_fill_fn)(void *ctx, int item, size_t offset, void *buf, size_t len, mx_error *err);

/* Like mx_st_write, but items whose data is NULL are produced in chunks by fill. */
int mx_st_write_stream(const char *path, const mx_st_write_item *items, int n, mx_st_fill_fn fill,
                       void *ctx, mx_error *err);

#endif
