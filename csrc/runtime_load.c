/* runtime_load.c - a model file read and checked (the overview: runtime.c).
 *
 * Everything the file declares is checked before it is used: the header, each
 * operation and its tensors (copied into aligned arrays), the levels; then the
 * graph passes (runtime_graph.c) and the buffer plan (runtime_memory.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "runtime_internal.h"

/* ------------------------------------------------------------ loading */

/* A float32 tensor of the file into a fresh aligned array; numel must be `want` (or any when want < 0). */
static int copy_tensor(const csub_st_file *f, const char *name, int64_t want, float **out, int64_t *numel,
                       char *err, size_t errlen)
{
    const csub_st_tensor *t = csub_st_find(f, name);
    if (!t) return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor '%s' is missing", name);
    if (t->dtype != CSUB_DT_F32) return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor '%s' is not float32", name);
    if (want >= 0 && t->numel != want)
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor '%s' has %lld values, expected %lld", name,
                    (long long)t->numel, (long long)want);
    if (!(*out = falloc(t->numel))) return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
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
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: tensor name too long");
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
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].%s must be an integer in [%lld, %lld]", idx,
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

static int parse_op(csub_model *m, const csub_st_file *f, const csub_json *o, int i, char *err, size_t errlen)
{
    op_t *op = &m->ops[i];
    const char *kind = jstr(o, "op");
    int64_t v;
    int st;
    op->fold = -1;
    op->bnf = -1;
    op->x2 = -1;
    if (!kind) return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].op must be a string", i);
    static const char *names[] = {"conv", "linear", "norm", "relu", "maxpool", "avgpool", "gap", "flatten", "add"};
    op->kind = -1;
    for (int k = 0; k < 9; k++)
        if (!strcmp(kind, names[k])) op->kind = k;
    if (op->kind < 0) return csub_fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d]: unknown op '%s'", i, kind);
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
            return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: line and compress must be booleans", i);
        const char *w = jstr(o, "w"), *b = jstr(o, "b"), *fold = jstr(o, "fold"), *act = jstr(o, "act");
        if (!w) return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].w must be a tensor name", i);
        if (op->cout * op->cin > ((int64_t)1 << 40) / (op->k * op->k))
            return csub_fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d]: weight too large", i);
        if ((st = load_param(f, w, line, op->cout * op->cin * op->k * op->k, &op->w, err, errlen))) return st;
        if (b && (st = load_param(f, b, line, op->cout, &op->b, err, errlen))) return st;
        if (act) {
            float *a = NULL;
            if ((st = copy_tensor(f, act, 3, &a, NULL, err, errlen))) return st;
            memcpy(op->act, a, sizeof op->act);
            free(a);
            op->has_act = 1;
            if (op->act[2] != 0.0f && !(isfinite(op->act[0]) && isfinite(op->act[1]) && op->act[0] <= op->act[1]))
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: activation range '%s' is not a finite "
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
            return csub_fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: graph[%d].kind must be 'bn' or 'gn'", i);
        op->bn = !strcmp(nk, "bn");
        if ((st = jint(o, "c", 1, DIM_MAX, &op->c, err, errlen, i))) return st;
        if ((st = jint(o, "groups", 1, op->c, &op->groups, err, errlen, i))) return st;
        if (op->c % op->groups)
            return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: groups must divide c", i);
        if (!eps || eps->type != CSUB_JSON_NUMBER || !(eps->number > 0 && eps->number < 1))
            return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d].eps must be a number in (0, 1)", i);
        op->eps = (float)eps->number;
        if (jbool(o, "line", &line) || !w || !b)
            return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: norm needs w, b and line", i);
        if ((st = load_param(f, w, line, op->c, &op->g, err, errlen))) return st;
        if ((st = load_param(f, b, line, op->c, &op->beta, err, errlen))) return st;
        if (op->bn) {
            const char *mean = jstr(o, "mean"), *var = jstr(o, "var");
            if (!mean || !var)
                return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: batch norm needs mean and var", i);
            if ((st = copy_tensor(f, mean, op->c, &op->rmean, NULL, err, errlen))) return st;
            if ((st = copy_tensor(f, var, op->c, &op->rvar, NULL, err, errlen))) return st;
            for (int64_t c = 0; c < op->c; c++)
                if (!(op->rvar[c] >= 0.0f))
                    return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d]: negative or NaN running_var", i);
        }
    }
    return CSUB_OK;
}

/* The header: format, version, regime, input shape, bit and width ranges. */
static int parse_header(csub_model *m, const csub_json *meta, char *err, size_t errlen)
{
    const char *fmt = jstr(meta, "format"), *regime = jstr(meta, "regime");
    const csub_json *shape = csub_json_get(meta, "input_shape");
    const csub_json *bits = csub_json_get(meta, "bit_range"), *widths = csub_json_get(meta, "width_range");
    int64_t version, v, lo, hi;
    int st = CSUB_ERR_FORMAT;
    if (!fmt || strcmp(fmt, "csub-model")) return csub_fail(err, errlen, st, "model file: format is not 'csub-model'");
    if (csub_json_int(csub_json_get(meta, "version"), 1, 1, &version))
        return csub_fail(err, errlen, CSUB_ERR_UNSUPPORTED, "model file: unsupported version (this runtime reads version 1)");
    m->regime = !regime ? REG_NONE : !strcmp(regime, "unstructured") ? REG_UNSTRUCTURED
              : !strcmp(regime, "structured") ? REG_STRUCTURED : !strcmp(regime, "quantized") ? REG_QUANTIZED : -1;
    if (m->regime < 0) return csub_fail(err, errlen, st, "model file: unknown regime '%s'", regime);
    if (!shape || shape->type != CSUB_JSON_ARRAY || shape->n != 3
        || csub_json_int(&shape->items[0], 1, DIM_MAX, &m->in_c) || csub_json_int(&shape->items[1], 1, DIM_MAX, &m->in_h)
        || csub_json_int(&shape->items[2], 1, DIM_MAX, &m->in_w) || csub_mul3_overflow(m->in_c, m->in_h, m->in_w, &v)
        || v > VALUE_MAX)
        return csub_fail(err, errlen, st, "model file: input_shape must be [C, H, W] of positive integers");
    if (!bits || bits->type != CSUB_JSON_ARRAY || bits->n != 2 || csub_json_int(&bits->items[0], 2, 16, &lo)
        || csub_json_int(&bits->items[1], lo, 16, &hi))
        return csub_fail(err, errlen, st, "model file: bit_range must be [min, max] with 2 <= min <= max <= 16");
    m->bit_lo = (int)lo;
    m->bit_hi = (int)hi;
    if (!widths || widths->type != CSUB_JSON_ARRAY || widths->n != 2 || widths->items[0].type != CSUB_JSON_NUMBER
        || widths->items[1].type != CSUB_JSON_NUMBER || !(widths->items[0].number > 0)
        || !(widths->items[0].number <= widths->items[1].number) || !(widths->items[1].number <= 1))
        return csub_fail(err, errlen, st, "model file: width_range must be [lo, hi] with 0 < lo <= hi <= 1");
    m->w_lo = widths->items[0].number;
    m->w_hi = widths->items[1].number;
    return CSUB_OK;
}

/* The graph: its operations (parse_op) and output value, and the per-value arrays. */
static int parse_graph(csub_model *m, const csub_st_file *f, const csub_json *meta, char *err, size_t errlen)
{
    const csub_json *graph = csub_json_get(meta, "graph");
    int64_t out;
    if (!graph || graph->type != CSUB_JSON_ARRAY || graph->n < 1 || graph->n > RT_MAX_OPS)
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph must be a non-empty array of operations");
    m->nops = (int)graph->n;
    m->nvals = m->nops + 1;
    if (csub_json_int(csub_json_get(meta, "output"), 1, m->nops, &out))
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: output must be a value id in [1, %d]", m->nops);
    m->out_val = (int)out;
    m->ops = xcalloc((size_t)m->nops, sizeof(op_t));
    m->vshape = xcalloc((size_t)m->nvals, sizeof(shape3));
    m->vc = xcalloc((size_t)m->nvals, sizeof(int64_t));
    m->vslot = xcalloc((size_t)m->nvals, sizeof(int));
    m->slot_size = xcalloc((size_t)m->nvals, sizeof(int64_t));
    if (!m->ops || !m->vshape || !m->vc || !m->vslot || !m->slot_size)
        return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    for (int i = 0; i < m->nops; i++) {
        if (graph->items[i].type != CSUB_JSON_OBJECT)
            return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: graph[%d] is not an object", i);
        int st = parse_op(m, f, &graph->items[i], i, err, errlen);
        if (st) return st;
    }
    return CSUB_OK;
}

/* num_classes: the size of the graph's output (known once the shapes are). */
static int check_output(csub_model *m, const csub_json *meta, char *err, size_t errlen)
{
    int64_t v;
    m->classes = m->vshape[m->out_val].c * m->vshape[m->out_val].h * m->vshape[m->out_val].w;
    if (csub_json_int(csub_json_get(meta, "num_classes"), m->classes, m->classes, &v))
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: num_classes does not match the graph's output (%lld)",
                         (long long)m->classes);
    return CSUB_OK;
}

/* The levels the file lists (optional): alpha in [0, 1] and the accuracy measured there. */
static int parse_levels(csub_model *m, const csub_json *meta, char *err, size_t errlen)
{
    const csub_json *levels = csub_json_get(meta, "levels");
    if (!levels) return CSUB_OK;
    if (levels->type != CSUB_JSON_ARRAY || levels->n > 100000)
        return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: levels must be an array");
    m->nlevels = (int)levels->n;
    m->level_alpha = xcalloc(levels->n, sizeof(double));
    m->level_acc = xcalloc(levels->n, sizeof(double));
    if (!m->level_alpha || !m->level_acc) return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < levels->n; i++) {
        const csub_json *a = csub_json_get(&levels->items[i], "alpha"), *c = csub_json_get(&levels->items[i], "accuracy");
        if (!a || !c || a->type != CSUB_JSON_NUMBER || c->type != CSUB_JSON_NUMBER || !(a->number >= 0 && a->number <= 1))
            return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: levels[%zu] needs alpha in [0, 1] and accuracy", i);
        m->level_alpha[i] = a->number;
        m->level_acc[i] = c->number;
    }
    return CSUB_OK;
}

/* The model's description, the file's 'csub' metadata, one part after the other. */
static int parse_model(csub_model *m, const csub_st_file *f, char *err, size_t errlen)
{
    const char *text = csub_st_meta(f, "csub");
    if (!text) return csub_fail(err, errlen, CSUB_ERR_FORMAT, "model file: no 'csub' metadata (not an exported csub model)");
    csub_json *meta = NULL;
    int st = csub_json_parse(text, strlen(text), &meta, err, errlen);
    if (st) return st;
    if (!(st = parse_header(m, meta, err, errlen)) && !(st = parse_graph(m, f, meta, err, errlen))
        && !(st = csub_rt_prepare_graph(m, err, errlen)) && !(st = check_output(m, meta, err, errlen)))
        st = parse_levels(m, meta, err, errlen);
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
    if (csub_rt_assign_slots(m)) return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
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
    if (!m->ws || !m->tmp || !m->mask) return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    /* scratch per sample: a fake-quantized copy of a layer's input (quantized regime only) */
    for (int v = 0; v < m->nvals && m->regime == REG_QUANTIZED; v++) {
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
        if (st) csub_fail(err, errlen, st, "%s", m->err);
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
        m->chunk = RT_CHUNK;
    }
    return m;
}

int csub_model_load(const char *path, csub_model **out, char *err, size_t errlen)
{
    if (!out) return csub_fail(err, errlen, CSUB_ERR_ARG, "model: NULL output pointer");
    *out = NULL;
    if (!path) return csub_fail(err, errlen, CSUB_ERR_ARG, "path: NULL");
    if (csub_isa_check(err, errlen)) return CSUB_ERR_UNSUPPORTED; /* a CSUB_ISA this CPU cannot run */
    csub_model *m = new_model();
    if (!m) return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    csub_st_file f;
    memset(&f, 0, sizeof f);
    int st = csub_st_read(path, &f, err, errlen);
    return finish_load(m, &f, st, out, err, errlen);
}

int csub_model_load_memory(const uint8_t *buf, size_t len, csub_model **out, char *err, size_t errlen)
{
    if (!out) return csub_fail(err, errlen, CSUB_ERR_ARG, "model: NULL output pointer");
    *out = NULL;
    if (!buf && len) return csub_fail(err, errlen, CSUB_ERR_ARG, "buf: NULL");
    if (csub_isa_check(err, errlen)) return CSUB_ERR_UNSUPPORTED;
    csub_model *m = new_model();
    if (!m) return csub_fail(err, errlen, CSUB_ERR_NOMEM, "out of memory");
    csub_st_file f;
    memset(&f, 0, sizeof f);
    int st = csub_st_parse(buf, len, &f, err, errlen);
    return finish_load(m, &f, st, out, err, errlen);
}

void csub_model_free(csub_model *m)
{
    if (!m) return;
    for (int i = 0; m->ops && i < m->nops; i++) {
        op_t *op = &m->ops[i];
        csub_rt_free_materialised(op);
        free(op->w.p0); free(op->w.p1); free(op->b.p0); free(op->b.p1);
        free(op->g.p0); free(op->g.p1); free(op->beta.p0); free(op->beta.p1);
        free(op->rmean); free(op->rvar);
    }
    for (int t = 0; m->ws && t < m->nws; t++) csub_rt_ws_free(&m->ws[t], m->nslots);
    free(m->ws); free(m->slot_size); free(m->ops); free(m->vshape); free(m->vc); free(m->vslot);
    free(m->tmp); free(m->mask); free(m->input_mean); free(m->input_std);
    free(m->level_alpha); free(m->level_acc);
    free(m->band_halo); free(m->band_buf);
    free(m);
}

