/* expert_set.c - parsing and querying the set of (layer, expert) pairs a shard owns.
 * Knows nothing of the model beyond the bounds given to mx_expert_set_check. */
#include "expert_set.h"

#include <stdlib.h>
#include <string.h>

#include "cfg_file.h"

/* Upper bound on ids accepted while parsing; real bounds come from the model later. */
#define MAX_ID 1000000

int mx_expert_set_from_setting(const config_setting_t *s, mx_expert_set *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    if (!config_setting_is_group(s))
        return mx_cfg_fail(err, s, NULL, "expected a group { layers = [...]; experts = [...]; }");
    MX_TRY(mx_cfg_int_list(s, "experts", 1, 0, MAX_ID, &out->experts, &out->n_experts, err));
    MX_TRY(mx_cfg_int_list(s, "layers", 0, 0, MAX_ID, &out->layers, &out->n_layers, err));
    const config_setting_t *b = config_setting_get_member(s, "layer_begin");
    const config_setting_t *e = config_setting_get_member(s, "layer_end");
    if (out->layers && (b || e))
        return mx_cfg_fail(err, b ? b : e, NULL, "give either `layers` or `layer_begin`/`layer_end`, not both");
    if (!out->layers && !b && !e) {
        out->all_layers = true;
        out->n_layers = 0;
        return 0;
    }
    if (!out->layers) {
        if (!b || !e)
            return mx_cfg_fail(err, s, b ? "layer_end" : "layer_begin",
                               "missing (`layer_begin` and `layer_end` go together)");
        int64_t lb, le;
        MX_TRY(mx_cfg_int(s, "layer_begin", 1, 0, 0, MAX_ID, &lb, err));
        MX_TRY(mx_cfg_int(s, "layer_end", 1, 0, 1, MAX_ID, &le, err));
        if (le <= lb)
            return mx_cfg_fail(err, e, NULL, "must be greater than layer_begin (%lld); the range is [begin, end)",
                               (long long)lb);
        out->n_layers = (int)(le - lb);
        out->layers = malloc((size_t)out->n_layers * sizeof *out->layers);
        if (!out->layers)
            return mx_fail(err, MX_ENOMEM, "out of memory reading a layer range");
        for (int i = 0; i < out->n_layers; i++)
            out->layers[i] = (int)lb + i;
    }
    return 0;
}

int mx_expert_set_check(const mx_expert_set *set, int num_layers, int num_experts, mx_error *err)
{
    for (int i = 0; i < set->n_layers; i++)
        if (set->layers[i] >= num_layers)
            return mx_fail(err, MX_ERANGE, "`layers`: layer %d does not exist (the model has %d layers)", set->layers[i],
                           num_layers);
    for (int i = 0; i < set->n_experts; i++)
        if (set->experts[i] >= num_experts)
            return mx_fail(err, MX_ERANGE, "`experts`: expert %d does not exist (the model has %d experts per layer)",
                           set->experts[i], num_experts);
    return 0;
}

static bool contains(const int *v, int n, int x)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (v[mid] == x)
            return true;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return false;
}

bool mx_expert_set_has_layer(const mx_expert_set *set, int layer)
{
    return layer >= 0 && (set->all_layers || contains(set->layers, set->n_layers, layer));
}

bool mx_expert_set_has(const mx_expert_set *set, int layer, int expert)
{
    return mx_expert_set_has_layer(set, layer) && contains(set->experts, set->n_experts, expert);
}

void mx_expert_set_mask(const mx_expert_set *set, int num_layers, int num_experts, unsigned char *mask)
{
    memset(mask, 0, (size_t)num_layers * (size_t)num_experts);
    for (int l = 0; l < num_layers; l++)
        if (mx_expert_set_has_layer(set, l))
            for (int i = 0; i < set->n_experts; i++)
                if (set->experts[i] < num_experts)
                    mask[(size_t)l * num_experts + set->experts[i]] = 1;
}

void mx_expert_set_free(mx_expert_set *set)
{
    free(set->layers);
    free(set->experts);
    memset(set, 0, sizeof *set);
}
