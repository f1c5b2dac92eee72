/* runtime_exec.c - forward: the materialised graph run on a batch (the overview:
 * runtime.c), whole images per thread or layer by layer with each kernel
 * splitting an image. */
#include <math.h>
#include <string.h>

#include <omp.h>

#include "runtime_internal.h"

/* Fake-quantize x[n] into dst on the layer's activation grid (dynamic: the batch's own range).
 * CSUB_ERR_ARG when a dynamic range is not finite (NaN or inf in x). */
static int quantize_input(const op_t *op, int bits, const float *x, float *dst, int64_t n, float *scale, int32_t *zp)
{
    *scale = op->xscale;
    *zp = op->xzp;
    if (op->act_dynamic) {
        float mn, mx;
        csub_minmax(x, n, &mn, &mx);
        if (!isfinite(mn) || !isfinite(mx)) return CSUB_ERR_ARG;
        csub_quant_params(mn, mx, bits, scale, zp);
    }
    if (dst) csub_fake_quant_forward(x, dst, n, *scale, *zp, bits);
    return CSUB_OK;
}

/* The float products of a conv or linear layer: dense, or CSR for a linear one. */
static int dense_weighted(const csub_model *m, const op_t *op, int path, const float *x, const float *b, float *y,
                          int64_t N)
{
    shape3 s = m->vshape[op->x];
    int64_t C = m->vc[op->x];
    int st = CSUB_OK;
    if (op->kind == OP_CONV)
        st = csub_conv2d_forward(x, op->wa, b, y, N, C, s.h, s.w, op->aout, op->k, op->k, op->stride, op->pad);
    else if (path == PATH_SPARSE)
        st = csub_linear_sparse_forward(x, op->rowptr, op->colidx, op->vals, b, y, N, op->ain, op->aout);
    else
        csub_linear_forward(x, op->wa, b, y, N, op->ain, op->aout);
    return st;
}

/* y[N, C, HW] = y * s[c] + (b ? b[c] : 0) */
static void scale_shift(float *y, const float *s, const float *b, int64_t N, int64_t C, int64_t HW)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (N * C * HW > CSUB_PAR_MIN && N * C > 1)
    for (int64_t r = 0; r < N * C; r++) {
        float sc = s[r % C], sh = b ? b[r % C] : 0.0f;
        for (int64_t i = 0; i < HW; i++) y[r * HW + i] = y[r * HW + i] * sc + sh;
    }
}

/* y[n] = relu(y + res), a fused residual add and ReLU in one pass (NaN stays NaN, as csub_relu_forward) */
static void add_relu(float *y, const float *res, int64_t n)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (n > 131072)
    for (int64_t i = 0; i < n; i++) {
        float v = y[i] + res[i];
        y[i] = v <= 0.0f ? 0.0f : v;
    }
}

/* A conv or linear layer by its kernels `path`; res: its fused residual (op->x2), or NULL;
 * then the fused ReLU (op->relu). */
static int run_weighted(const csub_model *m, const op_t *op, int path, const workspace *w, const float *x,
                        const float *res, float *y, int64_t N)
{
    int st = CSUB_OK;
    shape3 s = m->vshape[op->x];
    int64_t C = m->vc[op->x], n_in = N * C * s.h * s.w;
    float xs;
    int32_t xz;
    shape3 o = m->vshape[op->y];
    const float *b = op->bias ? op->ba : NULL;
    if (path == PATH_INT8) {
        if ((st = quantize_input(op, m->bits, x, NULL, n_in, &xs, &xz))) return st;
        if (op->kind == OP_CONV) /* the residual and the ReLU as each tile is stored */
            return csub_conv2d_int8_forward_res(x, xs, xz, &op->qw, op->oscale, op->ba, res, op->relu, y, N, C, s.h,
                                                s.w, op->k, op->k, op->stride, op->pad);
        st = csub_linear_int8_forward(x, xs, xz, &op->qw, op->oscale, op->ba, y, N);
    } else if (op->kind == OP_CONV && path == PATH_SPARSE) {
        const op_t *nm = op->pre >= 0 ? &m->ops[op->pre] : NULL; /* a norm it applies to x (fuse_pre) */
        csub_pre pre = {nm ? nm->pre_ab : NULL, nm ? nm->pre_ab + nm->c : NULL, op->pre_k,
                        op->pre_k ? op->pre_k + op->nnz : NULL};
        if (op->spj)
            return csub_conv2d_sparse_forward_jit(x, op->spj, b, y, N, C, s.h, s.w, op->aout, op->k, op->k, op->stride,
                                                  op->pad, res, op->relu, nm ? &pre : NULL, w->spwork, w->spwork_len);
        return csub_conv2d_sparse_forward_planned(x, op->rowptr, op->foff, op->vals, b, y, N, C, s.h, s.w, op->aout,
                                                  op->k, op->k, op->stride, op->pad, res, op->relu, nm ? &pre : NULL,
                                                  w->spwork, w->spwork_len);
        /* the residual and the ReLU applied as y was written */
    } else {
        if (path == PATH_FAKEQ) {
            if ((st = quantize_input(op, m->bits, x, w->scratch, n_in, &xs, &xz))) return st;
            x = w->scratch;
        }
        if (op->ww && path == PATH_DENSE) /* the same by Winograd (float32 dense only: runtime_alpha.c) */
            return csub_winograd_forward(x, op->ww, b, res, op->relu, y, N, C, s.h, s.w, op->aout, op->wm, 0);
        if (op->wd) /* the same, by the direct 3x3 kernel */
            return csub_conv3x3_forward(x, op->wd, b, res, op->relu, y, N, C, s.h, s.w, op->aout, op->stride);
        if (op->kind == OP_CONV && !op->oscale && m->fold) /* bias, residual and ReLU as each image's rows are made */
            return csub_conv2d_forward_fused(x, op->wa, b, res, op->relu, y, N, C, s.h, s.w, op->aout, op->k, op->k,
                                             op->stride, op->pad);
        st = dense_weighted(m, op, path, x, op->oscale ? NULL : b, y, N);
        if (!st && op->oscale) scale_shift(y, op->oscale, b, N, op->aout, o.h * o.w);
    }
    if (st) return st;
    int64_t n_out = N * op->aout * o.h * o.w;
    if (res && op->relu) add_relu(y, res, n_out);
    else if (res) csub_add_nchw(y, res, y, N, op->aout, o.h, o.w);
    else if (op->relu) csub_relu_forward(y, y, n_out);
    return CSUB_OK;
}

float *csub_rt_value(const csub_model *m, const workspace *w, const float *input, int v)
{
    return m->vslot[v] < 0 ? (float *)input : w->slots[m->vslot[v]];
}

int csub_rt_run_op(const csub_model *m, const workspace *w, const float *input, int64_t N, int split, int i)
{
    const op_t *op = &m->ops[i];
    shape3 s = m->vshape[op->x];
    int64_t C = m->vc[op->x], HW = s.h * s.w;
    /* a reader of a fused norm (fuse_pre) reads the norm's input */
    const float *x = csub_rt_value(m, w, input, op->pre >= 0 ? m->ops[op->pre].x : op->x);
    float *y = csub_rt_value(m, w, input, op->y);
    switch (op->kind) {
    case OP_CONV: case OP_LINEAR:
        return run_weighted(m, op, split ? op->path_split : op->path, w, x,
                            op->x2 >= 0 ? csub_rt_value(m, w, input, op->x2) : NULL, y, N);
    case OP_NORM:
        if (op->pre_fused) /* its readers apply it */
            break;
        if (op->bn)
            csub_batchnorm_infer(x, op->ga, op->ba, op->rmean, op->rvar, y, N, C, s.h, s.w, op->eps, op->relu);
        else
            csub_groupnorm_infer(x, op->ga, op->ba, y, N, C, s.h, s.w, op->agroups, op->eps, op->relu);
        break;
    case OP_RELU:
        csub_relu_forward(x, y, N * C * HW);
        break;
    case OP_MAXPOOL:
        csub_maxpool2d_infer(x, y, N, C, s.h, s.w, op->pk, op->ps);
        break;
    case OP_AVGPOOL:
        csub_avgpool2d_forward(x, y, N, C, s.h, s.w, op->pk, op->ps);
        break;
    case OP_GAP:
        if (op->pre >= 0)
            csub_gap_pre_forward(x, m->ops[op->pre].pre_ab, m->ops[op->pre].pre_ab + C, y, N, C, HW);
        else
            csub_gap_forward(x, y, N * C, HW);
        break;
    case OP_ADD:
        csub_add_nchw(x, csub_rt_value(m, w, input, op->x2), y, N, C, s.h, s.w);
        break;
    default: /* flatten, alias: the same buffer */
        break;
    }
    return CSUB_OK;
}

/* The graph on N images with workspace w, each image split across threads (split) or
 * not. Returns CSUB_OK, or a status with *failed = the op. */
static int run_graph(const csub_model *m, const workspace *w, const float *input, int64_t N, int split,
                     float *output, double *op_ms, int *failed)
{
    for (int i = 0; i < m->nops; i++) {
        double t0 = op_ms ? csub_rt_now_ms() : 0.0;
        int st = csub_rt_run_op(m, w, input, N, split, i);
        if (st) { *failed = i; return st; }
        if (op_ms) op_ms[i] = csub_rt_now_ms() - t0;
    }
    memcpy(output, csub_rt_value(m, w, input, m->out_val), sizeof(float) * (size_t)(N * m->classes));
    return CSUB_OK;
}

/* Image-parallel when the batch has at least one image per thread (and more
 * than one image): every thread runs the whole network on its own images, one
 * chunk at a time, with its own buffers (no barrier between layers, activations
 * stay in cache); the kernels inside run single-threaded. One thread runs its
 * chunks in turn, for the same reason. A single image, or a layer whose
 * activation range is taken from the batch itself, runs layer by layer, each
 * kernel splitting the work across the threads when it is large enough to pay
 * (at batch 1 the dense convolutions do; the compressed layers, a few
 * microseconds each, stay on one thread: benchmarks/deploy.md). */
int csub_rt_image_parallel(const csub_model *m, int64_t N, int nt)
{
    if (N < 2 || N < nt) return 0;
    for (int i = 0; i < m->nops; i++)
        if ((m->ops[i].path == PATH_INT8 || m->ops[i].path == PATH_FAKEQ) && m->ops[i].act_dynamic) return 0;
    return 1;
}

static int forward_threads(csub_model *m, const float *input, int64_t batch, float *output, double *op_ms)
{
    if (!m) return CSUB_ERR_ARG;
    if (!input || !output) return MFAIL(m, CSUB_ERR_ARG, "input, output: NULL pointer");
    if (batch < 1 || batch > RT_MAX_BATCH) return MFAIL(m, CSUB_ERR_ARG, "batch: expected 1..2^24, got %lld", (long long)batch);
    if (!m->ready) return MFAIL(m, CSUB_ERR_ARG, "model: no alpha set (the last set_alpha failed)");
    int nt = csub_get_num_threads(), failed = -1, st = CSUB_OK;
    m->split = 0;
    if (op_ms || !csub_rt_image_parallel(m, batch, nt)) {
        if (csub_rt_ws_ensure(m, &m->ws[0], batch, nt)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory for a batch of %lld", (long long)batch);
        m->split = nt > 1 && batch < nt; /* fewer images than threads: the kernels split each image */
        st = run_graph(m, &m->ws[0], input, batch, m->split, output, op_ms, &failed);
    } else {
        if (csub_rt_ws_reserve(m, nt)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory for the workspaces");
        for (int t = 0; t < nt; t++)
            if (csub_rt_ws_ensure(m, &m->ws[t], m->chunk, 1)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory for the workspace");
        /* chunks of m->chunk images, or fewer where that leaves a thread without one (a batch of 2
         * on 2 threads ran as one chunk, on one thread) */
        int64_t per = m->in_c * m->in_h * m->in_w, share = (batch + nt - 1) / nt;
        int64_t ch = share < m->chunk ? share : m->chunk, nchunks = (batch + ch - 1) / ch;
        #pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t c = 0; c < nchunks; c++) {
            int64_t i0 = c * ch, n = batch - i0 < ch ? batch - i0 : ch;
            int f = -1, s2;
            #pragma omp atomic read
            s2 = st;
            if (s2) continue; /* an earlier chunk failed: skip the rest */
            s2 = run_graph(m, &m->ws[omp_get_thread_num()], input + i0 * per, n, 0, output + i0 * m->classes, NULL,
                           &f);
            if (s2) {
                #pragma omp critical(csub_runtime_error)
                if (!st) { st = s2; failed = f; }
            }
        }
    }
    if (st == CSUB_ERR_ARG && (m->ops[failed].path == PATH_INT8 || m->ops[failed].path == PATH_FAKEQ))
        return MFAIL(m, st, "graph[%d] (%s): the layer's input has NaN or infinite values, which no integer code "
                     "represents (check the input)", failed, csub_model_op_name(m, failed));
    if (st) return MFAIL(m, st, "graph[%d] (%s): %s", failed, csub_model_op_name(m, failed), csub_strerror(st));
    return CSUB_OK;
}

/* One image as row bands on nt threads (runtime_bands.c) */
static int forward_bands(csub_model *m, const float *input, float *output, int nt)
{
    int failed = -1, st;
    m->split = 0;
    for (int t = 0; t < nt; t++)
        if (csub_rt_ws_ensure(m, &m->ws[t], 1, 1)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory for the workspace");
    if ((st = csub_rt_bands_forward(m, input, output, nt, &failed)))
        return MFAIL(m, st, "graph[%d] (%s): %s", failed, csub_model_op_name(m, failed), csub_strerror(st));
    return CSUB_OK;
}

/* One image on several threads: as row bands where the graph allows (not when profiling: op_ms
 * times each layer); else split layer by layer, or with too little work for that
 * (RT_SPLIT_MIN_FLOPS) the whole forward on the calling thread */
static int forward(csub_model *m, const float *input, int64_t batch, float *output, double *op_ms)
{
    int nt = csub_get_num_threads(), few = m && m->ready && batch >= 1 && batch < nt, bands;
    if (few && !op_ms && input && output && (bands = csub_rt_bands_apply(m, batch, nt)))
        return forward_bands(m, input, output, bands);
    int small = few && (double)batch * (double)m->flops < RT_SPLIT_MIN_FLOPS;
    int cap = small ? csub_threads_cap(1) : 0;
    int st = forward_threads(m, input, batch, output, op_ms);
    if (small) csub_threads_cap(cap);
    return st;
}

int csub_model_forward(csub_model *m, const float *input, int64_t batch, float *output)
{
    return forward(m, input, batch, output, NULL);
}

int csub_model_profile(csub_model *m, const float *input, int64_t batch, float *output, double *op_ms)
{
    if (m && !op_ms) return MFAIL(m, CSUB_ERR_ARG, "op_ms: NULL pointer");
    return forward(m, input, batch, output, op_ms);
}

const char *csub_model_plan(const csub_model *m, int64_t batch)
{
    if (!m || !m->ready || batch < 1 || batch > RT_MAX_BATCH) return "";
    int nt = csub_get_num_threads();
    if (csub_rt_image_parallel(m, batch, nt)) return "images";
    int nb;
    if (batch < nt && csub_rt_bands_floats(m, batch, nt, &nb)) return "bands";
    if (batch < nt && (double)batch * (double)m->flops < RT_SPLIT_MIN_FLOPS) return "serial";
    return nt > 1 ? "layers" : "serial";
}

int csub_model_num_ops(const csub_model *m)
{
    return m ? m->nops : 0;
}

const char *csub_model_op_name(const csub_model *m, int i)
{
    static const char *kinds[] = {"conv", "linear", "norm", "relu", "maxpool", "avgpool", "gap", "flatten", "add",
                                  "alias"};
    static const char *weighted[2][4] = {{"conv/dense", "conv/sparse", "conv/int8", "conv/fakequant"},
                                         {"linear/dense", "linear/sparse", "linear/int8", "linear/fakequant"}};
    static const char *norms[2][2] = {{"gn", "gn+relu"}, {"bn", "bn+relu"}};
    if (!m || i < 0 || i >= m->nops) return "";
    const op_t *op = &m->ops[i];
    if (op->kind == OP_CONV || op->kind == OP_LINEAR) /* the kernels of the last forward */
        return weighted[op->kind == OP_LINEAR][m->split ? op->path_split : op->path];
    if (op->kind == OP_NORM) return op->pre_fused ? "bn+relu/fused" : norms[op->bn][op->relu];
    return kinds[op->kind];
}

