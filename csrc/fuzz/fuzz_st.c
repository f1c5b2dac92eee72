/* fuzz_st.c - libFuzzer target: the safetensors reader (safetensors.c, with
 * json.c for its header) on arbitrary bytes.
 *
 * An accepted file is used the way a consumer uses it (st_walk). */
#include <stdint.h>
#include <stdlib.h>

#include "csub.h"
#include "../tests/st_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    csub_st_file f;
    if (csub_st_parse(data, size, &f, err, sizeof err) != CSUB_OK) {
        if (f.buf || f.tensors || f.header || f.n) abort(); /* a failure leaves f zeroed */
        return 0;
    }
    size_t meta_chars;
    unsigned sum = st_walk(&f, &meta_chars);
    csub_st_free(&f);
    return (int)((sum + meta_chars) & 0); /* the sums keep the reads */
}
