/* runtime_memory.c - where a model's activations live (the overview: runtime.c):
 * buffers assigned to values by liveness at load, the per-thread workspaces of
 * a forward, and the bound csub_model_memory reports. */
#include <stdlib.h>
#include <string.h>

#include "runtime_internal.h"

/* Buffers by liveness: a value's buffer is free again after its last reader.
 * A flatten's output is its input's buffer (its root value). A batch norm's input
 * stays live as long as its output: set_alpha may fuse the norm into the layers
 * that read it, which then read its input (runtime_alpha.c, fuse_pre). */
int csub_rt_assign_slots(csub_model *m)
{
    int nv = m->nvals;
    int *root = malloc(sizeof(int) * nv), *last = malloc(sizeof(int) * nv), *freed = calloc((size_t)nv, sizeof(int));
    int *free_slot = malloc(sizeof(int) * nv), *norm_in = malloc(sizeof(int) * nv);
    int st = CSUB_OK;
    if (!root || !last || !freed || !free_slot || !norm_in) { st = CSUB_ERR_NOMEM; goto done; }
    root[0] = 0;
    for (int v = 0; v < nv; v++) last[v] = -1, norm_in[v] = -1;
    for (int i = 0; i < m->nops; i++) {
        op_t *op = &m->ops[i];
        root[op->y] = op->kind == OP_FLATTEN || op->kind == OP_ALIAS ? root[op->x] : op->y;
        if (op->kind == OP_NORM && op->bn) norm_in[op->y] = root[op->x]; /* the value a fused reader reads */
        last[root[op->x]] = i;
        if (norm_in[root[op->x]] >= 0) last[norm_in[root[op->x]]] = i;
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
    free(root); free(last); free(freed); free(free_slot); free(norm_in);
    return st;
}

void csub_rt_ws_free(workspace *w, int nslots)
{
    for (int s = 0; w->slots && s < nslots; s++) free(w->slots[s]);
    free(w->slots);
    free(w->scratch);
    free(w->spwork);
    memset(w, 0, sizeof *w);
}

/* Floats of the CSR convolutions' buffers (the gather's or the code's) for N images run by `threads` threads. */
static int64_t sp_work(const csub_model *m, int64_t N, int threads)
{
    int64_t sp = 0;
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        shape3 s = m->vshape[op->x];
        if (op->kind != OP_CONV || !op->compress || m->regime != REG_UNSTRUCTURED) continue;
        int64_t n = csub_conv2d_sparse_work(N, op->cin, s.h, s.w, op->k, op->k, op->stride, op->pad, threads);
        int64_t nj = csub_conv2d_sparse_jit_work(N, op->cin, s.h, s.w, op->cout, op->k, op->k, op->stride, op->pad,
                                                 threads); /* the code's, at any alpha */
        if (n > sp) sp = n;
        if (nj > sp) sp = nj;
    }
    return sp;
}

int csub_rt_ws_reserve(csub_model *m, int nt)
{
    if (nt <= m->nws) return CSUB_OK;
    workspace *ws = realloc(m->ws, (size_t)nt * sizeof *ws);
    if (!ws) return CSUB_ERR_NOMEM;
    memset(ws + m->nws, 0, (size_t)(nt - m->nws) * sizeof *ws);
    m->ws = ws;
    m->nws = nt;
    return CSUB_OK;
}

/* Buffers for N images run by `threads` threads (the kernels' own split). */
int csub_rt_ws_ensure(const csub_model *m, workspace *w, int64_t N, int threads)
{
    if (N <= w->cap && threads <= w->threads) return CSUB_OK;
    if (N < w->cap) N = w->cap;
    if (threads < w->threads) threads = w->threads;
    csub_rt_ws_free(w, m->nslots);
    int64_t sp = sp_work(m, N, threads);
    if (!(w->slots = xcalloc((size_t)m->nslots + 1, sizeof(float *)))) return CSUB_ERR_NOMEM;
    for (int s = 0; s < m->nslots; s++)
        if (!(w->slots[s] = falloc(m->slot_size[s] * N))) { csub_rt_ws_free(w, m->nslots); return CSUB_ERR_NOMEM; }
    if (!(w->scratch = falloc(m->scratch_size * N))) { csub_rt_ws_free(w, m->nslots); return CSUB_ERR_NOMEM; }
    if (sp && !(w->spwork = falloc(sp))) { csub_rt_ws_free(w, m->nslots); return CSUB_ERR_NOMEM; }
    w->spwork_len = sp;
    w->cap = N;
    w->threads = threads;
    return CSUB_OK;
}

int64_t csub_model_memory(const csub_model *m, int64_t batch)
{
    if (!m || batch < 1 || batch > RT_MAX_BATCH) return -1;
    csub_model_desc d;
    csub_model_info(m, &d);
    int64_t act = m->scratch_size; /* each term at most 2^32 floats per image (VALUE_MAX), nslots <= RT_MAX_OPS */
    for (int s = 0; s < m->nslots; s++) act += m->slot_size[s];
    int nt = csub_get_num_threads(); /* the workspaces the forward makes (csub_rt_ws_reserve) */
    int par = csub_rt_image_parallel(m, batch, nt);
    /* row bands (runtime_bands.c): a workspace of one image per thread, and the rows they exchange */
    int nb = 0;
    int64_t bands = !par && batch < nt ? csub_rt_bands_floats(m, batch, nt, &nb) : 0;
    int64_t images = par ? (int64_t)nt * m->chunk : bands ? nb : batch, sp; /* buffers held at once */
    if ((par || bands) && csub_mul_overflow(sp_work(m, par ? m->chunk : 1, 1), par ? nt : nb, &sp)) return -1;
    if (!par && !bands) sp = sp_work(m, batch, nt); /* the CSR convolutions' planes */
    if (csub_mul_overflow(act, images, &act) || __builtin_add_overflow(act, sp + bands, &act)
        || csub_mul_overflow(act, 4, &act) || __builtin_add_overflow(act, d.subspace_bytes + d.weight_bytes, &act))
        return -1;
    return act;
}

