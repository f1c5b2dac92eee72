/*
 * csub.h - the public C API of csub's core.
 *
 * Conventions
 *   - float32, C-contiguous, images NCHW. Every array is a raw pointer with
 *     its sizes passed explicitly; the shapes are written above each function.
 *   - Forward functions write their outputs; backward functions write input
 *     gradients (dx) and ACCUMULATE (+=) parameter gradients (dw, db, ...),
 *     so a layer used several times in one step sums its gradients.
 *     A NULL gradient pointer means "not needed".
 *   - Functions that may allocate workspace return an int status
 *     (CSUB_OK or a negative CSUB_ERR_*); the others cannot fail.
 *   - No hidden state: the only global is the thread count. Randomness lives
 *     in an explicit csub_rng the caller owns.
 */
#ifndef CSUB_H
#define CSUB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with -fvisibility=hidden: what this header declares is
 * its whole exported interface, and nothing of csrc/internal.h leaks out. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define CSUB_OK 0
#define CSUB_ERR_ARG (-1)     /* invalid argument (sizes, ranges) */
#define CSUB_ERR_NOMEM (-2)   /* workspace allocation failed */
#define CSUB_ERR_IO (-3)      /* a file could not be opened or read */
#define CSUB_ERR_FORMAT (-4)  /* a model file or header is malformed */
#define CSUB_ERR_UNSUPPORTED (-5) /* well formed, but asks for something csub cannot run */
#define CSUB_ERR_BUDGET (-6)  /* no level of the subspace fits the budget */

/* ------------------------------------------------------------------ core */

/* Number of threads csub's kernels use (OpenMP), n in [1, CSUB_MAX_THREADS]:
 * libgomp keeps a record per thread on the stack of the thread that starts
 * each parallel region, so counts far beyond the cores overflow it. BLAS calls
 * made by csub are single-threaded and csub splits the work itself, so the two
 * never oversubscribe the cores. Returns CSUB_OK, or CSUB_ERR_ARG (count
 * unchanged) for n outside the range. */
#define CSUB_MAX_THREADS 1024
int csub_set_num_threads(int n);
int csub_get_num_threads(void);

/* Row-major C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C.
 * op(A) = A (lda >= K) or A^T when transa (A is [K,M], lda >= M); same for B.
 * Parallel over the larger of M and N when called outside a parallel region. */
void csub_gemm(int transa, int transb, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* The instruction set the SIMD kernels run (act, norm, sparse and int8
 * kernels each have a variant per level): "baseline" (any CPU), "avx2"
 * (x86-64-v3), "avx512" (x86-64-v4) or "avx512vnni" (x86-64-v4 and VNNI):
 * the best this CPU runs, or the one the environment variable CSUB_ISA names,
 * read once at the first kernel call. Every level the CPU runs gives the same
 * results up to float rounding (most kernels bit for bit; the sparse kernels
 * fuse multiply-adds from avx2 up). A CSUB_ISA that names an unknown level or
 * one this CPU lacks is refused, never ignored: csub_isa returns NULL,
 * csub_isa_check returns CSUB_ERR_UNSUPPORTED with the reason in err[errlen]
 * (err may be NULL), csub_model_load fails with it, and any other kernel call
 * prints it and aborts. */
const char *csub_isa(void);
int csub_isa_check(char *err, size_t errlen);

/* --------------------------------------------------------- linear, conv */

/* x[N,IN], w[O,IN], b[O] (may be NULL) -> y[N,O] = x w^T + b */
void csub_linear_forward(const float *x, const float *w, const float *b, float *y,
                         int64_t N, int64_t IN, int64_t O);
/* dy[N,O] -> dx[N,IN] (=), dw[O,IN] (+=), db[O] (+=); any output may be NULL */
void csub_linear_backward(const float *x, const float *w, const float *dy,
                          float *dx, float *dw, float *db,
                          int64_t N, int64_t IN, int64_t O);

/* Output size of a convolution along one axis: (H + 2 pad - R) / stride + 1. */
int64_t csub_conv_out_size(int64_t H, int64_t R, int64_t stride, int64_t pad);

/* dy[N,K,PQ] -> db[K] (+=): a convolution's bias gradient */
void csub_conv_bias_backward(const float *dy, float *db, int64_t N, int64_t K, int64_t PQ);

/* x[N,C,H,W], w[K,C,R,S], b[K] (may be NULL) -> y[N,K,P,Q] */
int csub_conv2d_forward(const float *x, const float *w, const float *b, float *y,
                        int64_t N, int64_t C, int64_t H, int64_t W,
                        int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad);
/* The same with an epilogue: y = conv + b + res (res[N,K,P,Q] or NULL), then max(y, 0) when relu
 * (NaN kept); the inference runtime's fused conv, batch norm (folded into w and b), add and ReLU. */
int csub_conv2d_forward_fused(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                              int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad);
/* dy[N,K,P,Q] -> dx[N,C,H,W] (=), dw[K,C,R,S] (+=), db[K] (+=); any may be NULL */
int csub_conv2d_backward(const float *x, const float *w, const float *dy,
                         float *dx, float *dw, float *db,
                         int64_t N, int64_t C, int64_t H, int64_t W,
                         int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad);

/* ---------------------------------------------------------------- norms */

/* Batch norm over (N, H*W) per channel. x[N,C,HW], gamma/beta[C].
 * Training (training != 0): batch statistics; mean[C], invstd[C] are saved
 * for backward; running_mean/var[C] (may be NULL) are updated with
 * r = (1 - momentum) r + momentum * stat (variance unbiased, as PyTorch).
 * Evaluation: uses running_mean/var; mean/invstd receive them too. */
void csub_batchnorm_forward(const float *x, const float *gamma, const float *beta,
                            float *y, float *mean, float *invstd,
                            float *running_mean, float *running_var,
                            int64_t N, int64_t C, int64_t HW,
                            float momentum, float eps, int training);
/* dx[N,C,HW] (=), dgamma/dbeta[C] (+=). training selects the batch-statistics
 * gradient (statistics depend on x) or the evaluation one (constants). */
void csub_batchnorm_backward(const float *x, const float *gamma, const float *dy,
                             const float *mean, const float *invstd,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t N, int64_t C, int64_t HW, int training);

/* Batch norm with the ReLU that follows it fused, as group norm's below:
 * y = max(batchnorm(x), 0), the bits of csub_batchnorm_forward then
 * csub_relu_forward; backward takes y and dy, the gradient of y, and gives the
 * bits of csub_relu_backward(y, dy), csub_batchnorm_backward, then with add
 * (not NULL, x's shape) csub_add(dx, add). */
void csub_batchnorm_relu_forward(const float *x, const float *gamma, const float *beta,
                                 float *y, float *mean, float *invstd,
                                 float *running_mean, float *running_var,
                                 int64_t N, int64_t C, int64_t HW,
                                 float momentum, float eps, int training);
void csub_batchnorm_relu_backward(const float *x, const float *y, const float *gamma, const float *dy,
                                  const float *add, const float *mean, const float *invstd,
                                  float *dx, float *dgamma, float *dbeta,
                                  int64_t N, int64_t C, int64_t HW, int training);

/* Group norm: C channels in G groups (C % G == 0), statistics per (sample,
 * group) over (C/G)*HW values; per-channel affine gamma/beta[C].
 * Instance norm is G = C. mean/invstd[N,G] are saved for backward. */
void csub_groupnorm_forward(const float *x, const float *gamma, const float *beta,
                            float *y, float *mean, float *invstd,
                            int64_t N, int64_t C, int64_t HW, int64_t G, float eps);
void csub_groupnorm_backward(const float *x, const float *gamma, const float *dy,
                             const float *mean, const float *invstd,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t N, int64_t C, int64_t HW, int64_t G);
/* Group norm with the ReLU that follows it fused: y = max(groupnorm(x), 0)
 * (NaN propagates), the same bits as csub_groupnorm_forward then
 * csub_relu_forward. Backward takes y and dy, the gradient of y, and gives
 * the bits of csub_relu_backward(y, dy) then csub_groupnorm_backward, then
 * with add (not NULL, x's shape: a residual branch's gradient) csub_add(dx,
 * add); it returns CSUB_OK, or CSUB_ERR_NOMEM (nothing written) when the
 * workspace for dgamma/dbeta cannot be allocated. */
void csub_groupnorm_relu_forward(const float *x, const float *gamma, const float *beta,
                                 float *y, float *mean, float *invstd,
                                 int64_t N, int64_t C, int64_t HW, int64_t G, float eps);
int csub_groupnorm_relu_backward(const float *x, const float *y, const float *gamma, const float *dy,
                                 const float *add, const float *mean, const float *invstd,
                                 float *dx, float *dgamma, float *dbeta,
                                 int64_t N, int64_t C, int64_t HW, int64_t G);

/* Inference forms, no saved statistics, ReLU fused when relu != 0
 * (y = max(norm(x), 0)); the same arithmetic as the forward functions (batch
 * norm: evaluation mode, running statistics). x[N,C,H,W] (H rows of W: with
 * fewer images than threads each thread takes a band of rows). */
void csub_groupnorm_infer(const float *x, const float *gamma, const float *beta, float *y,
                          int64_t N, int64_t C, int64_t H, int64_t W, int64_t G, float eps, int relu);
void csub_batchnorm_infer(const float *x, const float *gamma, const float *beta,
                          const float *running_mean, const float *running_var, float *y,
                          int64_t N, int64_t C, int64_t H, int64_t W, float eps, int relu);

/* ------------------------------------------- activations, pools, residual */

/* y[n] = x[n] > 0 ? x : 0, NaN propagates; dx = x <= 0 ? 0 : dy */
void csub_relu_forward(const float *x, float *y, int64_t n);
void csub_relu_backward(const float *x, const float *dy, float *dx, int64_t n);

/* y[n] = a[n] + b[n] (the residual add; its backward is a copy) */
void csub_add(const float *a, const float *b, float *y, int64_t n);
/* The same over x[N,C,H,W]: with fewer images than threads each thread adds
 * a band of rows of every plane (inference at batch 1). */
void csub_add_nchw(const float *a, const float *b, float *y, int64_t N, int64_t C, int64_t H, int64_t W);

/* Max pool, window k x k, stride s, no padding: x[N,C,H,W] -> y[N,C,P,Q],
 * argmax[N,C,P,Q] (index into the H*W plane) saved for backward. */
void csub_maxpool2d_forward(const float *x, float *y, int32_t *argmax,
                            int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t k, int64_t s);
void csub_maxpool2d_backward(const float *dy, const int32_t *argmax, float *dx,
                             int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t k, int64_t s);
/* The forward's y alone, for inference (no argmax; the same values). */
void csub_maxpool2d_infer(const float *x, float *y, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t k, int64_t s);

/* Average pool, window k x k, stride s, no padding. */
void csub_avgpool2d_forward(const float *x, float *y,
                            int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t k, int64_t s);
void csub_avgpool2d_backward(const float *dy, float *dx,
                             int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t k, int64_t s);

/* Global average pool: x[N,C,HW] -> y[N,C]; backward spreads dy / HW. */
void csub_gap_forward(const float *x, float *y, int64_t NC, int64_t HW);
void csub_gap_backward(const float *dy, float *dx, int64_t NC, int64_t HW);

/* -------------------------------------------------------------- loss */

/* Softmax cross-entropy, mean over the batch.
 * logits[N,K], labels[N] in [0,K) -> returns the loss; prob[N,K] receives
 * softmax(logits) (kept for backward). */
double csub_cross_entropy_forward(const float *logits, const int64_t *labels,
                                  float *prob, int64_t N, int64_t K);
/* dlogits[N,K] = (prob - onehot(labels)) * scale / N */
void csub_cross_entropy_backward(const float *prob, const int64_t *labels,
                                 float *dlogits, int64_t N, int64_t K, float scale);

/* ----------------------------------------------------------- optimizer */

/* SGD with momentum, weight decay (coupled, added to the gradient) and
 * optional Nesterov, as torch.optim.SGD:
 *   g = grad + wd * w;  v = momentum * v + g  (v = g on the first step);
 *   w -= lr * (nesterov ? g + momentum * v : v)
 * velocity may be NULL when momentum == 0. */
void csub_sgd_step(float *w, const float *grad, float *velocity, int64_t n,
                   float lr, float momentum, float weight_decay, int nesterov,
                   int first_step);

/* ------------------------------------------------------------ subspace */

/* Line: out[n] = (1 - alpha) * w0[n] + alpha * w1[n]. */
void csub_line_forward(const float *w0, const float *w1, float alpha, float *out, int64_t n);
/* g0[n] += (1 - alpha) * g[n];  g1[n] += alpha * g[n] */
void csub_line_backward(const float *g, float alpha, float *g0, float *g1, int64_t n);

/* Sums over one tensor pair of a line: s[0] += w0.w1, s[1] += |w0|^2,
 * s[2] += |w1|^2 (double accumulators). */
void csub_line_dots(const float *w0, const float *w1, int64_t n, double s[3]);
/* Gradient of beta * S01^2 / (S00 S11) for one tensor pair, given the sums
 * over all pairs: g0 += beta * (2 S01/(S00 S11) w1 - 2 S01^2/(S00^2 S11) w0),
 * g1 likewise with the roles swapped. */
void csub_line_reg_backward(const float *w0, const float *w1, int64_t n,
                            const double s[3], float beta, float *g0, float *g1);

/* ---------------------------------------------------------------- random */

/* xoshiro256** state, seeded with splitmix64. The caller owns it. */
typedef struct { uint64_t s[4]; } csub_rng;
void csub_rng_seed(csub_rng *rng, uint64_t seed);
uint64_t csub_rng_next(csub_rng *rng);
/* uniform in [0, 1) with 53 random bits */
double csub_rng_uniform(csub_rng *rng);
/* out[n] ~ N(mean, std^2), Box-Muller */
void csub_rng_normal(csub_rng *rng, float *out, int64_t n, float mean, float std);
/* out[n] ~ U[lo, hi) */
void csub_rng_uniform_fill(csub_rng *rng, float *out, int64_t n, float lo, float hi);

/* Alpha samplers of the method (LCS-SPEC section 4). */
/* Biased endpoints: with probability p an endpoint (lo or hi, each 1/2),
 * otherwise U[lo, hi]. */
double csub_sample_alpha_biased(csub_rng *rng, double lo, double hi, double p);
/* Uniform over the K discrete values k/K, k = 1..K. */
double csub_sample_alpha_discrete(csub_rng *rng, int64_t K);
/* Sandwich rule: out[0] = 0 (smallest), out[1] = 1 (largest), the n - 2
 * others U[0, 1]. */
void csub_sample_alpha_sandwich(csub_rng *rng, double *out, int64_t n);

/* ---------------------------------------------------------------- sparse */

/* Number of entries that magnitude top-k keeps: n - floor((1 - topk) n). */
int64_t csub_topk_count(int64_t n, double topk);
/* mask[n] = 1 on the keep = csub_topk_count(n, topk) entries of largest |w|,
 * 0 elsewhere; exactly keep ones (ties broken by lower index first).
 * O(n): radix selection on the bit patterns of |w|, then a counting pass.
 * Returns CSUB_OK or CSUB_ERR_NOMEM. */
int csub_topk_mask(const float *w, int64_t n, double topk, uint8_t *mask);
/* out[n] = w[n] * mask[n]  (also the masked gradient: g * mask) */
void csub_apply_mask(const float *w, const uint8_t *mask, float *out, int64_t n);

/* ---------------------------------------------- masked sparse matmul */

/* A masked weight w[K, cols] (row-major; a conv weight [K, C, R, S] has
 * cols = C*R*S) in CSR: rowptr[K+1] (rowptr[0] = 0), then for each kept entry
 * in row-major order its column colidx[nnz] and value values[nnz], with
 * nnz = rowptr[K]. Kept means mask != 0, whatever the weight's value.
 * csub_csr_count fills rowptr and returns nnz; csub_csr_fill the rest. */
int64_t csub_csr_count(const uint8_t *mask, int64_t K, int64_t cols, int64_t *rowptr);
void csub_csr_fill(const float *w, const uint8_t *mask, int64_t K, int64_t cols,
                   const int64_t *rowptr, int32_t *colidx, float *values);

/* Convolution with a CSR weight of K rows over cols = C*R*S (columns strictly
 * increasing within a row, each < C*R*S): the same result as
 * csub_conv2d_forward with the masked dense weight, computed from the kept
 * weights only. x[N,C,H,W], b[K] (may be NULL) -> y[N,K,P,Q]. */
int csub_conv2d_sparse_forward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                               const float *values, const float *b, float *y,
                               int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad);
/* dy[N,K,P,Q] -> dx[N,C,H,W] (=), dvalues[nnz] (+=, the weight gradient at the
 * kept positions; the others are zero by definition), db[K] (+=); any may be NULL. */
int csub_conv2d_sparse_backward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                                const float *values, const float *dy,
                                float *dx, float *dvalues, float *db,
                                int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad);
/* Linear with a CSR weight of O rows over IN columns: x[N,IN], b[O] -> y[N,O]. */
int csub_linear_sparse_forward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                               const float *values, const float *b, float *y,
                               int64_t N, int64_t IN, int64_t O);
/* dy[N,O] -> dx[N,IN] (=), dvalues[nnz] (+=), db[O] (+=); any may be NULL. */
int csub_linear_sparse_backward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                                const float *values, const float *dy,
                                float *dx, float *dvalues, float *db,
                                int64_t N, int64_t IN, int64_t O);

/* ----------------------------------------------------------------- quant */

/* Fake quantization, affine, per tensor (LCS-SPEC section 3), b-bit signed:
 * qmin = -2^(b-1), qmax = 2^(b-1) - 1, 2 <= bits <= 16.
 *
 * Parameters from a real range. The range is widened to include 0
 * (rmin = min(rmin, 0), rmax = max(rmax, 0)); then
 *   scale = (rmax - rmin) / (qmax - qmin)           (in double, rounded to float)
 *   zero_point = clip(round(qmin - rmin / scale), qmin, qmax)
 * with round half to even; the zero point uses the exact scale (computed as
 * qmin - rmin (qmax - qmin) / (rmax - rmin) in double), so exact ties such as
 * symmetric ranges round to even rather than by the float scale's rounding.
 * x = 0 maps to q = zero_point and back to exactly 0. When rmin = rmax = 0 (or
 * the range is so small that scale rounds to 0 in float): scale = 0,
 * zero_point = 0. */
void csub_quant_params(float rmin, float rmax, int bits, float *scale, int32_t *zero_point);

/* x[n] -> y[n] on the quantization grid:
 *   q = clip(round(x / scale) + zero_point, qmin, qmax)   (x / scale a float
 *       division, round half to even, as numpy.round and nearbyintf)
 *   y = (q - zero_point) * scale
 * scale == 0 (or not a positive finite number): y = 0. +-inf go to the end of
 * the grid; NaN gives NaN. y may alias x. Parallel over large n, one pass.
 * Backward is the straight-through estimator: dx = dy everywhere, clipped
 * entries included (no kernel needed; a layer passes its gradient through). */
void csub_fake_quant_forward(const float *x, float *y, int64_t n, float scale,
                             int32_t zero_point, int bits);
/* The same, returning the number of NaN entries of x, so a caller can reject
 * them without a second pass over x. */
int64_t csub_fake_quant_forward_count_nan(const float *x, float *y, int64_t n, float scale,
                                          int32_t zero_point, int bits);

/* Smallest and largest entry of x[n] (parallel reduction). NaN propagates as
 * in numpy.min/max: if any entry is NaN, *mn = *mx = NaN. +-inf are ordinary
 * values. n == 0: *mn = +inf, *mx = -inf. */
void csub_minmax(const float *x, int64_t n, float *mn, float *mx);

/* Per-channel scaling: y[n,c,i] = x[n,c,i] * s[c] for x, y [N,C,HW], s[C];
 * y may alias x. Batch-norm folding uses it twice: the fold scale
 * gamma / sqrt(var + eps) of each output channel into a conv weight [K, C*R*S]
 * (N = 1, C = K, HW = C*R*S), and its inverse out of the conv output
 * [N, K, P*Q] (s = 1 / scale). The gradient with respect to x is
 * channel_scale(dy, s); ds[c] = sum over n, i of dy * x is not provided. */
void csub_channel_scale(const float *x, const float *s, float *y,
                        int64_t N, int64_t C, int64_t HW);

/* ------------------------------------------------- integer kernels (int8.c) */

/* A conv or linear weight w[K, cols] (cols = C*R*S) quantized once per alpha
 * to b <= 8 bits with its own min/max, on the grid of csub_quant_params /
 * csub_fake_quant_forward: q = clip(round(w / scale) + zero_point, qmin, qmax),
 * so (q - zero_point) * scale equals csub_fake_quant_forward's output exactly.
 * Stored in whatever layout the integer product wants; the fields below are
 * public, the layout of q is the kernel's (see int8.c): codes of four input
 * channels at one kernel tap side by side, so the codes depend on how cols
 * splits into C channels and taps = R*S kernel positions. */
typedef struct {
    int64_t K, cols;       /* output channels, inputs per output */
    int64_t cols_pad;      /* cols rounded up for the kernel: 4 * ceil(C/4) * taps */
    int64_t taps;          /* R*S of the convolution the layout is made for (1: linear, 1x1) */
    int bits;
    float scale;
    int32_t zero_point;
    int8_t *q;             /* weight codes, kernel layout, zero padding */
    int32_t *rowsum;       /* [K] sum of each row's codes (for the zero-point terms) */
} csub_qweight;

/* Largest cols the 32-bit accumulators hold exactly: |(qw - zw)(qx - zx)| <= 255^2
 * per product and 33025 * 255^2 < 2^31. */
#define CSUB_INT8_MAX_COLS 33025

/* Quantize w[K, cols] into qw (allocates; csub_qweight_free releases), with
 * taps = 1: the layout for linear layers and 1x1 convolutions.
 * 2 <= bits <= 8, 1 <= cols <= CSUB_INT8_MAX_COLS; NaN or infinite weights are
 * an error. Returns CSUB_OK, CSUB_ERR_ARG or CSUB_ERR_NOMEM. */
int csub_qweight_init(csub_qweight *qw, const float *w, int64_t K, int64_t cols, int bits);
/* The same for a convolution weight w[K, C, R, S] (cols = C*R*S, taps = R*S):
 * the layout csub_conv2d_int8_forward reads directly. (A weight made by
 * csub_qweight_init also works for an R x S convolution, regrouped on every
 * call.) */
int csub_qweight_init_conv(csub_qweight *qw, const float *w, int64_t K, int64_t C,
                           int64_t R, int64_t S, int bits);
void csub_qweight_free(csub_qweight *qw);
/* Bytes the quantized weight occupies (codes and row sums). */
int64_t csub_qweight_bytes(const csub_qweight *qw);

/* Quantized convolution: the input x[N,C,H,W] is quantized on the activation
 * grid (xscale, xzero_point, qw->bits; same grid as csub_fake_quant_forward, the
 * padding is real 0 = xzero_point), the products are integer with 32-bit
 * accumulation, acc[n,k,p,q] = sum (qw - zw)(qx - zx), and
 *   y[n,k,p,q] = acc * xscale * qw->scale * (oscale ? oscale[k] : 1) + (b ? b[k] : 0).
 * Equals csub_conv2d_forward on the fake-quantized weight and input, times
 * oscale, plus b, up to float rounding. xscale <= 0 (an all-zero range) gives
 * y = b. The kernel follows csub_isa (AVX-512 VNNI, AVX-512BW, AVX2,
 * portable C). qw->cols must be C*R*S and xzero_point on the
 * b-bit grid; x with a NaN (no code represents it) is CSUB_ERR_ARG, y then
 * undefined. Returns CSUB_OK, CSUB_ERR_ARG or CSUB_ERR_NOMEM. */
int csub_conv2d_int8_forward(const float *x, float xscale, int32_t xzero_point,
                             const csub_qweight *qw, const float *oscale, const float *b, float *y,
                             int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t R, int64_t S, int64_t stride, int64_t pad);
/* The same for a linear layer: x[N,IN] (IN = qw->cols, qw->taps = 1) -> y[N,O] (O = qw->K). */
int csub_linear_int8_forward(const float *x, float xscale, int32_t xzero_point,
                             const csub_qweight *qw, const float *oscale, const float *b, float *y,
                             int64_t N);
/* Name of the integer kernel this CPU runs: "avx512vnni", "avx512bw", "avx2" or "portable". */
const char *csub_int8_kernel(void);

/* ------------------------------------------ JSON and safetensors (json.c, safetensors.c) */

/* A parsed JSON value (RFC 8259). Strings are NUL-terminated UTF-8 (an
 * escaped \u0000 is an error); objects keep their keys in file order. */
typedef enum { CSUB_JSON_NULL, CSUB_JSON_BOOL, CSUB_JSON_NUMBER, CSUB_JSON_STRING,
               CSUB_JSON_ARRAY, CSUB_JSON_OBJECT } csub_json_type;
typedef struct csub_json {
    csub_json_type type;
    int boolean;               /* BOOL */
    double number;             /* NUMBER */
    const char *string;        /* STRING */
    size_t n;                  /* ARRAY, OBJECT: number of items */
    struct csub_json *items;   /* ARRAY, OBJECT: items[n] */
    const char **keys;         /* OBJECT: keys[n] */
} csub_json;
/* Parse text[len] (need not be NUL-terminated; no byte past len is read).
 * Nesting deeper than 64 levels, trailing garbage, invalid escapes or UTF-8,
 * unpaired surrogates, \u0000 and repeated keys in an object are errors;
 * numbers beyond the double range become +-inf. On success *out is a tree
 * that csub_json_free releases at once. Returns CSUB_OK, CSUB_ERR_FORMAT
 * (with a message naming the byte offset in err[errlen], which may be NULL)
 * or CSUB_ERR_NOMEM; *out is NULL on failure. */
int csub_json_parse(const char *text, size_t len, csub_json **out, char *err, size_t errlen);
/* Release a tree: v must be the root csub_json_parse returned (or NULL). */
void csub_json_free(csub_json *v);
/* Member `key` of an object (NULL when v is not an object or has no such key). */
const csub_json *csub_json_get(const csub_json *v, const char *key);
/* A number that is an integer in [lo, hi] into *out; CSUB_OK or CSUB_ERR_FORMAT.
 * The value decides, not the spelling (2.0 and 2e0 are 2); NaN, +-inf and
 * magnitudes of 2^53 or more (where distinct integers share a double) are
 * refused. */
int csub_json_int(const csub_json *v, int64_t lo, int64_t hi, int64_t *out);

/* safetensors: an 8-byte little-endian header length, a JSON header (an
 * object: tensor name -> {"dtype", "shape", "data_offsets": [begin, end]},
 * optional "__metadata__": string -> string), then the tensor bytes.
 * The dtypes are safetensors' names without the prefix (U64 holds the state
 * of csub's generator in checkpoints); F8, F6, F4 and C64 are not read. */
typedef enum { CSUB_DT_F32, CSUB_DT_F64, CSUB_DT_F16, CSUB_DT_BF16, CSUB_DT_I64, CSUB_DT_I32,
               CSUB_DT_I16, CSUB_DT_I8, CSUB_DT_U8, CSUB_DT_BOOL,
               CSUB_DT_U16, CSUB_DT_U32, CSUB_DT_U64 } csub_dtype;
typedef struct {
    const char *name;
    csub_dtype dtype;
    int ndim;                  /* 0 .. 8 */
    int64_t shape[8];
    int64_t numel;
    const uint8_t *data;       /* numel * itemsize bytes, inside the file buffer; may be unaligned */
} csub_st_tensor;
typedef struct {
    uint8_t *buf;              /* the whole file */
    size_t len;
    csub_json *header;
    const csub_json *metadata; /* "__metadata__" or NULL */
    csub_st_tensor *tensors;
    size_t n;
} csub_st_file;
/* Every check is made before a byte is trusted: header length within the
 * file (and at most 100 MB), a JSON object, entries with exactly the fields
 * dtype, shape and data_offsets, known dtypes, shapes of at most 8
 * non-negative dimensions whose product (no overflow) times the item size
 * equals end - begin, offsets within the data section, "__metadata__" an
 * object of strings. Tensors may not overlap (gaps and trailing bytes are
 * allowed; see csub_st_check_layout). A file whose __metadata__ holds
 * "csub.crc32" (every file csub writes; format in safetensors.c) has every
 * tensor and the metadata checked against their CRC-32; a mismatch names the
 * tensor (and, read from a path, the file). Any failure, an unknown dtype included, is CSUB_ERR_FORMAT with a
 * message naming the tensor and field in err[errlen] (err may be NULL).
 * f need not be initialised; on failure it is left zeroed, nothing allocated.
 * tensors[] are in header order. */
/* Read and parse the file at path. CSUB_OK, CSUB_ERR_IO (naming the path and
 * the system's reason; also for a file over 16 GiB, which is not read),
 * CSUB_ERR_FORMAT or CSUB_ERR_NOMEM. */
int csub_st_read(const char *path, csub_st_file *f, char *err, size_t errlen);
/* Parse buf[len] (copied: the caller keeps its buffer). */
int csub_st_parse(const uint8_t *buf, size_t len, csub_st_file *f, char *err, size_t errlen);
/* Tensor called name, or NULL (a linear search). */
const csub_st_tensor *csub_st_find(const csub_st_file *f, const char *name);
/* Metadata string for key, or NULL. */
const char *csub_st_meta(const csub_st_file *f, const char *key);
/* Bytes per element (BOOL: 1); 0 for a value outside the enum. */
size_t csub_dtype_size(csub_dtype dt);
/* Release f and zero it: harmless on a zeroed or failed struct, or twice. */
void csub_st_free(csub_st_file *f);
/* The reference reader's layout rule, which every file csub writes follows: the
 * tensors, ordered by offset, fill the data section with no gap and no byte after
 * the last one. CSUB_OK or CSUB_ERR_FORMAT naming the tensor or the trailing bytes. */
int csub_st_check_layout(const csub_st_file *f, char *err, size_t errlen);

/* ------------------------------------------------------ runtime (runtime.c) */

/* A deployed subspace: load an exported model file (csub.export), move it to
 * any alpha (the compressed weights for that alpha are built once: CSR for
 * unstructured sparsity, smaller dense layers for width, integer codes for
 * bit width), run batches. Every function returns CSUB_OK or a CSUB_ERR_*
 * code; the message of a model's last failure is csub_model_error(model), the
 * load functions write theirs to err[errlen] (err may be NULL). A model may
 * be used by one thread at a time. */
typedef struct csub_model csub_model;

/* Message for a status code. */
const char *csub_strerror(int code);

/* Load the file at path, or an in-memory copy of one, and set alpha = 1. */
int csub_model_load(const char *path, csub_model **model, char *err, size_t errlen);
int csub_model_load_memory(const uint8_t *buf, size_t len, csub_model **model, char *err, size_t errlen);
void csub_model_free(csub_model *model);
const char *csub_model_error(const csub_model *model);

/* Materialise the network at alpha in [0, 1] (unstructured: alpha > 0). On
 * failure the model refuses to run until a set_alpha succeeds. */
int csub_model_set_alpha(csub_model *model, double alpha);

/* Unstructured regime: a layer runs its CSR kernel at keep fractions <= keep
 * when each thread runs whole images (batch >= threads, or one thread), at
 * keep fractions <= keep_split when the threads split an image (batch smaller
 * than the thread count), and its dense kernel on the masked weight above (the
 * same results to float rounding; between the two a layer holds both forms).
 * Defaults 0.6 and 0.4, measured. Rebuilds the weights at the current alpha. */
int csub_model_set_sparse_crossover(csub_model *model, double keep, double keep_split);

/* input[batch, C, H, W] (normalised as in training: see csub_model_input_u8)
 * -> output[batch, num_classes] logits. */
int csub_model_forward(csub_model *model, const float *input, int64_t batch, float *output);

/* The same, timing each operation of the graph: op_ms[csub_model_num_ops()]
 * receives milliseconds per operation (csub_model_op_name: "conv/sparse",
 * "gn+relu", "add", ...; a fused ReLU shows as "alias" with ~0 ms). */
int csub_model_profile(csub_model *model, const float *input, int64_t batch, float *output, double *op_ms);
int csub_model_num_ops(const csub_model *model);
/* How a forward of `batch` images runs at the current alpha and thread count
 * (csub_set_num_threads): "images" (each thread whole images, a few at a
 * time), "bands" (one image, each thread a band of its rows through the whole
 * network, meeting before each 3x3 conv and group norm and at the pool, where
 * every layer allows it), "layers" (each layer split across the threads:
 * fewer images than threads, or layers that take their activation range from
 * the batch), "serial" (one thread: one thread set, or one image too small to
 * split layer by layer); "" for a batch outside 1..2^24 or no alpha set.
 * A profile (csub_model_profile) runs "bands" layer by layer. */
const char *csub_model_plan(const csub_model *model, int64_t batch);
const char *csub_model_op_name(const csub_model *model, int i);

/* pixels[batch, C, H, W] 0..255 -> out = (pixel / 255 - mean[c]) / std[c], the
 * training normalisation stored in the file. CSUB_ERR_ARG for batch < 1 or a
 * batch * C * H * W beyond int64 (then nothing is written). */
int csub_model_input_u8(const csub_model *model, const uint8_t *pixels, int64_t batch, float *out);

typedef struct {
    const char *regime;          /* "dense", "unstructured", "structured", "quantized" */
    int64_t input_c, input_h, input_w, num_classes;
    double alpha, keep, width;   /* the current level: keep fraction, width factor */
    int bits;                    /* bit width (quantized regime), else 0 */
    int bit_lo, bit_hi;
    double width_lo, width_hi;
    int64_t weight_bytes;        /* the network at alpha: CSR, integer codes or float weights */
    int64_t subspace_bytes;      /* the stored subspace (both ends of a line) */
    int64_t flops;               /* per sample, 2 per multiply-accumulate of kept weights */
    int num_levels;              /* accuracy levels stored at export */
} csub_model_desc;
void csub_model_info(const csub_model *model, csub_model_desc *desc);
/* Accuracy level i stored at export (alpha, accuracy). */
int csub_model_level(const csub_model *model, int i, double *alpha, double *accuracy);
/* Bytes the model needs at the current alpha to run a batch: subspace,
 * materialised weights and activation buffers; -1 for a batch outside
 * 1..2^24 (what csub_model_forward runs) or a total beyond int64. */
int64_t csub_model_memory(const csub_model *model, int64_t batch);
/* Bit width of alpha: K = hi - lo + 1 equal bins of [0, 1], alpha in
 * ((k - 1)/K, k/K] -> lo + k - 1 (boundaries robust to float rounding). */
int csub_bits_for_alpha(double alpha, int lo, int hi);

/* Budget controller. calibrate measures, on this machine, for each alpha:
 * the time of set_alpha, the median forward latency of `batch` samples over
 * `reps` runs (after one warm-up), the memory (csub_model_memory) and the
 * accuracy stored at export for that alpha (NaN if none); it leaves the model
 * at the alpha it had. pick_alpha returns the most accurate level whose
 * latency and memory fit (a budget <= 0 is no limit): by stored accuracy when
 * every level has one, else the largest alpha; CSUB_ERR_BUDGET if none fits. */
typedef struct {
    double alpha, latency_ms, set_alpha_ms, accuracy;
    int64_t memory_bytes;
} csub_level;
int csub_model_calibrate(csub_model *model, const double *alphas, int n, int64_t batch, int reps, csub_level *out);
int csub_pick_alpha(const csub_level *levels, int n, double latency_ms, int64_t memory_bytes, double *alpha);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif /* CSUB_H */
