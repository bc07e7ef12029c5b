/* checkpoint.h - a Hugging Face checkpoint directory: config.json plus either
 * model.safetensors.index.json with shards or a single model.safetensors.
 * Shard headers are read once; tensors are mapped only when asked for, with their name,
 * dtype and shape checked against what the caller expects. */
#ifndef MX_CHECKPOINT_H
#define MX_CHECKPOINT_H

#include "config.h"
#include "error.h"
#include "safetensors.h"
#include "tensor.h"

typedef struct mx_checkpoint mx_checkpoint;

/* Progress: called after each tensor is mapped, with bytes mapped so far and bytes planned. */
typedef void (*mx_progress_fn)(void *ctx, const char *what, uint64_t done, uint64_t total);

int mx_checkpoint_open(const char *dir, mx_checkpoint **out, mx_error *err);
void mx_checkpoint_close(mx_checkpoint *ck);

const mx_config *mx_checkpoint_config(const mx_checkpoint *ck);
const char *mx_checkpoint_dir(const mx_checkpoint *ck);

/* Does the checkpoint have this tensor (per the index, or the single file's header)? */
int mx_checkpoint_has(const mx_checkpoint *ck, const char *name);

/* Maps tensor `name`, checking it has exactly ndim/shape and a dtype allowed by
 * allowed_dtypes (a bit mask of 1u << mx_dtype). Errors name the file and the tensor. */
int mx_checkpoint_get(mx_checkpoint *ck, const char *name, unsigned allowed_dtypes, int ndim,
                      const int64_t *shape, mx_tensor *out, mx_error *err);

/* The header entry of tensor `name` (dtype, shape, byte range) without mapping it; *shard (may
 * be NULL) receives the shard file name. MX_ENOTFOUND when the checkpoint lacks the tensor. */
int mx_checkpoint_entry(const mx_checkpoint *ck, const char *name, const mx_st_entry **entry,
                        const char **shard, mx_error *err);

#define MX_DTYPES_FLOAT ((1u << MX_DTYPE_BF16) | (1u << MX_DTYPE_F16) | (1u << MX_DTYPE_F32))

#endif
