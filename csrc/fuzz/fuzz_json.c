/* fuzz_json.c - libFuzzer target: the JSON parser (json.c) on arbitrary bytes.
 *
 * An accepted document is walked the way a consumer reads it: every value,
 * every key looked up again, every number read as an integer. The input
 * buffer is exactly the fuzzer's, so a read past its end is caught. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "csub.h"

static size_t walk(const csub_json *v, int depth)
{
    size_t n = 1;
    int64_t i64;
    switch (v->type) {
    case CSUB_JSON_STRING:
        n += strlen(v->string);
        break;
    case CSUB_JSON_NUMBER:
        n += csub_json_int(v, INT64_MIN, INT64_MAX, &i64) == CSUB_OK;
        break;
    case CSUB_JSON_ARRAY:
        for (size_t k = 0; k < v->n; k++) n += walk(&v->items[k], depth + 1);
        break;
    case CSUB_JSON_OBJECT:
        for (size_t k = 0; k < v->n; k++) {
            if (csub_json_get(v, v->keys[k]) != &v->items[k]) abort(); /* keys are unique */
            n += walk(&v->items[k], depth + 1);
        }
        break;
    default:
        break;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    csub_json *v = NULL;
    if (csub_json_parse((const char *)data, size, &v, err, sizeof err) == CSUB_OK) {
        walk(v, 0);
        csub_json_free(v);
    } else if (v) {
        abort(); /* a failed parse leaves *out NULL */
    }
    return 0;
}
