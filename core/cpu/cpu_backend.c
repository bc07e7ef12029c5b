/* cpu_backend.c - the CPU backend's op table: memory, dense elementwise ops, projections
 * (through mx_cpu_gemm, BF16 weights read in place) and the MoE router. Activations are F32.
 * Attention ops live in lightning_cpu.c, flash_attention_cpu.c and kv_pages_cpu.c. */
#include "cpu_backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cpu.h"
#include "gemm.h"

static void cpu_destroy(mx_backend *be)
{
    if (!be)
        return;
    mx_cpu_impl *impl = be->impl;
    if (impl) {
        mx_threadpool_destroy(impl->pool);
        mx_kv_pool_destroy(impl->kv_pool);
        mx_block_cache_destroy(&impl->buffers);
        pthread_mutex_destroy(&impl->route_mu);
        free(impl->route_logits);
        free(impl);
    }
    free(be);
}

static int cpu_alloc(mx_backend *be, mx_tensor *t, mx_dtype dtype, int ndim, const int64_t *shape,
                     mx_error *err)
{
    if (ndim < 1 || ndim > MX_MAX_DIMS)
        return mx_fail(err, MX_EINVAL, "alloc: %d dimensions", ndim);
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->device = MX_DEVICE_CPU;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return mx_fail(err, MX_EINVAL, "alloc: negative dimension");
        t->shape[i] = shape[i];
    }
    size_t bytes = mx_tensor_nbytes(t);
    t->data = mx_block_cache_get(&((mx_cpu_impl *)be->impl)->buffers, bytes); /* zeroed, 64-byte aligned */
    if (!t->data)
        return mx_fail(err, MX_ENOMEM, "alloc: out of memory for %zu bytes", bytes);
    return 0;
}

static void cpu_free(mx_backend *be, mx_tensor *t)
{
    if (t) {
        mx_block_cache_put(&((mx_cpu_impl *)be->impl)->buffers, t->data);
        t->data = NULL;
    }
}

static int cpu_upload_weight(mx_backend *be, mx_tensor *dst, const mx_tensor *host, mx_error *err)
{
    (void)be;
    (void)err;
    *dst = *host; /* mapped checkpoint memory is used in place */
    return 0;
}

static void cpu_free_weight(mx_backend *be, mx_tensor *t)
{
    (void)be;
    (void)t; /* the checkpoint owns the mapping */
}

static int cpu_to_host_f32(mx_backend *be, float *dst, const mx_tensor *src, mx_error *err)
{
    (void)be;
    if (src->dtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EINVAL, "to_host_f32: tensor is %s", mx_dtype_name(src->dtype));
    memcpy(dst, src->data, mx_tensor_nbytes(src));
    return 0;
}

static int cpu_from_host_f32(mx_backend *be, mx_tensor *dst, const float *src, mx_error *err)
{
    (void)be;
    if (dst->dtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EINVAL, "from_host_f32: tensor is %s", mx_dtype_name(dst->dtype));
    memcpy(dst->data, src, mx_tensor_nbytes(dst));
    return 0;
}

static int cpu_sync(mx_backend *be, mx_error *err)
{
    (void)be;
    (void)err;
    return 0;
}

static int cpu_embed(mx_backend *be, mx_tensor *out, const int32_t *ids, int n, const mx_tensor *table,
                     mx_error *err)
{
    (void)be;
    int64_t vocab = table->shape[0], hidden = table->shape[1];
    MX_TRY(mx_cpu_check_act(out, "embed output", hidden, err));
    if (out->shape[0] < n)
        return mx_fail(err, MX_EINVAL, "embed: output has %lld rows, need %d", (long long)out->shape[0], n);
    float *y = out->data;
    for (int t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= vocab)
            return mx_fail(err, MX_EINVAL, "token id %d is outside the vocabulary [0, %lld)", ids[t],
                           (long long)vocab);
        for (int64_t c = 0; c < hidden; c++)
            y[t * hidden + c] = mx_load_as_f32(table->data, table->dtype, (int64_t)ids[t] * hidden + c);
    }
    return 0;
}

static int cpu_matmul(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, mx_error *err)
{
    int64_t M = x->shape[0], K = x->shape[1], N = w->shape[0];
    if (w->ndim != 2 || w->shape[1] != K)
        return mx_fail(err, MX_EINVAL, "matmul: weight [%lld, %lld] does not match input width %lld",
                       (long long)w->shape[0], (long long)w->shape[1], (long long)K);
    MX_TRY(mx_cpu_check_act(x, "matmul input", K, err));
    MX_TRY(mx_cpu_check_act(y, "matmul output", N, err));
    if (y->shape[0] < M)
        return mx_fail(err, MX_EINVAL, "matmul: output has %lld rows, need %lld", (long long)y->shape[0],
                       (long long)M);
    if (w->dtype == MX_DTYPE_I8) /* experts quantized at load: int8 rows + per-row scales */
        return mx_cpu_gemm_i8(mx_cpu_pool(be), y->data, (int)N, x->data, (int)K, (int)M, (int)K,
                              w->data, w->scale, (int)N, err);
    return mx_cpu_gemm(mx_cpu_pool(be), y->data, (int)N, x->data, (int)K, (int)M, (int)K, w->data,
                       w->dtype, (int)N, err);
}

typedef struct {
    float *y;
    const float *x;
    const mx_tensor *w;
    int64_t cols;
    float eps;
} rmsnorm_job;

static void rmsnorm_rows(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    const rmsnorm_job *j = ctx;
    const float *x = j->x + (size_t)task * j->cols;
    float *y = j->y + (size_t)task * j->cols;
    double ss = 0; /* double: the sum of squares of a 6144-wide row must not lose bits */
    for (int64_t c = 0; c < j->cols; c++)
        ss += (double)x[c] * x[c];
    float scale = 1.0f / sqrtf((float)(ss / (double)j->cols) + j->eps);
    for (int64_t c = 0; c < j->cols; c++)
        y[c] = x[c] * scale * mx_load_as_f32(j->w->data, j->w->dtype, c);
}

static int cpu_rmsnorm(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, float eps,
                       mx_error *err)
{
    int64_t cols = x->shape[1];
    MX_TRY(mx_cpu_check_act(x, "rmsnorm input", -1, err));
    MX_TRY(mx_cpu_check_act(y, "rmsnorm output", cols, err));
    if (mx_tensor_numel(w) != cols)
        return mx_fail(err, MX_EINVAL, "rmsnorm: weight has %lld values, rows have %lld",
                       (long long)mx_tensor_numel(w), (long long)cols);
    rmsnorm_job j = {y->data, x->data, w, cols, eps};
    int rows = (int)x->shape[0];
    if (rows > 64)
        mx_threadpool_run(mx_cpu_pool(be), rmsnorm_rows, &j, rows);
    else
        for (int r = 0; r < rows; r++)
            rmsnorm_rows(&j, r, rows);
    return 0;
}

static int same_shape(const mx_tensor *a, const mx_tensor *b)
{
    return a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1];
}

static int cpu_residual(mx_backend *be, mx_tensor *y, const mx_tensor *x, float alpha, const mx_tensor *a,
                        float beta, mx_error *err)
{
    (void)be;
    MX_TRY(mx_cpu_check_act(x, "residual input", -1, err));
    MX_TRY(mx_cpu_check_act(a, "residual branch", -1, err));
    MX_TRY(mx_cpu_check_act(y, "residual output", -1, err));
    if (!same_shape(x, a) || !same_shape(x, y))
        return mx_fail(err, MX_EINVAL, "residual: shapes differ");
    float *yd = y->data;
    const float *xd = x->data, *ad = a->data;
    int64_t n = mx_tensor_numel(x);
    for (int64_t i = 0; i < n; i++)
        yd[i] = xd[i] * alpha + ad[i] * beta;
    return 0;
}

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

static int cpu_silu(mx_backend *be, mx_tensor *x, mx_error *err)
{
    (void)be;
    MX_TRY(mx_cpu_check_act(x, "silu input", -1, err));
    float *d = x->data;
    int64_t n = mx_tensor_numel(x);
    for (int64_t i = 0; i < n; i++)
        d[i] = silu(d[i]);
    return 0;
}

static int cpu_swiglu(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *u, mx_error *err)
{
    (void)be;
    MX_TRY(mx_cpu_check_act(g, "swiglu gate", -1, err));
    MX_TRY(mx_cpu_check_act(u, "swiglu up", -1, err));
    MX_TRY(mx_cpu_check_act(y, "swiglu output", -1, err));
    if (!same_shape(g, u) || !same_shape(g, y))
        return mx_fail(err, MX_EINVAL, "swiglu: shapes differ");
    float *yd = y->data;
    const float *gd = g->data, *ud = u->data;
    int64_t n = mx_tensor_numel(g);
    for (int64_t i = 0; i < n; i++)
        yd[i] = silu(gd[i]) * ud[i];
    return 0;
}

static int cpu_sigmoid_mul(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *x,
                           mx_error *err)
{
    (void)be;
    MX_TRY(mx_cpu_check_act(g, "sigmoid gate", -1, err));
    MX_TRY(mx_cpu_check_act(x, "sigmoid_mul input", -1, err));
    MX_TRY(mx_cpu_check_act(y, "sigmoid_mul output", -1, err));
    if (!same_shape(g, x) || !same_shape(g, y))
        return mx_fail(err, MX_EINVAL, "sigmoid_mul: shapes differ");
    float *yd = y->data;
    const float *gd = g->data, *xd = x->data;
    int64_t n = mx_tensor_numel(g);
    for (int64_t i = 0; i < n; i++)
        yd[i] = xd[i] / (1.0f + expf(-gd[i]));
    return 0;
}

static int cpu_moe_route(mx_backend *be, int32_t *ids, float *weights, const mx_tensor *x,
                         const mx_tensor *gate, int k, mx_error *err)
{
    int64_t T = x->shape[0], E = gate->shape[0];
    if (k < 1 || k > E)
        return mx_fail(err, MX_EINVAL, "moe_route: top-%d of %lld experts", k, (long long)E);
    mx_cpu_impl *impl = be->impl;
    size_t need = (size_t)T * (size_t)E;
    pthread_mutex_lock(&impl->route_mu);
    if (need > impl->route_cap) {
        /* 64-byte aligned like every activation the GEMM writes */
        float *grown = aligned_alloc(64, (need * sizeof *grown + 63) / 64 * 64);
        if (!grown) {
            pthread_mutex_unlock(&impl->route_mu);
            return mx_fail(err, MX_ENOMEM, "moe_route: out of memory for %zu logits", need);
        }
        free(impl->route_logits);
        impl->route_logits = grown;
        impl->route_cap = need;
    }
    mx_tensor logits = mx_tensor_2d(impl->route_logits, MX_DTYPE_F32, MX_DEVICE_CPU, T, E);
    int rc = cpu_matmul(be, &logits, x, gate, err);
    if (rc) {
        pthread_mutex_unlock(&impl->route_mu);
        return rc;
    }
    for (int64_t t = 0; t < T; t++) {
        float *row = (float *)logits.data + t * E;
        float mx = row[0];
        for (int64_t e = 1; e < E; e++)
            mx = row[e] > mx ? row[e] : mx;
        float sum = 0;
        for (int64_t e = 0; e < E; e++) {
            row[e] = expf(row[e] - mx);
            sum += row[e];
        }
        for (int64_t e = 0; e < E; e++)
            row[e] /= sum;
        float total = 0;
        for (int j = 0; j < k; j++) { /* selection: largest first, ties to the lower id */
            int best = -1;
            for (int64_t e = 0; e < E; e++) {
                int taken = 0;
                for (int q = 0; q < j; q++)
                    taken |= ids[t * k + q] == e;
                if (!taken && (best < 0 || row[e] > row[best]))
                    best = (int)e;
            }
            ids[t * k + j] = best;
            weights[t * k + j] = row[best];
            total += row[best];
        }
        for (int j = 0; j < k; j++)
            weights[t * k + j] /= total;
    }
    pthread_mutex_unlock(&impl->route_mu);
    return 0;
}

static int cpu_gather_rows(mx_backend *be, mx_tensor *out, const mx_tensor *x, const int32_t *rows, int n,
                           mx_error *err)
{
    (void)be;
    int64_t cols = x->shape[1];
    MX_TRY(mx_cpu_check_act(x, "gather input", -1, err));
    MX_TRY(mx_cpu_check_act(out, "gather output", cols, err));
    if (out->shape[0] < n)
        return mx_fail(err, MX_EINVAL, "gather: output has %lld rows, need %d", (long long)out->shape[0], n);
    for (int i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= x->shape[0])
            return mx_fail(err, MX_EINVAL, "gather: row %d out of range", rows[i]);
        memcpy((float *)out->data + (size_t)i * cols, (const float *)x->data + (size_t)rows[i] * cols,
               (size_t)cols * sizeof(float));
    }
    return 0;
}

static int cpu_scatter_add_rows(mx_backend *be, mx_tensor *out, const mx_tensor *y, const int32_t *rows,
                                const float *scale, int n, mx_error *err)
{
    (void)be;
    int64_t cols = out->shape[1];
    MX_TRY(mx_cpu_check_act(y, "scatter input", cols, err));
    MX_TRY(mx_cpu_check_act(out, "scatter output", -1, err));
    for (int i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= out->shape[0])
            return mx_fail(err, MX_EINVAL, "scatter: row %d out of range", rows[i]);
        float *o = (float *)out->data + (size_t)rows[i] * cols;
        const float *s = (const float *)y->data + (size_t)i * cols;
        for (int64_t c = 0; c < cols; c++)
            o[c] += scale[i] * s[c];
    }
    return 0;
}

int mx_backend_cpu_pin_threads(mx_backend *be, mx_error *err)
{
    if (be->device != MX_DEVICE_CPU)
        return mx_fail(err, MX_EINVAL, "pinning threads applies to the cpu backend only");
    mx_cpu_impl *impl = be->impl;
    return mx_threadpool_pin(impl->pool, err);
}

int mx_backend_cpu_create(int n_threads, mx_backend **out, mx_error *err)
{
    mx_backend *be = calloc(1, sizeof *be);
    mx_cpu_impl *impl = calloc(1, sizeof *impl);
    if (!be || !impl) {
        free(be);
        free(impl);
        return mx_fail(err, MX_ENOMEM, "out of memory creating the CPU backend");
    }
    pthread_mutex_init(&impl->route_mu, NULL);
    int rc = mx_threadpool_create(n_threads, &impl->pool, err);
    if (!rc)
        rc = mx_kv_pool_create(&impl->kv_pool, err);
    if (rc) {
        mx_threadpool_destroy(impl->pool);
        free(be);
        free(impl);
        return rc;
    }
    /* enough for the working set of a forward pass, small next to the weights. Under
     * AddressSanitizer nothing is cached, so a use after free is still caught. */
#ifdef __SANITIZE_ADDRESS__
    mx_block_cache_init(&impl->buffers, 0);
#else
    mx_block_cache_init(&impl->buffers, (size_t)1 << 30);
#endif
    be->name = "cpu";
    be->device = MX_DEVICE_CPU;
    be->act_dtype = MX_DTYPE_F32;
    be->impl = impl;
    be->destroy = cpu_destroy;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload_weight = cpu_upload_weight;
    be->free_weight = cpu_free_weight;
    be->to_host_f32 = cpu_to_host_f32;
    be->from_host_f32 = cpu_from_host_f32;
    be->sync = cpu_sync;
    be->embed = cpu_embed;
    be->matmul = cpu_matmul;
    be->rmsnorm = cpu_rmsnorm;
    be->residual = cpu_residual;
    be->silu = cpu_silu;
    be->swiglu = cpu_swiglu;
    be->sigmoid_mul = cpu_sigmoid_mul;
    be->lightning = mx_cpu_lightning;
    be->lightning_state_init = mx_cpu_lightning_state_init;
    be->lightning_state_free = mx_cpu_lightning_state_free;
    be->softmax_attention = mx_cpu_softmax_attention;
    be->kv_cache_init = mx_cpu_kv_cache_init;
    be->kv_cache_free = mx_cpu_kv_cache_free;
    be->kv_cache_truncate = mx_cpu_kv_cache_truncate;
    be->kv_configure = mx_cpu_kv_configure;
    be->kv_usage = mx_cpu_kv_usage;
    be->moe_route = cpu_moe_route;
    be->gather_rows = cpu_gather_rows;
    be->scatter_add_rows = cpu_scatter_add_rows;
    *out = be;
    return 0;
}
