/* act_check.c - the argument check every CPU op makes on its activation tensors. Its own file
 * so that the op table (cpu_backend.c) and the attention kernels it dispatches to
 * (lightning_cpu.c, flash_attention_cpu.c) both call down into it, never into each other. */
#include "cpu_backend.h"

int mx_cpu_check_act(const mx_tensor *t, const char *what, int64_t cols, mx_error *err)
{
    if (!t || (!t->data && mx_tensor_numel(t) > 0))
        return mx_fail(err, MX_EINVAL, "%s: missing tensor", what);
    if (t->device != MX_DEVICE_CPU || t->dtype != MX_DTYPE_F32 || t->ndim != 2)
        return mx_fail(err, MX_EINVAL, "%s: expected a 2-D F32 CPU tensor", what);
    if (cols >= 0 && t->shape[1] != cols)
        return mx_fail(err, MX_EINVAL, "%s: has %lld columns, expected %lld", what,
                       (long long)t->shape[1], (long long)cols);
    return 0;
}
