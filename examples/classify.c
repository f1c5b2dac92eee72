/* classify.c - run an exported csub subspace from C: accuracy and time per alpha,
 * and the budget controller following a changing latency budget.
 *
 *   classify MODEL IMAGES LABELS [-a ALPHAS] [-b BATCH] [-n LIMIT] [-t THREADS] [--budget MS,MS,...]
 *
 * MODEL is a file written by csub.export; IMAGES and LABELS are IDX files
 * (gzipped or not), e.g. Fashion-MNIST's t10k-images-idx3-ubyte.gz. ALPHAS is
 * a comma-separated list (default: the levels stored in the file, else 1).
 * Output, one line per alpha:
 *   alpha <a> level <keep|width|bits> accuracy <acc> ms/image <t> weight_bytes <b>
 * With --budget, calibrates latency at batch 1 over the alphas and prints the
 * alpha pick_alpha chooses for each budget in turn.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "csub.h"

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* An IDX file of unsigned bytes: dims[ndim], data. Returns NULL with a message on any problem. */
static uint8_t *read_idx(const char *path, int want_ndim, int64_t dims[3])
{
    gzFile f = gzopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open\n", path); return NULL; }
    unsigned char head[4], d[4];
    uint8_t *data = NULL;
    int64_t total = 1;
    if (gzread(f, head, 4) != 4 || head[0] || head[1] || head[2] != 0x08 || head[3] != want_ndim) {
        fprintf(stderr, "%s: not an IDX file of unsigned bytes with %d dimensions\n", path, want_ndim);
        goto fail;
    }
    for (int i = 0; i < want_ndim; i++) {
        if (gzread(f, d, 4) != 4) { fprintf(stderr, "%s: truncated header\n", path); goto fail; }
        dims[i] = ((int64_t)d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3];
        if (dims[i] < 1 || dims[i] > (1 << 24)) { fprintf(stderr, "%s: bad dimension %lld\n", path, (long long)dims[i]); goto fail; }
        if (__builtin_mul_overflow(total, dims[i], &total) || total > ((int64_t)1 << 32)) {
            fprintf(stderr, "%s: more than 2^32 bytes of data\n", path);
            goto fail;
        }
    }
    if (!(data = malloc((size_t)total))) { fprintf(stderr, "%s: out of memory for %lld bytes\n", path, (long long)total); goto fail; }
    for (int64_t off = 0; off < total;) {
        int64_t chunk = total - off > (1 << 30) ? (1 << 30) : total - off;
        int got = gzread(f, data + off, (unsigned)chunk);
        if (got <= 0) { fprintf(stderr, "%s: truncated data\n", path); goto fail; }
        off += got;
    }
    gzclose(f);
    return data;
fail:
    free(data);
    gzclose(f);
    return NULL;
}

/* A whole decimal integer in [lo, hi] into *out; 0 on success. */
static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno == ERANGE || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_list(const char *s, double *out, int max)
{
    int n = 0;
    char *end;
    while (*s && n < max) {
        out[n++] = strtod(s, &end);
        if (end == s) return -1;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *budget = NULL, *alist = NULL;
    int64_t batch = 100, limit = -1, threads = 0;
    const char *pos[3];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        /* batch: at most the 2^24 images csub_model_forward runs at once; threads: as many as OpenMP may run */
        if (!strcmp(argv[i], "-a") && i + 1 < argc) alist = argv[++i];
        else if (!strcmp(argv[i], "-b") && i + 1 < argc) {
            if (parse_int(argv[++i], 1, (int64_t)1 << 24, &batch)) {
                fprintf(stderr, "-b: expected a batch of 1 to 16777216 images, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            if (parse_int(argv[++i], 1, INT64_MAX, &limit)) {
                fprintf(stderr, "-n: expected a positive number of images, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            if (parse_int(argv[++i], 1, CSUB_MAX_THREADS, &threads)) {
                fprintf(stderr, "-t: expected 1 to %d threads, got '%s'\n", CSUB_MAX_THREADS, argv[i]);
                return 2;
            }
        } else if (!strcmp(argv[i], "--budget") && i + 1 < argc) budget = argv[++i];
        else if (npos < 3 && argv[i][0] != '-') pos[npos++] = argv[i];
        else { npos = -1; break; }
    }
    if (npos != 3) {
        fprintf(stderr, "usage: %s MODEL IMAGES LABELS [-a ALPHAS] [-b BATCH] [-n LIMIT] [-t THREADS] "
                        "[--budget MS,MS,...]\n", argv[0]);
        return 2;
    }
    if (threads > 0) csub_set_num_threads((int)threads);
    char err[256];
    csub_model *m;
    int st = csub_model_load(pos[0], &m, err, sizeof err);
    if (st) { fprintf(stderr, "error %d (%s): %s\n", st, csub_strerror(st), err); return 1; }
    csub_model_desc d;
    csub_model_info(m, &d);
    int64_t idims[3], ldims[3];
    uint8_t *images = read_idx(pos[1], 3, idims), *labels = images ? read_idx(pos[2], 1, ldims) : NULL;
    if (!images || !labels) { csub_model_free(m); free(images); return 1; }
    if (d.input_c != 1 || idims[1] != d.input_h || idims[2] != d.input_w || ldims[0] != idims[0]) {
        fprintf(stderr, "the model takes %lldx%lldx%lld inputs; the files hold %lld images of %lldx%lld and %lld labels\n",
                (long long)d.input_c, (long long)d.input_h, (long long)d.input_w, (long long)idims[0],
                (long long)idims[1], (long long)idims[2], (long long)ldims[0]);
        csub_model_free(m); free(images); free(labels);
        return 1;
    }
    int64_t n = limit > 0 && limit < idims[0] ? limit : idims[0], per = idims[1] * idims[2];
    double alphas[256];
    int na = 0;
    if (alist && (na = parse_list(alist, alphas, 256)) < 1) { fprintf(stderr, "-a: expected alphas like 0.1,0.5,1\n"); return 2; }
    if (!alist) {
        for (int i = 0; i < d.num_levels && na < 256; i++) {
            double acc;
            csub_model_level(m, i, &alphas[na++], &acc);
        }
        if (!na) alphas[na++] = 1.0;
    }
    if (batch > n) batch = n; /* no buffer for images that are not there */
    size_t xfloats, yfloats, xbytes, ybytes; /* batch * per and batch * classes floats, checked */
    if (__builtin_mul_overflow((uint64_t)batch, (uint64_t)per, &xfloats) || __builtin_mul_overflow(xfloats, sizeof(float), &xbytes)
        || __builtin_mul_overflow((uint64_t)batch, (uint64_t)d.num_classes, &yfloats)
        || __builtin_mul_overflow(yfloats, sizeof(float), &ybytes)) {
        fprintf(stderr, "-b: a batch of %lld images of %lld values does not fit in memory\n", (long long)batch, (long long)per);
        return 1;
    }
    float *x = malloc(xbytes), *y = malloc(ybytes);
    if (!x || !y) { fprintf(stderr, "out of memory for a batch of %lld images\n", (long long)batch); return 1; }
    printf("model %s, regime %s, %lld images, batch %lld, %d threads, int8 kernel %s\n", pos[0], d.regime,
           (long long)n, (long long)batch, csub_get_num_threads(), csub_int8_kernel());
    for (int a = 0; a < na; a++) {
        double t0 = now_ms();
        if ((st = csub_model_set_alpha(m, alphas[a]))) { fprintf(stderr, "error %d: %s\n", st, csub_model_error(m)); return 1; }
        double t_set = now_ms() - t0, t_run = 0.0;
        int64_t correct = 0;
        for (int64_t i = 0; i < n; i += batch) {
            int64_t b = n - i < batch ? n - i : batch;
            if ((st = csub_model_input_u8(m, images + i * per, b, x))) { fprintf(stderr, "error %d: %s\n", st, csub_model_error(m)); return 1; }
            t0 = now_ms();
            if ((st = csub_model_forward(m, x, b, y))) { fprintf(stderr, "error %d: %s\n", st, csub_model_error(m)); return 1; }
            t_run += now_ms() - t0;
            for (int64_t j = 0; j < b; j++) {
                int64_t best = 0;
                for (int64_t k = 1; k < d.num_classes; k++)
                    if (y[j * d.num_classes + k] > y[j * d.num_classes + best]) best = k;
                correct += best == labels[i + j];
            }
        }
        csub_model_info(m, &d);
        double level = !strcmp(d.regime, "structured") ? d.width : !strcmp(d.regime, "quantized") ? d.bits : d.keep;
        printf("alpha %.4f level %g accuracy %.4f ms/image %.4f set_alpha_ms %.3f weight_bytes %lld\n", alphas[a], level,
               (double)correct / (double)n, t_run / (double)n, t_set, (long long)d.weight_bytes);
    }
    if (budget) {
        double budgets[64];
        int nb = parse_list(budget, budgets, 64);
        csub_level lv[256];
        if (nb < 1) { fprintf(stderr, "--budget: expected milliseconds like 2,0.5,1\n"); return 2; }
        if ((st = csub_model_calibrate(m, alphas, na, 1, 20, lv))) { fprintf(stderr, "error %d: %s\n", st, csub_model_error(m)); return 1; }
        for (int a = 0; a < na; a++)
            printf("calibrated alpha %.4f latency_ms %.4f memory_bytes %lld\n", lv[a].alpha, lv[a].latency_ms,
                   (long long)lv[a].memory_bytes);
        for (int b = 0; b < nb; b++) {
            double alpha;
            st = csub_pick_alpha(lv, na, budgets[b], 0, &alpha);
            if (st == CSUB_ERR_BUDGET) { printf("budget %.4f ms: no alpha fits\n", budgets[b]); continue; }
            csub_model_set_alpha(m, alpha);
            csub_model_input_u8(m, images, 1, x);
            double t0 = now_ms();
            csub_model_forward(m, x, 1, y);
            printf("budget %.4f ms: alpha %.4f, one image in %.4f ms\n", budgets[b], alpha, now_ms() - t0);
        }
    }
    free(x); free(y); free(images); free(labels);
    csub_model_free(m);
    return 0;
}
