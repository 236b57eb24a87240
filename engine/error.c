/* One-line error messages carried up to the caller that reports them.
 * Messages quote what they refuse (a JSON parser's view of the input, a
 * file's name), so control characters become spaces here: a log line or
 * a JSON error string never gains a line from the input. */
#include <stdarg.h>
#include <stdio.h>

#include "mixtral.h"

int mx_error_set(mx_error *err, int code, const char *fmt, ...) {
        if (err) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
                va_end(ap);
                for (char *s = err->msg; *s; s++)
                        if ((unsigned char)*s < 0x20 || *s == 0x7f)
                                *s = ' ';
                err->code = code;
        }
        return code;
}
