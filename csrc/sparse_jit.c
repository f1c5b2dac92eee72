/* sparse_jit.c - a sparse convolution's kept weights compiled to AVX-512 code.
 *
 * The gather kernels of csr.c load one input vector per kept weight and
 * output channel: the loads, not the multiply-adds, bound them. Here the
 * weights of up to JIT_ACC output channels at a time become straight-line
 * code whose accumulators stay in registers: for each input position (plane
 * offset) any of those channels reads, the code loads the 16-float input
 * vector once and multiplies it into every accumulator that keeps a weight
 * there, the weight an embedded broadcast from a table:
 *
 *   vbroadcastss  zmm_a, [rcx + 4 a]          a < n: the bias
 *   vmovups       zmm29, [r8 + d]             the aligned block of the offset,
 *   vmovups       zmm30, [r8 + d + 64]        and the next, when not loaded
 *   valignd       zmm31, zmm30, zmm29, foff % 16   the vector at the offset
 *   vfmadd231ps   zmm_a, zmm31, [rdx + d]{1to16}   one per kept weight
 *   vmovups       [rsi + 4 a ld], zmm_a       the n sums, rows ld floats apart
 *
 * so a load serves all the chunk's kept weights at that offset, and the
 * offsets a row of the kernel reads (foff, foff + 1, ...) share their blocks
 * (r8 starts at rdi and moves up with the offsets, which the code visits in
 * increasing order, so that a block's displacement fits in one byte).
 * x must be 64-byte aligned: the loads are whole cache lines (an unaligned
 * one, split across two lines, costs about two). A chunk of output channels
 * is one function, or where its code is longer than JIT_PIECE_BYTES several,
 * its pieces, each called once per 16 outputs of the wide rows (csr.c) before
 * the next: f(x + i, out + i, wtab + the piece's first weight, bias), the
 * first starting the sums at the bias, the others at the sums the last one
 * stored. Each channel's weights are summed in CSR order, the bias first, by
 * fused multiply-adds: the bits of csr.c's AVX-512 gather.
 *
 * x86-64 with AVX-512 only (csub_isa_level), where the system maps executable
 * memory; elsewhere csub_spjit_build returns NULL and the caller keeps the
 * gather kernels. The code is written to a private mapping, then made
 * read-and-execute (never writable and executable at once). */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS under -std=c11 (the fuzz builds define it on the command line) */
#endif
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"

#if CSUB_X86 && defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#define JIT_OK 1
#else
#define JIT_OK 0
#endif

#define JIT_ACC 29 /* accumulators zmm0..zmm28 (zmm29, zmm30: two aligned blocks of the input; zmm31: a vector at
                    * an offset, shifted out of them) */
#define JIT_MAX_CODE (256L << 20) /* bytes of code for one layer, at most: above, the gather kernels */

struct csub_spjit {
    uint8_t *code;         /* the mapping */
    size_t map_len;
    int nchunks;
    int64_t *k0;           /* [nchunks + 1]: chunk c computes output channels [k0[c], k0[c + 1]) */
    int64_t *w0;           /* [nchunks]: its first weight in wtab */
    float *wtab;           /* the kept weights in the order the code reads them */
    int *p0;               /* [nchunks + 1]: chunk c's code is the pieces [p0[c], p0[c + 1]) */
    size_t *entry;         /* [pieces]: byte offset of piece i's function */
    int64_t *pw0;          /* [pieces]: its first weight in wtab */
    int64_t ld;            /* floats between the rows the code stores */
    int64_t nnz;
    float *zeros;          /* [K]: the bias when there is none */
};

#if JIT_OK
typedef struct {
    uint8_t *p;
} emit_t;

static void byte(emit_t *e, int b) { *e->p++ = (uint8_t)b; }
static void dword(emit_t *e, int32_t v)
{
    memcpy(e->p, &v, 4);
    e->p += 4;
}

/* EVEX.512 prefix, opcode and ModRM for `op reg, [base + disp]` (vvvv: the second source, 0 unused;
 * map 1 = 0F, 2 = 0F38; pp 0 = none, 1 = 66; bcast: {1to16}); disp8 (scaled by n) when it fits. */
static void evex_mem(emit_t *e, int map, int pp, int opcode, int reg, int vvvv, int base, int bcast, int64_t disp,
                     int n)
{
    byte(e, 0x62);
    byte(e, (!((reg >> 3) & 1) << 7) | (1 << 6) | (!((base >> 3) & 1) << 5) | (!((reg >> 4) & 1) << 4) | map);
    byte(e, (0 << 7) | ((~vvvv & 15) << 3) | 0x04 | pp);
    byte(e, (2 << 5) | (bcast << 4) | (!((vvvv >> 4) & 1) << 3));
    byte(e, opcode);
    if (disp % n == 0 && disp / n >= -128 && disp / n <= 127) {
        byte(e, (1 << 6) | ((reg & 7) << 3) | (base & 7));
        byte(e, (int)(disp / n));
    } else {
        byte(e, (2 << 6) | ((reg & 7) << 3) | (base & 7));
        dword(e, (int32_t)disp);
    }
}

/* EVEX.512 `op reg, vvvv, rm` on registers (W0), then imm8 where imm >= 0 */
static void evex_rr(emit_t *e, int map, int pp, int opcode, int reg, int vvvv, int rm, int imm)
{
    byte(e, 0x62);
    byte(e, (!((reg >> 3) & 1) << 7) | (!((rm >> 4) & 1) << 6) | (!((rm >> 3) & 1) << 5) | (!((reg >> 4) & 1) << 4) |
                map);
    byte(e, ((~vvvv & 15) << 3) | 0x04 | pp);
    byte(e, (2 << 5) | (!((vvvv >> 4) & 1) << 3));
    byte(e, opcode);
    byte(e, 0xC0 | ((reg & 7) << 3) | (rm & 7));
    if (imm >= 0) byte(e, imm);
}

enum { RCX = 1, RDX = 2, RSI = 6, RDI = 7, R8 = 8, LO = 29, HI = 30, XREG = 31 };

/* Bytes of code after which a chunk's function ends and the next piece of it begins (measured on
 * ResNet18's 28 x 28 and 14 x 14 sparse layers at batch 1, 90 % sparse: 1.08-1.16x with pieces of
 * 16 KB; 8 and 32 KB within the noise of that) */
#define JIT_PIECE_BYTES 16384

/* The pieces emit_chunk may split a chunk of m kept weights into, at most (each but the last is
 * longer than JIT_PIECE_BYTES: its n <= 29 loads or broadcasts, at most 293 bytes, and more than
 * JIT_PIECE_BYTES - 512 bytes of the at most 48 a weight emits), and a bound on the bytes it writes
 * for n channels, a multiple of 64 (each piece: r8, the n loads or broadcasts and stores, the
 * return, the padding). */
static int64_t chunk_pieces(int64_t m)
{
    return 48 * m / (JIT_PIECE_BYTES - 512) + 1;
}

static size_t chunk_bound(int64_t n, int64_t m)
{
    return (size_t)(chunk_pieces(m) * (80 + 24 * n) + 48 * m + 63) / 64 * 64;
}

/* The end of a piece: the n sums stored, rows ld floats apart; the return; padding to 64 bytes */
static void close_piece(emit_t *e, int64_t n, int64_t ld)
{
    for (int64_t a = 0; a < n; a++) evex_mem(e, 1, 0, 0x11, (int)a, 0, RSI, 0, 4 * a * ld, 64); /* vmovups */
    byte(e, 0xC5), byte(e, 0xF8), byte(e, 0x77); /* vzeroupper */
    byte(e, 0xC3);                                /* ret */
    while ((uintptr_t)e->p % 64) byte(e, 0xCC);   /* the next function on its own cache line */
}

/* Chunk [k0, k1) as functions at p (64-byte aligned), its pieces: each at most about
 * JIT_PIECE_BYTES, so that it runs from the core's decoded-instruction cache over the vectors of a
 * band (a piece of ResNet18's 512-channel layers, 29 channels of 461 weights each, was 100 KB,
 * fetched from L2 and decoded again for every vector), cut between two offsets. The first piece
 * starts the sums at the bias, the others load them from out, where the last stored them: the
 * same sums, in the same order. off[i], pw[i]: piece i's byte offset from p and first weight in
 * wtab; *np its count; *wi: the next free slot of wtab. Returns the end of the code. */
static uint8_t *emit_chunk(uint8_t *p, const int64_t *rowptr, const int64_t *foff, const float *values, int64_t k0,
                           int64_t k1, int64_t ld, float *wtab, int64_t *wi, size_t *off, int64_t *pw, int *np)
{
    emit_t e = {p};
    int64_t n = k1 - k0, cur[JIT_ACC];
    /* merge the chunk's CSR rows by offset (each row's offsets increase): cur[a] is row a's next weight */
    for (int64_t a = 0; a < n; a++) cur[a] = rowptr[k0 + a];
    int64_t wbase = 0;        /* the weight rdx points at */
    int64_t lo = -2, hi = -2; /* the blocks of 16 floats in zmm29, zmm30 */
    int64_t xb = 0;           /* the block r8 points at: rdi + 64 xb, moved up as the offsets grow, so that
                               * a block's load takes a one-byte displacement */
    uint8_t *start = NULL;    /* the current piece's */
    *np = 0;
    for (;;) {
        int64_t o = -1;
        for (int64_t a = 0; a < n; a++)
            if (cur[a] < rowptr[k0 + a + 1] && (o < 0 || foff[cur[a]] < o)) o = foff[cur[a]];
        if (start && (o < 0 || e.p - start > JIT_PIECE_BYTES)) {
            close_piece(&e, n, ld);
            start = NULL;
        }
        if (o < 0 && *np > 0) break;
        if (!start) { /* a piece begins: the sums from the bias, or from out */
            start = e.p;
            off[*np] = (size_t)(e.p - p);
            pw[(*np)++] = wbase = *wi;
            for (int64_t a = 0; a < n; a++)
                if (*np == 1) evex_mem(&e, 2, 1, 0x18, (int)a, 0, RCX, 0, 4 * a, 4);       /* vbroadcastss */
                else evex_mem(&e, 1, 0, 0x10, (int)a, 0, RSI, 0, 4 * a * ld, 64);            /* vmovups */
            byte(&e, 0x49), byte(&e, 0x89), byte(&e, 0xF8); /* mov r8, rdi */
            lo = hi = -2;
            xb = 0;
        }
        if (o < 0) continue; /* no kept weight: the bias alone, closed above */
        /* x + o (rdi 64-byte aligned) from the aligned blocks o / 16 and the next: a load split across
         * two cache lines costs about two, and each offset's vector was one (benchmarks/fmapeak.c: the
         * pattern at 30-43 GMAC/s with unaligned loads, 75-85 with these; ResNet18's sparse layers
         * 1.03-1.4x) */
        int64_t blk = o >> 4, r = o & 15;
        if (blk + 1 - xb > 127) { /* add r8, 64 (blk - xb) */
            byte(&e, 0x49), byte(&e, 0x81), byte(&e, 0xC0), dword(&e, (int32_t)(64 * (blk - xb)));
            xb = blk;
        }
        if (lo != blk) {
            if (hi == blk) evex_rr(&e, 1, 0, 0x28, LO, 0, HI, -1);            /* vmovaps zmm29, zmm30 */
            else evex_mem(&e, 1, 0, 0x10, LO, 0, R8, 0, 64 * (blk - xb), 64); /* vmovups zmm29, [r8 + d] */
            lo = blk;
        }
        int src = LO;
        if (r) {
            if (hi != blk + 1) evex_mem(&e, 1, 0, 0x10, HI, 0, R8, 0, 64 * (blk + 1 - xb), 64), hi = blk + 1;
            evex_rr(&e, 3, 1, 0x03, XREG, HI, LO, (int)r); /* valignd zmm31, zmm30, zmm29, r */
            src = XREG;
        }
        for (int64_t a = 0; a < n; a++) {
            if (cur[a] >= rowptr[k0 + a + 1] || foff[cur[a]] != o) continue;
            int64_t w = (*wi)++;
            wtab[w] = values[cur[a]++];
            if (w - wbase > 127) { /* add rdx, 4 (w - wbase): the next 128 weights in disp8 reach */
                byte(&e, 0x48), byte(&e, 0x81), byte(&e, 0xC2), dword(&e, (int32_t)(4 * (w - wbase)));
                wbase = w;
            }
            evex_mem(&e, 2, 1, 0xB8, (int)a, src, RDX, 1, 4 * (w - wbase), 4); /* vfmadd231ps {1to16} */
        }
    }
    return e.p;
}
#endif

void csub_spjit_free(csub_spjit *j)
{
    if (!j) return;
#if JIT_OK
    if (j->code) munmap(j->code, j->map_len);
#endif
    free(j->k0), free(j->w0), free(j->wtab), free(j->p0), free(j->entry), free(j->pw0), free(j->zeros);
    free(j);
}

int csub_spjit_available(void)
{
    return JIT_OK && csub_isa_level() >= CSUB_ISA_AVX512;
}

csub_spjit *csub_spjit_build(const int64_t *rowptr, const int64_t *foff, const float *values, int64_t K, int64_t ld)
{
#if JIT_OK
    if (!csub_spjit_available() || K < 1 || ld < 16 || 4 * K * ld > INT32_MAX) return NULL;
    int64_t nnz = rowptr[K];
    for (int64_t t = 0; t < nnz; t++)
        if (foff[t] > INT32_MAX / 4 - 64) return NULL; /* beyond a disp32 */
    int nch = (int)((K + JIT_ACC - 1) / JIT_ACC);
    csub_spjit *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->nchunks = nch;
    j->ld = ld;
    j->nnz = nnz;
    j->k0 = malloc(sizeof(int64_t) * (size_t)(nch + 1));
    j->w0 = malloc(sizeof(int64_t) * (size_t)nch);
    j->p0 = malloc(sizeof(int) * (size_t)(nch + 1));
    j->wtab = malloc(sizeof(float) * (size_t)(nnz > 0 ? nnz : 1));
    j->zeros = calloc((size_t)K, sizeof(float));
    /* pre[c], pp[c]: chunk c's code and pieces at their bounds' offsets; off, pw: each piece's
     * offset in its chunk's code and first weight; len, np: the chunk's bytes and pieces */
    size_t *pre = malloc(sizeof(size_t) * (size_t)(nch + 1)), *len = malloc(sizeof(size_t) * (size_t)nch);
    int64_t *pp = malloc(sizeof(int64_t) * (size_t)(nch + 1));
    int *np = malloc(sizeof(int) * (size_t)nch);
    size_t *off = NULL;
    int64_t *pw = NULL;
    uint8_t *tmp = NULL;
    if (!j->k0 || !j->w0 || !j->p0 || !j->wtab || !j->zeros || !pre || !len || !pp || !np) goto fail;
    pre[0] = 0;
    pp[0] = 0;
    for (int c = 0; c <= nch; c++) j->k0[c] = K * c / nch; /* chunks of even size */
    for (int c = 0; c < nch; c++) {
        int64_t m = rowptr[j->k0[c + 1]] - rowptr[j->k0[c]];
        j->w0[c] = rowptr[j->k0[c]]; /* a chunk's weights go to wtab in a run as long as its rows */
        pre[c + 1] = pre[c] + chunk_bound(j->k0[c + 1] - j->k0[c], m);
        pp[c + 1] = pp[c] + chunk_pieces(m);
    }
    if (pre[nch] > JIT_MAX_CODE || !(tmp = aligned_alloc(64, pre[nch])) ||
        !(off = malloc(sizeof(size_t) * (size_t)pp[nch])) || !(pw = malloc(sizeof(int64_t) * (size_t)pp[nch])))
        goto fail;
    /* the chunks emitted side by side (each at its bound's offset, threads taking chunks), then packed
     * into the mapping: the code addresses nothing but its arguments, so it can move */
    #pragma omp parallel for num_threads(omp_in_parallel() ? 1 : csub_get_num_threads()) schedule(dynamic, 1)
    for (int c = 0; c < nch; c++) {
        int64_t wi = j->w0[c];
        len[c] = (size_t)(emit_chunk(tmp + pre[c], rowptr, foff, values, j->k0[c], j->k0[c + 1], ld, j->wtab, &wi,
                                     off + pp[c], pw + pp[c], &np[c]) - (tmp + pre[c]));
    }
    j->p0[0] = 0;
    for (int c = 0; c < nch; c++) j->p0[c + 1] = j->p0[c] + np[c];
    if (!(j->entry = malloc(sizeof(size_t) * (size_t)j->p0[nch])) ||
        !(j->pw0 = malloc(sizeof(int64_t) * (size_t)j->p0[nch])))
        goto fail;
    size_t total = 0;
    for (int c = 0; c < nch; c++) {
        for (int i = 0; i < np[c]; i++) {
            j->entry[j->p0[c] + i] = total + off[pp[c] + i];
            j->pw0[j->p0[c] + i] = pw[pp[c] + i];
        }
        total += len[c];
    }
    long page = sysconf(_SC_PAGESIZE);
    j->map_len = (total + (size_t)page - 1) / (size_t)page * (size_t)page;
    void *m = mmap(NULL, j->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) goto fail;
    j->code = m;
    for (int c = 0, i = 0; c < nch; i += np[c], c++) memcpy(j->code + j->entry[i], tmp + pre[c], len[c]);
    if (mprotect(j->code, j->map_len, PROT_READ | PROT_EXEC)) goto fail;
    free(pre), free(len), free(pp), free(np), free(off), free(pw), free(tmp);
    return j;
fail:
    free(pre), free(len), free(pp), free(np), free(off), free(pw), free(tmp);
    csub_spjit_free(j);
    return NULL;
#else
    (void)rowptr, (void)foff, (void)values, (void)K, (void)ld;
    return NULL;
#endif
}

typedef void (*chunk_fn)(const float *x, float *out, const float *w, const float *b);

int csub_spjit_chunks(const csub_spjit *j)
{
    return j->nchunks;
}

int64_t csub_spjit_ld(const csub_spjit *j)
{
    return j->ld;
}

int64_t csub_spjit_chunk_k0(const csub_spjit *j, int c)
{
    return j->k0[c];
}

int64_t csub_spjit_chunk_w0(const csub_spjit *j, int c)
{
    return c < j->nchunks ? j->w0[c] : j->nnz;
}

int64_t csub_spjit_rows(const csub_spjit *j)
{
    return j->k0[j->nchunks];
}

int64_t csub_spjit_nnz(const csub_spjit *j)
{
    return j->nnz;
}

size_t csub_spjit_bytes(const csub_spjit *j)
{
    return j ? j->map_len + sizeof(float) * (size_t)j->nnz : 0;
}

void csub_spjit_run(const csub_spjit *j, int c, const float *x, float *out, const float *b, int64_t nv, int64_t ni,
                    int64_t xs, int64_t os)
{
    int64_t k0 = j->k0[c];
    out += k0 * j->ld;
    b = (b ? b : j->zeros) + k0;
    for (int i = j->p0[c]; i < j->p0[c + 1]; i++) { /* each piece over the vectors, then the next */
        chunk_fn f;
        void *addr = j->code + j->entry[i];
        memcpy(&f, &addr, sizeof f); /* object to function pointer (POSIX guarantees the round trip) */
        const float *w = j->wtab + j->pw0[i];
        for (int64_t n = 0; n < ni; n++)
            for (int64_t v = 0; v < nv; v++) f(x + n * xs + 16 * v, out + n * os + 16 * v, w, b);
    }
}
