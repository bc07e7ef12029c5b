/* expert_set.h - which experts of which layers a shard owns, and its libconfig schema,
 * shared by expert-svc (what to load) and the router (where to send). Pure data and parsing:
 * no I/O beyond reading the config setting, no knowledge of the model size.
 *
 * Schema (inside any libconfig group):
 *     layers = [0, 1, 2];               # explicit list of layers, or
 *     layer_begin = 0; layer_end = 8;   # a half-open range [begin, end); or neither = every layer
 *     experts = [0, 2];                 # expert ids (required, non-empty)
 */
#ifndef MX_EXPERT_SET_H
#define MX_EXPERT_SET_H

#include <libconfig.h>
#include <stdbool.h>

#include "error.h"

typedef struct mx_expert_set {
    bool all_layers;   /* neither `layers` nor a range was given: every layer of the model */
    int n_layers;      /* layers owned (sorted, unique) when !all_layers */
    int *layers;
    int n_experts;     /* expert ids owned in each of those layers (sorted, unique) */
    int *experts;
} mx_expert_set;

/* Parses the keys above from group s. Errors name the key, the file and the line
 * ("experts.conf:7: `experts`: expected a list of integers"). *out is owned by the caller:
 * free with mx_expert_set_free (also after a failure). */
int mx_expert_set_from_setting(const config_setting_t *s, mx_expert_set *out, mx_error *err);

/* Checks every layer < num_layers and every expert < num_experts (naming the offender). */
int mx_expert_set_check(const mx_expert_set *set, int num_layers, int num_experts, mx_error *err);

bool mx_expert_set_has_layer(const mx_expert_set *set, int layer);
bool mx_expert_set_has(const mx_expert_set *set, int layer, int expert);

/* Fills mask [num_layers * num_experts] (1 = owned), the form mx_load_plan.expert_mask wants. */
void mx_expert_set_mask(const mx_expert_set *set, int num_layers, int num_experts, unsigned char *mask);

void mx_expert_set_free(mx_expert_set *set);

#endif
