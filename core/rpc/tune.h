/* tune.h - process-wide settings a service applies once at start, before serving. */
#ifndef MX_RPC_TUNE_H
#define MX_RPC_TUNE_H

/* Tunes glibc malloc for multi-MiB messages: raises the mmap threshold (so large buffers
 * come from the heap instead of a fresh mmap + page faults on every message, ~3.6x slower)
 * and the trim threshold (so freed memory is not returned and faulted back in per call).
 * Call at the start of main. Returns 0, or -1 if malloc rejected a setting (harmless). */
int mx_rpc_tune_malloc(void);

#endif
