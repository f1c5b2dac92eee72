/* error.c - the one helper that formats an error message (internal.h). Plain
 * C11, no OpenMP: the file readers link it on their own. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

int csub_vfail(char *err, size_t errlen, int code, const char *fmt, va_list ap)
{
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    return code;
}

int csub_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    csub_vfail(err, errlen, code, fmt, ap);
    va_end(ap);
    return code;
}
