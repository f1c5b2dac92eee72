/* st_walk.h - an accepted safetensors file used the way a consumer uses it, for
 * the sanitizer driver (tests/st_check.c) and the fuzz target (fuzz/fuzz_st.c):
 * every byte of every tensor read, every tensor found again by name, every
 * metadata value read back to its end. A failed lookup or a missing value
 * aborts (names are unique, keys were listed by the reader). Returns the sum
 * of the tensor bytes; *meta_chars receives the metadata values' total length. */
#ifndef CSUB_ST_WALK_H
#define CSUB_ST_WALK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "csub.h"

static unsigned st_walk(const csub_st_file *f, size_t *meta_chars)
{
    unsigned sum = 0;
    *meta_chars = 0;
    for (size_t i = 0; i < f->n; i++) {
        const csub_st_tensor *t = &f->tensors[i];
        size_t bytes = (size_t)t->numel * csub_dtype_size(t->dtype);
        for (size_t b = 0; b < bytes; b++) sum += t->data[b];
        if (csub_st_find(f, t->name) != t) {
            printf("error lookup of \"%s\" failed\n", t->name);
            abort();
        }
    }
    if (f->metadata)
        for (size_t k = 0; k < f->metadata->n; k++) {
            const char *v = csub_st_meta(f, f->metadata->keys[k]);
            if (!v) abort();
            *meta_chars += strlen(v);
        }
    return sum;
}

#endif /* CSUB_ST_WALK_H */
