/* runtime_alpha.c - set_alpha: the network materialised at one alpha (the
 * overview: runtime.c): the line interpolated, then per regime top-k and CSR,
 * a width prefix, or integer codes, with folded batch norms applied, and the
 * 3x3 convs' weights packed for the direct kernel or transformed for Winograd.
 *
 * Environment, read at each set_alpha: CSUB_WINOGRAD=0 keeps every float32
 * dense 3x3 conv on the direct kernel (Winograd's sums carry a few more float32
 * roundings: tests/test_winograd.py measures them); CSUB_SPARSE_JIT=0 keeps every
 * sparse conv on csr.c's gather kernels instead of compiled code (sparse_jit.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"

void csub_rt_free_materialised(op_t *op)
{
    free(op->wa); free(op->ba); free(op->ga); free(op->rowptr); free(op->colidx); free(op->vals); free(op->oscale);
    free(op->foff); free(op->fs); free(op->wd); free(op->ww); free(op->wwb); free(op->pre_ab); free(op->pre_k);
    free(op->band_foff);
    op->pre_ab = op->pre_k = op->wwb = NULL;
    op->band_foff = NULL;
    csub_spjit_free(op->spj);
    op->spj = NULL;
    op->wd = op->ww = NULL;
    op->wa = op->ba = op->ga = op->vals = op->oscale = op->fs = NULL;
    op->rowptr = op->foff = NULL;
    op->colidx = NULL;
    if (op->has_qw) csub_qweight_free(&op->qw);
    op->has_qw = 0;
}

int csub_model_set_sparse_crossover(csub_model *m, double keep, double keep_split)
{
    if (!m) return CSUB_ERR_ARG;
    if (!(keep >= 0.0 && keep <= 1.0)) return MFAIL(m, CSUB_ERR_ARG, "keep: expected a fraction in [0, 1], got %g", keep);
    if (!(keep_split >= 0.0 && keep_split <= 1.0))
        return MFAIL(m, CSUB_ERR_ARG, "keep_split: expected a fraction in [0, 1], got %g", keep_split);
    m->crossover = keep;
    m->crossover_split = keep_split;
    return csub_model_set_alpha(m, m->alpha); /* rebuild the weights at the current alpha */
}

/* ----------------------------------------------------------- set_alpha */

/* Bits for alpha: K = hi - lo + 1 bins, alpha in ((k-1)/K, k/K] -> lo + k - 1, robust at the
 * boundaries as csub.nn.quant.bits_for_alpha. */
int csub_bits_for_alpha(double alpha, int lo, int hi)
{
    int K = hi - lo + 1;
    double r = alpha * K;
    double k = nearbyint(r);
    int kk = fabs(r - k) <= 1e-6 ? (int)k : (int)ceil(r);
    if (kk < 1) kk = 1;
    if (kk > K) kk = K;
    return lo + kk - 1;
}

static int64_t width_of(int64_t n, double w)
{
    int64_t c = (int64_t)floor((double)n * w + 0.5);
    return c < 1 ? 1 : c;
}

/* The tensor at alpha (interpolated for a line) into dst. */
static const float *at_alpha(const param *p, double alpha, float *dst)
{
    if (!p->p1) return p->p0;
    csub_line_forward(p->p0, p->p1, (float)alpha, dst, p->n);
    return dst;
}

/* dst[rows, cols] = the top-left block of src[R, C] (R >= rows, C >= cols) */
static void copy_block(const float *src, int64_t C, float *dst, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) memcpy(dst + r * cols, src + r * C, sizeof(float) * (size_t)cols);
}

/* w[rows, cols] *= s[row] */
static void scale_rows(float *w, const float *s, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) w[r * cols + j] *= s[r];
}

/* The folded batch norm of op at alpha: its scale into op->fs[0, cout) and the layer's bias
 * (b - mean) * scale + beta into op->ba. The scale is the training forward's own: for a
 * weight quantized with the scale folded in (op->fold), gamma / sqrtf(var + eps) as
 * BatchNorm2d.fold_scale (the weight's codes depend on it), else gamma times the inverse
 * standard deviation of the inference norm. */
static int fold_vectors(csub_model *m, op_t *op)
{
    const op_t *bn = &m->ops[op->bnf];
    int64_t K = op->cout;
    if (op->aout != K)
        return MFAIL(m, CSUB_ERR_UNSUPPORTED, "graph[%d]: batch norm cannot run at another width", op->bnf);
    if (!op->fs && !(op->fs = falloc(3 * K))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    float *sc = op->fs;
    const float *g = at_alpha(&bn->g, m->alpha, op->fs + K), *beta = at_alpha(&bn->beta, m->alpha, op->fs + 2 * K);
    for (int64_t k = 0; k < K; k++) {
        sc[k] = op->fold >= 0 ? g[k] / sqrtf(bn->rvar[k] + bn->eps)
                              : g[k] * (float)(1.0 / sqrt((double)bn->rvar[k] + bn->eps));
        op->ba[k] = ((op->b.p0 ? op->ba[k] : 0.0f) - bn->rmean[k]) * sc[k] + beta[k];
    }
    return CSUB_OK;
}

/* The sparse conv runs as code (sparse_jit.c) rather than the gather: the 3x3 and larger ones.
 * A 1x1 conv keeps few weights a row (C / 10 at keep 0.1): each of the code's accumulators then
 * does too little between its load and its store (measured on cPreResNet20's and ResNet18's
 * 1x1 convs: 0.45-0.9x the gather's speed). */
static int jit_pays(const op_t *op)
{
    return op->k > 1;
}

/* Unstructured: the top-k mask of w, the kept weights as CSR and/or the masked dense
 * weight (the kernels at each crossover), rows scaled by a folded norm's fs. */
static int materialise_sparse(csub_model *m, op_t *op, const float *w, const float *fs, int64_t cols_full)
{
    if (csub_topk_mask(w, op->w.n, m->keep, m->mask)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    int csr = m->keep <= m->crossover || m->keep <= m->crossover_split;
    int dense = m->keep > m->crossover || m->keep > m->crossover_split;
    op->path = m->keep <= m->crossover ? PATH_SPARSE : PATH_DENSE;
    op->path_split = m->keep <= m->crossover_split ? PATH_SPARSE : PATH_DENSE;
    if (dense) {
        csub_apply_mask(w, m->mask, op->wa, op->w.n);
        if (fs) scale_rows(op->wa, fs, op->cout, cols_full);
    }
    if (csr) {
        if (!op->rowptr) {
            op->rowptr = malloc(sizeof(int64_t) * (size_t)(op->cout + 1));
            op->colidx = malloc(sizeof(int32_t) * (size_t)(op->w.n > 0 ? op->w.n : 1));
            op->vals = falloc(op->w.n);
            if (op->kind == OP_CONV) op->foff = malloc(sizeof(int64_t) * (size_t)(op->w.n > 0 ? op->w.n : 1));
            if (!op->rowptr || !op->colidx || !op->vals || (op->kind == OP_CONV && !op->foff))
                return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
        }
        op->nnz = csub_csr_count(m->mask, op->cout, cols_full, op->rowptr);
        csub_csr_fill(w, m->mask, op->cout, cols_full, op->rowptr, op->colidx, op->vals);
        for (int64_t k = 0; fs && k < op->cout; k++)
            for (int64_t e = op->rowptr[k]; e < op->rowptr[k + 1]; e++) op->vals[e] *= fs[k];
        if (op->kind == OP_CONV) {
            shape3 s = m->vshape[op->x];
            if (csub_conv2d_sparse_offsets(op->colidx, op->nnz, op->cin, s.h, s.w, op->k, op->k, op->stride,
                                           op->pad, op->foff))
                return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
            csub_spjit_free(op->spj);
            op->spj = NULL;
            if (m->sparse_jit && jit_pays(op))
                op->spj = csub_conv2d_sparse_jit(op->rowptr, op->foff, op->vals, op->cin, s.h, s.w, op->cout, op->k,
                                                 op->k, op->stride, op->pad); /* NULL: the gather */
        }
    }
    return CSUB_OK;
}

/* Quantized: the weight (a norm's scale folded in where training folds it) to
 * integer codes (bits <= 8) or fake-quantized in float. */
static int materialise_quantized(csub_model *m, op_t *op, int i, const float *w, const float *fs, int64_t cols_full)
{
    float *wf = op->wa;
    memcpy(wf, w, sizeof(float) * (size_t)op->w.n);
    if (op->fold >= 0 && fs) { /* the norm's scale folded before quantizing, as training does */
        scale_rows(wf, fs, op->cout, cols_full);
    } else if (op->fold >= 0) { /* the same, but the norm runs after: its scale is divided out */
        op_t *bn = &m->ops[op->fold];
        const float *g = at_alpha(&bn->g, m->alpha, m->tmp);
        if (!op->oscale && !(op->oscale = falloc(op->cout))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
        for (int64_t k = 0; k < op->cout; k++) {
            float s = g[k] / sqrtf(bn->rvar[k] + bn->eps);
            for (int64_t j = 0; j < cols_full; j++) wf[k * cols_full + j] *= s;
            op->oscale[k] = 1.0f / s;
        }
    } else if (fs) { /* the weight quantized as it is; the norm's scale applied to the products */
        if (!op->oscale && !(op->oscale = falloc(op->cout))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
        memcpy(op->oscale, fs, sizeof(float) * (size_t)op->cout);
    }
    float mn, mx;
    op->act_dynamic = op->act[2] == 0.0f || !op->has_act; /* never observed: each batch's own range */
    if (!op->act_dynamic) csub_quant_params(op->act[0], op->act[1], m->bits, &op->xscale, &op->xzp);
    if (m->bits <= 8) {
        int st = op->kind == OP_CONV ? csub_qweight_init_conv(&op->qw, wf, op->cout, op->cin, op->k, op->k, m->bits)
                                     : csub_qweight_init(&op->qw, wf, op->cout, cols_full, m->bits);
        if (st) return MFAIL(m, st, "graph[%d]: quantizing the weight failed (%s)", i, csub_strerror(st));
        op->has_qw = 1;
        op->path = op->path_split = PATH_INT8;
    } else {
        csub_minmax(wf, op->w.n, &mn, &mx);
        float scale;
        int32_t zp;
        csub_quant_params(mn, mx, m->bits, &scale, &zp);
        csub_fake_quant_forward(wf, wf, op->w.n, scale, zp, m->bits);
        op->path = op->path_split = PATH_FAKEQ;
    }
    return CSUB_OK;
}

/* A conv or linear layer at the model's alpha: its bias and a folded batch norm's
 * vectors, then the weight per regime (dense and structured: the active block). */
static int materialise_weight(csub_model *m, op_t *op, int i)
{
    int64_t kk = op->k * op->k;
    int64_t cols_full = op->kind == OP_CONV ? op->cin * kk : op->cin;
    int64_t cols = op->kind == OP_CONV ? op->ain * kk : op->ain;
    const float *w = at_alpha(&op->w, m->alpha, m->tmp);
    const float *fs = NULL; /* a folded batch norm's scale per output channel */
    int st;
    op->path = op->path_split = PATH_DENSE;
    if (!op->wa && !(op->wa = falloc(op->w.n))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    op->bias = op->b.p0 || op->bnf >= 0;
    if (op->bias && !op->ba && !(op->ba = falloc(op->cout))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    if (op->b.p0) {
        const float *b = at_alpha(&op->b, m->alpha, op->ba);
        if (b != op->ba) memcpy(op->ba, b, sizeof(float) * (size_t)op->cout);
    }
    if (op->bnf >= 0) {
        if ((st = fold_vectors(m, op))) return st;
        fs = op->fs;
    }
    if (m->regime == REG_UNSTRUCTURED && op->compress && m->keep < 1.0)
        return materialise_sparse(m, op, w, fs, cols_full);
    if (m->regime == REG_QUANTIZED && op->compress) return materialise_quantized(m, op, i, w, fs, cols_full);
    if (cols == cols_full && op->aout == op->cout) memcpy(op->wa, w, sizeof(float) * (size_t)op->w.n);
    else copy_block(w, cols_full, op->wa, op->aout, cols);
    if (fs) scale_rows(op->wa, fs, op->aout, cols);
    return CSUB_OK;
}

/* A 3x3 conv that runs dense and fused (runtime_exec.c): its weight packed for the direct kernel,
 * or where Winograd pays (csub_winograd_pays, measured: 32 or more channels in and out) transformed
 * for it instead. Only the float32 dense path runs Winograd; the fake-quantized and integer paths
 * never do (their bits must not depend on the instruction set). CSUB_WINOGRAD=0 in the environment
 * at set_alpha keeps every layer on the direct kernel, whose sums carry fewer roundings. */
static int pack_direct(csub_model *m, op_t *op)
{
    free(op->wd);
    op->wd = NULL;
    int wm = 0;
    if (op->kind == OP_CONV && !op->oscale && m->fold && csub_conv3x3_applies(op->k, op->k, op->stride, op->pad) &&
        (op->path == PATH_DENSE || op->path_split == PATH_DENSE) && m->winograd && op->stride == 1) {
        shape3 s = m->vshape[op->x];
        wm = csub_winograd_pays(op->ain, op->aout, s.h, s.w);
    }
    int64_t len = wm ? csub_winograd_packed_len(op->aout, op->ain, wm) : 0;
    if (op->ww && op->ww_len != len) { /* kept across set_alpha at the same size: no fresh pages to fault in */
        free(op->ww);
        op->ww = NULL;
    }
    op->wm = wm;
    op->ww_len = len;
    if (wm) { /* every call that would run the direct kernel runs this */
        if (!op->ww && !(op->ww = falloc(len))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
        csub_winograd_pack(op->wa, op->ww, op->aout, op->ain, wm);
        return CSUB_OK;
    }
    if (op->kind != OP_CONV || op->oscale || !m->fold || !csub_conv3x3_applies(op->k, op->k, op->stride, op->pad) ||
        (op->path != PATH_DENSE && op->path != PATH_FAKEQ && op->path_split != PATH_DENSE))
        return CSUB_OK;
    if (!(op->wd = falloc(csub_conv3x3_packed_len(op->aout, op->ain)))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    csub_conv3x3_pack(op->wa, op->wd, op->aout, op->ain);
    return CSUB_OK;
}

/* Whether op (reading the norm's output as its input) can apply the norm itself: a conv on the CSR
 * kernels in both of its paths (the image-parallel and the split one), without padding (csub_pre),
 * or the global average pool */
static int reads_pre(const op_t *op)
{
    if (op->kind == OP_GAP) return 1;
    return op->kind == OP_CONV && op->path == PATH_SPARSE && op->path_split == PATH_SPARSE && op->pad == 0;
}

/* A batch norm with its ReLU whose every reader can apply it (reads_pre) is fused into them: they read
 * the norm's input through its transform (csub_pre), max(0, x a + b) with a = gamma / sqrt(var + eps),
 * b = beta - mean a, and the norm's output is never written (the runtime keeps its input live that
 * long: csub_rt_assign_slots). In a 90 % sparse pre-activation ResNet the norm after each residual
 * add was a tenth of the forward, a pass over the block's widest activation. CSUB_PRE_FUSE=0 in the
 * environment at set_alpha keeps every norm a pass of its own (the same values to a rounding: the
 * separate pass computes (x - mean) gamma / sqrt(var + eps) + beta). */
static int fuse_pre(csub_model *m)
{
    for (int i = 0; i < m->nops; i++) m->ops[i].pre = -1, m->ops[i].pre_fused = 0;
    if (!m->pre_fuse || !m->fold) return CSUB_OK; /* CSUB_FOLD=0: every operation its own */
    int *root = malloc(sizeof(int) * (size_t)m->nvals);
    if (!root) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    for (int v = 0; v < m->nvals; v++) root[v] = v;
    for (int i = 0; i < m->nops; i++)
        if (m->ops[i].kind == OP_ALIAS || m->ops[i].kind == OP_FLATTEN) root[m->ops[i].y] = root[m->ops[i].x];
    for (int n = 0; n < m->nops; n++) {
        op_t *nm = &m->ops[n];
        if (nm->kind != OP_NORM || !nm->bn || !nm->relu) continue;
        int r = root[nm->y], ok = root[m->out_val] != r, any = 0;
        for (int i = n + 1; i < m->nops && ok; i++) {
            const op_t *op = &m->ops[i];
            if (op->x2 >= 0 && root[op->x2] == r) ok = 0;
            if (root[op->x] != r || op->kind == OP_ALIAS) continue;
            any = 1;
            ok = reads_pre(op);
        }
        if (!ok || !any) continue;
        int64_t C = nm->c;
        free(nm->pre_ab);
        if (!(nm->pre_ab = falloc(2 * C))) { free(root); return MFAIL(m, CSUB_ERR_NOMEM, "out of memory"); }
        for (int64_t c = 0; c < C; c++) { /* the scale as csub_batchnorm_infer makes it */
            float a = nm->ga[c] * (float)(1.0 / sqrt((double)nm->rvar[c] + nm->eps));
            nm->pre_ab[c] = a;
            nm->pre_ab[C + c] = nm->ba[c] - nm->rmean[c] * a;
        }
        nm->pre_fused = 1;
        for (int i = n + 1; i < m->nops; i++) {
            op_t *op = &m->ops[i];
            if (root[op->x] != r || op->kind == OP_ALIAS) continue;
            op->pre = n;
            free(op->pre_k);
            op->pre_k = NULL;
            if (op->kind != OP_CONV || op->k != 1 || op->stride != 1) continue;
            /* read in place: the transform per kept weight, of its input channel */
            if (!(op->pre_k = falloc(2 * op->nnz))) { free(root); return MFAIL(m, CSUB_ERR_NOMEM, "out of memory"); }
            csub_pre_per_weight(op->colidx, op->nnz, 1, nm->pre_ab, nm->pre_ab + C, op->pre_k, op->pre_k + op->nnz);
        }
    }
    free(root);
    return CSUB_OK;
}

int csub_model_set_alpha(csub_model *m, double alpha)
{
    if (!m) return CSUB_ERR_ARG;
    if (!(alpha >= 0.0 && alpha <= 1.0)) return MFAIL(m, CSUB_ERR_ARG, "alpha: expected a number in [0, 1], got %g", alpha);
    if (m->regime == REG_UNSTRUCTURED && alpha <= 0.0)
        return MFAIL(m, CSUB_ERR_ARG, "alpha: 0 keeps no weight in the unstructured regime; use alpha > 0");
    m->ready = 0;
    const char *wino = getenv("CSUB_WINOGRAD"); /* "0": the direct kernel for every dense 3x3 conv */
    m->winograd = !(wino && !strcmp(wino, "0"));
    const char *jit = getenv("CSUB_SPARSE_JIT"); /* "0": the gather kernels for every sparse conv */
    m->sparse_jit = !(jit && !strcmp(jit, "0"));
    const char *pre = getenv("CSUB_PRE_FUSE"); /* "0": every batch norm runs as its own pass */
    m->pre_fuse = !(pre && !strcmp(pre, "0"));
    const char *bands = getenv("CSUB_BANDS"); /* "0": one image never runs as row bands */
    m->bands = !(bands && !strcmp(bands, "0"));
    m->band_nt = 0; /* the band plan is remade for this alpha */
    m->alpha = alpha;
    m->keep = m->regime == REG_UNSTRUCTURED ? alpha : 1.0;
    m->width = m->regime == REG_STRUCTURED ? m->w_lo + (m->w_hi - m->w_lo) * alpha : 1.0;
    m->bits = m->regime == REG_QUANTIZED ? csub_bits_for_alpha(alpha, m->bit_lo, m->bit_hi) : 0;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        if (op->has_qw) { csub_qweight_free(&op->qw); op->has_qw = 0; }
    }
    m->vc[0] = m->in_c;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        int64_t cin = m->vc[op->x];
        shape3 s = m->vshape[op->x];
        int st;
        switch (op->kind) {
        case OP_CONV: case OP_LINEAR:
            op->ain = op->kind == OP_CONV ? cin : cin * s.h * s.w;
            op->aout = op->last ? op->cout : width_of(op->cout, m->width);
            if ((st = materialise_weight(m, op, i)) || (st = pack_direct(m, op))) return st;
            if (op->x2 >= 0 && m->vc[op->x2] != op->aout)
                return MFAIL(m, CSUB_ERR_FORMAT, "graph[%d]: add of different widths", i + 1);
            m->vc[op->y] = op->aout;
            break;
        case OP_NORM: {
            int64_t c = cin;
            if (c != op->c && op->bn)
                return MFAIL(m, CSUB_ERR_UNSUPPORTED, "graph[%d]: batch norm cannot run at another width", i);
            op->agroups = c == op->c ? op->groups : op->groups == op->c ? c : op->groups == 1 ? 1 : -1;
            if (op->agroups < 0)
                return MFAIL(m, CSUB_ERR_UNSUPPORTED, "graph[%d]: group norm with %lld groups has no grouping at width %g",
                             i, (long long)op->groups, m->width);
            if (!op->ga) op->ga = falloc(op->c);
            if (!op->ba) op->ba = falloc(op->c);
            if (!op->ga || !op->ba) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
            const float *g = at_alpha(&op->g, alpha, op->ga), *b = at_alpha(&op->beta, alpha, op->ba);
            if (g != op->ga) memcpy(op->ga, g, sizeof(float) * (size_t)op->c);
            if (b != op->ba) memcpy(op->ba, b, sizeof(float) * (size_t)op->c);
            op->ain = op->aout = c;
            m->vc[op->y] = c;
            break;
        }
        case OP_ADD:
            if (m->vc[op->x2] != cin) return MFAIL(m, CSUB_ERR_FORMAT, "graph[%d]: add of different widths", i);
            m->vc[op->y] = cin;
            break;
        default:
            m->vc[op->y] = cin;
        }
    }
    if (m->vc[m->out_val] * m->vshape[m->out_val].h * m->vshape[m->out_val].w != m->classes)
        return MFAIL(m, CSUB_ERR_FORMAT, "the output narrows at width %g", m->width);
    csub_model_desc d;
    csub_model_info(m, &d);
    m->flops = d.flops; /* per image at this alpha: whether a small batch splits (runtime_exec.c) */
    double gather = 0.0; /* the float operations of the sparse convs on csr.c's gather kernels */
    for (int i = 0; i < m->nops; i++)
        if (m->ops[i].kind == OP_CONV && m->ops[i].path == PATH_SPARSE && !m->ops[i].spj)
            gather += (double)csub_rt_op_flops(m, &m->ops[i]);
    m->chunk = gather >= RT_CHUNK1_GATHER * (double)m->flops && m->flops > 0 ? 1 : RT_CHUNK;
    int st = fuse_pre(m);
    if (st) return st;
    m->ready = 1;
    return CSUB_OK;
}

