/* fuzz_model.c - libFuzzer target: the runtime's model loader and graph
 * checks (runtime.c, csub_model_load_memory) on a whole model file.
 *
 * A model that loads is then used: its description, every stored level, the
 * memory estimate, set_alpha at three points of the subspace and a forward
 * pass of two images at each, on one thread. Models whose buffers for two
 * images exceed 64 MB only load and describe (the fuzzer's memory limit is
 * for finding leaks, not for running large networks).
 *
 * A custom mutator keeps most inputs well framed: three times in four it
 * mutates only the JSON header (which holds the graph, as a string in
 * "__metadata__") with libFuzzer's own mutations, insertions and deletions
 * included, then rewrites the 8-byte header length and keeps the tensor
 * bytes; otherwise it mutates the whole file. Without it nearly every
 * insertion or deletion breaks the header length and stops at the reader. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "csub.h"

#define RUN_MAX_BYTES ((int64_t)64 << 20)

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && (size_t)i < size; i++) hlen |= (uint64_t)data[i] << (8 * i);
    if (seed % 4 == 0 || size < 8 || hlen > size - 8 || max_size <= size) return LLVMFuzzerMutate(data, size, max_size);
    size_t tail = size - 8 - (size_t)hlen;
    uint8_t *keep = malloc(tail ? tail : 1);
    if (!keep) return LLVMFuzzerMutate(data, size, max_size);
    memcpy(keep, data + 8 + hlen, tail);
    size_t h = LLVMFuzzerMutate(data + 8, (size_t)hlen, max_size - 8 - tail); /* the header, room for the tail kept */
    memcpy(data + 8 + h, keep, tail);
    free(keep);
    for (int i = 0; i < 8; i++) data[i] = (uint8_t)((uint64_t)h >> (8 * i));
    return 8 + h + tail;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        csub_set_num_threads(1);
        init = 1;
    }
    char err[256];
    csub_model *m = NULL;
    if (csub_model_load_memory(data, size, &m, err, sizeof err) != CSUB_OK) {
        if (m) abort(); /* a failed load leaves *model NULL */
        return 0;
    }
    csub_model_desc d;
    csub_model_info(m, &d);
    for (int i = 0; i < d.num_levels; i++) {
        double a, acc;
        if (csub_model_level(m, i, &a, &acc) != CSUB_OK) abort();
    }
    for (int i = 0; i < csub_model_num_ops(m); i++) (void)csub_model_op_name(m, i);
    int64_t mem = csub_model_memory(m, 2);
    int64_t per = d.input_c * d.input_h * d.input_w;
    if (mem > 0 && mem <= RUN_MAX_BYTES) {
        float *x = calloc((size_t)(2 * per), sizeof(float)), *y = calloc((size_t)(2 * d.num_classes), sizeof(float));
        uint8_t *px = calloc((size_t)(2 * per), 1);
        double alphas[3] = {0.05, 0.5, 1.0};
        if (x && y && px && csub_model_input_u8(m, px, 2, x) == CSUB_OK)
            for (int a = 0; a < 3; a++)
                if (csub_model_set_alpha(m, alphas[a]) == CSUB_OK) (void)csub_model_forward(m, x, 2, y);
        free(x);
        free(y);
        free(px);
    }
    csub_model_free(m);
    return 0;
}
