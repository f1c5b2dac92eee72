/* fmapeak.c - one core's AVX-512 multiply-add peak, and what an unaligned load costs the sparse code.
 *
 *   gcc -O2 -mavx512f -mavx512dq benchmarks/fmapeak.c -o /tmp/fmapeak && /tmp/fmapeak
 *
 * Three loops, the best of many repetitions, one thread:
 *   peak       12 independent chains of 16-float multiply-adds on registers: the core's rate
 *              (GMAC/s: multiply-adds of single floats per second);
 *   unaligned  the pattern of the compiled sparse convolutions (csrc/sparse_jit.c) as it was: per
 *              input offset one 16-float load at that offset (15 of 16 offsets split across two
 *              cache lines), then three multiply-adds by broadcast weights into 29 accumulators;
 *   blocks     the same sums with the input read as it is now: the two aligned 16-float blocks
 *              around three consecutive offsets loaded once, each offset's vector shifted out of
 *              them in registers (valignd).
 * The input spans 32 KB to 1 MB (L1 to L2). Plain C, no csub: the machine's own figures.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NOFF 4098 /* offsets, a multiple of 9 plus 3 */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double peak(void)
{
    __m512 a[12], x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    double best = 1e9;
    for (int r = 0; r < 10; r++) {
        double t = now();
        for (long it = 0; it < 10000000; it++) {
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
        }
        t = now() - t;
        if (t < best) best = t;
    }
    float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    if (s == 1.0f) printf(" ");
    return 12e7 * 16 / best * 1e-9;
}

#define ACC __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0
#define F(A, k) A = _mm512_fmadd_ps(xv, _mm512_set1_ps(w[k]), A);
#define SUM _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), \
                          _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(_mm512_add_ps(a6, a7), a8)))

/* three consecutive offsets o, o + 1, o + 2 a step, each feeding three accumulators */
__attribute__((noinline)) static __m512 unaligned(const float *x, const int *off, const float *w, int n)
{
    ACC;
    for (int i = 0; i < n; i += 3) {
        const float *p = x + off[i];
        __m512 xv = _mm512_loadu_ps(p);
        F(a0, 3 * i) F(a1, 3 * i + 1) F(a2, 3 * i + 2)
        xv = _mm512_loadu_ps(p + 1);
        F(a3, 3 * i + 3) F(a4, 3 * i + 4) F(a5, 3 * i + 5)
        xv = _mm512_loadu_ps(p + 2);
        F(a6, 3 * i + 6) F(a7, 3 * i + 7) F(a8, 3 * i + 8)
    }
    return SUM;
}

__attribute__((noinline)) static __m512 blocks(const float *x, const int *off, const float *w, int n)
{
    ACC;
    for (int i = 0; i < n; i += 3) {
        const float *p = x + (off[i] & ~15);
        __m512i lo = _mm512_castps_si512(_mm512_load_ps(p)), hi = _mm512_castps_si512(_mm512_load_ps(p + 16));
        int r = off[i] & 15; /* the code's shift is a constant; here one of three by the offset's residue */
        __m512 xv;
        if (r < 5) {
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 1));
            F(a0, 3 * i) F(a1, 3 * i + 1) F(a2, 3 * i + 2)
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 2));
            F(a3, 3 * i + 3) F(a4, 3 * i + 4) F(a5, 3 * i + 5)
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 3));
        } else if (r < 10) {
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 6));
            F(a0, 3 * i) F(a1, 3 * i + 1) F(a2, 3 * i + 2)
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 7));
            F(a3, 3 * i + 3) F(a4, 3 * i + 4) F(a5, 3 * i + 5)
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 8));
        } else {
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 11));
            F(a0, 3 * i) F(a1, 3 * i + 1) F(a2, 3 * i + 2)
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 12));
            F(a3, 3 * i + 3) F(a4, 3 * i + 4) F(a5, 3 * i + 5)
            xv = _mm512_castsi512_ps(_mm512_alignr_epi32(hi, lo, 13));
        }
        F(a6, 3 * i + 6) F(a7, 3 * i + 7) F(a8, 3 * i + 8)
    }
    return SUM;
}

int main(void)
{
    printf("peak: %.1f GMAC/s\n", peak());
    for (int span = 8192; span <= 262144; span *= 4) {
        float *x = aligned_alloc(64, sizeof(float) * (size_t)(span + 64));
        int *off = malloc(sizeof(int) * NOFF);
        float *w = malloc(sizeof(float) * NOFF * 3 + 64);
        for (int i = 0; i < span + 64; i++) x[i] = 1e-3f * (float)(i % 7);
        srand(1);
        for (int i = 0; i < NOFF; i++) off[i] = rand() % span;
        for (int i = 0; i < NOFF * 3 + 16; i++) w[i] = 1e-3f;
        for (int mode = 0; mode < 2; mode++) {
            double best = 1e9;
            __m512 s = _mm512_setzero_ps();
            for (int r = 0; r < 3000; r++) {
                double t = now();
                s = _mm512_add_ps(s, (mode ? blocks : unaligned)(x, off, w, NOFF - 3));
                t = now() - t;
                if (t < best) best = t;
            }
            double macs = (double)(NOFF - 3) / 3.0 * 9.0 * 16.0;
            printf("%-9s input %4d KB: %.1f GMAC/s%s\n", mode ? "blocks" : "unaligned", span / 256, macs / best * 1e-9,
                   _mm512_reduce_add_ps(s) == 1.0f ? " " : "");
        }
        free(x), free(off), free(w);
    }
    return 0;
}
