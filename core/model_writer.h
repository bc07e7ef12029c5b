/* model_writer.h - writes a random-weight MiniMax-Text-01 model in the real checkpoint layout
 * (config.json, model.safetensors.index.json, three shards) for tests and benchmarks.
 * Only config and weights: tokenizer.json is written by the tokenizer module's own writer,
 * which the caller runs on the same directory after mx_make_model. */
#ifndef MX_MODEL_WRITER_H
#define MX_MODEL_WRITER_H

#include <stdint.h>

#include "config.h"
#include "error.h"

/* NULL-terminated list of preset names: "tiny", "small", "medium", "layer". */
const char *const *mx_model_presets(void);

/* The config a preset describes. MX_ENOTFOUND for an unknown name (the message lists them). */
int mx_model_preset_config(const char *preset, mx_config *cfg, mx_error *err);

/* Creates out_dir (if needed) and writes the preset's model into it; the same preset and seed
 * give byte-identical files. Tensors are streamed, so models larger than memory can be made. */
int mx_make_model(const char *preset, const char *out_dir, uint64_t seed, mx_error *err);

/* The same for an arbitrary (validated) config. */
int mx_make_model_config(const mx_config *cfg, const char *out_dir, uint64_t seed, mx_error *err);

/* The same with a skewed router gate, to measure expert load imbalance: the gate rows of
 * experts [0, hot_experts) of every layer are multiplied by gate_skew (same draws otherwise;
 * 1 = the plain model, byte for byte). A larger row spreads that expert's logits wider, so
 * it lands in the top-k of many more tokens. */
int mx_make_model_skewed(const mx_config *cfg, const char *out_dir, uint64_t seed, double gate_skew, int hot_experts,
                         mx_error *err);

#endif
