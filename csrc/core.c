/* core.c - thread count and the one dense matmul (OpenBLAS sgemm). */
#include <omp.h>

#include "csub.h"

/* From scipy-openblas32 (symbols prefixed scipy_). */
enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
void scipy_cblas_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc);
void scipy_openblas_set_num_threads(int n);

static int g_threads;      /* 0: not set yet, use OpenMP's default */
static int g_blas_serial;  /* OpenBLAS switched to one thread */

void csub_set_num_threads(int n)
{
    g_threads = n < 1 ? 1 : n;
}

int csub_get_num_threads(void)
{
    if (g_threads < 1) g_threads = omp_get_max_threads();
    return g_threads;
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
        scipy_openblas_set_num_threads(1);
        g_blas_serial = 1;
    }
    scipy_cblas_sgemm(CblasRowMajor, transa ? CblasTrans : CblasNoTrans, transb ? CblasTrans : CblasNoTrans,
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
    if (!g_blas_serial) { scipy_openblas_set_num_threads(1); g_blas_serial = 1; }
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
