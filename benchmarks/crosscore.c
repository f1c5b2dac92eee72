/* crosscore.c - what it costs one core to read what another core wrote.
 *
 *   gcc -O3 -march=native -fopenmp benchmarks/crosscore.c -o /tmp/crosscore && /tmp/crosscore
 *
 * At batch 1 the runtime can split a layer between threads only if the next
 * layer then reads what the other core wrote, or splits the same way. Two
 * measurements, medians of 2001 repetitions, two threads:
 *   handoff   thread 0 writes n floats, then thread 0 (same core) or thread 1
 *             (the other core) reads them, both timed: reading on the other
 *             core moves the lines over, and the next write must take them
 *             back (the cost of a buffer that two cores share by turns);
 *   split     y = a + b over C planes of HW floats by two threads, each taking
 *             a contiguous half of the array ("flat") or the same half of
 *             every plane ("rows", as a row split of an image does), against
 *             one thread.
 * Plain C, no csub: the machine's own figures.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define REPS 2001

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_us(double *t)
{
    qsort(t, REPS, sizeof(double), cmp);
    return t[REPS / 2] * 1e6;
}

/* sum of x[n] in 16 independent lanes (vectorises without reassociation flags) */
static float sum16(const float *x, long n)
{
    float acc[16] = {0};
    long i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += x[i + l];
    float s = 0.0f;
    for (int l = 0; l < 16; l++) s += acc[l];
    for (; i < n; i++) s += x[i];
    return s;
}

static void handoff(long n)
{
    float *a = aligned_alloc(64, sizeof(float) * (size_t)n);
    double *tw = malloc(sizeof(double) * REPS), *tr = malloc(sizeof(double) * REPS);
    volatile float sink = 0.0f;
    for (long i = 0; i < n; i++) a[i] = (float)i;
    double w_us[2], r_us[2];
    for (int reader = 0; reader < 2; reader++) {
        #pragma omp parallel num_threads(2)
        {
            int me = omp_get_thread_num();
            for (int r = 0; r < REPS; r++) {
                if (me == 0) { /* rewrites what the reader holds */
                    double t0 = omp_get_wtime();
                    for (long i = 0; i < n; i++) a[i] = a[i] * 0.5f + 1.0f;
                    tw[r] = omp_get_wtime() - t0;
                }
                #pragma omp barrier
                if (me == reader) {
                    double t0 = omp_get_wtime();
                    sink = sum16(a, n);
                    tr[r] = omp_get_wtime() - t0;
                }
                #pragma omp barrier
            }
        }
        w_us[reader] = median_us(tw);
        r_us[reader] = median_us(tr);
    }
    printf("handoff %6ld floats (%3ld KiB), read on the writing core: write %6.2f us, read %6.2f us; "
           "on the other core: write %6.2f us, read %6.2f us\n", n, n * 4 / 1024, w_us[0], r_us[0], w_us[1], r_us[1]);
    (void)sink;
    free(a);
    free(tw);
    free(tr);
}

static void split(long C, long HW)
{
    long n = C * HW;
    float *a = aligned_alloc(64, sizeof(float) * (size_t)n), *b = aligned_alloc(64, sizeof(float) * (size_t)n);
    float *y = aligned_alloc(64, sizeof(float) * (size_t)n);
    double *t = malloc(sizeof(double) * REPS);
    for (long i = 0; i < n; i++) a[i] = (float)i, b[i] = 1.0f, y[i] = 0.0f;
    const char *names[3] = {"one thread", "flat halves", "row halves"};
    double us[3];
    for (int mode = 0; mode < 3; mode++) {
        for (int r = 0; r < REPS; r++) {
            double t0 = omp_get_wtime();
            #pragma omp parallel num_threads(mode ? 2 : 1)
            {
                long me = omp_get_thread_num(), T = omp_get_num_threads();
                if (mode < 2) {
                    for (long i = n * me / T; i < n * (me + 1) / T; i++) y[i] = a[i] + b[i];
                } else {
                    for (long c = 0; c < C; c++)
                        for (long i = c * HW + HW * me / T; i < c * HW + HW * (me + 1) / T; i++) y[i] = a[i] + b[i];
                }
            }
            t[r] = omp_get_wtime() - t0;
        }
        us[mode] = median_us(t);
    }
    printf("split   %ld planes of %ld floats: ", C, HW);
    for (int mode = 0; mode < 3; mode++) printf("%s %.2f us%s", names[mode], us[mode], mode < 2 ? ", " : "\n");
    free(a), free(b), free(y), free(t);
}

int main(void)
{
    handoff(16384);
    handoff(65536);
    split(64, 1024);
    split(16, 1024);
    split(256, 64);
    return 0;
}
