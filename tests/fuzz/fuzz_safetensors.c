/* fuzz_safetensors.c - libFuzzer target: arbitrary bytes as a .safetensors file. Opening must
 * either fail with an error or yield entries whose every byte range lies inside the file and
 * can be mapped and read; never a crash. The bytes go through a memfd so the real file path
 * (pread + mmap) is exercised. */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.safetensors", 0);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    mx_st_file *f = NULL;
    mx_error err = {0};
    if (mx_st_open(path, &f, &err) == 0) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < mx_st_count(f); i++) {
            mx_tensor t;
            if (mx_st_map(f, mx_st_entry_at(f, i), &t, &err) == 0) {
                size_t n = mx_tensor_nbytes(&t);
                if (n)
                    sink ^= ((const uint8_t *)t.data)[0] ^ ((const uint8_t *)t.data)[n - 1];
            }
        }
        (void)sink;
        mx_st_close(f);
    }
    close(fd);
    return 0;
}
