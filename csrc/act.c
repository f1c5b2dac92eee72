/* act.c - ReLU, residual add, pools (max, average, global average). */
#include <float.h>
#include <stdlib.h>
#include <omp.h>

#include "internal.h"

#if CSUB_X86
#include <immintrin.h>
#endif

/* The elementwise loops run over chunks of 16384 values, each chunk's loop
 * compiled for AVX-512, AVX2 and the baseline (CSUB_VARIANTS, internal.h);
 * threads take chunks when n is large. */
#define CHUNK 16384
#define PAR_CHUNKS _Pragma("omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (n > CSUB_PAR_MIN)")

static CSUB_ALWAYS_INLINE void relu_chunk_body(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = x[i] <= 0.0f ? 0.0f : x[i];
}
CSUB_VARIANTS(relu_chunk, (const float *x, float *y, int64_t n), (x, y, n))

static CSUB_ALWAYS_INLINE void relu_back_chunk_body(const float *x, const float *dy, float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float d = dy[i];
        dx[i] = x[i] <= 0.0f ? 0.0f : d;
    }
}
CSUB_VARIANTS(relu_back_chunk, (const float *x, const float *dy, float *dx, int64_t n), (x, dy, dx, n))

static CSUB_ALWAYS_INLINE void add_chunk_body(const float *a, const float *b, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}
CSUB_VARIANTS(add_chunk, (const float *a, const float *b, float *y, int64_t n), (a, b, y, n))

/* y[n] = max(x, 0); NaN propagates (as in the max pool below and in PyTorch),
 * so a diverging run shows up in the loss instead of being zeroed here. */
void csub_relu_forward(const float *x, float *y, int64_t n)
{
    PAR_CHUNKS
    for (int64_t c = 0; c < (n + CHUNK - 1) / CHUNK; c++)
        relu_chunk(x + c * CHUNK, y + c * CHUNK, n - c * CHUNK < CHUNK ? n - c * CHUNK : CHUNK);
}

/* dx[n] = dy where x > 0 (or x is NaN), 0 where x <= 0. dy is read
 * unconditionally so that the select vectorises instead of branching. */
void csub_relu_backward(const float *x, const float *dy, float *dx, int64_t n)
{
    PAR_CHUNKS
    for (int64_t c = 0; c < (n + CHUNK - 1) / CHUNK; c++)
        relu_back_chunk(x + c * CHUNK, dy + c * CHUNK, dx + c * CHUNK, n - c * CHUNK < CHUNK ? n - c * CHUNK : CHUNK);
}

/* y[n] = a + b */
void csub_add(const float *a, const float *b, float *y, int64_t n)
{
    PAR_CHUNKS
    for (int64_t c = 0; c < (n + CHUNK - 1) / CHUNK; c++)
        add_chunk(a + c * CHUNK, b + c * CHUNK, y + c * CHUNK, n - c * CHUNK < CHUNK ? n - c * CHUNK : CHUNK);
}

void csub_add_nchw(const float *a, const float *b, float *y, int64_t N, int64_t C, int64_t H, int64_t W)
{
    int nt = csub_get_num_threads();
    if (N >= nt || H < nt || N * C * H * W < CSUB_PAR_MIN_SPLIT || omp_in_parallel()) { /* small: as csub_add */
        csub_add(a, b, y, N * C * H * W);
        return;
    }
    int64_t HW = H * W;
    #pragma omp parallel num_threads(nt)
    {
        int64_t h0, h1;
        csub_row_band(H, omp_get_thread_num(), omp_get_num_threads(), &h0, &h1);
        for (int64_t nc = 0; nc < N * C && h1 > h0; nc++) {
            int64_t o = nc * HW + h0 * W;
            add_chunk(a + o, b + o, y + o, (h1 - h0) * W);
        }
    }
}

/* x[N,C,H,W] -> y[N,C,P,Q], argmax[N,C,P,Q] (flat index in the H*W plane; first maximum wins) */
void csub_maxpool2d_forward(const float *x, float *y, int32_t *argmax,
                            int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t s)
{
    int64_t P = (H - k) / s + 1, Q = (W - k) / s + 1;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
        const float *xp = x + nc * H * W;
        for (int64_t p = 0; p < P; p++)
            for (int64_t q = 0; q < Q; q++) {
                float best = -FLT_MAX;
                int64_t bi = (p * s) * W + q * s;
                for (int64_t i = 0; i < k; i++)
                    for (int64_t j = 0; j < k; j++) {
                        int64_t idx = (p * s + i) * W + q * s + j;
                        if (xp[idx] > best || xp[idx] != xp[idx]) { /* NaN propagates */
                            best = xp[idx];
                            bi = idx;
                            if (best != best) goto done;
                        }
                    }
            done:
                y[(nc * P + p) * Q + q] = xp[bi];
                argmax[(nc * P + p) * Q + q] = (int32_t)bi;
            }
    }
}

/* dy[N,C,P,Q] -> dx[N,C,H,W] (=) */
void csub_maxpool2d_backward(const float *dy, const int32_t *argmax, float *dx,
                             int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t s)
{
    int64_t P = (H - k) / s + 1, Q = (W - k) / s + 1;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
        float *dxp = dx + nc * H * W;
        for (int64_t i = 0; i < H * W; i++) dxp[i] = 0.0f;
        for (int64_t i = 0; i < P * Q; i++) dxp[argmax[nc * P * Q + i]] += dy[nc * P * Q + i];
    }
}

/* m, or v where v is larger: the first NaN and the first of equal values stay, as in the forward */
static inline float max_first(float m, float v) { return ((m != m) | (v <= m)) ? m : v; }

/* x[N,C,H,W] -> y[N,C,P,Q]: csub_maxpool2d_forward's y, without the argmax (inference).
 * Separable and branch-free: per output row, the column maxima of its k input rows (a
 * contiguous pass that vectorises) for a band of up to MP_BAND input columns, then the
 * window maxima along the band. The forward's values; a window's NaN comes out as a NaN
 * (perhaps another one of the window's), and a window whose maximum is a zero of either sign
 * may give the other sign (columns are reduced before rows). */
#define MP_BAND 512

#if CSUB_X86
/* max_first on 16 lanes: m where m is NaN or v <= m, else v */
CSUB_TARGET_AVX512 static inline __m512 max_first16(__m512 m, __m512 v)
{
    __mmask16 keep = _mm512_cmp_ps_mask(v, m, _CMP_LE_OQ) | _mm512_cmp_ps_mask(m, m, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(keep, v, m);
}

/* One plane of the 3 x 3 stride-2 pool (ResNet18's), AVX-512: the scalar loops' operations in
 * their order (column maxima of rows 0, 1, 2; then columns 2q, 2q + 1, 2q + 2), 16 outputs at a
 * time (the last ones masked: a scalar tail of 7 of ResNet18's 55 outputs a row took more than half the
 * time), the even and odd columns taken apart by permutes. col: W + 32 floats. */
CSUB_TARGET_AVX512 static void mp3s2_plane(const float *xp, float *yp, int64_t H, int64_t W, float *col)
{
    int64_t P = (H - 3) / 2 + 1, Q = (W - 3) / 2 + 1;
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int64_t p = 0; p < P; p++) {
        const float *r0 = xp + 2 * p * W, *r1 = r0 + W, *r2 = r1 + W;
        int64_t c = 0;
        for (; c + 16 <= W; c += 16)
            _mm512_storeu_ps(col + c, max_first16(max_first16(_mm512_loadu_ps(r0 + c), _mm512_loadu_ps(r1 + c)),
                                                  _mm512_loadu_ps(r2 + c)));
        for (; c < W; c++) col[c] = max_first(max_first(r0[c], r1[c]), r2[c]);
        float *yq = yp + p * Q;
        for (int64_t q = 0; q < Q; q += 16) { /* reads col[2q, 2q + 34): within W + 32, as 2 Q < W */
            __mmask16 keep = Q - q >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (Q - q)) - 1);
            __m512 a = _mm512_loadu_ps(col + 2 * q), b = _mm512_loadu_ps(col + 2 * q + 16);
            __m512 a2 = _mm512_loadu_ps(col + 2 * q + 2), b2 = _mm512_loadu_ps(col + 2 * q + 18);
            __m512 m = max_first16(_mm512_permutex2var_ps(a, ev, b), _mm512_permutex2var_ps(a, od, b));
            _mm512_mask_storeu_ps(yq + q, keep, max_first16(m, _mm512_permutex2var_ps(a2, ev, b2)));
        }
    }
}
#endif

void csub_maxpool2d_infer(const float *x, float *y, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t k, int64_t s)
{
    int64_t P = (H - k) / s + 1, Q = (W - k) / s + 1;
    int64_t qb = k <= MP_BAND ? (MP_BAND - k) / s + 1 : 0; /* output columns per band */
#if CSUB_X86
    if (k == 3 && s == 2 && csub_isa_level() >= CSUB_ISA_AVX512) {
        int ok = 1;
        #pragma omp parallel num_threads(csub_get_num_threads())
        {
            float *col = calloc((size_t)(W + 32), sizeof(float)); /* the tail a last vector may read */
            if (!col) {
                #pragma omp atomic write
                ok = 0;
            }
            #pragma omp for schedule(static)
            for (int64_t nc = 0; nc < N * C; nc++)
                if (col) mp3s2_plane(x + nc * H * W, y + nc * P * Q, H, W, col);
            free(col);
        }
        if (ok) return; /* else the portable loops below, which need no buffer */
    }
#endif
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
        float col[MP_BAND];
        const float *xp = x + nc * H * W;
        float *yp = y + nc * P * Q;
        for (int64_t p = 0; p < P; p++) {
            const float *r0 = xp + p * s * W;
            if (!qb) { /* a window wider than a band: one output at a time */
                for (int64_t q = 0; q < Q; q++) {
                    float m = r0[q * s];
                    for (int64_t i = 0; i < k; i++)
                        for (int64_t j = 0; j < k; j++) m = max_first(m, r0[i * W + q * s + j]);
                    yp[p * Q + q] = m;
                }
                continue;
            }
            for (int64_t q0 = 0; q0 < Q; q0 += qb) {
                int64_t nq = Q - q0 < qb ? Q - q0 : qb, w0 = q0 * s, nw = (nq - 1) * s + k;
                if (s == 2) { /* even and odd columns apart, so that every pass is contiguous */
                    float *ev = col, *od = col + MP_BAND / 2, *yq = yp + p * Q + q0;
                    int64_t no = nw / 2, ne = nw - no;
                    for (int64_t c = 0; c < no; c++) ev[c] = r0[w0 + 2 * c], od[c] = r0[w0 + 2 * c + 1];
                    if (ne > no) ev[no] = r0[w0 + 2 * no];
                    for (int64_t i = 1; i < k; i++) {
                        const float *ri = r0 + i * W + w0;
                        for (int64_t c = 0; c < no; c++) {
                            ev[c] = max_first(ev[c], ri[2 * c]);
                            od[c] = max_first(od[c], ri[2 * c + 1]);
                        }
                        if (ne > no) ev[no] = max_first(ev[no], ri[2 * no]);
                    }
                    for (int64_t q = 0; q < nq; q++) yq[q] = ev[q];
                    for (int64_t j = 1; j < k; j++) {
                        const float *src = (j & 1 ? od : ev) + j / 2;
                        for (int64_t q = 0; q < nq; q++) yq[q] = max_first(yq[q], src[q]);
                    }
                    continue;
                }
                for (int64_t c = 0; c < nw; c++) col[c] = r0[w0 + c];
                for (int64_t i = 1; i < k; i++)
                    for (int64_t c = 0; c < nw; c++) col[c] = max_first(col[c], r0[i * W + w0 + c]);
                for (int64_t q = 0; q < nq; q++) {
                    float m = col[q * s];
                    for (int64_t j = 1; j < k; j++) m = max_first(m, col[q * s + j]);
                    yp[p * Q + q0 + q] = m;
                }
            }
        }
    }
}

/* x[N,C,H,W] -> y[N,C,P,Q], mean over each k x k window */
void csub_avgpool2d_forward(const float *x, float *y,
                            int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t s)
{
    int64_t P = (H - k) / s + 1, Q = (W - k) / s + 1;
    float inv = 1.0f / (float)(k * k);
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
        const float *xp = x + nc * H * W;
        for (int64_t p = 0; p < P; p++)
            for (int64_t q = 0; q < Q; q++) {
                float acc = 0.0f;
                for (int64_t i = 0; i < k; i++)
                    for (int64_t j = 0; j < k; j++) acc += xp[(p * s + i) * W + q * s + j];
                y[(nc * P + p) * Q + q] = acc * inv;
            }
    }
}

/* dy[N,C,P,Q] -> dx[N,C,H,W] (=) */
void csub_avgpool2d_backward(const float *dy, float *dx,
                             int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t s)
{
    int64_t P = (H - k) / s + 1, Q = (W - k) / s + 1;
    float inv = 1.0f / (float)(k * k);
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
        float *dxp = dx + nc * H * W;
        for (int64_t i = 0; i < H * W; i++) dxp[i] = 0.0f;
        for (int64_t p = 0; p < P; p++)
            for (int64_t q = 0; q < Q; q++) {
                float g = dy[(nc * P + p) * Q + q] * inv;
                for (int64_t i = 0; i < k; i++)
                    for (int64_t j = 0; j < k; j++) dxp[(p * s + i) * W + q * s + j] += g;
            }
    }
}

/* x[NC,HW] -> y[NC] */
void csub_gap_forward(const float *x, float *y, int64_t NC, int64_t HW)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (NC * HW > CSUB_PAR_MIN)
    for (int64_t i = 0; i < NC; i++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < HW; j++) acc += x[i * HW + j];
        y[i] = acc / (float)HW;
    }
}

/* The sum of max(0, x[i] a + b) (pre) or of x[i] over i < n: 16 running sums (one vector), then added
 * in order */
static CSUB_ALWAYS_INLINE float sum16(const float *x, int pre, float a, float b, int64_t n)
{
    float acc[16] = {0}, sum = 0.0f;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) {
            float u = pre ? x[j + l] * a + b : x[j + l];
            acc[l] += pre && u <= 0.0f ? 0.0f : u;
        }
    for (int l = 0; l < 16; l++) sum += acc[l];
    for (; j < n; j++) {
        float u = pre ? x[j] * a + b : x[j];
        sum += pre && u <= 0.0f ? 0.0f : u;
    }
    return sum;
}

/* The mean of max(0, x[i] a + b) over i < HW */
static CSUB_ALWAYS_INLINE void gap_pre_row_body(const float *x, float a, float b, int64_t HW, float *y)
{
    *y = sum16(x, 1, a, b, HW) / (float)HW;
}
CSUB_VARIANTS(gap_pre_row, (const float *x, float a, float b, int64_t HW, float *y), (x, a, b, HW, y))

/* x[N,C,HW] -> y[N,C] = the mean of max(0, x a[c] + b[c]) over HW: csub_gap_forward of a batch norm and
 * its ReLU (the runtime's fusion, csub_pre), their values never stored */
void csub_gap_pre_forward(const float *x, const float *a, const float *b, float *y, int64_t N, int64_t C, int64_t HW)
{
    int nt = N * C * HW > CSUB_PAR_MIN ? csub_get_num_threads() : 1;
    if (nt == 1) { /* no parallel region: it would cost more than the sums (csub_conv2d_sparse_forward_planned) */
        for (int64_t i = 0; i < N * C; i++) gap_pre_row(x + i * HW, a[i % C], b[i % C], HW, y + i);
        return;
    }
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < N * C; i++) gap_pre_row(x + i * HW, a[i % C], b[i % C], HW, y + i);
}

static CSUB_ALWAYS_INLINE void gap_partial_body(const float *x, const float *a, const float *b, float *part, int64_t C,
                                                int64_t n, int64_t cs)
{
    for (int64_t c = 0; c < C; c++) part[c] = sum16(x + c * cs, a != NULL, a ? a[c] : 1.0f, b ? b[c] : 0.0f, n);
}
CSUB_VARIANTS(gap_partial, (const float *x, const float *a, const float *b, float *part, int64_t C, int64_t n,
                            int64_t cs), (x, a, b, part, C, n, cs))

void csub_gap_sum(const float *x, const float *a, const float *b, float *part, int64_t C, int64_t n, int64_t cs)
{
    gap_partial(x, a, b, part, C, n, cs);
}

/* dy[NC] -> dx[NC,HW] = dy / HW */
void csub_gap_backward(const float *dy, float *dx, int64_t NC, int64_t HW)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (NC * HW > CSUB_PAR_MIN)
    for (int64_t i = 0; i < NC; i++) {
        float g = dy[i] / (float)HW;
        for (int64_t j = 0; j < HW; j++) dx[i * HW + j] = g;
    }
}
