/* seq_table.c - a small array of live sequences with linear lookup: a stage holds at most a
 * few hundred sequences and a batch touches a few dozen, so a hash table would buy nothing. */
#include "seq_table.h"

#include <stdlib.h>
#include <string.h>

int seq_table_init(seq_table *t, mx_model *model, int layer_begin, int layer_end, int capacity,
                   mx_error *err)
{
    memset(t, 0, sizeof *t);
    if (capacity < 1)
        return mx_fail(err, MX_EINVAL, "max_sequences must be at least 1 (got %d)", capacity);
    t->entries = calloc((size_t)capacity, sizeof *t->entries);
    if (!t->entries)
        return mx_fail(err, MX_ENOMEM, "out of memory for %d sequence slots", capacity);
    t->model = model;
    t->layer_begin = layer_begin;
    t->layer_end = layer_end;
    t->capacity = capacity;
    return 0;
}

static void entry_free(seq_table *t, seq_entry *e)
{
    mx_sequence_free(t->model, e->seq);
    free(e->history);
    memset(e, 0, sizeof *e);
}

void seq_table_destroy(seq_table *t)
{
    for (int i = 0; i < t->count; i++)
        entry_free(t, &t->entries[i]);
    free(t->entries);
    memset(t, 0, sizeof *t);
}

seq_entry *seq_table_find(seq_table *t, uint64_t id)
{
    for (int i = 0; i < t->count; i++)
        if (t->entries[i].id == id)
            return &t->entries[i];
    return NULL;
}

int seq_table_add(seq_table *t, uint64_t id, seq_entry **out, mx_error *err)
{
    if (t->count >= t->capacity)
        return mx_fail(err, MX_ENOMEM, "this stage already holds its maximum of %d live sequences (max_sequences)",
                       t->capacity);
    seq_entry *e = &t->entries[t->count];
    memset(e, 0, sizeof *e);
    MX_TRY(mx_sequence_create(t->model, t->layer_begin, t->layer_end, &e->seq, err));
    /* two buffers per lightning layer: a step's undo is the buffer it advanced from, not a copy */
    int rc = mx_sequence_keep_undo(t->model, e->seq, err);
    if (rc) {
        mx_sequence_free(t->model, e->seq);
        e->seq = NULL;
        return rc;
    }
    e->id = id;
    t->count++;
    *out = e;
    return 0;
}

int seq_table_remove(seq_table *t, uint64_t id)
{
    seq_entry *e = seq_table_find(t, id);
    if (!e)
        return 0;
    entry_free(t, e);
    seq_entry *last = &t->entries[--t->count];
    if (e != last) {
        *e = *last;
        memset(last, 0, sizeof *last);
    }
    return 1;
}

int seq_entry_append_history(seq_entry *e, const uint32_t *ids, size_t n, mx_error *err)
{
    if (n == 0)
        return 0;
    if ((size_t)e->n_history + n > (size_t)e->cap_history) {
        size_t cap = e->cap_history ? (size_t)e->cap_history : 64;
        while (cap < (size_t)e->n_history + n)
            cap *= 2;
        if (cap > INT32_MAX)
            return mx_fail(err, MX_ENOMEM, "sequence %llu: token history too long", (unsigned long long)e->id);
        int32_t *grown = realloc(e->history, cap * sizeof *grown);
        if (!grown)
            return mx_fail(err, MX_ENOMEM, "out of memory for the token history");
        e->history = grown;
        e->cap_history = (int)cap;
    }
    for (size_t i = 0; i < n; i++)
        e->history[e->n_history++] = (int32_t)ids[i];
    return 0;
}

uint64_t seq_table_state_bytes(const seq_table *t)
{
    uint64_t total = 0;
    for (int i = 0; i < t->count; i++)
        total += mx_sequence_bytes(t->entries[i].seq);
    return total;
}
