/* UTF-8 validity exactly as SentencePiece judges it (no overlong forms, no
 * surrogates, nothing above U+10FFFF): private to the engine. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MX_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* Length of a character from its first byte alone, as SentencePiece's
 * OneCharLen (used only on text that is already valid). */
static inline uint32_t mx_utf8_lead_len(unsigned char c) {
        static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
        return len[c >> 4];
}

static inline bool mx_utf8_trail(unsigned char c) {
        return (c & 0xC0) == 0x80;
}

/* The range the second byte must fall in after lead c; false for bytes that
 * never start a character. Together with the trail-byte rule for the third
 * and fourth bytes this is exactly the well-formed UTF-8 of Unicode 3.9. */
static inline bool mx_utf8_second_range(unsigned char c, unsigned char *lo, unsigned char *hi,
                                        uint32_t *need) {
        *lo = 0x80, *hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
                *need = 2;
        else if (c >= 0xE0 && c <= 0xEF)
                *need = 3, *lo = c == 0xE0 ? 0xA0 : 0x80, *hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
                *need = 4, *lo = c == 0xF0 ? 0x90 : 0x80, *hi = c == 0xF4 ? 0x8F : 0xBF;
        else
                return false;
        return true;
}

/* How the bytes s[0..len) begin: returns the length of a complete valid
 * character at s, 0 when s cannot begin one, and -1 when s is a valid but
 * unfinished prefix (more bytes could complete it). */
static inline int mx_utf8_check(const char *s, size_t len) {
        const unsigned char *u = (const unsigned char *)s;
        if (len == 0)
                return -1;
        if (u[0] < 0x80)
                return 1;
        unsigned char lo, hi;
        uint32_t need;
        if (!mx_utf8_second_range(u[0], &lo, &hi, &need))
                return 0;
        for (uint32_t i = 1; i < need; i++) {
                if (i >= len)
                        return -1;
                if (i == 1 ? (u[1] < lo || u[1] > hi) : !mx_utf8_trail(u[i]))
                        return 0;
        }
        return (int)need;
}

/* Length of the valid character at s, or 0 when there is none (an
 * unfinished one counts as invalid, as it does for SentencePiece). */
static inline size_t mx_utf8_valid_char(const char *s, size_t len) {
        int k = mx_utf8_check(s, len);
        return k > 0 ? (size_t)k : 0;
}
