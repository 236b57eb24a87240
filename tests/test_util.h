/* Helpers shared by the C tests: assertions that report where they failed,
 * skipping (exit 77, which meson reports as SKIP), hex, and the locations
 * of the shared reference data. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_SKIP 77

static int test_failures __attribute__((unused));

#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        test_failures++;                                                           \
                        fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);   \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fputc('\n', stderr);                                                       \
                }                                                                                  \
        } while (0)

static inline int test_result(void) {
        if (test_failures)
                fprintf(stderr, "%d check(s) failed\n", test_failures);
        return test_failures ? 1 : 0;
}

static inline void test_skip(const char *why) {
        printf("SKIP: %s\n", why);
        exit(EXIT_SKIP);
}

/* The real Mixtral tokenizer: $MIXTRAL_TOKENIZER, then ../shared next to
 * the source tree (MX_SOURCE_ROOT is set by meson). NULL if neither. */
static inline const char *test_real_tokenizer(void) {
        static char path[4096];
        const char *env = getenv("MIXTRAL_TOKENIZER");
        if (env && *env && access(env, R_OK) == 0)
                return env;
        snprintf(path, sizeof(path), "%s/../shared/models/tokenizer.model.v1", MX_SOURCE_ROOT);
        return access(path, R_OK) == 0 ? path : NULL;
}

static inline const char *test_shared_fixture(const char *name) {
        static char path[4096];
        snprintf(path, sizeof(path), "%s/../shared/fixtures/%s", MX_SOURCE_ROOT, name);
        return access(path, R_OK) == 0 ? path : NULL;
}

/* Equal id lists; empty ones may come with NULL pointers. */
static inline bool ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
        return na == nb && (na == 0 || memcmp(a, b, na * sizeof(int32_t)) == 0);
}

static inline int hexval(int c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Decodes hex[0..n) into out (at least n/2 bytes); -1 if not hex. */
static inline long unhex(const char *hex, size_t n, char *out) {
        if (n % 2)
                return -1;
        for (size_t i = 0; i < n; i += 2) {
                int hi = hexval(hex[i]), lo = hexval(hex[i + 1]);
                if (hi < 0 || lo < 0)
                        return -1;
                out[i / 2] = (char)(hi * 16 + lo);
        }
        return (long)(n / 2);
}

static inline void print_hex(FILE *f, const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                fprintf(f, "%02x", (unsigned char)s[i]);
}

/* Independent strict UTF-8 check (code point ranges, not byte tables). */
static inline bool utf8_strict(const char *s, size_t n) {
        const unsigned char *u = (const unsigned char *)s;
        for (size_t i = 0; i < n;) {
                uint32_t cp, need, min;
                if (u[i] < 0x80) {
                        i++;
                        continue;
                } else if ((u[i] & 0xE0) == 0xC0) {
                        cp = u[i] & 0x1F, need = 1, min = 0x80;
                } else if ((u[i] & 0xF0) == 0xE0) {
                        cp = u[i] & 0x0F, need = 2, min = 0x800;
                } else if ((u[i] & 0xF8) == 0xF0) {
                        cp = u[i] & 0x07, need = 3, min = 0x10000;
                } else {
                        return false;
                }
                for (uint32_t k = 1; k <= need; k++) {
                        if (i + k >= n || (u[i + k] & 0xC0) != 0x80)
                                return false;
                        cp = cp << 6 | (u[i + k] & 0x3F);
                }
                if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                        return false;
                i += need + 1;
        }
        return true;
}
