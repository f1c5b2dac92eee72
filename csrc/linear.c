/* linear.c - fully connected layer, forward and backward. */
#include "internal.h"

/* x[N,IN], w[O,IN], b[O] -> y[N,O] = x w^T + b */
void csub_linear_forward(const float *x, const float *w, const float *b, float *y,
                         int64_t N, int64_t IN, int64_t O)
{
    csub_gemm(0, 1, N, O, IN, 1.0f, x, IN, w, IN, 0.0f, y, O);
    if (b)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++) y[n * O + o] += b[o];
}

/* dy[N,O] -> dx[N,IN] = dy w, dw[O,IN] += dy^T x, db[O] += sum_n dy */
void csub_linear_backward(const float *x, const float *w, const float *dy,
                          float *dx, float *dw, float *db,
                          int64_t N, int64_t IN, int64_t O)
{
    if (dx) csub_gemm(0, 0, N, IN, O, 1.0f, dy, O, w, IN, 0.0f, dx, IN);
    if (dw) csub_gemm(1, 0, O, IN, N, 1.0f, dy, O, x, IN, 1.0f, dw, IN);
    if (db)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++) db[o] += dy[n * O + o];
}
