/* core.c - thread count, the instruction set the kernels run, and the one
 * dense matmul (OpenBLAS sgemm). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"

/* The BLAS: scipy-openblas32 (symbols prefixed scipy_, the Python build), a
 * system OpenBLAS (-DCSUB_BLAS_OPENBLAS, plain cblas_ names), or none
 * (-DCSUB_BLAS_NONE: csub's own blocked sgemm below, for devices without a BLAS). */
enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
#if defined(CSUB_BLAS_NONE)
static void blas_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
static void blas_set_num_threads(int n) { (void)n; }
#else
#if defined(CSUB_BLAS_OPENBLAS)
#define blas_sgemm cblas_sgemm
#define blas_set_num_threads openblas_set_num_threads
#else
#define blas_sgemm scipy_cblas_sgemm
#define blas_set_num_threads scipy_openblas_set_num_threads
#endif
void blas_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void blas_set_num_threads(int n);
#endif

static int g_threads;      /* 0: not set yet, use OpenMP's default */
static int g_blas_serial;  /* OpenBLAS switched to one thread */
/* The calling thread's own cap on the kernels' threads for the calls it makes (csub_threads_cap),
 * 0: none. The runtime runs a small forward on one thread this way without touching the
 * process-wide count another thread may be using. */
static _Thread_local int t_cap;

int csub_set_num_threads(int n)
{
    if (n < 1 || n > CSUB_MAX_THREADS) return CSUB_ERR_ARG;
    g_threads = n;
    return CSUB_OK;
}

int csub_get_num_threads(void)
{
    if (g_threads < 1) g_threads = omp_get_max_threads();
    return t_cap > 0 && t_cap < g_threads ? t_cap : g_threads;
}

int csub_threads_cap(int n)
{
    int old = t_cap;
    t_cap = n;
    return old;
}

/* ------------------------------------------------------ instruction set */

int csub_isa_level_ = -1;
static char g_isa_error[192];
static const char *const isa_names[CSUB_ISA_COUNT] = {"baseline", "avx2", "avx512", "avx512vnni"};

/* The best level this CPU runs. */
static int cpu_level(void)
{
#if CSUB_X86
    __builtin_cpu_init();
#if defined(__clang__) || __GNUC__ < 12
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
             __builtin_cpu_supports("bmi2");
    int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512cd");
#else
    int v3 = __builtin_cpu_supports("x86-64-v3"), v4 = __builtin_cpu_supports("x86-64-v4");
#endif
    if (v4 && __builtin_cpu_supports("avx512vnni")) return CSUB_ISA_AVX512VNNI;
    if (v4) return CSUB_ISA_AVX512;
    if (v3) return CSUB_ISA_AVX2;
#endif
    return CSUB_ISA_BASELINE;
}

/* The level CSUB_ISA names (-2 with g_isa_error set when it is refused), else
 * the CPU's best. */
static int choose_level(void)
{
    int best = cpu_level();
    const char *env = getenv("CSUB_ISA");
    if (env && *env) {
        for (int l = 0; l < CSUB_ISA_COUNT; l++)
            if (!strcmp(env, isa_names[l])) {
                if (l <= best) return l;
                snprintf(g_isa_error, sizeof g_isa_error,
                         "CSUB_ISA=%s: this CPU cannot run it (it runs baseline%s%s%s)", env,
                         best >= CSUB_ISA_AVX2 ? ", avx2" : "", best >= CSUB_ISA_AVX512 ? ", avx512" : "",
                         best >= CSUB_ISA_AVX512VNNI ? ", avx512vnni" : "");
                return -2;
            }
        snprintf(g_isa_error, sizeof g_isa_error,
                 "CSUB_ISA=%.40s: unknown instruction set (expected baseline, avx2, avx512 or avx512vnni)", env);
        return -2;
    }
    return best;
}

static int isa_resolved(void)
{
    int l = __atomic_load_n(&csub_isa_level_, __ATOMIC_ACQUIRE);
    if (l == -1) { /* racing threads compute the same answer */
        l = choose_level();
        __atomic_store_n(&csub_isa_level_, l, __ATOMIC_RELEASE);
    }
    return l;
}

int csub_isa_resolve(void)
{
    int l = isa_resolved();
    if (l < 0) {
        fprintf(stderr, "csub: %s\n", g_isa_error);
        abort();
    }
    return l;
}

int csub_isa_check(char *err, size_t errlen)
{
    if (isa_resolved() < 0) return csub_fail(err, errlen, CSUB_ERR_UNSUPPORTED, "%s", g_isa_error);
    return CSUB_OK;
}

const char *csub_isa(void)
{
    int l = isa_resolved();
    return l < 0 ? NULL : isa_names[l];
}

/* ------------------------------------------------------------ threads, gemm */

void csub_row_band(int64_t H, int t, int T, int64_t *lo, int64_t *hi)
{
    *lo = H * t / T;
    *hi = H * (t + 1) / T;
}

int csub_rows_cover(const csub_rows *x, int64_t H, int64_t R, int64_t stride, int64_t pad, int64_t p0, int64_t p1)
{
    int64_t a = p0 * stride - pad, e = (p1 - 1) * stride - pad + R; /* rows [a, e) */
    if (a < 0) a = 0;
    if (e > H) e = H;
    return a >= e || (a >= x->lo - (x->up ? 1 : 0) && e <= x->hi + (x->dn ? 1 : 0));
}

void csub_gemm_serial(int transa, int transb, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda,
                      const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* C = beta * C */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
    if (!g_blas_serial) { /* csub threads itself; BLAS must not add its own */
        blas_set_num_threads(1);
        g_blas_serial = 1;
    }
    blas_sgemm(CblasRowMajor, transa ? CblasTrans : CblasNoTrans, transb ? CblasTrans : CblasNoTrans,
                      (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* Split C into column (or row) panels, one BLAS call per thread. */
void csub_gemm(int transa, int transb, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    int nt = csub_get_num_threads();
    double work = (double)M * (double)N * (double)K;
    if (nt <= 1 || omp_in_parallel() || work < 262144.0 || (M < 32 && N < 32)) {
        csub_gemm_serial(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (!g_blas_serial) { blas_set_num_threads(1); g_blas_serial = 1; }
    int split_n = N >= M;
    int64_t len = split_n ? N : M;
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        /* panels aligned to 16 columns / rows */
        int64_t blk = ((len + T - 1) / T + 15) / 16 * 16;
        int64_t lo = (int64_t)t * blk, hi = lo + blk < len ? lo + blk : len;
        if (lo < hi) {
            if (split_n) {
                const float *Bp = transb ? B + lo * ldb : B + lo;
                csub_gemm_serial(transa, transb, M, hi - lo, K, alpha, A, lda, Bp, ldb, beta, C + lo, ldc);
            } else {
                const float *Ap = transa ? A + lo : A + lo * lda;
                csub_gemm_serial(transa, transb, hi - lo, N, K, alpha, Ap, lda, B, ldb, beta, C + lo * ldc, ldc);
            }
        }
    }
}

#if defined(CSUB_BLAS_NONE)
/* Row-major C = alpha op(A) op(B) + beta C without a BLAS: blocks of 64 rows
 * of op(B) kept hot, the inner loop over a row of op(B) contiguous (the
 * compiler vectorises it); op(B) = B^T is transposed once. */
static void blas_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)order;
    transa = transa == CblasTrans;
    transb = transb == CblasTrans;
    float *bt = transb ? malloc(sizeof(float) * (size_t)K * (size_t)N) : NULL;
    int strided = transb && !bt; /* no memory for the transpose: read B^T in place, slowly */
    if (bt) { /* B is [N, K]: make it [K, N] */
        for (int j = 0; j < N; j++)
            for (int k = 0; k < K; k++) bt[(int64_t)k * N + j] = B[(int64_t)j * ldb + k];
        B = bt;
        ldb = N;
    }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[(int64_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(int64_t)i * ldc + j];
    for (int k0 = 0; k0 < K; k0 += 64) {
        int k1 = k0 + 64 < K ? k0 + 64 : K;
        for (int i = 0; i < M; i++) {
            float *c = C + (int64_t)i * ldc;
            for (int k = k0; k < k1; k++) {
                float a = alpha * (transa ? A[(int64_t)k * lda + i] : A[(int64_t)i * lda + k]);
                if (strided) {
                    for (int j = 0; j < N; j++) c[j] += a * B[(int64_t)j * ldb + k];
                    continue;
                }
                const float *b = B + (int64_t)k * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            }
        }
    }
    free(bt);
}
#endif
