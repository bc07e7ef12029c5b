/* signals.h - stopping a service cleanly on SIGTERM / SIGINT without signal handlers or
 * global flags: main blocks the signals before any thread exists (threads inherit the
 * mask) and later waits for them synchronously. */
#ifndef MX_RPC_SIGNALS_H
#define MX_RPC_SIGNALS_H

#include <stdint.h>

#include "../error.h"

/* Blocks SIGTERM and SIGINT in the calling thread and every thread created after it.
 * Call first thing in main. */
int mx_rpc_block_stop_signals(mx_error *err);

/* Waits for SIGTERM or SIGINT (blocked beforehand) for up to timeout_ms (< 0 = forever).
 * Returns the signal number, 0 on timeout, or a negative mx_code. */
int mx_rpc_wait_stop_signal(int64_t timeout_ms, mx_error *err);

#endif
