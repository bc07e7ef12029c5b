/* backend.c - picks a backend by name; the backends themselves live in core/cpu and core/cuda. */
#include "backend.h"

#include <string.h>

int mx_backend_create(const char *name, int n_threads, mx_backend **out, mx_error *err)
{
    if (!name || strcmp(name, "cpu") == 0)
        return mx_backend_cpu_create(n_threads, out, err);
    if (strcmp(name, "cuda") == 0)
        return mx_backend_cuda_create(0, out, err);
    return mx_fail(err, MX_EINVAL, "unknown backend \"%s\" (expected \"cpu\" or \"cuda\")", name);
}
