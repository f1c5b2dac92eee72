/* fuzz_st.c - libFuzzer target: the safetensors reader (safetensors.c, with
 * json.c for its header) on arbitrary bytes.
 *
 * An accepted file is used the way a consumer uses it: every byte of every
 * tensor read, every tensor found again by name, every metadata value read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "csub.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    csub_st_file f;
    if (csub_st_parse(data, size, &f, err, sizeof err) != CSUB_OK) {
        if (f.buf || f.tensors || f.header || f.n) abort(); /* a failure leaves f zeroed */
        return 0;
    }
    unsigned sum = 0;
    for (size_t i = 0; i < f.n; i++) {
        const csub_st_tensor *t = &f.tensors[i];
        size_t bytes = (size_t)t->numel * csub_dtype_size(t->dtype);
        for (size_t b = 0; b < bytes; b++) sum += t->data[b];
        if (csub_st_find(&f, t->name) != t) abort(); /* names are unique */
    }
    if (f.metadata)
        for (size_t k = 0; k < f.metadata->n; k++) sum += (unsigned)strlen(csub_st_meta(&f, f.metadata->keys[k]));
    csub_st_free(&f);
    return (int)(sum & 0); /* sum keeps the reads */
}
