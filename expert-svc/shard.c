/* shard.c - loading an expert shard: the owned (layer, expert) pairs only, through
 * mx_load_plan's expert mask, bound to the chosen backend. The RPC handlers are in
 * shard_rpc.c. Does no networking. */
#include "shard_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mx_expert_shard_load(const mx_expert_shard_options *opts, mx_expert_shard **out, mx_error *err)
{
    *out = NULL;
    if (!opts->model_dir || !opts->owns)
        return mx_fail(err, MX_EINVAL, "expert shard: model directory and expert set are required");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", opts->model_dir);
    mx_config cfg;
    MX_TRY(mx_config_load(path, &cfg, err));
    int L = cfg.num_hidden_layers, E = cfg.num_local_experts;
    int rc = mx_expert_set_check(opts->owns, L, E, err);
    if (rc)
        return mx_error_prefix(err, "expert shard for %s", opts->model_dir);

    mx_expert_shard *s = calloc(1, sizeof *s);
    if (!s)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the expert shard");
    pthread_mutex_init(&s->compute_lock, NULL);
    s->shard_index = opts->shard_index;
    s->mask = malloc((size_t)L * E);
    s->expert_rows = calloc((size_t)L * E, sizeof *s->expert_rows);
    if (!s->mask || !s->expert_rows) {
        free(s->mask);
        free(s->expert_rows);
        free(s);
        return mx_fail(err, MX_ENOMEM, "out of memory creating the expert shard");
    }
    mx_expert_set_mask(opts->owns, L, E, s->mask);
    int lo = L, hi = 0;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            if (s->mask[(size_t)l * E + e]) {
                lo = l < lo ? l : lo;
                hi = l + 1 > hi ? l + 1 : hi;
                s->n_held++;
            }
    if (!s->n_held) {
        mx_expert_shard_free(s);
        return mx_fail(err, MX_EINVAL, "expert shard: the expert set selects no expert of the model");
    }
    mx_load_plan plan = {.layer_begin = lo, .layer_end = hi, .expert_mask = s->mask,
                         .expert_format = opts->expert_dtype, .quantize_threads = opts->threads};
    rc = mx_weights_load(opts->model_dir, &plan, &s->weights, err);
    if (!rc)
        rc = mx_backend_create(opts->backend ? opts->backend : "cpu", opts->threads, &s->be, err);
    if (!rc && opts->pin_threads)
        rc = mx_backend_cpu_pin_threads(s->be, err);
    if (!rc)
        rc = mx_model_create(s->weights, s->be, &s->model, err);
    if (!rc)
        rc = shard_metrics_create(opts->shard_index, &s->metrics, err);
    if (rc) {
        mx_expert_shard_free(s);
        return rc;
    }
    s->cfg = *mx_model_config(s->model);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            const mx_expert_weights *ew = mx_model_expert(s->model, l, e);
            if (!ew)
                continue;
            s->weight_bytes += mx_tensor_nbytes(&ew->w1) + mx_tensor_nbytes(&ew->w2) + mx_tensor_nbytes(&ew->w3);
            if (ew->w1.scale) /* int8: one fp32 scale per row */
                s->weight_bytes += sizeof(float) * (uint64_t)(ew->w1.shape[0] + ew->w2.shape[0] + ew->w3.shape[0]);
            s->weight_dtype = ew->w1.dtype;
        }
    *out = s;
    return 0;
}

mx_metrics *mx_expert_shard_metrics(mx_expert_shard *s)
{
    return shard_metrics_registry(s->metrics);
}

uint64_t mx_expert_shard_weight_bytes(const mx_expert_shard *s)
{
    return s->weight_bytes;
}

int mx_expert_shard_count(const mx_expert_shard *s)
{
    return s->n_held;
}

void mx_expert_shard_free(mx_expert_shard *s)
{
    if (!s)
        return;
    mx_model_free(s->model);
    if (s->be)
        s->be->destroy(s->be);
    mx_weights_free(s->weights);
    pthread_mutex_destroy(&s->compute_lock);
    free(s->mask);
    free(s->expert_rows);
    shard_metrics_destroy(s->metrics);
    free(s);
}
