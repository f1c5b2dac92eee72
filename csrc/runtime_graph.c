/* runtime_graph.c - passes over a model's graph once it is read (the overview:
 * runtime.c): folds linked to their batch norms, every value's shape, batch
 * norms folded and residual adds and ReLUs fused into the layer before. */
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"

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
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: conv expects %lld channels, gets %lld",
                            i, (long long)op->cin, (long long)s.c);
            if (s.h + 2 * op->pad < op->k || s.w + 2 * op->pad < op->k)
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: input smaller than the kernel", i);
            o = (shape3){op->cout, csub_conv_out_size(s.h, op->k, op->stride, op->pad),
                         csub_conv_out_size(s.w, op->k, op->stride, op->pad)};
            break;
        case OP_LINEAR:
            if (s.c * s.h * s.w != op->cin)
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: linear expects %lld features, gets %lld",
                            i, (long long)op->cin, (long long)(s.c * s.h * s.w));
            o = (shape3){op->cout, 1, 1};
            break;
        case OP_NORM:
            if (s.c != op->c)
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: norm of %lld channels gets %lld", i,
                            (long long)op->c, (long long)s.c);
            break;
        case OP_MAXPOOL: case OP_AVGPOOL:
            if (s.h < op->pk || s.w < op->pk)
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: input smaller than the pool window", i);
            o = (shape3){s.c, (s.h - op->pk) / op->ps + 1, (s.w - op->pk) / op->ps + 1};
            break;
        case OP_GAP:
            o = (shape3){s.c, 1, 1};
            break;
        case OP_ADD: {
            shape3 t = m->vshape[op->x2];
            if (t.c != s.c || t.h != s.h || t.w != s.w)
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: add of different shapes", i);
            break;
        }
        default:
            break;
        }
        int64_t size;
        if (csub_mul3_overflow(o.c, o.h, o.w, &size) || size > VALUE_MAX)
            return csub_fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d]: value too large", i);
        m->vshape[op->y] = o;
    }
    return CSUB_OK;
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

/* One pass over the graph with the read counts of its values taken before it. */
static int with_reads(csub_model *m, void (*pass)(csub_model *m, const int *reads))
{
    int *reads = count_reads(m);
    if (!reads) return CSUB_ERR_NOMEM;
    pass(m, reads);
    free(reads);
    return CSUB_OK;
}

static int is_weighted(const op_t *op) { return op->kind == OP_CONV || op->kind == OP_LINEAR; }

/* A batch norm whose input is a conv or linear layer's output, read by nothing else,
 * is folded into that layer at set_alpha: the layer's weight rows scaled by
 * gamma / sqrt(var + eps), and a bias (b - mean) * scale + beta. The norm becomes an
 * alias of the layer's output, and a ReLU fused into the norm moves to the layer.
 * (A norm before a conv, as in a pre-activation block, is always followed by a
 * ReLU before that conv, so it cannot be folded forwards.) */
static void fold_norms(csub_model *m, const int *reads)
{
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
}

/* An add one of whose operands a conv or linear layer wrote (through aliases), read by
 * nothing else, is done by that layer as it writes (x2: its residual; the CSR kernel
 * adds it as it writes): the later of the two such layers, so that the other operand
 * exists when it runs, and not one that applies a ReLU (the add comes first). The read
 * counts are taken once: a fusion changes only those of the values its layer wrote,
 * and that layer takes no second add. */
static void fuse_adds(csub_model *m, const int *reads)
{
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
}

/* A ReLU whose input a conv or linear layer wrote (through aliases: a folded norm, a
 * fused add), read by nothing else, is applied by that layer after its residual
 * (read counts taken once, as in fuse_adds). */
static void fuse_relus(csub_model *m, const int *reads)
{
    for (int i = 0; i < m->nops; i++) {
        op_t *relu = &m->ops[i];
        if (relu->kind != OP_RELU) continue;
        int r = alias_root(m, relu->x);
        if (r == 0 || !is_weighted(&m->ops[r - 1]) || m->ops[r - 1].relu || reads[r] != 1) continue;
        m->ops[r - 1].relu = 1;
        relu->kind = OP_ALIAS;
    }
}


/* Each layer that folds a batch norm's scale before quantizing (fold: -2 as
 * read) linked to that norm, which its output feeds; the last weight layer marked. */
static int link_folds(csub_model *m, char *err, size_t errlen)
{
    int lastw = -1;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        if (op->kind == OP_CONV || op->kind == OP_LINEAR) lastw = i;
        if (op->fold != -2) continue;
        op->fold = -1;
        for (int j = i + 1; j < m->nops; j++)
            if (m->ops[j].kind == OP_NORM && m->ops[j].x == op->y && m->ops[j].bn) op->fold = j;
        if (op->fold < 0 || op->b.p0)
            return csub_fail(err, errlen, CSUB_ERR_FORMAT,
                             "model file: graph[%d]: fold needs a bias-free layer followed by a batch norm", i);
    }
    if (lastw < 0) return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: the graph has no conv or linear layer");
    m->ops[lastw].last = 1;
    return CSUB_OK;
}

/* A norm whose only reader is the ReLU right after it runs that ReLU itself. */
static void fuse_norm_relus(csub_model *m)
{
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
}

int csub_rt_prepare_graph(csub_model *m, char *err, size_t errlen)
{
    int st;
    if ((st = link_folds(m, err, errlen))) return st;
    fuse_norm_relus(m);
    if ((st = infer_shapes(m, err, errlen))) return st;
    const char *fold_env = getenv("CSUB_FOLD"); /* "0": no batch-norm folding, no ReLU into a conv (benchmarks) */
    int fold = m->fold = !(fold_env && !strcmp(fold_env, "0"));
    if ((fold && (st = with_reads(m, fold_norms))) || (st = with_reads(m, fuse_adds))
        || (fold && (st = with_reads(m, fuse_relus))))
        return csub_fail(err, errlen, st, "out of memory");
    return CSUB_OK;
}
