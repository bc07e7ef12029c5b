/* signals.c - synchronous waiting for stop signals (sigtimedwait on a blocked set).
 * Installs no handlers and keeps no state. */
#include "signals.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

static void stop_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
}

int mx_rpc_block_stop_signals(mx_error *err)
{
    sigset_t set;
    stop_set(&set);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (rc != 0)
        return mx_fail(err, MX_EINTERNAL, "cannot block stop signals: %s", strerror(rc));
    return 0;
}

int mx_rpc_wait_stop_signal(int64_t timeout_ms, mx_error *err)
{
    sigset_t set;
    stop_set(&set);
    for (;;) {
        int sig;
        if (timeout_ms < 0) {
            sig = sigwaitinfo(&set, NULL);
        } else {
            struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
            sig = sigtimedwait(&set, NULL, &ts);
        }
        if (sig > 0)
            return sig;
        if (errno == EAGAIN)
            return 0;
        if (errno != EINTR)
            return mx_fail(err, MX_EINTERNAL, "waiting for stop signals: %s", strerror(errno));
    }
}
