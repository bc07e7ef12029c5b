/* shard_metrics.h - an expert shard's Prometheus metrics (core/metrics.h): RunExperts calls
 * and rows in flight and in total (by outcome), time waiting for the compute lock (queueing)
 * and time computing. Updated by the RunExperts handler with atomics only. */
#ifndef MX_EXPERT_SHARD_METRICS_H
#define MX_EXPERT_SHARD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/metrics.h"

typedef struct shard_metrics shard_metrics;

int shard_metrics_create(int shard_index, shard_metrics **out, mx_error *err);
void shard_metrics_destroy(shard_metrics *m);
mx_metrics *shard_metrics_registry(shard_metrics *m);

/* A call arrived / its rows are known / it ended (rows as passed to shard_metrics_rows). */
void shard_metrics_enter(shard_metrics *m);
void shard_metrics_rows(shard_metrics *m, uint64_t rows);
void shard_metrics_leave(shard_metrics *m, uint64_t rows, bool ok);
/* Seconds waiting for the compute lock, seconds computing (one call). */
void shard_metrics_timing(shard_metrics *m, double queue_s, double compute_s);

#endif
