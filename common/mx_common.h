/* Small helpers every module uses: scope-bound cleanup in the style of
 * systemd's _cleanup_ macros, and overflow-checked size arithmetic. */
#pragma once

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* A memory amount as the budgets take it: a number from a digit on (no
 * sign, space, "nan" or "inf"), then at most one unit: % (a fraction of
 * something, at most 100%) or K, M, G, T (bytes, at most 1e19). */
static inline bool mx_parse_amount(const char *s, double *fraction, double *bytes) {
        if (!isdigit((unsigned char)*s))
                return false;
        char *end = NULL;
        errno = 0;
        double v = strtod(s, &end);
        double unit = *end == 'K'  ? 1024.0
                      : *end == 'M' ? 1048576.0
                      : *end == 'G' ? 1073741824.0
                      : *end == 'T' ? 1099511627776.0
                                    : 1;
        if (errno || !isfinite(v) || v <= 0 || (*end && (end[1] || !strchr("%KMGT", *end))))
                return false;
        *fraction = *end == '%' ? v / 100 : 0;
        *bytes = *end == '%' ? 0 : v * unit;
        return *fraction <= 1 && *bytes <= 1e19;
}
