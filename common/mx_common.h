/* Small helpers every module uses: scope-bound cleanup in the style of
 * systemd's _cleanup_ macros, and overflow-checked size arithmetic. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void mx_freep(void *p) {
        free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(mx_freep)

static inline void mx_closep(int *fd) {
        if (*fd >= 0)
                close(*fd);
}
#define _cleanup_close_ _cleanup_(mx_closep)

static inline void mx_fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(mx_fclosep)

/* Hands ownership out of a _cleanup_ variable. */
#define MX_TAKE_PTR(p)                                                         \
        ({                                                                     \
                __typeof__(p) _tmp_ = (p);                                     \
                (p) = NULL;                                                    \
                _tmp_;                                                         \
        })

#define MX_TAKE_FD(fd)                                                         \
        ({                                                                     \
                int _tmp_ = (fd);                                              \
                (fd) = -1;                                                     \
                _tmp_;                                                         \
        })

#define MX_ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Each returns false when the result would not fit. */
static inline bool mx_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
        return !__builtin_mul_overflow(a, b, out);
}

static inline bool mx_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
        return !__builtin_add_overflow(a, b, out);
}

static inline bool mx_mul_size(size_t a, size_t b, size_t *out) {
        return !__builtin_mul_overflow(a, b, out);
}

/* Grows *buf (of *cap elements of size elem) to hold at least need
 * elements; doubling keeps appends amortised O(1). */
static inline int mx_grow(void **buf, size_t *cap, size_t need, size_t elem) {
        if (need <= *cap)
                return 0;
        size_t n = *cap ? *cap : 16;
        while (n < need) {
                if (n > SIZE_MAX / 2)
                        return -ENOMEM;
                n *= 2;
        }
        size_t bytes;
        if (!mx_mul_size(n, elem, &bytes))
                return -ENOMEM;
        void *p = realloc(*buf, bytes);
        if (!p)
                return -ENOMEM;
        *buf = p;
        *cap = n;
        return 0;
}
