/* bench_bandwidth.c - measured memory read bandwidth of this machine, one thread and all
 * cores, over a buffer far larger than the last-level cache (best of several runs). It is the
 * ceiling every memory-bound kernel (gemv, decode) is judged against. */
#include <stdio.h>

#include "bench_util.h"

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 1024;
    mx_error err = {0};
    mx_threadpool *one = NULL, *all = NULL;
    if (mx_threadpool_create(1, &one, &err) || mx_threadpool_create(0, &all, &err)) {
        fprintf(stderr, "bench_bandwidth: %s\n", err.msg);
        return 1;
    }
    printf("Memory read bandwidth (%zu MiB buffer, best of 8)\n", mib);
    printf("%-10s %12s\n", "threads", "GB/s");
    int sizes[2] = {1, mx_threadpool_size(all)};
    mx_threadpool *pools[2] = {one, all};
    for (int i = 0; i < 2; i++) {
        double bw = bench_read_bandwidth(pools[i], mib << 20, 8);
        if (bw == 0) {
            fprintf(stderr, "bench_bandwidth: cannot allocate %zu MiB\n", mib);
            return 1;
        }
        printf("%-10d %12.1f\n", sizes[i], bw / 1e9);
    }
    mx_threadpool_destroy(one);
    mx_threadpool_destroy(all);
    return 0;
}
