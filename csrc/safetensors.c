/*
 * safetensors.c - a validating reader for the safetensors format.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON (UTF-8,
 * possibly padded with spaces), then the data section. The header is an
 * object mapping tensor names to {"dtype", "shape", "data_offsets"}, plus an
 * optional "__metadata__" object of strings. Offsets are relative to the
 * start of the data section.
 *
 * Nothing in the file is trusted before it is checked: the header length
 * against the file size and a 100 MB cap, the JSON (json.c, strict), every
 * field's type, dtype names, shapes (at most 8 non-negative dimensions whose
 * product, times the item size, must fit in int64 without overflow), offsets
 * (begin <= end <= size of the data section, end - begin equal to the
 * tensor's byte size) and overlaps between tensors. Gaps between tensors and
 * bytes after the last one are allowed; empty tensors may sit anywhere in the
 * data section. Every failure is CSUB_ERR_FORMAT (CSUB_ERR_NOMEM, CSUB_ERR_IO
 * where they apply, CSUB_ERR_IO for a file over 16 GiB) with a message naming
 * the tensor and field, and leaves the csub_st_file freed.
 *
 * Checksums: a file whose __metadata__ has the entry "csub.crc32" (every file
 * csub writes) is verified on every read. The entry is a JSON object text
 * mapping each tensor name, and "__metadata__", to 8 lowercase hex digits of
 * a CRC-32 (the IEEE / zlib polynomial 0xEDB88320, reflected, as Python's
 * zlib.crc32): a tensor's covers the ASCII text "<DTYPE> <d0>,<d1>,...\n"
 * (no dimensions for a scalar) followed by its data bytes; "__metadata__"
 * covers, for every other metadata entry in bytewise order of the keys, the
 * key, a NUL byte, the value and a NUL byte. Every tensor needs an entry and
 * every entry a tensor. Files without the entry (written before csub stored
 * checksums) are read unverified.
 *
 * csub_st_check_layout adds the reference reader's layout rule (the tensors
 * fill the data section exactly), which the model loader applies.
 *
 * The file buffer is owned by the csub_st_file; tensor data pointers point
 * into it, at whatever alignment the file gives (readers memcpy).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define ST_MAX_HEADER ((uint64_t)100000000)     /* as the reference implementation */
#define ST_MAX_FILE ((uint64_t)16 << 30)        /* csub_st_read refuses larger files */
#define ST_MAX_DIM 8
#define ST_NAME_SHOWN 64                        /* characters of a name in messages */
#define ST_CRC_KEY "csub.crc32"                 /* the checksum entry of __metadata__ */
#define ST_CRC_META "__metadata__"              /* its key for the metadata's own checksum */

static const struct {
    const char *name;
    csub_dtype dtype;
    size_t size;
} dtypes[] = {
    {"F32", CSUB_DT_F32, 4}, {"F64", CSUB_DT_F64, 8}, {"F16", CSUB_DT_F16, 2},
    {"BF16", CSUB_DT_BF16, 2}, {"I64", CSUB_DT_I64, 8}, {"I32", CSUB_DT_I32, 4},
    {"I16", CSUB_DT_I16, 2}, {"I8", CSUB_DT_I8, 1}, {"U8", CSUB_DT_U8, 1},
    {"BOOL", CSUB_DT_BOOL, 1}, {"U16", CSUB_DT_U16, 2}, {"U32", CSUB_DT_U32, 4},
    {"U64", CSUB_DT_U64, 8},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

size_t csub_dtype_size(csub_dtype dt)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dt) return dtypes[i].size;
    return 0;
}

static const char *dtype_name(csub_dtype dt)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dt) return dtypes[i].name;
    return "?";
}

#define seterr csub_fail /* internal.h */

void csub_st_free(csub_st_file *f)
{
    if (!f) return;
    free(f->buf);
    csub_json_free(f->header);
    free(f->tensors);
    memset(f, 0, sizeof *f);
}

/* ------------------------------------------------------------ validation */

/* One tensor entry `name` -> v. */
static int parse_tensor(const char *name, const csub_json *v, const uint8_t *data, uint64_t dlen,
                        csub_st_tensor *t, char *err, size_t errlen)
{
    const int F = CSUB_ERR_FORMAT, W = ST_NAME_SHOWN;
    if (v->type != CSUB_JSON_OBJECT)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": expected an object", W, name);
    for (size_t i = 0; i < v->n; i++) {
        const char *k = v->keys[i];
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": unexpected field \"%.*s\"",
                          W, name, W, k);
    }
    const csub_json *jd = csub_json_get(v, "dtype"), *js = csub_json_get(v, "shape"),
                    *jo = csub_json_get(v, "data_offsets");
    const char *missing = !jd ? "dtype" : !js ? "shape" : !jo ? "data_offsets" : NULL;
    if (missing)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": missing field \"%s\"", W, name, missing);

    t->name = name;
    /* dtype */
    if (jd->type != CSUB_JSON_STRING)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": dtype is not a string", W, name);
    size_t d;
    for (d = 0; d < N_DTYPES; d++)
        if (strcmp(jd->string, dtypes[d].name) == 0) break;
    if (d == N_DTYPES)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": unknown dtype \"%.*s\"",
                      W, name, 16, jd->string);
    t->dtype = dtypes[d].dtype;
    int64_t itemsize = (int64_t)dtypes[d].size;

    /* shape: numel * itemsize must fit in int64 (a zero dimension makes it 0) */
    if (js->type != CSUB_JSON_ARRAY)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": shape is not an array", W, name);
    if (js->n > ST_MAX_DIM)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": shape has %zu dimensions (at most %d)",
                      W, name, js->n, ST_MAX_DIM);
    t->ndim = (int)js->n;
    int zero = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (csub_json_int(&js->items[i], 0, INT64_MAX, &t->shape[i]))
            return seterr(err, errlen, F,
                          "safetensors: tensor \"%.*s\": shape[%d] is not a non-negative integer "
                          "(below 2^53)", W, name, i);
        if (t->shape[i] == 0) zero = 1;
    }
    int64_t numel = 1;
    if (zero) {
        numel = 0;
    } else {
        for (int i = 0; i < t->ndim; i++) {
            if (numel > INT64_MAX / itemsize / t->shape[i])
                return seterr(err, errlen, F,
                              "safetensors: tensor \"%.*s\": shape is too large (%s bytes overflow int64)",
                              W, name, dtypes[d].name);
            numel *= t->shape[i];
        }
    }
    t->numel = numel;

    /* data_offsets */
    int64_t off[2];
    if (jo->type != CSUB_JSON_ARRAY || jo->n != 2)
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": data_offsets is not an array of 2",
                      W, name);
    for (int i = 0; i < 2; i++)
        if (csub_json_int(&jo->items[i], 0, INT64_MAX, &off[i]))
            return seterr(err, errlen, F,
                          "safetensors: tensor \"%.*s\": data_offsets[%d] is not a non-negative integer "
                          "(below 2^53)", W, name, i);
    if (off[0] > off[1])
        return seterr(err, errlen, F, "safetensors: tensor \"%.*s\": data_offsets [%lld, %lld] are reversed",
                      W, name, (long long)off[0], (long long)off[1]);
    if ((uint64_t)off[1] > dlen)
        return seterr(err, errlen, F,
                      "safetensors: tensor \"%.*s\": data_offsets end %lld is past the data section "
                      "(%llu bytes)", W, name, (long long)off[1], (unsigned long long)dlen);
    if (off[1] - off[0] != numel * itemsize)
        return seterr(err, errlen, F,
                      "safetensors: tensor \"%.*s\": data_offsets [%lld, %lld] hold %lld bytes, "
                      "the shape and dtype need %lld", W, name, (long long)off[0], (long long)off[1],
                      (long long)(off[1] - off[0]), (long long)(numel * itemsize));
    t->data = data + off[0];
    return CSUB_OK;
}

typedef struct {
    int64_t begin, end;
    size_t index;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* No byte belongs to two tensors (empty tensors own no bytes). */
static int check_overlap(const csub_st_file *f, const uint8_t *data, char *err, size_t errlen)
{
    if (f->n < 2) return CSUB_OK;
    span *s = malloc(f->n * sizeof *s);
    if (!s) return seterr(err, errlen, CSUB_ERR_NOMEM, "safetensors: out of memory");
    size_t m = 0;
    for (size_t i = 0; i < f->n; i++) {
        const csub_st_tensor *t = &f->tensors[i];
        int64_t b = (int64_t)(t->data - data), bytes = t->numel * (int64_t)csub_dtype_size(t->dtype);
        if (bytes > 0) s[m++] = (span){b, b + bytes, i};
    }
    if (m > 1) qsort(s, m, sizeof *s, cmp_span);
    int st = CSUB_OK;
    for (size_t i = 1; i < m; i++)
        if (s[i].begin < s[i - 1].end) {
            st = seterr(err, errlen, CSUB_ERR_FORMAT,
                        "safetensors: tensors \"%.*s\" [%lld, %lld] and \"%.*s\" [%lld, %lld] overlap",
                        ST_NAME_SHOWN, f->tensors[s[i - 1].index].name,
                        (long long)s[i - 1].begin, (long long)s[i - 1].end,
                        ST_NAME_SHOWN, f->tensors[s[i].index].name,
                        (long long)s[i].begin, (long long)s[i].end);
            break;
        }
    free(s);
    return st;
}

static int parse_metadata(const csub_json *v, char *err, size_t errlen)
{
    if (v->type != CSUB_JSON_OBJECT)
        return seterr(err, errlen, CSUB_ERR_FORMAT, "safetensors: __metadata__ is not an object");
    for (size_t i = 0; i < v->n; i++)
        if (v->items[i].type != CSUB_JSON_STRING)
            return seterr(err, errlen, CSUB_ERR_FORMAT,
                          "safetensors: __metadata__ value of \"%.*s\" is not a string",
                          ST_NAME_SHOWN, v->keys[i]);
    return CSUB_OK;
}

/* ------------------------------------------------------------- checksums */

/* CRC-32 slice-by-16 tables t[16][256], built per verification (16 KiB, microseconds):
 * no state outlives a call. */
static void crc32_tables(uint32_t t[16][256])
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        t[0][i] = c;
    }
    for (int s = 1; s < 16; s++)
        for (int i = 0; i < 256; i++) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* CRC-32 of p[n] continuing crc (0 to start), as zlib's crc32(crc, p, n): 16 bytes a step. */
static uint32_t crc32_update(const uint32_t t[16][256], uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (; n >= 16; p += 16, n -= 16) {
        uint32_t a = crc ^ load_le32(p), b = load_le32(p + 4), c = load_le32(p + 8), d = load_le32(p + 12);
        crc = t[15][a & 0xff] ^ t[14][(a >> 8) & 0xff] ^ t[13][(a >> 16) & 0xff] ^ t[12][a >> 24]
            ^ t[11][b & 0xff] ^ t[10][(b >> 8) & 0xff] ^ t[9][(b >> 16) & 0xff] ^ t[8][b >> 24]
            ^ t[7][c & 0xff] ^ t[6][(c >> 8) & 0xff] ^ t[5][(c >> 16) & 0xff] ^ t[4][c >> 24]
            ^ t[3][d & 0xff] ^ t[2][(d >> 8) & 0xff] ^ t[1][(d >> 16) & 0xff] ^ t[0][d >> 24];
    }
    while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

/* 8 lowercase hex digits into *out; 0 on success. */
static int parse_hex32(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') v = v << 4 | (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v << 4 | (uint32_t)(c - 'a' + 10);
        else return -1;
    }
    if (s[8]) return -1;
    *out = v;
    return 0;
}

/* The metadata checksum: every entry but ST_CRC_KEY, keys in bytewise order, "key\0value\0". */
static uint32_t metadata_crc(const uint32_t t[16][256], const csub_json *md)
{
    uint32_t crc = 0;
    const char *prev = NULL;
    for (;;) {  /* selection by strcmp: a handful of keys, unique (json.c) */
        const char *next = NULL;
        size_t at = 0;
        for (size_t i = 0; i < md->n; i++) {
            const char *k = md->keys[i];
            if (!strcmp(k, ST_CRC_KEY) || (prev && strcmp(k, prev) <= 0)) continue;
            if (!next || strcmp(k, next) < 0) next = k, at = i;
        }
        if (!next) return crc;
        const char *v = md->items[at].string;
        crc = crc32_update(t, crc, (const uint8_t *)next, strlen(next) + 1);
        crc = crc32_update(t, crc, (const uint8_t *)v, strlen(v) + 1);
        prev = next;
    }
}

/* A tensor's checksum: "<DTYPE> <d0>,<d1>,...\n" then its bytes. */
static uint32_t tensor_crc(const uint32_t t[16][256], const csub_st_tensor *x)
{
    char desc[16 + ST_MAX_DIM * 21];
    int n = snprintf(desc, sizeof desc, "%s ", dtype_name(x->dtype));
    for (int i = 0; i < x->ndim; i++)
        n += snprintf(desc + n, sizeof desc - (size_t)n, i ? ",%lld" : "%lld", (long long)x->shape[i]);
    n += snprintf(desc + n, sizeof desc - (size_t)n, "\n");
    uint32_t crc = crc32_update(t, 0, (const uint8_t *)desc, (size_t)n);
    return crc32_update(t, crc, x->data, (size_t)x->numel * csub_dtype_size(x->dtype));
}

/* Verify the "csub.crc32" entry of f's metadata, if there is one. path names the file in a
 * mismatch (NULL: not named). */
static int verify_checksums(const csub_st_file *f, const char *path, char *err, size_t errlen)
{
    const int F = CSUB_ERR_FORMAT, W = ST_NAME_SHOWN;
    const char *text = csub_st_meta(f, ST_CRC_KEY);
    if (!text) return CSUB_OK;
    const char *in = path ? path : "", *sep = path ? ": " : "";
    csub_json *sums = NULL;
    char jerr[200];
    int st = csub_json_parse(text, strlen(text), &sums, jerr, sizeof jerr);
    if (st) return seterr(err, errlen, st, "safetensors: %s%s__metadata__ \"" ST_CRC_KEY "\": %s", in, sep, jerr);
    uint32_t (*t)[256] = malloc(16 * sizeof *t);
    if (!t) {
        csub_json_free(sums);
        return seterr(err, errlen, CSUB_ERR_NOMEM, "safetensors: out of memory");
    }
    crc32_tables(t);
    st = CSUB_OK;
    if (sums->type != CSUB_JSON_OBJECT) {
        st = seterr(err, errlen, F, "safetensors: %s%s__metadata__ \"" ST_CRC_KEY "\" is not a JSON object", in, sep);
        goto done;
    }
    for (size_t i = 0; i < sums->n && !st; i++) {
        const char *k = sums->keys[i];
        uint32_t want;
        if (sums->items[i].type != CSUB_JSON_STRING || parse_hex32(sums->items[i].string, &want))
            st = seterr(err, errlen, F, "safetensors: %s%s__metadata__ \"" ST_CRC_KEY "\": the checksum of \"%.*s\" "
                        "is not 8 lowercase hex digits", in, sep, W, k);
        else if (strcmp(k, ST_CRC_META) && !csub_st_find(f, k))
            st = seterr(err, errlen, F, "safetensors: %s%s__metadata__ \"" ST_CRC_KEY "\" has a checksum for "
                        "\"%.*s\", which is not a tensor of the file", in, sep, W, k);
    }
    const csub_json *mv = st ? NULL : csub_json_get(sums, ST_CRC_META);
    uint32_t want = 0, got = 0;
    if (!st && !mv)
        st = seterr(err, errlen, F, "safetensors: %s%s__metadata__ \"" ST_CRC_KEY "\" has no checksum for "
                    "\"" ST_CRC_META "\"", in, sep);
    if (!st && (parse_hex32(mv->string, &want), (got = metadata_crc(t, f->metadata)) != want))
        st = seterr(err, errlen, F, "safetensors: %s%s__metadata__: CRC-32 %08x does not match the stored %08x "
                    "(the file is damaged or was edited)", in, sep, (unsigned)got, (unsigned)want);
    for (size_t i = 0; i < f->n && !st; i++) {
        const csub_st_tensor *x = &f->tensors[i];
        const csub_json *v = csub_json_get(sums, x->name);
        if (!v)
            st = seterr(err, errlen, F, "safetensors: %s%stensor \"%.*s\" has no checksum in __metadata__ "
                        "\"" ST_CRC_KEY "\"", in, sep, W, x->name);
        else if (parse_hex32(v->string, &want), (got = tensor_crc(t, x)) != want)
            st = seterr(err, errlen, F, "safetensors: %s%stensor \"%.*s\": CRC-32 %08x does not match the stored "
                        "%08x (the file is damaged or was edited)", in, sep, W, x->name, (unsigned)got,
                        (unsigned)want);
    }
done:
    free(t);
    csub_json_free(sums);
    return st;
}

/* Parse buf[len], which f takes over (freed with f, also on failure). */
static int parse_owned(uint8_t *buf, size_t len, const char *path, csub_st_file *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->buf = buf;
    f->len = len;
    int st = CSUB_OK;
    if (len < 8) {
        st = seterr(err, errlen, CSUB_ERR_FORMAT,
                    "safetensors: file of %zu bytes is shorter than the 8-byte header length", len);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > ST_MAX_HEADER) {
        st = seterr(err, errlen, CSUB_ERR_FORMAT, "safetensors: header length %llu is over the %llu-byte limit",
                    (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > (uint64_t)(len - 8)) {
        st = seterr(err, errlen, CSUB_ERR_FORMAT,
                    "safetensors: header length %llu is larger than the %zu bytes after it",
                    (unsigned long long)hlen, len - 8);
        goto fail;
    }
    char jerr[200];
    st = csub_json_parse((const char *)buf + 8, (size_t)hlen, &f->header, jerr, sizeof jerr);
    if (st) {
        seterr(err, errlen, st, "safetensors: header: %s", jerr);
        goto fail;
    }
    const csub_json *h = f->header;
    if (h->type != CSUB_JSON_OBJECT) {
        st = seterr(err, errlen, CSUB_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto fail;
    }

    const uint8_t *data = buf + 8 + hlen;
    uint64_t dlen = (uint64_t)(len - 8) - hlen;
    size_t ntensors = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (strcmp(h->keys[i], "__metadata__") == 0) {
            /* keys are unique (json.c), so there is at most one */
            if ((st = parse_metadata(&h->items[i], err, errlen))) goto fail;
            f->metadata = &h->items[i];
        } else {
            ntensors++;
        }
    }
    if (ntensors) {
        f->tensors = calloc(ntensors, sizeof *f->tensors);
        if (!f->tensors) {
            st = seterr(err, errlen, CSUB_ERR_NOMEM, "safetensors: out of memory for %zu tensors", ntensors);
            goto fail;
        }
    }
    for (size_t i = 0; i < h->n; i++) {
        if (strcmp(h->keys[i], "__metadata__") == 0) continue;
        st = parse_tensor(h->keys[i], &h->items[i], data, dlen, &f->tensors[f->n], err, errlen);
        if (st) goto fail;
        f->n++;
    }
    if ((st = check_overlap(f, data, err, errlen))) goto fail;
    if ((st = verify_checksums(f, path, err, errlen))) goto fail;
    return CSUB_OK;
fail:
    csub_st_free(f);
    return st;
}

/* ------------------------------------------------------------------- API */

int csub_st_parse(const uint8_t *buf, size_t len, csub_st_file *f, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!f) return seterr(err, errlen, CSUB_ERR_ARG, "safetensors: no output struct");
    memset(f, 0, sizeof *f);
    if (!buf && len) return seterr(err, errlen, CSUB_ERR_ARG, "safetensors: NULL buffer of %zu bytes", len);
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return seterr(err, errlen, CSUB_ERR_NOMEM, "safetensors: out of memory for %zu bytes", len);
    if (len) memcpy(copy, buf, len);
    return parse_owned(copy, len, NULL, f, err, errlen);
}

int csub_st_read(const char *path, csub_st_file *f, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!f) return seterr(err, errlen, CSUB_ERR_ARG, "safetensors: no output struct");
    memset(f, 0, sizeof *f);
    if (!path) return seterr(err, errlen, CSUB_ERR_ARG, "safetensors: no path");
    FILE *fp = fopen(path, "rb");
    if (!fp) return seterr(err, errlen, CSUB_ERR_IO, "safetensors: cannot open %s: %s", path, strerror(errno));

    int st = CSUB_OK;
    uint8_t *buf = NULL;
    long size = -1;
    /* one byte first: a directory opens, but does not read (EISDIR) */
    errno = 0;
    if (fgetc(fp) == EOF && ferror(fp)) {
        st = seterr(err, errlen, CSUB_ERR_IO, "safetensors: cannot read %s: %s", path,
                    errno ? strerror(errno) : "read error");
        goto done;
    }
    errno = 0;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        st = seterr(err, errlen, CSUB_ERR_IO, "safetensors: cannot find the size of %s: %s", path,
                    errno ? strerror(errno) : "not a regular file");
        goto done;
    }
    if ((uint64_t)size > ST_MAX_FILE || (uint64_t)size > SIZE_MAX) {
        st = seterr(err, errlen, CSUB_ERR_IO, "safetensors: cannot read %s: %ld bytes, over the %llu-byte limit",
                    path, size, (unsigned long long)ST_MAX_FILE);
        goto done;
    }
    size_t len = (size_t)size;
    buf = malloc(len ? len : 1);
    if (!buf) {
        st = seterr(err, errlen, CSUB_ERR_NOMEM, "safetensors: out of memory for %s (%zu bytes)", path, len);
        goto done;
    }
    size_t got = 0;
    while (got < len) {
        size_t r = fread(buf + got, 1, len - got, fp);
        if (r == 0) break;
        got += r;
    }
    if (got != len) {
        st = seterr(err, errlen, CSUB_ERR_IO, "safetensors: cannot read %s: %s", path,
                    ferror(fp) && errno ? strerror(errno) : "file shorter than its size");
        goto done;
    }
    fclose(fp);
    fp = NULL;
    /* parse_owned takes the buffer */
    st = parse_owned(buf, len, path, f, err, errlen);
    buf = NULL;
done:
    if (fp) fclose(fp);
    free(buf);
    return st;
}

const csub_st_tensor *csub_st_find(const csub_st_file *f, const char *name)
{
    if (!f || !name) return NULL;
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *csub_st_meta(const csub_st_file *f, const char *key)
{
    if (!f) return NULL;
    const csub_json *v = csub_json_get(f->metadata, key);
    return v && v->type == CSUB_JSON_STRING ? v->string : NULL;
}

int csub_st_check_layout(const csub_st_file *f, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!f || (!f->buf && f->len)) return seterr(err, errlen, CSUB_ERR_ARG, "safetensors: no parsed file");
    if (f->len < 8) return seterr(err, errlen, CSUB_ERR_ARG, "safetensors: no parsed file");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->buf[i];
    const uint8_t *data = f->buf + 8 + hlen;
    int64_t dlen = (int64_t)(f->len - 8 - hlen), end = 0;
    span *s = malloc((f->n ? f->n : 1) * sizeof *s);
    if (!s) return seterr(err, errlen, CSUB_ERR_NOMEM, "safetensors: out of memory");
    for (size_t i = 0; i < f->n; i++) {
        const csub_st_tensor *t = &f->tensors[i];
        int64_t b = (int64_t)(t->data - data);
        s[i] = (span){b, b + t->numel * (int64_t)csub_dtype_size(t->dtype), i};
    }
    if (f->n > 1) qsort(s, f->n, sizeof *s, cmp_span);
    int st = CSUB_OK;
    for (size_t i = 0; i < f->n && !st; i++) {
        if (s[i].begin != end)
            st = seterr(err, errlen, CSUB_ERR_FORMAT,
                        "safetensors: tensor \"%.*s\" starts at byte %lld of the data section, not at %lld "
                        "where the tensor before it ends (a gap)", ST_NAME_SHOWN, f->tensors[s[i].index].name,
                        (long long)s[i].begin, (long long)end);
        end = s[i].end;
    }
    if (!st && end != dlen)
        st = seterr(err, errlen, CSUB_ERR_FORMAT,
                    "safetensors: %lld trailing bytes after the last tensor (the data section has %lld bytes, "
                    "the tensors %lld)", (long long)(dlen - end), (long long)dlen, (long long)end);
    free(s);
    return st;
}
