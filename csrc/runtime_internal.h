/*
 * runtime_internal.h - what the runtime's files share (runtime.c has the
 * overview): the model's structure, its operations and the functions one
 * file of the runtime calls in another. Included by csrc/runtime*.c only.
 *
 *   runtime.c         errors, what a loaded model reports, the budget controller
 *   runtime_load.c    the model file read and checked: header, operations, levels
 *   runtime_graph.c   passes over the graph: folds linked, shapes, folding and fusion
 *   runtime_memory.c  activation buffers by liveness, per-thread workspaces, memory bound
 *   runtime_alpha.c   set_alpha: the weights materialised per regime
 *   runtime_exec.c    forward: the graph run on a batch
 *   runtime_bands.c   forward: one image as row bands on several threads
 */
#ifndef CSUB_RUNTIME_INTERNAL_H
#define CSUB_RUNTIME_INTERNAL_H

#include <stdlib.h>

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

/* Default keep fractions at or below which a compressed layer runs its CSR
 * kernel at inference (csub_model_set_sparse_crossover changes them per
 * model), measured with `python benchmarks/bench_deploy.py --crossover`
 * (benchmarks/deploy.md) on cPreResNet20, two threads: whole images per
 * thread (batch 64): the CSR network is 1.04x faster than dense kernels on the
 * masked weights at keep 0.6, 0.89x at 0.7. One image split across threads
 * (batch 1): the dense products split well and the CSR ones do not, so they
 * stop paying earlier: 0.94x / 1.05x at keep 0.4 in two runs, 0.82x at 0.5.
 * Between the two, a layer holds both forms. */
/* A forward of one image on several threads runs as row bands where the graph allows
 * (runtime_bands.c); else, below this many float operations, it is not split layer by layer but
 * runs on one thread (runtime_exec.c). Splitting each image across two cores, measured at batch 1 before the rule
 * (benchmarks/bench_split.py times 2 threads against 1): 1.11-1.28x slower at 8-67 MFLOP
 * (cPreResNet20 dense and 90 % sparse, group and batch norm: the halves each thread writes are
 * read by the other in the next layer, for a few microseconds of arithmetic), even at 47 MFLOP
 * (sparse ResNet18 at 64x64), 1.3-2.2x faster from 270 MFLOP. */
#define RT_SPLIT_MIN_FLOPS 1e8
#define RT_SPARSE_CROSSOVER 0.6
#define RT_SPARSE_CROSSOVER_SPLIT 0.4
#define RT_MAX_OPS 100000
#define RT_MAX_BATCH ((int64_t)1 << 24) /* images per forward */
#define DIM_MAX ((int64_t)1 << 24)
#define VALUE_MAX ((int64_t)1 << 32) /* values per image of one tensor of the graph */
/* Images per thread and call in the image-parallel mode (m->chunk, set_alpha): a few images
 * keep every activation of the network in the thread's cache. RT_CHUNK, where dense kernels (each
 * weight read once for the chunk) and compiled sparse code (decoded once for it) do most of the
 * work; one image where the gather kernels of csr.c do at least RT_CHUNK1_GATHER of the float
 * operations: they gain nothing from a second image and their layers' activations then stay in L2.
 * Measured with benchmarks/bench_runtime_ab.py, one image against two (several runs, the machine's
 * noise a few percent): cPreResNet20 90 % sparse (the 1x1 layers on the gather kernels, half the
 * float operations) with batch norm at batch 64 1.005-1.063x, at 16 0.99-1.05x, with group norm
 * 0.95-1.05x; dense 0.93-0.97x; ResNet18, dense and 90 % sparse (its 3x3 layers as code), 0.93-0.98x. */
#define RT_CHUNK 2
#define RT_CHUNK1_GATHER 0.25

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
    float *ww;                   /* a 3x3 stride-1 conv's wa transformed for Winograd F(wm x wm, 3x3)
                                  * (csub_winograd_pack) instead of wd, or NULL: its float32 dense path runs that */
    int wm;                      /* its tile size m (2 or 4), 0 without */
    float *wwb;                  /* the same for the row bands' planes where they take another m (runtime_bands.c) */
    int wmb;
    int64_t *band_foff;          /* a sparse 1x1 conv on row bands: foff for each band's rows [bands][nnz] */
    int64_t ww_len;              /* floats of ww */
    int64_t *rowptr;
    int32_t *colidx;
    float *vals;
    int64_t *foff;               /* conv: where each kept weight reads the laid-out input */
    csub_spjit *spj;             /* conv: the kept weights as code (csub_conv2d_sparse_jit), or NULL: the gather */
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
    /* a batch norm and its ReLU applied by the layers that read them (set_alpha, csub_pre) */
    int pre;                     /* this op reads the input of norm op `pre` through its transform, or -1 */
    int pre_fused;               /* a norm that its readers apply: not run */
    float *pre_ab;               /* norm: its transform, scale then shift per channel [2 c] */
    float *pre_k;                /* a 1x1 stride-1 conv with pre: its norm's transform per kept weight [2 nnz] */
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
    workspace *ws;               /* one per thread (ws[0]: layer-by-layer runs), nws of them (csub_rt_ws_reserve) */
    int nws;
    float *tmp;                  /* one full tensor (interpolation) */
    uint8_t *mask;
    int64_t tmp_size;
    float *input_mean, *input_std;
    int nlevels;
    double *level_alpha, *level_acc;
    double alpha, width, keep, crossover, crossover_split;
    int64_t flops;               /* per image at the current alpha (csub_model_info), set by set_alpha */
    int bits, ready;
    int split;                   /* the last forward split its images across threads */
    int fold;                    /* batch norms folded, ReLUs and residual adds in the conv's epilogue (CSUB_FOLD) */
    int winograd;                /* Winograd for the dense 3x3 stride-1 convs that pay (CSUB_WINOGRAD, at set_alpha) */
    int sparse_jit;              /* sparse convs as code where it can be made (CSUB_SPARSE_JIT, at set_alpha) */
    int pre_fuse;                /* batch norms fused into the sparse layers that read them (CSUB_PRE_FUSE) */
    int chunk;                   /* images per chunk of the image-parallel mode (RT_CHUNK or 1, set_alpha) */
    /* one image as row bands on several threads (runtime_bands.c) */
    int bands;                   /* allowed (CSUB_BANDS, at set_alpha) */
    int band_nt, band_ok;        /* the threads the plan is for (0: none since set_alpha); whether the graph runs so */
    int band_gap;                /* the global average pool's op */
    int64_t *band_halo;          /* per op: where a 3x3 conv's input rows next to a band go in a thread's part of
                                  * band_buf, or -1 */
    int64_t band_sums;           /* where a band's sums for the pool go in it */
    int64_t band_part;           /* floats of a thread's part of band_buf */
    float *band_buf;
};

#define MFAIL(m, code, ...) csub_fail((m)->err, sizeof (m)->err, code, __VA_ARGS__)

static inline void *xcalloc(size_t n, size_t size)
{
    return n && size ? calloc(n, size) : calloc(1, 1);
}

static inline float *falloc(int64_t n)
{
    return (float *)xcalloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

/* runtime_graph.c: the graph as read checked and rewritten: each fold linked
 * to its batch norm, the last weight layer marked, a norm's ReLU fused into
 * it, every value's shape inferred, batch norms folded and residual adds and
 * ReLUs fused into the layer before (CSUB_FOLD). */
int csub_rt_prepare_graph(csub_model *m, char *err, size_t errlen);

/* runtime_memory.c */
int csub_rt_assign_slots(csub_model *m);
int csub_rt_ws_ensure(const csub_model *m, workspace *w, int64_t N, int threads);
/* at least nt workspaces (the thread count can grow after load): CSUB_OK or CSUB_ERR_NOMEM */
int csub_rt_ws_reserve(csub_model *m, int nt);
void csub_rt_ws_free(workspace *w, int nslots);

/* runtime_alpha.c: frees what set_alpha made of op */
void csub_rt_free_materialised(op_t *op);

/* runtime_exec.c: a batch of N images runs image-parallel on nt threads; the buffer of value v
 * in workspace w (the input for value 0); op i on N images (split: each image split across the
 * threads), CSUB_OK or a status */
int csub_rt_image_parallel(const csub_model *m, int64_t N, int nt);
float *csub_rt_value(const csub_model *m, const workspace *w, const float *input, int v);
int csub_rt_run_op(const csub_model *m, const workspace *w, const float *input, int64_t N, int split, int i);

/* runtime_bands.c: how many bands a forward of `batch` images on nt threads runs as (at most one a
 * processor), 0 for none (making the plan once per set_alpha and count); that forward on one image
 * in nt bands, the workspaces ws[0 .. nt) ready for one image: CSUB_OK, or a status with *failed =
 * the op */
int csub_rt_bands_apply(csub_model *m, int64_t batch, int nt);
/* the same without making the plan: the floats of the bands' buffers and weights if it would (*bands:
 * how many), else 0 */
int64_t csub_rt_bands_floats(const csub_model *m, int64_t batch, int nt, int *bands);
int csub_rt_bands_forward(const csub_model *m, const float *input, float *output, int nt, int *failed);

/* runtime.c: a monotonic clock in milliseconds; a conv or linear op's float operations per image */
double csub_rt_now_ms(void);
int64_t csub_rt_op_flops(const csub_model *m, const op_t *op);

#endif /* CSUB_RUNTIME_INTERNAL_H */
