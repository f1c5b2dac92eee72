/* runtime.c - standalone inference of an exported subspace at any alpha.
 *
 * A model file (csub/export.py writes it) is safetensors: the subspace's
 * tensors (a line keeps both ends) and a JSON description: regime, level
 * maps, input shape and the inference graph, a list of operations each
 * reading value ids and writing a new one (value 0 is the input).
 *
 *   load        parse and check everything (names, shapes, sizes, value ids,
 *               graph order), copy the tensors into aligned arrays, infer every
 *               value's shape, fold and fuse (below), assign values to reusable
 *               buffers by liveness.
 *   set_alpha   materialise the network at alpha once: interpolate the line,
 *               then per regime
 *                 unstructured  exact magnitude top-k (keep fraction alpha) of
 *                               each compressible layer, stored as CSR when the
 *                               keep fraction is at most RT_SPARSE_CROSSOVER
 *                               (the forward then touches kept weights only;
 *                               RT_SPARSE_CROSSOVER_SPLIT when the threads
 *                               split one image), else as the masked dense
 *                               weight (both forms between the two);
 *                 structured    width w from alpha; every hidden layer's weight
 *                               copied to a contiguous prefix, so the products
 *                               are really smaller;
 *                 quantized     bits from alpha; weights (batch-norm scale
 *                               folded in first where training folds it) to integer codes, activations
 *                               quantized on their recorded range, integer
 *                               products with 32-bit accumulation (bits <= 8;
 *                               wider grids run fake-quantized in float).
 *   forward     run the graph on a batch with the materialised weights: each
 *               thread whole images, a chunk at a time, or (fewer images than
 *               threads) layer by layer, each kernel splitting an image across
 *               the threads when it is large enough to pay; or one image as
 *               row bands, each thread its rows through the whole network
 *               (runtime_bands.c), where every layer allows it.
 *   fold, fuse  a batch norm that only a conv or linear layer's output feeds is
 *               folded into that layer at set_alpha, in every regime (weight rows
 *               times gamma / sqrt(var + eps) after top-k or width selection, and
 *               a bias; quantized: before quantizing where training folds the
 *               scale there, else onto the integer products' per-channel scale);
 *               a residual add and then a ReLU after such a layer run in it, a
 *               ReLU after a norm in the norm. The folded and fused ops become
 *               aliases. CSUB_FOLD=0 in the environment at load turns the folding
 *               and the ReLU fusion off (to measure what they save).
 *
 * Everything a file declares is checked before it is used; every failure
 * returns a CSUB_ERR_* code and leaves a message (csub_model_error, or the
 * err buffer of the load functions). A model is not safe to use from two
 * threads at once; the kernels themselves use OpenMP.
 *
 * Files: runtime.c (this one) errors, what a model reports, the budget
 * controller; runtime_load.c reading and checking; runtime_graph.c the graph
 * passes (shapes, fold and fuse); runtime_memory.c buffers and workspaces;
 * runtime_alpha.c set_alpha; runtime_exec.c forward; runtime_internal.h the
 * model's structure they share.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime_internal.h"

const char *csub_strerror(int code)
{
    switch (code) {
    case CSUB_OK: return "ok";
    case CSUB_ERR_ARG: return "invalid argument";
    case CSUB_ERR_NOMEM: return "out of memory";
    case CSUB_ERR_IO: return "input/output error";
    case CSUB_ERR_FORMAT: return "malformed model file";
    case CSUB_ERR_UNSUPPORTED: return "unsupported model";
    case CSUB_ERR_BUDGET: return "no level fits the budget";
    default: return "unknown error";
    }
}

/* Float operations per image of a conv or linear op at the current alpha (its kept weights in the
 * unstructured regime), 0 for any other op */
int64_t csub_rt_op_flops(const csub_model *m, const op_t *op)
{
    if (op->kind != OP_CONV && op->kind != OP_LINEAR) return 0;
    int64_t cols = op->kind == OP_CONV ? op->ain * op->k * op->k : op->ain, macs = op->aout * cols;
    shape3 o = m->vshape[op->y];
    if (m->regime == REG_UNSTRUCTURED && op->compress && m->keep < 1.0) macs = csub_topk_count(op->w.n, m->keep);
    return 2 * macs * o.h * o.w;
}

const char *csub_model_error(const csub_model *m)
{
    return m ? m->err : "no model";
}

/* --------------------------------------------------------------- info */

void csub_model_info(const csub_model *m, csub_model_desc *d)
{
    memset(d, 0, sizeof *d);
    if (!m) return;
    static const char *reg[] = {"dense", "unstructured", "structured", "quantized"};
    d->regime = reg[m->regime];
    d->input_c = m->in_c;
    d->input_h = m->in_h;
    d->input_w = m->in_w;
    d->num_classes = m->classes;
    d->alpha = m->alpha;
    d->keep = m->keep;
    d->width = m->width;
    d->bits = m->bits;
    d->bit_lo = m->bit_lo;
    d->bit_hi = m->bit_hi;
    d->width_lo = m->w_lo;
    d->width_hi = m->w_hi;
    int64_t wb = 0, flops = 0;
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        if (op->kind == OP_CONV || op->kind == OP_LINEAR) {
            int64_t kk = op->k * op->k, cols = op->kind == OP_CONV ? op->ain * kk : op->ain;
            if (op->path == PATH_INT8) {
                wb += csub_qweight_bytes(&op->qw);
            } else { /* a layer between the two crossovers holds both forms */
                if (op->path == PATH_SPARSE || op->path_split == PATH_SPARSE) wb += op->nnz * (4 + 4) + (op->cout + 1) * 8;
                wb += (int64_t)csub_spjit_bytes(op->spj); /* the code and its weights */
                if (op->path != PATH_SPARSE || op->path_split != PATH_SPARSE) wb += 4 * op->aout * cols;
            }
            if (op->wd) wb += 4 * csub_conv3x3_packed_len(op->aout, op->ain); /* the direct kernel's copy */
            if (op->ww) wb += 4 * csub_winograd_packed_len(op->aout, op->ain, op->wm); /* Winograd's transform */
            if (op->ba) wb += 4 * op->aout;
            flops += csub_rt_op_flops(m, op);
        } else if (op->kind == OP_NORM) {
            wb += 4 * 2 * op->ain + (op->bn ? 8 * op->c : 0);
        }
    }
    d->weight_bytes = wb;
    d->flops = flops;
    int64_t sub = 0;
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        sub += 4 * (op->w.n + op->b.n + op->g.n + op->beta.n) * (op->w.p1 || op->g.p1 ? 2 : 1);
    }
    d->subspace_bytes = sub;
    d->num_levels = m->nlevels;
}

int csub_model_level(const csub_model *m, int i, double *alpha, double *accuracy)
{
    if (!m || i < 0 || i >= m->nlevels) return CSUB_ERR_ARG;
    *alpha = m->level_alpha[i];
    *accuracy = m->level_acc[i];
    return CSUB_OK;
}

int csub_model_input_u8(const csub_model *m, const uint8_t *pixels, int64_t batch, float *out)
{
    if (!m || !pixels || !out) return CSUB_ERR_ARG;
    int64_t HW = m->in_h * m->in_w, total; /* the input shape is at most VALUE_MAX values */
    if (batch < 1 || csub_mul3_overflow(batch, m->in_c, HW, &total))
        return MFAIL((csub_model *)m, CSUB_ERR_ARG, "batch: expected 1 to 2^63 / %lld images, got %lld", /* the message only */
                     (long long)(m->in_c * HW), (long long)batch);
    for (int64_t n = 0; n < batch; n++)
        for (int64_t c = 0; c < m->in_c; c++) {
            double mean = m->input_mean ? m->input_mean[c] : 0.0, std = m->input_std ? m->input_std[c] : 1.0;
            const uint8_t *p = pixels + (n * m->in_c + c) * HW;
            float *o = out + (n * m->in_c + c) * HW;
            for (int64_t i = 0; i < HW; i++) o[i] = (float)(((double)p[i] / 255.0 - mean) / std);
        }
    return CSUB_OK;
}

/* ------------------------------------------------------ budget controller */

double csub_rt_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int csub_model_calibrate(csub_model *m, const double *alphas, int n, int64_t batch, int reps, csub_level *out)
{
    if (!m) return CSUB_ERR_ARG;
    if (!alphas || !out || n < 1) return MFAIL(m, CSUB_ERR_ARG, "alphas, out: expected n >= 1 levels");
    if (batch < 1 || batch > 65536) return MFAIL(m, CSUB_ERR_ARG, "batch: expected 1..65536, got %lld", (long long)batch);
    if (reps < 1 || reps > 10000) return MFAIL(m, CSUB_ERR_ARG, "reps: expected 1..10000, got %d", reps);
    int64_t per = m->in_c * m->in_h * m->in_w;
    float *x = falloc(per * batch), *y = falloc(m->classes * batch);
    double *t = malloc(sizeof(double) * (size_t)reps);
    double prev = m->alpha;
    int st = CSUB_OK;
    if (!x || !y || !t) { st = MFAIL(m, CSUB_ERR_NOMEM, "out of memory"); goto done; }
    for (int64_t i = 0; i < per * batch; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    for (int j = 0; j < n; j++) {
        double t0 = csub_rt_now_ms();
        if ((st = csub_model_set_alpha(m, alphas[j]))) goto done;
        out[j].set_alpha_ms = csub_rt_now_ms() - t0;
        if ((st = csub_model_forward(m, x, batch, y))) goto done; /* warm-up */
        for (int r = 0; r < reps; r++) {
            t0 = csub_rt_now_ms();
            if ((st = csub_model_forward(m, x, batch, y))) goto done;
            t[r] = csub_rt_now_ms() - t0;
        }
        qsort(t, (size_t)reps, sizeof(double), cmp_double);
        out[j].alpha = alphas[j];
        out[j].latency_ms = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
        out[j].memory_bytes = csub_model_memory(m, batch);
        out[j].accuracy = NAN;
        for (int l = 0; l < m->nlevels; l++)
            if (fabs(m->level_alpha[l] - alphas[j]) < 1e-9) out[j].accuracy = m->level_acc[l];
    }
done:
    free(x); free(y); free(t);
    char keep[sizeof m->err];
    memcpy(keep, m->err, sizeof keep);
    int st2 = csub_model_set_alpha(m, prev); /* back where the caller was */
    if (st) memcpy(m->err, keep, sizeof keep);
    return st ? st : st2;
}

int csub_pick_alpha(const csub_level *levels, int n, double latency_ms, int64_t memory_bytes, double *alpha)
{
    if (!levels || !alpha || n < 1) return CSUB_ERR_ARG;
    int best = -1, all_acc = 1;
    for (int j = 0; j < n; j++)
        if (isnan(levels[j].accuracy)) all_acc = 0;
    for (int j = 0; j < n; j++) {
        const csub_level *l = &levels[j];
        if ((latency_ms > 0 && l->latency_ms > latency_ms) || (memory_bytes > 0 && l->memory_bytes > memory_bytes))
            continue;
        /* the most accurate that fits: measured accuracy when every level has one, else the
         * largest alpha (the least compressed end of the subspace is its most accurate) */
        if (best < 0) { best = j; continue; }
        double a = all_acc ? l->accuracy : l->alpha, b = all_acc ? levels[best].accuracy : levels[best].alpha;
        if (a > b || (a == b && l->alpha > levels[best].alpha)) best = j;
    }
    if (best < 0) return CSUB_ERR_BUDGET;
    *alpha = levels[best].alpha;
    return CSUB_OK;
}
