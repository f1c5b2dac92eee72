/* model_check.c - load each model file named on the command line and run it.
 *
 * For every file: csub_model_load; when that succeeds, set_alpha at 0.5 and
 * 1 (and 0.05 for a file whose regime allows it) and a forward pass of two
 * zero images each, then of one (on two threads or more, one image may run as
 * row bands). Prints "ok <regime>" or "error <code> <message>" per
 * file; exits 0 unless something crashed (the sanitizer build then aborts).
 */
#include <stdio.h>
#include <stdlib.h>

#include "csub.h"

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        char err[256] = "";
        csub_model *m = NULL;
        int st = csub_model_load(argv[i], &m, err, sizeof err);
        if (st) {
            printf("error %d %s\n", st, err);
            continue;
        }
        csub_model_desc d;
        csub_model_info(m, &d);
        int64_t per = d.input_c * d.input_h * d.input_w;
        float *x = calloc((size_t)(2 * per), sizeof(float)), *y = calloc((size_t)(2 * d.num_classes), sizeof(float));
        double alphas[3] = {0.05, 0.5, 1.0};
        for (int a = 0; a < 3 && x && y; a++) {
            if (csub_model_set_alpha(m, alphas[a]) == CSUB_OK && !(st = csub_model_forward(m, x, 2, y)))
                st = csub_model_forward(m, x, 1, y);
        }
        printf(st ? "error %d %s\n" : "ok %d %s\n", st, st ? csub_model_error(m) : d.regime);
        free(x);
        free(y);
        csub_model_free(m);
    }
    return 0;
}
