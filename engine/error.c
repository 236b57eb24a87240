/* One-line error messages carried up to the caller that reports them. */
#include <stdarg.h>
#include <stdio.h>

#include "mixtral.h"

int mx_error_set(mx_error *err, int code, const char *fmt, ...) {
        if (err) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
                va_end(ap);
                err->code = code;
        }
        return code;
}
