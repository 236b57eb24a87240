/* The public face of utf8.h: whole-string validity for callers outside the
 * engine (the daemon checks every text field it receives). */
#include "mixtral.h"
#include "text.h"

bool mx_utf8_valid(const char *s, size_t len) {
        for (size_t i = 0; i < len;) {
                size_t k = mx_utf8_valid_char(s + i, len - i);
                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}
