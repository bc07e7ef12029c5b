/* seq_table.h - the live sequences of one attention stage: sequence id -> engine state
 * (mx_sequence for the stage's layers) and, on the last stage, what sampling needs between
 * steps (the tokens seen so far, for the repetition penalty).
 * A fixed capacity bounds memory; the table does no locking (the stage serialises access). */
#ifndef MX_ATTN_SEQ_TABLE_H
#define MX_ATTN_SEQ_TABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/model.h"
#include "core/sampling.h"

typedef struct seq_entry {
    uint64_t id;
    mx_sequence *seq;       /* owned */
    double last_used_ms;    /* mx_now_ms of the last RunBatch touching it (leases) */
    int32_t *history;       /* last stage: every token id fed to this sequence, owned */
    int n_history, cap_history;
} seq_entry;

typedef struct seq_table {
    mx_model *model;        /* borrowed: creates/frees the mx_sequence states */
    int layer_begin, layer_end;
    int capacity, count;
    seq_entry *entries;     /* [capacity]; entries[0..count) are live, unordered */
} seq_table;

int seq_table_init(seq_table *t, mx_model *model, int layer_begin, int layer_end, int capacity,
                   mx_error *err);
/* Frees every live sequence and the table's storage. */
void seq_table_destroy(seq_table *t);

/* The live entry of id, or NULL. Pointers stay valid until the next add/remove. */
seq_entry *seq_table_find(seq_table *t, uint64_t id);

/* Adds a fresh sequence (empty state). MX_ENOMEM with a "live sequences" message when the
 * table is full (answered RESOURCE_EXHAUSTED). */
int seq_table_add(seq_table *t, uint64_t id, seq_entry **out, mx_error *err);

/* Frees the sequence of id; returns 1 if it was live, 0 if unknown. */
int seq_table_remove(seq_table *t, uint64_t id);

/* Appends n token ids to an entry's history. */
int seq_entry_append_history(seq_entry *e, const uint32_t *ids, size_t n, mx_error *err);

/* Bytes of sequence state held by every live sequence. */
uint64_t seq_table_state_bytes(const seq_table *t);

#endif
