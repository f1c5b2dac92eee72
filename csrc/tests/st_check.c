/*
 * st_check.c - drives the safetensors and JSON readers over files, for the
 * sanitizer build (make -C csrc fuzz-st).
 *
 *   st_check FILE...      read each file with csub_st_read
 *   st_check -j FILE...   parse each file as one JSON document
 *
 * Prints one line per file, "ok <n tensors>" (or "ok json") or
 * "error <code> <message>", and exits 0: a malformed file is an expected
 * outcome, and only a crash or a sanitizer report (which aborts) is a failure.
 *
 * Beyond reading, each accepted file is exercised the way a consumer would:
 * every byte of every tensor is touched, every tensor is found again by name,
 * every metadata value is read back. The header is also parsed a second time
 * from an exactly sized copy, so a JSON read past its end is caught by
 * AddressSanitizer rather than landing in the data section.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "csub.h"
#include "st_walk.h"

#define SLURP_MAX ((size_t)1 << 30)

/* Read a whole file into an exactly sized buffer (NULL for an empty file, or
 * one over SLURP_MAX). */
static uint8_t *slurp(const char *path, size_t *len)
{
    *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        uint8_t chunk[4096];
        size_t r = fread(chunk, 1, sizeof chunk, fp);
        if (r == 0) break;
        if (r > SLURP_MAX - n) {
            free(buf);
            fclose(fp);
            return NULL;
        }
        if (!buf || n + r > cap) {
            cap = (n + r) * 2;
            uint8_t *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = b;
        }
        memcpy(buf + n, chunk, r);
        n += r;
    }
    fclose(fp);
    if (!n) {
        free(buf);
        return NULL;
    }
    uint8_t *exact = malloc(n);
    if (exact) memcpy(exact, buf, n);
    free(buf);
    *len = exact ? n : 0;
    return exact;
}

static int check_json(const char *path)
{
    size_t len;
    uint8_t *text = slurp(path, &len);
    char err[256];
    csub_json *v = NULL;
    int st = csub_json_parse((const char *)text, len, &v, err, sizeof err);
    if (st) printf("error %d %s\n", st, err);
    else printf("ok json\n");
    csub_json_free(v);
    free(text);
    return 0;
}

/* The header again, from a copy of exactly its size. */
static void reparse_header(const char *path)
{
    size_t len;
    uint8_t *buf = slurp(path, &len);
    if (buf && len >= 8) {
        uint64_t h = 0;
        for (int i = 7; i >= 0; i--) h = h << 8 | buf[i];
        if (h <= len - 8) {
            char *copy = malloc(h ? (size_t)h : 1);
            if (copy) {
                memcpy(copy, buf + 8, (size_t)h);
                csub_json *v = NULL;
                char err[256];
                if (csub_json_parse(copy, (size_t)h, &v, err, sizeof err) == CSUB_OK) csub_json_free(v);
                free(copy);
            }
        }
    }
    free(buf);
}

static int check_st(const char *path)
{
    csub_st_file f;
    char err[512];
    int st = csub_st_read(path, &f, err, sizeof err);
    if (st != CSUB_ERR_IO) reparse_header(path);
    if (st) {
        printf("error %d %s\n", st, err);
        csub_st_free(&f);   /* already freed: must be harmless */
        return 0;
    }
    size_t meta_chars; /* read to each value's end; not printed */
    unsigned sum = st_walk(&f, &meta_chars);
    printf("ok %zu (checksum %u)\n", f.n, sum);
    csub_st_free(&f);
    csub_st_free(&f);
    return 0;
}

int main(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-j") == 0) {
            json = 1;
            continue;
        }
        printf("%s: ", argv[i]);
        if (json) check_json(argv[i]);
        else check_st(argv[i]);
        fflush(stdout);
    }
    return 0;
}
