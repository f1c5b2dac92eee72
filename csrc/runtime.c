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
 *               the threads when it is large enough to pay.
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
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "internal.h"

/* Activation buffers for `cap` images: one per buffer slot, and a scratch. */
typedef struct workspace {
    float **slots;
    float *scratch;
    int64_t cap;
    float *spwork;      /* the CSR convolutions' buffers, for cap images and `threads` threads */
    int64_t spwork_len;
    int threads;
} workspace;
static void ws_free(workspace *w, int nslots);

/* Default keep fractions at or below which a compressed layer runs its CSR
 * kernel at inference (csub_model_set_sparse_crossover changes them per
 * model), measured with `python benchmarks/bench_deploy.py --crossover`
 * (benchmarks/deploy.md) on cPreResNet20, two threads: whole images per
 * thread (batch 64): the CSR network is 1.04x faster than dense kernels on the
 * masked weights at keep 0.6, 0.89x at 0.7. One image split across threads
 * (batch 1): the dense products split well and the CSR ones do not, so they
 * stop paying earlier: 0.94x / 1.05x at keep 0.4 in two runs, 0.82x at 0.5.
 * Between the two, a layer holds both forms. */
#define RT_SPARSE_CROSSOVER 0.6
#define RT_SPARSE_CROSSOVER_SPLIT 0.4
#define RT_MAX_OPS 100000
#define RT_MAX_BATCH ((int64_t)1 << 24) /* images per forward */

enum { OP_CONV, OP_LINEAR, OP_NORM, OP_RELU, OP_MAXPOOL, OP_AVGPOOL, OP_GAP, OP_FLATTEN, OP_ADD, OP_ALIAS };
enum { REG_NONE, REG_UNSTRUCTURED, REG_STRUCTURED, REG_QUANTIZED };
enum { PATH_DENSE, PATH_SPARSE, PATH_INT8, PATH_FAKEQ };

typedef struct {     /* a tensor of the subspace: one point, or the two ends of a line */
    float *p0, *p1;  /* p1 NULL unless a line */
    int64_t n;
} param;

typedef struct {
    int kind, x, x2, y;
    /* conv, linear */
    int64_t cin, cout, k, stride, pad;
    int compress, fold;          /* fold: op index of the batch norm whose scale is folded before quantizing, or -1 */
    int bnf;                     /* op index of the batch norm folded in whole (weights and a bias), or -1 */
    int last;                    /* the network's last weight layer (its outputs never narrow) */
    param w, b;
    float act[3];                /* activation range: min, max, initialised */
    int has_act;
    /* norm */
    int bn, relu;                /* relu: a ReLU fused into the norm, or into a conv or linear layer after its
                                  * residual add (the ReLU op became an alias) */
    int64_t groups, c;
    float eps;
    param g, beta;
    float *rmean, *rvar;
    /* pools */
    int64_t pk, ps;
    /* materialised by set_alpha */
    int path, path_split;        /* the kernels for whole images per thread, and for an image split across threads */
    int64_t ain, aout;           /* active inputs (conv: channels, linear: features), outputs */
    int64_t agroups;
    float *wa, *ba, *ga;         /* dense weight (active prefix), bias, norm gamma (active) */
    float *wd;                   /* a 3x3 conv's wa packed for the direct kernel (csub_conv3x3_pack), or NULL */
    int64_t *rowptr;
    int32_t *colidx;
    float *vals;
    int64_t *foff;               /* conv: where each kept weight reads the laid-out input */
    int64_t nnz;
    csub_qweight qw;
    int has_qw;
    float *oscale;               /* per output channel: 1 / the scale folded before quantizing, or the scale of a
                                  * batch norm folded after it; NULL when neither */
    float *fs;                   /* a folded batch norm: its scale gamma / sqrt(var + eps) [cout], and gamma and
                                  * beta at alpha [2 cout] */
    int bias;                    /* ba is added: the layer's own bias, or a folded batch norm's shift */
    float xscale;
    int32_t xzp;
    int bits, act_dynamic;
} op_t;

typedef struct { int64_t c, h, w; } shape3;

struct csub_model {
    char err[256];
    int regime, bit_lo, bit_hi;
    double w_lo, w_hi;
    int64_t in_c, in_h, in_w, classes;
    op_t *ops;
    int nops, nvals, out_val;
    shape3 *vshape;              /* full shape of each value (per sample) */
    int64_t *vc;                 /* active channels of each value at the current alpha */
    int *vslot;                  /* buffer of each value (-1: the input) */
    int nslots;
    int64_t *slot_size;          /* floats per sample at full width */
    int64_t scratch_size;        /* floats per sample */
    workspace *ws;               /* one per thread (ws[0]: layer-by-layer runs) */
    int nws;
    float *tmp;                  /* one full tensor (interpolation) */
    uint8_t *mask;
    int64_t tmp_size;
    float *input_mean, *input_std;
    int nlevels;
    double *level_alpha, *level_acc;
    double alpha, width, keep, crossover, crossover_split;
    int bits, ready;
    int split;                   /* the last forward split its images across threads */
    int fold;                    /* batch norms folded, ReLUs and residual adds in the conv's epilogue (CSUB_FOLD) */
};

#define fail csub_fail /* internal.h */
#define MFAIL(m, code, ...) fail((m)->err, sizeof (m)->err, code, __VA_ARGS__)

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

const char *csub_model_error(const csub_model *m)
{
    return m ? m->err : "no model";
}

/* ------------------------------------------------------------ loading */

static void *xcalloc(size_t n, size_t size)
{
    return n && size ? calloc(n, size) : calloc(1, 1);
}

static float *falloc(int64_t n)
{
    return (float *)xcalloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

/* A float32 tensor of the file into a fresh aligned array; numel must be `want` (or any when want < 0). */
static int copy_tensor(const csub_st_file *f, const char *name, int64_t want, float **out, int64_t *numel,
                       char *err, size_t errlen)
{
    const csub_st_tensor *t = csub_st_find(f, name);
    if (!t) return fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor '%s' is missing", name);
    if (t->dtype != CSUB_DT_F32) return fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor '%s' is not float32", name);
    if (want >= 0 && t->numel != want)
        return fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor '%s' has %lld values, expected %lld", name,
                    (long long)t->numel, (long long)want);
    if (!(*out = falloc(t->numel))) return fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    memcpy(*out, t->data, (size_t)t->numel * sizeof(float));
    if (numel) *numel = t->numel;
    return CSUB_OK;
}

static int load_param(const csub_st_file *f, const char *name, int line, int64_t want, param *p,
                      char *err, size_t errlen)
{
    int st = copy_tensor(f, name, want, &p->p0, &p->n, err, errlen);
    if (st || !line) return st;
    char n1[512];
    if (snprintf(n1, sizeof n1, "%s1", name) >= (int)sizeof n1)
        return fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor name too long");
    /* a line's tensor name "x.weight" has its partner "x.weight1" */
    return copy_tensor(f, n1, p->n, &p->p1, NULL, err, errlen);
}

static const char *jstr(const csub_json *o, const char *key)
{
    const csub_json *v = csub_json_get(o, key);
    return v && v->type == CSUB_JSON_STRING ? v->string : NULL;
}

static int jint(const csub_json *o, const char *key, int64_t lo, int64_t hi, int64_t *out, char *err, size_t errlen,
                int idx)
{
    if (csub_json_int(csub_json_get(o, key), lo, hi, out))
        return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].%s must be an integer in [%lld, %lld]", idx,
                    key, (long long)lo, (long long)hi);
    return CSUB_OK;
}

static int jbool(const csub_json *o, const char *key, int *out)
{
    const csub_json *v = csub_json_get(o, key);
    if (!v || v->type != CSUB_JSON_BOOL) return CSUB_ERR_FORMAT;
    *out = v->boolean;
    return CSUB_OK;
}

#define DIM_MAX ((int64_t)1 << 24)
#define VALUE_MAX ((int64_t)1 << 32) /* values per image of one tensor of the graph */

static int parse_op(csub_model *m, const csub_st_file *f, const csub_json *o, int i, char *err, size_t errlen)
{
    op_t *op = &m->ops[i];
    const char *kind = jstr(o, "op");
    int64_t v;
    int st;
    op->fold = -1;
    op->bnf = -1;
    op->x2 = -1;
    if (!kind) return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].op must be a string", i);
    static const char *names[] = {"conv", "linear", "norm", "relu", "maxpool", "avgpool", "gap", "flatten", "add"};
    op->kind = -1;
    for (int k = 0; k < 9; k++)
        if (!strcmp(kind, names[k])) op->kind = k;
    if (op->kind < 0) return fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d]: unknown op '%s'", i, kind);
    /* values are produced in order: op i reads values < i + 1 and writes value i + 1 */
    if ((st = jint(o, "x", 0, i, &v, err, errlen, i))) return st;
    op->x = (int)v;
    if ((st = jint(o, "y", i + 1, i + 1, &v, err, errlen, i))) return st;
    op->y = (int)v;
    if (op->kind == OP_ADD) {
        if ((st = jint(o, "x2", 0, i, &v, err, errlen, i))) return st;
        op->x2 = (int)v;
    }
    if (op->kind == OP_MAXPOOL || op->kind == OP_AVGPOOL) {
        if ((st = jint(o, "k", 1, 64, &op->pk, err, errlen, i))) return st;
        if ((st = jint(o, "s", 1, 64, &op->ps, err, errlen, i))) return st;
    }
    if (op->kind == OP_CONV || op->kind == OP_LINEAR) {
        int line;
        if ((st = jint(o, "cin", 1, DIM_MAX, &op->cin, err, errlen, i))) return st;
        if ((st = jint(o, "cout", 1, DIM_MAX, &op->cout, err, errlen, i))) return st;
        op->k = 1;
        if (op->kind == OP_CONV) {
            if ((st = jint(o, "k", 1, 64, &op->k, err, errlen, i))) return st;
            if ((st = jint(o, "stride", 1, 64, &op->stride, err, errlen, i))) return st;
            if ((st = jint(o, "pad", 0, 64, &op->pad, err, errlen, i))) return st;
        }
        if (jbool(o, "line", &line) || jbool(o, "compress", &op->compress))
            return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: line and compress must be booleans", i);
        const char *w = jstr(o, "w"), *b = jstr(o, "b"), *fold = jstr(o, "fold"), *act = jstr(o, "act");
        if (!w) return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].w must be a tensor name", i);
        if (op->cout * op->cin > ((int64_t)1 << 40) / (op->k * op->k))
            return fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d]: weight too large", i);
        if ((st = load_param(f, w, line, op->cout * op->cin * op->k * op->k, &op->w, err, errlen))) return st;
        if (b && (st = load_param(f, b, line, op->cout, &op->b, err, errlen))) return st;
        if (act) {
            float *a = NULL;
            if ((st = copy_tensor(f, act, 3, &a, NULL, err, errlen))) return st;
            memcpy(op->act, a, sizeof op->act);
            free(a);
            op->has_act = 1;
            if (op->act[2] != 0.0f && !(isfinite(op->act[0]) && isfinite(op->act[1]) && op->act[0] <= op->act[1]))
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: activation range '%s' is not a finite "
                            "[min, max]", i, act);
        }
        if (fold) { /* the batch norm applied to this op's output: found after the graph is read */
            op->fold = -2;
        }
        return CSUB_OK;
    }
    if (op->kind == OP_NORM) {
        const char *nk = jstr(o, "kind"), *w = jstr(o, "w"), *b = jstr(o, "b");
        const csub_json *eps = csub_json_get(o, "eps");
        int line;
        if (!nk || (strcmp(nk, "bn") && strcmp(nk, "gn")))
            return fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d].kind must be 'bn' or 'gn'", i);
        op->bn = !strcmp(nk, "bn");
        if ((st = jint(o, "c", 1, DIM_MAX, &op->c, err, errlen, i))) return st;
        if ((st = jint(o, "groups", 1, op->c, &op->groups, err, errlen, i))) return st;
        if (op->c % op->groups)
            return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: groups must divide c", i);
        if (!eps || eps->type != CSUB_JSON_NUMBER || !(eps->number > 0 && eps->number < 1))
            return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].eps must be a number in (0, 1)", i);
        op->eps = (float)eps->number;
        if (jbool(o, "line", &line) || !w || !b)
            return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: norm needs w, b and line", i);
        if ((st = load_param(f, w, line, op->c, &op->g, err, errlen))) return st;
        if ((st = load_param(f, b, line, op->c, &op->beta, err, errlen))) return st;
        if (op->bn) {
            const char *mean = jstr(o, "mean"), *var = jstr(o, "var");
            if (!mean || !var)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: batch norm needs mean and var", i);
            if ((st = copy_tensor(f, mean, op->c, &op->rmean, NULL, err, errlen))) return st;
            if ((st = copy_tensor(f, var, op->c, &op->rvar, NULL, err, errlen))) return st;
            for (int64_t c = 0; c < op->c; c++)
                if (!(op->rvar[c] >= 0.0f))
                    return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: negative or NaN running_var", i);
        }
    }
    return CSUB_OK;
}

/* Shapes of every value, checked against each op. */
static int infer_shapes(csub_model *m, char *err, size_t errlen)
{
    m->vshape[0] = (shape3){m->in_c, m->in_h, m->in_w};
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        shape3 s = m->vshape[op->x], o = s;
        switch (op->kind) {
        case OP_CONV:
            if (s.c != op->cin)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: conv expects %lld channels, gets %lld",
                            i, (long long)op->cin, (long long)s.c);
            if (s.h + 2 * op->pad < op->k || s.w + 2 * op->pad < op->k)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: input smaller than the kernel", i);
            o = (shape3){op->cout, csub_conv_out_size(s.h, op->k, op->stride, op->pad),
                         csub_conv_out_size(s.w, op->k, op->stride, op->pad)};
            break;
        case OP_LINEAR:
            if (s.c * s.h * s.w != op->cin)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: linear expects %lld features, gets %lld",
                            i, (long long)op->cin, (long long)(s.c * s.h * s.w));
            o = (shape3){op->cout, 1, 1};
            break;
        case OP_NORM:
            if (s.c != op->c)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: norm of %lld channels gets %lld", i,
                            (long long)op->c, (long long)s.c);
            break;
        case OP_MAXPOOL: case OP_AVGPOOL:
            if (s.h < op->pk || s.w < op->pk)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: input smaller than the pool window", i);
            o = (shape3){s.c, (s.h - op->pk) / op->ps + 1, (s.w - op->pk) / op->ps + 1};
            break;
        case OP_GAP:
            o = (shape3){s.c, 1, 1};
            break;
        case OP_ADD: {
            shape3 t = m->vshape[op->x2];
            if (t.c != s.c || t.h != s.h || t.w != s.w)
                return fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: add of different shapes", i);
            break;
        }
        default:
            break;
        }
        int64_t size;
        if (csub_mul3_overflow(o.c, o.h, o.w, &size) || size > VALUE_MAX)
            return fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d]: value too large", i);
        m->vshape[op->y] = o;
    }
    return CSUB_OK;
}

/* Buffers by liveness: a value's buffer is free again after its last reader.
 * A flatten's output is its input's buffer (its root value). */
static int assign_slots(csub_model *m)
{
    int nv = m->nvals;
    int *root = malloc(sizeof(int) * nv), *last = malloc(sizeof(int) * nv), *freed = calloc((size_t)nv, sizeof(int));
    int *free_slot = malloc(sizeof(int) * nv);
    int st = CSUB_OK;
    if (!root || !last || !freed || !free_slot) { st = CSUB_ERR_NOMEM; goto done; }
    root[0] = 0;
    for (int v = 0; v < nv; v++) last[v] = -1;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        root[op->y] = op->kind == OP_FLATTEN || op->kind == OP_ALIAS ? root[op->x] : op->y;
        last[root[op->x]] = i;
        if (op->x2 >= 0) last[root[op->x2]] = i;
    }
    last[root[m->out_val]] = m->nops;
    m->vslot[0] = -1;
    int nfree = 0;
    m->nslots = 0;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        if (op->kind == OP_FLATTEN || op->kind == OP_ALIAS) {
            m->vslot[op->y] = m->vslot[op->x];
        } else { /* the output's buffer is taken before the inputs' are released: never in place */
            int s = nfree ? free_slot[--nfree] : m->nslots++;
            int64_t size = m->vshape[op->y].c * m->vshape[op->y].h * m->vshape[op->y].w;
            m->vslot[op->y] = s;
            if (m->slot_size[s] < size) m->slot_size[s] = size;
        }
        int ins[2] = {op->x, op->x2};
        for (int j = 0; j < 2; j++) {
            if (ins[j] < 0) continue;
            int r = root[ins[j]];
            if (r > 0 && last[r] == i && !freed[r]) {
                free_slot[nfree++] = m->vslot[r];
                freed[r] = 1;
            }
        }
    }
done:
    free(root); free(last); free(freed); free(free_slot);
    return st;
}

static void free_materialised(op_t *op)
{
    free(op->wa); free(op->ba); free(op->ga); free(op->rowptr); free(op->colidx); free(op->vals); free(op->oscale);
    free(op->foff); free(op->fs); free(op->wd);
    op->wd = NULL;
    op->wa = op->ba = op->ga = op->vals = op->oscale = op->fs = NULL;
    op->rowptr = op->foff = NULL;
    op->colidx = NULL;
    if (op->has_qw) csub_qweight_free(&op->qw);
    op->has_qw = 0;
}

void csub_model_free(csub_model *m)
{
    if (!m) return;
    for (int i = 0; m->ops && i < m->nops; i++) {
        op_t *op = &m->ops[i];
        free_materialised(op);
        free(op->w.p0); free(op->w.p1); free(op->b.p0); free(op->b.p1);
        free(op->g.p0); free(op->g.p1); free(op->beta.p0); free(op->beta.p1);
        free(op->rmean); free(op->rvar);
    }
    for (int t = 0; m->ws && t < m->nws; t++) ws_free(&m->ws[t], m->nslots);
    free(m->ws); free(m->slot_size); free(m->ops); free(m->vshape); free(m->vc); free(m->vslot);
    free(m->tmp); free(m->mask); free(m->input_mean); free(m->input_std);
    free(m->level_alpha); free(m->level_acc);
    free(m);
}

/* ------------------------------------------------- folding and fusion */

/* The value an alias chain starts from: v itself unless an alias op wrote it. */
static int alias_root(const csub_model *m, int v)
{
    while (v > 0 && m->ops[v - 1].kind == OP_ALIAS) v = m->ops[v - 1].x;
    return v;
}

/* reads[v] = the ops that compute from value v, an alias counting as its own readers,
 * and the graph's output as one more; nvals entries. Values are written in op order,
 * so one backward sweep sees an alias's readers before the alias. */
static int *count_reads(const csub_model *m)
{
    int *reads = calloc((size_t)m->nvals, sizeof(int));
    if (!reads) return NULL;
    reads[m->out_val] = 1;
    for (int j = m->nops - 1; j >= 0; j--) {
        const op_t *op = &m->ops[j];
        if (op->kind == OP_ALIAS) {
            reads[op->x] += reads[op->y];
            continue;
        }
        reads[op->x]++;
        if (op->x2 >= 0) reads[op->x2]++;
    }
    return reads;
}

static int is_weighted(const op_t *op) { return op->kind == OP_CONV || op->kind == OP_LINEAR; }

/* A batch norm whose input is a conv or linear layer's output, read by nothing else,
 * is folded into that layer at set_alpha: the layer's weight rows scaled by
 * gamma / sqrt(var + eps), and a bias (b - mean) * scale + beta. The norm becomes an
 * alias of the layer's output, and a ReLU fused into the norm moves to the layer.
 * (A norm before a conv, as in a pre-activation block, is always followed by a
 * ReLU before that conv, so it cannot be folded forwards.) */
static int fold_norms(csub_model *m)
{
    int *reads = count_reads(m);
    if (!reads) return CSUB_ERR_NOMEM;
    for (int j = 0; j < m->nops; j++) {
        op_t *bn = &m->ops[j];
        if (bn->kind != OP_NORM || !bn->bn || bn->x == 0) continue;
        op_t *op = &m->ops[bn->x - 1];
        if (!is_weighted(op) || reads[op->y] != 1 || op->x2 >= 0 || op->relu || op->cout != bn->c) continue;
        if (op->fold >= 0 && op->fold != j) continue;
        op->bnf = j;
        op->relu = bn->relu;
        bn->kind = OP_ALIAS;
        bn->relu = 0;
    }
    free(reads);
    return CSUB_OK;
}

/* An add one of whose operands a conv or linear layer wrote (through aliases), read by
 * nothing else, is done by that layer as it writes (x2: its residual; the CSR kernel
 * adds it as it writes): the later of the two such layers, so that the other operand
 * exists when it runs, and not one that applies a ReLU (the add comes first). The read
 * counts are taken once: a fusion changes only those of the values its layer wrote,
 * and that layer takes no second add. */
static int fuse_adds(csub_model *m)
{
    int *reads = count_reads(m);
    if (!reads) return CSUB_ERR_NOMEM;
    for (int a = 0; a < m->nops; a++) {
        op_t *add = &m->ops[a];
        if (add->kind != OP_ADD) continue;
        int best = -1, mine = -1, other = -1;
        for (int side = 0; side < 2; side++) {
            int v = side ? add->x2 : add->x, o = side ? add->x : add->x2, r = alias_root(m, v);
            if (r == 0 || r == alias_root(m, o)) continue;
            op_t *op = &m->ops[r - 1];
            if (!is_weighted(op) || reads[r] != 1 || op->x2 >= 0 || op->relu || o >= r) continue;
            if (r > best) { best = r; mine = v; other = o; }
        }
        if (best < 0) continue;
        m->ops[best - 1].x2 = other;
        add->kind = OP_ALIAS;
        add->x = mine;
        add->x2 = -1;
    }
    free(reads);
    return CSUB_OK;
}

/* A ReLU whose input a conv or linear layer wrote (through aliases: a folded norm, a
 * fused add), read by nothing else, is applied by that layer after its residual
 * (read counts taken once, as in fuse_adds). */
static int fuse_relus(csub_model *m)
{
    int *reads = count_reads(m);
    if (!reads) return CSUB_ERR_NOMEM;
    for (int i = 0; i < m->nops; i++) {
        op_t *relu = &m->ops[i];
        if (relu->kind != OP_RELU) continue;
        int r = alias_root(m, relu->x);
        if (r == 0 || !is_weighted(&m->ops[r - 1]) || m->ops[r - 1].relu || reads[r] != 1) continue;
        m->ops[r - 1].relu = 1;
        relu->kind = OP_ALIAS;
    }
    free(reads);
    return CSUB_OK;
}

static int parse_model(csub_model *m, const csub_st_file *f, char *err, size_t errlen)
{
    const char *text = csub_st_meta(f, "csub");
    if (!text) return fail(err, errlen, CSUB_ERR_FORMAT, "model file: no 'csub' metadata (not an exported csub model)");
    csub_json *meta = NULL;
    int st = csub_json_parse(text, strlen(text), &meta, err, errlen);
    if (st) return st;
    const char *fmt = jstr(meta, "format"), *regime = jstr(meta, "regime");
    const csub_json *graph = csub_json_get(meta, "graph"), *shape = csub_json_get(meta, "input_shape");
    const csub_json *bits = csub_json_get(meta, "bit_range"), *widths = csub_json_get(meta, "width_range");
    const csub_json *levels = csub_json_get(meta, "levels");
    int64_t version, out, v;
    st = CSUB_ERR_FORMAT;
    if (!fmt || strcmp(fmt, "csub-model")) { fail(err, errlen, st, "model file: format is not 'csub-model'"); goto done; }
    if (csub_json_int(csub_json_get(meta, "version"), 1, 1, &version)) {
        fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: unsupported version (this runtime reads version 1)");
        st = CSUB_ERR_UNSUPPORTED;
        goto done;
    }
    m->regime = !regime ? REG_NONE : !strcmp(regime, "unstructured") ? REG_UNSTRUCTURED
              : !strcmp(regime, "structured") ? REG_STRUCTURED : !strcmp(regime, "quantized") ? REG_QUANTIZED : -1;
    if (m->regime < 0) { fail(err, errlen, st, "model file: unknown regime '%s'", regime); goto done; }
    if (!shape || shape->type != CSUB_JSON_ARRAY || shape->n != 3
        || csub_json_int(&shape->items[0], 1, DIM_MAX, &m->in_c) || csub_json_int(&shape->items[1], 1, DIM_MAX, &m->in_h)
        || csub_json_int(&shape->items[2], 1, DIM_MAX, &m->in_w) || csub_mul3_overflow(m->in_c, m->in_h, m->in_w, &v)
        || v > VALUE_MAX) {
        fail(err, errlen, st, "model file: input_shape must be [C, H, W] of positive integers");
        goto done;
    }
    int64_t lo, hi;
    if (!bits || bits->type != CSUB_JSON_ARRAY || bits->n != 2 || csub_json_int(&bits->items[0], 2, 16, &lo)
        || csub_json_int(&bits->items[1], lo, 16, &hi)) {
        fail(err, errlen, st, "model file: bit_range must be [min, max] with 2 <= min <= max <= 16");
        goto done;
    }
    m->bit_lo = (int)lo;
    m->bit_hi = (int)hi;
    if (!widths || widths->type != CSUB_JSON_ARRAY || widths->n != 2 || widths->items[0].type != CSUB_JSON_NUMBER
        || widths->items[1].type != CSUB_JSON_NUMBER || !(widths->items[0].number > 0)
        || !(widths->items[0].number <= widths->items[1].number) || !(widths->items[1].number <= 1)) {
        fail(err, errlen, st, "model file: width_range must be [lo, hi] with 0 < lo <= hi <= 1");
        goto done;
    }
    m->w_lo = widths->items[0].number;
    m->w_hi = widths->items[1].number;
    if (!graph || graph->type != CSUB_JSON_ARRAY || graph->n < 1 || graph->n > RT_MAX_OPS) {
        fail(err, errlen, st, "model file: graph must be a non-empty array of operations");
        goto done;
    }
    m->nops = (int)graph->n;
    m->nvals = m->nops + 1;
    if (csub_json_int(csub_json_get(meta, "output"), 1, m->nops, &out)) {
        fail(err, errlen, st, "model file: output must be a value id in [1, %d]", m->nops);
        goto done;
    }
    m->out_val = (int)out;
    m->ops = xcalloc((size_t)m->nops, sizeof(op_t));
    m->vshape = xcalloc((size_t)m->nvals, sizeof(shape3));
    m->vc = xcalloc((size_t)m->nvals, sizeof(int64_t));
    m->vslot = xcalloc((size_t)m->nvals, sizeof(int));
    m->slot_size = xcalloc((size_t)m->nvals, sizeof(int64_t));
    if (!m->ops || !m->vshape || !m->vc || !m->vslot || !m->slot_size) {
        st = fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < m->nops; i++) {
        if (graph->items[i].type != CSUB_JSON_OBJECT) { fail(err, errlen, st, "model file: graph[%d] is not an object", i); goto done; }
        if ((st = parse_op(m, f, &graph->items[i], i, err, errlen))) goto done;
        st = CSUB_ERR_FORMAT;
    }
    /* folds: a conv's output goes straight into the batch norm whose scale it folds */
    int lastw = -1;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        if (op->kind == OP_CONV || op->kind == OP_LINEAR) lastw = i;
        if (op->fold != -2) continue;
        op->fold = -1;
        for (int j = i + 1; j < m->nops; j++)
            if (m->ops[j].kind == OP_NORM && m->ops[j].x == op->y && m->ops[j].bn) op->fold = j;
        if (op->fold < 0 || op->b.p0) {
            fail(err, errlen, st, "model file: graph[%d]: fold needs a bias-free layer followed by a batch norm", i);
            goto done;
        }
    }
    if (lastw < 0) { fail(err, errlen, st, "model file: the graph has no conv or linear layer"); goto done; }
    /* a norm whose only reader is the ReLU right after it runs that ReLU itself */
    for (int i = 0; i + 1 < m->nops; i++) {
        op_t *op = &m->ops[i], *next = &m->ops[i + 1];
        if (op->kind != OP_NORM || next->kind != OP_RELU || next->x != op->y || m->out_val == op->y) continue;
        int readers = 0;
        for (int j = i + 1; j < m->nops; j++)
            readers += (m->ops[j].x == op->y) + (m->ops[j].x2 == op->y);
        if (readers == 1) {
            op->relu = 1;
            next->kind = OP_ALIAS;
        }
    }
    m->ops[lastw].last = 1;
    if ((st = infer_shapes(m, err, errlen))) goto done;
    const char *fold_env = getenv("CSUB_FOLD"); /* "0": no batch-norm folding, no ReLU into a conv (benchmarks) */
    int fold = m->fold = !(fold_env && !strcmp(fold_env, "0"));
    if (fold && (st = fold_norms(m))) { st = fail(err, errlen, st, "out of memory"); goto done; }
    if ((st = fuse_adds(m))) { st = fail(err, errlen, st, "out of memory"); goto done; }
    if (fold && (st = fuse_relus(m))) { st = fail(err, errlen, st, "out of memory"); goto done; }
    st = CSUB_ERR_FORMAT;
    m->classes = m->vshape[m->out_val].c * m->vshape[m->out_val].h * m->vshape[m->out_val].w;
    if (csub_json_int(csub_json_get(meta, "num_classes"), m->classes, m->classes, &v)) {
        fail(err, errlen, st, "model file: num_classes does not match the graph's output (%lld)", (long long)m->classes);
        goto done;
    }
    if (levels) {
        if (levels->type != CSUB_JSON_ARRAY || levels->n > 100000) { fail(err, errlen, st, "model file: levels must be an array"); goto done; }
        m->nlevels = (int)levels->n;
        m->level_alpha = xcalloc(levels->n, sizeof(double));
        m->level_acc = xcalloc(levels->n, sizeof(double));
        if (!m->level_alpha || !m->level_acc) { st = fail(err, errlen, CSUB_ERR_NOMEM, "out of memory"); goto done; }
        for (size_t i = 0; i < levels->n; i++) {
            const csub_json *a = csub_json_get(&levels->items[i], "alpha"), *c = csub_json_get(&levels->items[i], "accuracy");
            if (!a || !c || a->type != CSUB_JSON_NUMBER || c->type != CSUB_JSON_NUMBER || !(a->number >= 0 && a->number <= 1)) {
                fail(err, errlen, st, "model file: levels[%zu] needs alpha in [0, 1] and accuracy", i);
                goto done;
            }
            m->level_alpha[i] = a->number;
            m->level_acc[i] = c->number;
        }
    }
    st = CSUB_OK;
done:
    csub_json_free(meta);
    return st;
}

static int build(csub_model *m, const csub_st_file *f, char *err, size_t errlen)
{
    int st = parse_model(m, f, err, errlen);
    if (st) return st;
    /* per-channel input statistics (csub_model_input_u8) */
    if ((st = copy_tensor(f, "input_mean", m->in_c, &m->input_mean, NULL, err, errlen))) return st;
    if ((st = copy_tensor(f, "input_std", m->in_c, &m->input_std, NULL, err, errlen))) return st;
    if (assign_slots(m)) return fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    m->nws = omp_get_max_threads() > csub_get_num_threads() ? omp_get_max_threads() : csub_get_num_threads();
    if (m->nws < 1) m->nws = 1;
    if (m->nws > 256) m->nws = 256;
    m->ws = xcalloc((size_t)m->nws, sizeof *m->ws);
    int64_t big = 1;
    for (int i = 0; i < m->nops; i++)
        if (m->ops[i].w.n > big) big = m->ops[i].w.n;
    m->tmp_size = big;
    m->tmp = falloc(big);
    m->mask = malloc((size_t)big);
    if (!m->ws || !m->tmp || !m->mask) return fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    /* scratch per sample: a quantized copy of a layer's input, maxpool indices */
    for (int v = 0; v < m->nvals; v++) {
        int64_t s = m->vshape[v].c * m->vshape[v].h * m->vshape[v].w;
        if (s > m->scratch_size) m->scratch_size = s;
    }
    return CSUB_OK;
}

static int finish_load(csub_model *m, csub_st_file *f, int st, csub_model **out, char *err, size_t errlen)
{
    if (!st) st = csub_st_check_layout(f, err, errlen);
    if (!st) st = build(m, f, err, errlen);
    csub_st_free(f);
    if (!st) {
        st = csub_model_set_alpha(m, 1.0);
        if (st) fail(err, errlen, st, "%s", m->err);
    }
    if (st) {
        csub_model_free(m);
        *out = NULL;
        return st;
    }
    *out = m;
    return CSUB_OK;
}

/* An empty model with the runtime's defaults, or NULL when out of memory. */
static csub_model *new_model(void)
{
    csub_model *m = xcalloc(1, sizeof *m);
    if (m) {
        m->crossover = RT_SPARSE_CROSSOVER;
        m->crossover_split = RT_SPARSE_CROSSOVER_SPLIT;
    }
    return m;
}

int csub_model_load(const char *path, csub_model **out, char *err, size_t errlen)
{
    if (!out) return fail(err, errlen, CSUB_ERR_ARG, "model: NULL output pointer");
    *out = NULL;
    if (!path) return fail(err, errlen, CSUB_ERR_ARG, "path: NULL");
    if (csub_isa_check(err, errlen)) return CSUB_ERR_UNSUPPORTED; /* a CSUB_ISA this CPU cannot run */
    csub_model *m = new_model();
    if (!m) return fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    csub_st_file f;
    memset(&f, 0, sizeof f);
    int st = csub_st_read(path, &f, err, errlen);
    return finish_load(m, &f, st, out, err, errlen);
}

int csub_model_load_memory(const uint8_t *buf, size_t len, csub_model **out, char *err, size_t errlen)
{
    if (!out) return fail(err, errlen, CSUB_ERR_ARG, "model: NULL output pointer");
    *out = NULL;
    if (!buf && len) return fail(err, errlen, CSUB_ERR_ARG, "buf: NULL");
    if (csub_isa_check(err, errlen)) return CSUB_ERR_UNSUPPORTED;
    csub_model *m = new_model();
    if (!m) return fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    csub_st_file f;
    memset(&f, 0, sizeof f);
    int st = csub_st_parse(buf, len, &f, err, errlen);
    return finish_load(m, &f, st, out, err, errlen);
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
    if (m->regime == REG_UNSTRUCTURED && op->compress && m->keep < 1.0) {
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
            }
        }
        return CSUB_OK;
    }
    if (m->regime == REG_QUANTIZED && op->compress) {
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
    if (cols == cols_full && op->aout == op->cout) memcpy(op->wa, w, sizeof(float) * (size_t)op->w.n);
    else copy_block(w, cols_full, op->wa, op->aout, cols);
    if (fs) scale_rows(op->wa, fs, op->aout, cols);
    return CSUB_OK;
}

/* A 3x3 conv that runs dense and fused (run_weighted): its weight packed for the direct kernel */
static int pack_direct(csub_model *m, op_t *op)
{
    free(op->wd);
    op->wd = NULL;
    if (op->kind != OP_CONV || op->oscale || !m->fold || !csub_conv3x3_applies(op->k, op->k, op->stride, op->pad) ||
        (op->path != PATH_DENSE && op->path != PATH_FAKEQ && op->path_split != PATH_DENSE))
        return CSUB_OK;
    if (!(op->wd = falloc(csub_conv3x3_packed_len(op->aout, op->ain)))) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory");
    csub_conv3x3_pack(op->wa, op->wd, op->aout, op->ain);
    return CSUB_OK;
}

int csub_model_set_alpha(csub_model *m, double alpha)
{
    if (!m) return CSUB_ERR_ARG;
    if (!(alpha >= 0.0 && alpha <= 1.0)) return MFAIL(m, CSUB_ERR_ARG, "alpha: expected a number in [0, 1], got %g", alpha);
    if (m->regime == REG_UNSTRUCTURED && alpha <= 0.0)
        return MFAIL(m, CSUB_ERR_ARG, "alpha: 0 keeps no weight in the unstructured regime; use alpha > 0");
    m->ready = 0;
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
    m->ready = 1;
    return CSUB_OK;
}

/* ------------------------------------------------------------- forward */

static void ws_free(workspace *w, int nslots)
{
    for (int s = 0; w->slots && s < nslots; s++) free(w->slots[s]);
    free(w->slots);
    free(w->scratch);
    free(w->spwork);
    memset(w, 0, sizeof *w);
}

/* Floats of the CSR convolutions' buffers for N images run by `threads` threads. */
static int64_t sp_work(const csub_model *m, int64_t N, int threads)
{
    int64_t sp = 0;
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        shape3 s = m->vshape[op->x];
        if (op->kind != OP_CONV || !op->compress || m->regime != REG_UNSTRUCTURED) continue;
        int64_t n = csub_conv2d_sparse_work(N, op->cin, s.h, s.w, op->k, op->k, op->stride, op->pad, threads);
        if (n > sp) sp = n;
    }
    return sp;
}

/* Buffers for N images run by `threads` threads (the kernels' own split). */
static int ws_ensure(const csub_model *m, workspace *w, int64_t N, int threads)
{
    if (N <= w->cap && threads <= w->threads) return CSUB_OK;
    if (N < w->cap) N = w->cap;
    if (threads < w->threads) threads = w->threads;
    ws_free(w, m->nslots);
    int64_t sp = sp_work(m, N, threads);
    if (!(w->slots = xcalloc((size_t)m->nslots + 1, sizeof(float *)))) return CSUB_ERR_NOMEM;
    for (int s = 0; s < m->nslots; s++)
        if (!(w->slots[s] = falloc(m->slot_size[s] * N))) { ws_free(w, m->nslots); return CSUB_ERR_NOMEM; }
    if (!(w->scratch = falloc(m->scratch_size * N))) { ws_free(w, m->nslots); return CSUB_ERR_NOMEM; }
    if (sp && !(w->spwork = falloc(sp))) { ws_free(w, m->nslots); return CSUB_ERR_NOMEM; }
    w->spwork_len = sp;
    w->cap = N;
    w->threads = threads;
    return CSUB_OK;
}

static float *value_ptr(const csub_model *m, const workspace *w, const float *input, int v)
{
    return m->vslot[v] < 0 ? (float *)input : w->slots[m->vslot[v]];
}

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
        if (op->kind == OP_CONV)
            st = csub_conv2d_int8_forward(x, xs, xz, &op->qw, op->oscale, op->ba, y, N, C, s.h, s.w, op->k, op->k,
                                          op->stride, op->pad);
        else
            st = csub_linear_int8_forward(x, xs, xz, &op->qw, op->oscale, op->ba, y, N);
    } else if (op->kind == OP_CONV && path == PATH_SPARSE) {
        st = csub_conv2d_sparse_forward_planned(x, op->rowptr, op->foff, op->vals, b, y, N, C, s.h, s.w, op->aout,
                                               op->k, op->k, op->stride, op->pad, res, w->spwork, w->spwork_len);
        res = NULL; /* added */
    } else {
        if (path == PATH_FAKEQ) {
            if ((st = quantize_input(op, m->bits, x, w->scratch, n_in, &xs, &xz))) return st;
            x = w->scratch;
        }
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

static double now_ms(void);

/* The graph on N images with workspace w, each image split across threads (split) or
 * not. Returns CSUB_OK, or a status with *failed = the op. */
static int run_graph(const csub_model *m, const workspace *w, const float *input, int64_t N, int split,
                     float *output, double *op_ms, int *failed)
{
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        shape3 s = m->vshape[op->x];
        int64_t C = m->vc[op->x], HW = s.h * s.w;
        const float *x = value_ptr(m, w, input, op->x);
        float *y = value_ptr(m, w, input, op->y);
        int st = CSUB_OK;
        double t0 = op_ms ? now_ms() : 0.0;
        switch (op->kind) {
        case OP_CONV: case OP_LINEAR:
            st = run_weighted(m, op, split ? op->path_split : op->path, w, x,
                              op->x2 >= 0 ? value_ptr(m, w, input, op->x2) : NULL, y, N);
            break;
        case OP_NORM:
            if (op->bn)
                csub_batchnorm_infer(x, op->ga, op->ba, op->rmean, op->rvar, y, N, C, s.h, s.w, op->eps, op->relu);
            else
                csub_groupnorm_infer(x, op->ga, op->ba, y, N, C, s.h, s.w, op->agroups, op->eps, op->relu);
            break;
        case OP_RELU:
            csub_relu_forward(x, y, N * C * HW);
            break;
        case OP_MAXPOOL:
            csub_maxpool2d_forward(x, y, (int32_t *)w->scratch, N, C, s.h, s.w, op->pk, op->ps);
            break;
        case OP_AVGPOOL:
            csub_avgpool2d_forward(x, y, N, C, s.h, s.w, op->pk, op->ps);
            break;
        case OP_GAP:
            csub_gap_forward(x, y, N * C, HW);
            break;
        case OP_ADD:
            csub_add_nchw(x, value_ptr(m, w, input, op->x2), y, N, C, s.h, s.w);
            break;
        default: /* flatten, alias: the same buffer */
            break;
        }
        if (st) { *failed = i; return st; }
        if (op_ms) op_ms[i] = now_ms() - t0;
    }
    memcpy(output, value_ptr(m, w, input, m->out_val), sizeof(float) * (size_t)(N * m->classes));
    return CSUB_OK;
}

/* Images per thread and call in the image-parallel mode: a few images keep
 * every activation of the network in the thread's cache. */
#define RT_CHUNK 2

/* Image-parallel when the batch has at least one image per thread (and more
 * than one image): every thread runs the whole network on its own images, one
 * chunk at a time, with its own buffers (no barrier between layers, activations
 * stay in cache); the kernels inside run single-threaded. One thread runs its
 * chunks in turn, for the same reason. A single image, or a layer whose
 * activation range is taken from the batch itself, runs layer by layer, each
 * kernel splitting the work across the threads when it is large enough to pay
 * (at batch 1 the dense convolutions do; the compressed layers, a few
 * microseconds each, stay on one thread: benchmarks/deploy.md). */
static int image_parallel(const csub_model *m, int64_t N, int nt)
{
    if (N < 2 || N < nt) return 0;
    for (int i = 0; i < m->nops; i++)
        if ((m->ops[i].path == PATH_INT8 || m->ops[i].path == PATH_FAKEQ) && m->ops[i].act_dynamic) return 0;
    return 1;
}

static int forward(csub_model *m, const float *input, int64_t batch, float *output, double *op_ms)
{
    if (!m) return CSUB_ERR_ARG;
    if (!input || !output) return MFAIL(m, CSUB_ERR_ARG, "input, output: NULL pointer");
    if (batch < 1 || batch > RT_MAX_BATCH) return MFAIL(m, CSUB_ERR_ARG, "batch: expected 1..2^24, got %lld", (long long)batch);
    if (!m->ready) return MFAIL(m, CSUB_ERR_ARG, "model: no alpha set (the last set_alpha failed)");
    int nt = csub_get_num_threads(), failed = -1, st = CSUB_OK;
    m->split = 0;
    if (op_ms || !image_parallel(m, batch, nt)) {
        if (ws_ensure(m, &m->ws[0], batch, nt)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory for a batch of %lld", (long long)batch);
        m->split = nt > 1 && batch < nt; /* fewer images than threads: the kernels split each image */
        st = run_graph(m, &m->ws[0], input, batch, m->split, output, op_ms, &failed);
    } else {
        if (nt > m->nws) nt = m->nws;
        for (int t = 0; t < nt; t++)
            if (ws_ensure(m, &m->ws[t], RT_CHUNK, 1)) return MFAIL(m, CSUB_ERR_NOMEM, "out of memory for the workspace");
        int64_t per = m->in_c * m->in_h * m->in_w, nchunks = (batch + RT_CHUNK - 1) / RT_CHUNK;
        #pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t c = 0; c < nchunks; c++) {
            int64_t i0 = c * RT_CHUNK, n = batch - i0 < RT_CHUNK ? batch - i0 : RT_CHUNK;
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

int csub_model_forward(csub_model *m, const float *input, int64_t batch, float *output)
{
    return forward(m, input, batch, output, NULL);
}

int csub_model_profile(csub_model *m, const float *input, int64_t batch, float *output, double *op_ms)
{
    if (m && !op_ms) return MFAIL(m, CSUB_ERR_ARG, "op_ms: NULL pointer");
    return forward(m, input, batch, output, op_ms);
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
    if (op->kind == OP_NORM) return norms[op->bn][op->relu];
    return kinds[op->kind];
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
            shape3 o = m->vshape[op->y];
            int64_t macs = op->aout * cols;
            if (m->regime == REG_UNSTRUCTURED && op->compress && m->keep < 1.0) macs = csub_topk_count(op->w.n, m->keep);
            if (op->path == PATH_INT8) {
                wb += csub_qweight_bytes(&op->qw);
            } else { /* a layer between the two crossovers holds both forms */
                if (op->path == PATH_SPARSE || op->path_split == PATH_SPARSE) wb += op->nnz * (4 + 4) + (op->cout + 1) * 8;
                if (op->path != PATH_SPARSE || op->path_split != PATH_SPARSE) wb += 4 * op->aout * cols;
            }
            if (op->ba) wb += 4 * op->aout;
            flops += 2 * macs * o.h * o.w;
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

int64_t csub_model_memory(const csub_model *m, int64_t batch)
{
    if (!m || batch < 1 || batch > RT_MAX_BATCH) return -1;
    csub_model_desc d;
    csub_model_info(m, &d);
    int64_t act = m->scratch_size; /* each term at most 2^32 floats per image (VALUE_MAX), nslots <= RT_MAX_OPS */
    for (int s = 0; s < m->nslots; s++) act += m->slot_size[s];
    int nt = csub_get_num_threads() < m->nws ? csub_get_num_threads() : m->nws;
    int par = image_parallel(m, batch, nt);
    int64_t images = par ? (int64_t)nt * RT_CHUNK : batch, sp; /* buffers held at once */
    if (par && csub_mul_overflow(sp_work(m, RT_CHUNK, 1), nt, &sp)) return -1;
    if (!par) sp = sp_work(m, batch, nt); /* the CSR convolutions' planes */
    if (csub_mul_overflow(act, images, &act) || __builtin_add_overflow(act, sp, &act)
        || csub_mul_overflow(act, 4, &act) || __builtin_add_overflow(act, d.subspace_bytes + d.weight_bytes, &act))
        return -1;
    return act;
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

static double now_ms(void)
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
        double t0 = now_ms();
        if ((st = csub_model_set_alpha(m, alphas[j]))) goto done;
        out[j].set_alpha_ms = now_ms() - t0;
        if ((st = csub_model_forward(m, x, batch, y))) goto done; /* warm-up */
        for (int r = 0; r < reps; r++) {
            t0 = now_ms();
            if ((st = csub_model_forward(m, x, batch, y))) goto done;
            t[r] = now_ms() - t0;
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
