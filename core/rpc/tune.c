/* tune.c - malloc settings for services that move large messages. Call from main only:
 * it changes process-wide allocator behaviour. */
#include "tune.h"

#include <malloc.h>

int mx_rpc_tune_malloc(void)
{
    /* 32 MiB is glibc's upper limit for the mmap threshold on 64-bit systems. */
    int ok = mallopt(M_MMAP_THRESHOLD, 32 << 20);
    ok &= mallopt(M_TRIM_THRESHOLD, 512 << 20);
    return ok ? 0 : -1;
}
