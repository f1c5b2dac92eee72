/*
 * internal.h - what csub's C files share and its users do not see.
 *
 * Not installed and not included by programs that use csub (they include
 * csub.h only): the instruction-set variants of the SIMD kernels and the one
 * place that picks among them, the floating-point contraction policy, the
 * thresholds below which a loop stays on one thread, checked size arithmetic,
 * the error-message helper, and kernels that only csub's own files call.
 */
#ifndef CSUB_INTERNAL_H
#define CSUB_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "csub.h"

/* ------------------------------------------------ instruction-set variants
 *
 * A SIMD kernel is written once, as plain C (loops the compiler vectorises,
 * GCC vector types) or with intrinsics, and compiled for each instruction-set
 * level below. The level is chosen once per process (csub_isa_level): the
 * best this CPU runs, or the one the environment variable CSUB_ISA names
 * (csub.h: csub_isa). Every kernel asks csub_isa_level() and runs its variant
 * for that level, or the best variant it has below it: one mechanism, one
 * override, and every variant can be run (and tested) on a CPU that has the
 * highest level. Never -march=native: one binary serves every x86-64 CPU.
 *
 *   CSUB_ISA_BASELINE    x86-64 (SSE2), and any other architecture
 *   CSUB_ISA_AVX2        x86-64-v3: AVX2, FMA, BMI2
 *   CSUB_ISA_AVX512      x86-64-v4: AVX-512 F, BW, DQ, VL, CD
 *   CSUB_ISA_AVX512VNNI  x86-64-v4 and AVX-512 VNNI (the int8 kernels' dot products)
 *
 * Floating-point contraction (a * b + c fused into one FMA, rounded once) is
 * off: both builds say -ffp-contract=off (ISO C mode leaves it off too), so
 * each variant of the norms, activations and other float kernels computes the
 * same bits as the baseline, and the training and inference kernels agree
 * (clang, used only for the sanitizer and fuzzing builds, keeps it off
 * everywhere: CSUB_FP_CONTRACT_FAST is empty there). The sparse
 * (CSR) kernels alone turn it on, for their whole file (csr.c:
 * CSUB_FP_CONTRACT_FAST before any function): their AVX2 and AVX-512 variants
 * fuse, the baseline cannot, so those variants agree to float rounding only
 * (tests/test_simd.py checks every variant against the float64 twins). */
enum { CSUB_ISA_BASELINE, CSUB_ISA_AVX2, CSUB_ISA_AVX512, CSUB_ISA_AVX512VNNI, CSUB_ISA_COUNT };

#if defined(__x86_64__) && defined(__GNUC__)
#define CSUB_X86 1
#define CSUB_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define CSUB_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define CSUB_TARGET_AVX512VNNI __attribute__((target("arch=x86-64-v4,avx512vnni")))
#else
#define CSUB_X86 0
#endif

#define CSUB_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__clang__)
#define CSUB_FP_CONTRACT_FAST
#else
#define CSUB_FP_CONTRACT_FAST _Pragma("GCC optimize(\"fp-contract=fast\")")
#endif

/* The resolved level (>= 0), or -1 before the first call; the slow path
 * (core.c) reads the CPU and CSUB_ISA once. A refused CSUB_ISA never reaches
 * a kernel: csub_isa_level prints why and aborts (the Python module and the
 * model loader check first and report it as an error). */
extern int csub_isa_level_;
int csub_isa_resolve(void);
static inline int csub_isa_level(void)
{
    int l = __atomic_load_n(&csub_isa_level_, __ATOMIC_RELAXED);
    return l >= 0 ? l : csub_isa_resolve();
}

/* CSUB_VARIANTS(name, (params), (args)) defines `static void name(params)`,
 * which runs the body `static CSUB_ALWAYS_INLINE void name##_body(params)`
 * compiled for AVX-512, AVX2 or the baseline, as csub_isa_level() says. */
#if CSUB_X86
#define CSUB_VARIANTS(name, params, args)                                              \
    CSUB_TARGET_AVX512 static void name##_avx512 params { name##_body args; }          \
    CSUB_TARGET_AVX2 static void name##_avx2 params { name##_body args; }              \
    static void name##_baseline params { name##_body args; }                           \
    static void name params                                                            \
    {                                                                                  \
        int isa_ = csub_isa_level();                                                   \
        if (isa_ >= CSUB_ISA_AVX512) name##_avx512 args;                               \
        else if (isa_ >= CSUB_ISA_AVX2) name##_avx2 args;                              \
        else name##_baseline args;                                                     \
    }
#else
#define CSUB_VARIANTS(name, params, args) static void name params { name##_body args; }
#endif

/* Cap the threads of the kernels this thread calls at n (0: no cap) until the next call; returns
 * the cap before (core.c). */
int csub_threads_cap(int n);

/* ------------------------------------------------------ parallel thresholds
 *
 * Below these sizes a loop runs on one thread: forking and joining a team (and
 * reading what another core's cache holds) costs more than the work. */
#define CSUB_PAR_MIN 65536            /* elementwise loops, in values */
/* Inference norms and adds that split one image's rows across threads, in
 * values: measured on cPreResNet20 at batch 1 (benchmarks/deploy.md), two
 * threads lose on a 64 x 32 x 32 activation (the fork and join, and reading
 * what the other core's cache holds, cost more than half the work). */
#define CSUB_PAR_MIN_SPLIT 131072
/* A dense convolution splitting one image, in multiply-adds (cPreResNet20 at
 * batch 1: a 1x1 convolution of 16 to 64 channels on 32 x 32, 1M, gains
 * nothing from a second thread; 3x3 ones of 0.6M gain, their im2col being
 * half the time). */
#define CSUB_PAR_MIN_CONV 524288.0
/* A CSR convolution splitting one image, in multiply-adds of kept weights: on
 * cPreResNet20 at batch 1 and keep 0.1 no layer (the largest 0.5M) gains from
 * a second one. */
#define CSUB_PAR_MIN_SPARSE 4194304.0

/* --------------------------------------------------------- size arithmetic */

/* *out = a * b; returns 1 (and leaves *out undefined) when it overflows int64. */
static inline int csub_mul_overflow(int64_t a, int64_t b, int64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* *out = a * b * c; 1 on overflow. */
static inline int csub_mul3_overflow(int64_t a, int64_t b, int64_t c, int64_t *out)
{
    int64_t t;
    return __builtin_mul_overflow(a, b, &t) || __builtin_mul_overflow(t, c, out);
}

/* *out = n * size bytes for n >= 0 items; 1 when n < 0 or it overflows size_t. */
static inline int csub_bytes_overflow(int64_t n, size_t size, size_t *out)
{
    return n < 0 || __builtin_mul_overflow((uint64_t)n, size, out);
}

/* ------------------------------------------------------------------ errors */

/* Format a message into err[errlen] (err may be NULL) and return code: every
 * function that reports a message does it through this. */
int csub_fail(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int csub_vfail(char *err, size_t errlen, int code, const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));

/* --------------------------------------------------------- internal kernels */

/* Single-threaded csub_gemm, for use inside a caller's parallel region. */
void csub_gemm_serial(int transa, int transb, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda,
                      const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* Rows [lo, hi) = [H t / T, H (t + 1) / T) of an H-row plane that thread t of
 * T computes when a call has fewer images than threads (inference at batch
 * 1): the convolutions, norms and adds all split an image this way, so that
 * each layer reads mostly what the same core wrote in the layer before. */
void csub_row_band(int64_t H, int t, int T, int64_t *lo, int64_t *hi);

/* The input rows of one image that a kernel reading by rows may use (the runtime's row bands,
 * runtime_bands.c): rows [lo, hi) of each of its C planes, channel c's row h at
 * x + c * cs + (h - lo) * W; and one row either side held apart, a neighbouring thread's: row
 * lo - 1 of channel c at up + c * W, row hi at dn + c * W (NULL: not held). A whole image x[C,H,W]
 * is {x, NULL, NULL, 0, H, H W}. Rows outside [0, H) are the convolution's zero padding. */
typedef struct {
    const float *x, *up, *dn;
    int64_t lo, hi, cs;
} csub_rows;

/* Whether x holds every input row in [0, H) that output rows [p0, p1) of a conv with R rows of taps,
 * stride and padding read (core.c) */
int csub_rows_cover(const csub_rows *x, int64_t H, int64_t R, int64_t stride, int64_t pad, int64_t p0, int64_t p1);

/* Row h of channel c (W floats), or NULL where the rows do not hold it */
static inline const float *csub_rows_at(const csub_rows *r, int64_t c, int64_t h, int64_t W)
{
    if (h >= r->lo && h < r->hi) return r->x + c * r->cs + (h - r->lo) * W;
    if (h == r->lo - 1 && r->up) return r->up + c * W;
    if (h == r->hi && r->dn) return r->dn + c * W;
    return NULL;
}

/* csub_conv2d_sparse_forward in two steps, for a weight that serves many
 * calls (the runtime): foff[nnz] receives where each kept weight reads the
 * laid-out input (once per weight), and the forward takes a work buffer of
 * work_len floats (csub_conv2d_sparse_work(N, ..., csub_get_num_threads())
 * are enough; a smaller or NULL one is allocated per call; -1 when the sizes
 * overflow). res[N,K,P,Q] (may be NULL, must not overlap y) is added to y as
 * it is written, then a ReLU where relu is nonzero: a residual add and an
 * activation fused into the convolution. */
int csub_conv2d_sparse_offsets(const int32_t *colidx, int64_t nnz, int64_t C, int64_t H, int64_t W,
                               int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t *foff);
/* An input transform of the planned sparse forwards (pre, or NULL for none): the layer reads
 * max(0, x[c] a[c] + b[c]) for its input channel c (a batch norm and its ReLU fused into every layer
 * that reads their output: the runtime). a, b per input channel; ka, kb the same per kept weight (its
 * channel's, in CSR order), which a 1x1 stride-1 layer needs (it reads x in place). Only without
 * padding (CSUB_ERR_ARG else): a padded input's zeros are not transformed. */
typedef struct {
    const float *a, *b, *ka, *kb;
} csub_pre;
/* ka[t], kb[t] = a[c], b[c] for kept weight t of columns colidx (c = colidx[t] / RS, RS the taps per channel) */
void csub_pre_per_weight(const int32_t *colidx, int64_t nnz, int64_t RS, const float *a, const float *b, float *ka,
                         float *kb);
/* The global average pool of such a transformed input (act.c): y[N,C] = the mean of max(0, x a[c] + b[c]) */
void csub_gap_pre_forward(const float *x, const float *a, const float *b, float *y, int64_t N, int64_t C, int64_t HW);
/* part[c] = the sum of max(0, x a[c] + b[c]) over the n values of channel c (a, b NULL: of x), its
 * values at x + c cs, c < C: a row band's share of a global average pool (16 running sums, as
 * csub_gap_pre_forward) */
void csub_gap_sum(const float *x, const float *a, const float *b, float *part, int64_t C, int64_t n, int64_t cs);
/* A row band's share of a group norm of G groups on C planes (norm.c, for runtime_bands.c): the band's
 * sums s[3 g ..] = {x0, sum (x - x0), sum (x - x0)^2} over the n values of each of group g's planes
 * x[C][n], x0 its first value here; then y[C][n] = relu?((x - mu) gamma is + beta) from the sums of the T
 * bands of an H x W image (band t's at parts + t stride, its rows csub_row_band's). */
void csub_groupnorm_band_sums(const float *x, int64_t C, int64_t G, int64_t n, double *s);
int csub_groupnorm_band_apply(const float *x, const float *gamma, const float *beta, float *y, int64_t C, int64_t G,
                              int64_t n, const double *parts, int T, int64_t stride, int64_t H, int64_t W, float eps,
                              int relu); /* CSUB_OK or CSUB_ERR_NOMEM */
int64_t csub_conv2d_sparse_work(int64_t N, int64_t C, int64_t H, int64_t W, int64_t R, int64_t S,
                                int64_t stride, int64_t pad, int nthreads);
int csub_conv2d_sparse_forward_planned(const float *x, const int64_t *rowptr, const int64_t *foff,
                                       const float *values, const float *b, float *y,
                                       int64_t N, int64_t C, int64_t H, int64_t W,
                                       int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad,
                                       const float *res, int relu, const csub_pre *pre, float *work,
                                       int64_t work_len);

/* A sparse convolution's kept weights compiled to AVX-512 code (sparse_jit.c), for the
 * runtime's planned forward (csub_conv2d_sparse_forward_jit). csub_spjit_build: from the CSR
 * rows of K output channels with their plane offsets foff (csub_conv2d_sparse_offsets) and
 * values, code whose chunk c (of csub_spjit_chunks) computes, for one vector of 16 outputs,
 * out[k * ld + l] = b[k] + sum over row k of w * x[foff + l] (l < 16) for its channels k, the
 * input read in aligned blocks of 16 floats shifted in registers; NULL where no code can be made
 * (no AVX-512, no executable memory, out of memory): the caller keeps the gather kernels.
 * csub_spjit_run: chunk c on the nv vectors from x (64-byte aligned) into out, both 16 floats
 * apart, of ni images (x, out: xs, os floats apart); its code in pieces of a few KB, each run over
 * all the vectors before the next. */
typedef struct csub_spjit csub_spjit;
int csub_spjit_available(void);
csub_spjit *csub_spjit_build(const int64_t *rowptr, const int64_t *foff, const float *values, int64_t K, int64_t ld);
void csub_spjit_free(csub_spjit *j);
int csub_spjit_chunks(const csub_spjit *j);
int64_t csub_spjit_chunk_k0(const csub_spjit *j, int c); /* chunk c's first output channel (c <= chunks) */
int64_t csub_spjit_chunk_w0(const csub_spjit *j, int c); /* the kept weights before chunk c's (c <= chunks) */
int64_t csub_spjit_ld(const csub_spjit *j);
int64_t csub_spjit_rows(const csub_spjit *j);
int64_t csub_spjit_nnz(const csub_spjit *j);
size_t csub_spjit_bytes(const csub_spjit *j);
void csub_spjit_run(const csub_spjit *j, int c, const float *x, float *out, const float *b, int64_t nv, int64_t ni,
                    int64_t xs, int64_t os);
/* The planned sparse forward by such code (csr.c): csub_conv2d_sparse_jit makes it for one input
 * shape (NULL: use csub_conv2d_sparse_forward_planned), csub_conv2d_sparse_forward_jit runs it
 * with the arguments and the work buffer (csub_conv2d_sparse_jit_work floats) of the gather's
 * forward; the same sums (the residual added after them). CSUB_ERR_ARG for code made for
 * another shape. */
csub_spjit *csub_conv2d_sparse_jit(const int64_t *rowptr, const int64_t *foff, const float *values, int64_t C,
                                   int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad);
int64_t csub_conv2d_sparse_jit_work(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                                    int64_t stride, int64_t pad, int nthreads);
/* Output rows [p0, p1) of one image from the rows x holds (internal.h, csub_rows), y and res holding
 * just those rows (y[K][p1 - p0][Q]): the planned forwards' sums for a row band of the runtime, on
 * the thread that calls; a conv whose outputs are its plane's rows (1x1) is not taken (CSUB_ERR_ARG,
 * as for rows x does not hold). */
int csub_conv2d_sparse_forward_rows(const csub_rows *x, const int64_t *rowptr, const int64_t *foff,
                                    const float *values, const float *b, float *y, int64_t C, int64_t H, int64_t W,
                                    int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t p0,
                                    int64_t p1, const float *res, int relu, float *work, int64_t work_len);
int csub_conv2d_sparse_forward_jit_rows(const csub_rows *x, const csub_spjit *j, const float *b, float *y, int64_t C,
                                        int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride,
                                        int64_t pad, int64_t p0, int64_t p1, const float *res, int relu, float *work,
                                        int64_t work_len);
int csub_conv2d_sparse_forward_jit(const float *x, const csub_spjit *j, const float *b, float *y, int64_t N,
                                   int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride,
                                   int64_t pad, const float *res, int relu, const csub_pre *pre, float *work,
                                   int64_t work_len);

/* Direct 3x3 convolution, pad 1, stride 1 or 2 (conv_direct.c): the weight w[K,C,3,3] packed
 * once into wp[csub_conv3x3_packed_len(K, C)] (csub_conv3x3_pack), then
 * y[N,K,P,Q] = relu?(conv(x[N,C,H,W], w) + b[K] + res[N,K,P,Q]) (b, res may be NULL; res must
 * not overlap y). Agrees with the im2col path to float32 rounding. csub_conv3x3_applies: the
 * shapes it takes. Returns CSUB_OK or CSUB_ERR_NOMEM. */
int csub_conv3x3_applies(int64_t R, int64_t S, int64_t stride, int64_t pad);
int64_t csub_conv3x3_packed_len(int64_t K, int64_t C);
void csub_conv3x3_pack(const float *w, float *wp, int64_t K, int64_t C);
/* the same for the flipped transpose wt[C,K,3,3] (wt[c][k][r][s] = w[k][c][2-r][2-s]), whose stride-1
 * convolution of dy[N,K,H,W] is the input gradient dx[N,C,H,W]; wp holds csub_conv3x3_packed_len(C, K) */
void csub_conv3x3_pack_flipped(const float *w, float *wp, int64_t K, int64_t C);
int csub_conv3x3_forward(const float *x, const float *wp, const float *b, const float *res, int relu, float *y,
                         int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t stride);
/* Output rows [p0, p1) of one image of H x W from the rows x holds (each row the band reads, or
 * padding): y and res (may be NULL) hold just those rows, y[K][p1 - p0][Q]. The same bits as
 * csub_conv3x3_forward's rows. Single-threaded (a thread's band of the runtime's row bands).
 * Returns CSUB_OK, CSUB_ERR_ARG (a row it reads is not held) or CSUB_ERR_NOMEM. */
int csub_conv3x3_forward_rows(const csub_rows *x, const float *wp, const float *b, const float *res, int relu,
                              float *y, int64_t C, int64_t H, int64_t W, int64_t K, int64_t stride, int64_t p0,
                              int64_t p1);

/* csub_conv2d_int8_forward (csub.h), then + res[N,K,P,Q] (or NULL) and the ReLU (relu) as each tile is
 * stored: the values of csub_add_nchw then csub_relu_forward after it (int8.c) */
int csub_conv2d_int8_forward_res(const float *x, float xscale, int32_t xzero_point, const csub_qweight *qw,
                                 const float *oscale, const float *b, const float *res, int relu, float *y, int64_t N,
                                 int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t stride, int64_t pad);
/* The same for output rows [p0, p1) of one image from the rows x holds, y and res [K][p1 - p0][Q], on
 * the calling thread: the same integer sums, the same bits */
int csub_conv2d_int8_forward_rows(const csub_rows *x, float xscale, int32_t xzero_point, const csub_qweight *qw,
                                  const float *oscale, const float *b, const float *res, int relu, float *y, int64_t C,
                                  int64_t H, int64_t W, int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t p0,
                                  int64_t p1);

/* The rows y[K, L] (row stride ld) of a convolution's product, in place: + b[k] (b may be NULL),
 * + res (same layout, or NULL), then the ReLU when relu (NaN stays NaN) (conv.c) */
void csub_conv_epilogue(float *y, const float *b, const float *res, int relu, int64_t K, int64_t L, int64_t ld);

/* 1x1 convolution, stride 1, no padding (conv_pointwise.c): y[N,K,HW] = relu?(w[K,C] . x[N,C,HW]
 * + b[K] + res[N,K,HW]) (b, res may be NULL; res must not overlap y), the epilogue on each
 * register tile; the same bits at every instruction-set level and thread count, and agrees with
 * the sgemm path to float32 rounding. */
void csub_conv1x1_forward(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                          int64_t N, int64_t C, int64_t HW, int64_t K);

/* Convolution with few taps per output, C R S <= STEM_MAX_TAPS and more than one, on output rows of
 * Q >= 32 (conv_stem.c):
 * y[N,K,P,Q] = relu?(conv(x[N,C,H,W], w[K,C,R,S]) + b[K] + res[N,K,P,Q]) (b, res may be NULL; res
 * must not overlap y) on phase planes of each image, the epilogue in the register tiles; the
 * same bits at every instruction-set level and thread count. CSUB_ERR_NOMEM when out of memory. */
#define STEM_MAX_TAPS 160
int csub_conv_stem_applies(int64_t C, int64_t R, int64_t S, int64_t Q);
int csub_conv_stem_forward(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                           int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                           int64_t stride, int64_t pad);

/* Winograd 3x3 convolution, pad 1, stride 1 (conv_winograd.c): F(m x m, 3x3) with m = 4 or 2.
 * The weight w[K,C,3,3] transformed once into u[csub_winograd_packed_len(K, C, m)]
 * (csub_winograd_pack), then y[N,K,H,W] = relu?(conv(x[N,C,H,W], w) + b[K] + res[N,K,H,W]) (b, res
 * may be NULL; res must not overlap y), tb tiles per block (0: the default).
 * Agrees with the direct kernel to a few float32 roundings (F(4x4): tests/test_winograd.py).
 * csub_winograd_pays: the tile size m the runtime uses for a layer of C -> K channels on H x W planes,
 * 0 where the direct kernel is as fast (measured: benchmarks/bench_winograd.py). Returns CSUB_OK, CSUB_ERR_ARG
 * (m not 2 or 4) or CSUB_ERR_NOMEM. */
int64_t csub_winograd_packed_len(int64_t K, int64_t C, int m);
void csub_winograd_pack(const float *w, float *u, int64_t K, int64_t C, int m);
int csub_winograd_pays(int64_t C, int64_t K, int64_t H, int64_t W);
int csub_winograd_forward(const float *x, const float *u, const float *b, const float *res, int relu, float *y,
                          int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int m, int64_t tb);
/* Output rows [p0, p1) of one image, as csub_conv3x3_forward_rows (its tiles start at row p0, so the
 * roundings may differ from the whole image's where p0 is not a multiple of m) */
int csub_winograd_forward_rows(const csub_rows *x, const float *u, const float *b, const float *res, int relu,
                               float *y, int64_t C, int64_t H, int64_t W, int64_t K, int m, int64_t p0, int64_t p1);

#endif /* CSUB_INTERNAL_H */
