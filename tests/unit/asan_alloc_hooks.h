/* asan_alloc_hooks.h - what the tests that count heap allocations need to know about
 * AddressSanitizer: UNDER_ASAN where it is on (its allocator replaces malloc, so a test cannot
 * interpose malloc itself and counts through the sanitizer's allocation hooks instead), and the
 * hook installer's declaration (from sanitizer/allocator_interface.h, which not every toolchain
 * installs) with asan_count_allocs; without it, glibc's allocator entry points. */
#ifndef MX_TESTS_ASAN_ALLOC_HOOKS_H
#define MX_TESTS_ASAN_ALLOC_HOOKS_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifdef UNDER_ASAN
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static inline void asan_ignore_free(const volatile void *p) { (void)p; }

/* Calls on_malloc for every allocation from now on (frees are not counted). */
static inline void asan_count_allocs(void (*on_malloc)(const volatile void *, size_t))
{
    __sanitizer_install_malloc_and_free_hooks(on_malloc, asan_ignore_free);
}
#else
/* glibc's own allocator entry points, for a test that interposes malloc and friends */
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void __libc_free(void *p);
#endif

#endif
