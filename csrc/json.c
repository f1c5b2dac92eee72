/*
 * json.c - a small, strict RFC 8259 parser for file headers.
 *
 * The input is untrusted: text[len] need not be NUL-terminated and no byte at
 * or past len is ever read. Everything the grammar allows is accepted (any
 * value at the top level, insignificant whitespace " \t\n\r"); everything else
 * is an error with the byte offset where it was found. Stricter than the RFC:
 *   - strings must be valid UTF-8 (no overlong forms, no encoded surrogates,
 *     nothing above U+10FFFF); \uXXXX escapes must not be \u0000 (strings are
 *     NUL-terminated) and surrogates must come in high-low pairs;
 *   - objects may not repeat a key;
 *   - nesting is at most CSUB_JSON_MAX_DEPTH levels of arrays and objects.
 * Numbers follow the RFC grammar exactly (no leading zeros, "+", ".5", "1.",
 * NaN or Infinity) and are converted by strtod on a bounded NUL-terminated
 * copy, with the locale's decimal point substituted for '.'. Magnitudes
 * beyond the double range become +-inf and tiny ones 0, as most parsers do.
 *
 * Memory: the whole tree lives in an arena (a chain of malloc'd blocks) whose
 * first object is the root value, so csub_json_free(root) releases it all.
 * Items of an array or object are collected on a growable stack while they
 * are parsed and copied into the arena, contiguously, when the container
 * closes. Recursion is bounded by the depth limit.
 */
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CSUB_JSON_MAX_DEPTH 64

/* ----------------------------------------------------------------- arena */

typedef struct block {
    struct block *next;
    size_t used, cap;          /* bytes of data in use, available */
    max_align_t data[];        /* the first block starts with the root value */
} block;

typedef struct {
    block *first, *last;
} arena;

#define ARENA_MIN_BLOCK ((size_t)4096)
#define ARENA_MAX_BLOCK ((size_t)1 << 20)

static int arena_new_block(arena *a, size_t need)
{
    size_t cap = a->last ? a->last->cap * 2 : ARENA_MIN_BLOCK;
    if (cap > ARENA_MAX_BLOCK) cap = ARENA_MAX_BLOCK;
    if (cap < need) cap = need;
    if (cap > SIZE_MAX - sizeof(block)) return -1;
    block *b = malloc(sizeof(block) + cap);
    if (!b) return -1;
    b->next = NULL;
    b->used = 0;
    b->cap = cap;
    if (a->last) a->last->next = b;
    else a->first = b;
    a->last = b;
    return 0;
}

/* size bytes aligned to `align` (a power of two <= alignof(max_align_t)), or NULL */
static void *arena_alloc(arena *a, size_t size, size_t align)
{
    block *b = a->last;
    if (b) {
        size_t at = (b->used + align - 1) & ~(align - 1);
        if (at <= b->cap && size <= b->cap - at) {
            b->used = at + size;
            return (char *)b->data + at;
        }
    }
    if (arena_new_block(a, size)) return NULL;
    a->last->used = size;
    return a->last->data;
}

static void arena_release(block *b)
{
    while (b) {
        block *next = b->next;
        free(b);
        b = next;
    }
}

/* ---------------------------------------------------------------- parser */

typedef struct {
    const char *key;           /* NULL for array items */
    csub_json value;
} pending;

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    arena a;
    pending *stack;            /* items of the open containers */
    size_t top, cap;
    int status;                /* first error */
    char *err;
    size_t errlen;
} parser;

static int fail(parser *p, int status, const char *fmt, ...)
{
    if (p->status != CSUB_OK) return p->status;
    va_list ap;
    va_start(ap, fmt);
    p->status = csub_vfail(p->err, p->errlen, status, fmt, ap);
    va_end(ap);
    return status;
}

static int nomem(parser *p)
{
    return fail(p, CSUB_ERR_NOMEM, "json: out of memory at byte %zu", p->pos);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int push(parser *p, const char *key, const csub_json *v)
{
    if (p->top == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof(pending)) return nomem(p);
        pending *s = realloc(p->stack, cap * sizeof(pending));
        if (!s) return nomem(p);
        p->stack = s;
        p->cap = cap;
    }
    p->stack[p->top].key = key;
    p->stack[p->top].value = *v;
    p->top++;
    return CSUB_OK;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s[i..i+4), all before end; the code unit or -1. */
static long hex4(const unsigned char *s, size_t i, size_t end)
{
    if (end - i < 4) return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(s[i + k]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Length of the UTF-8 sequence at s[i..end) (Unicode table 3-7: no overlong
 * forms, no surrogates, at most U+10FFFF), or 0 when it is invalid. */
static size_t utf8_len(const unsigned char *s, size_t i, size_t end)
{
    unsigned char c = s[i];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;    /* range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (end - i < n) return 0;
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t k = 2; k < n; k++)
        if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
    return n;
}

static size_t utf8_put(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string starting at the opening quote at p->pos, decoded into the arena.
 * The decoded form is never longer than the quoted text: an escape of n bytes
 * decodes to at most n bytes (\uXXXX: 6 -> <= 3, a surrogate pair: 12 -> 4). */
static int parse_string(parser *p, const char **out)
{
    const unsigned char *s = p->s;
    size_t start = p->pos, i = start + 1, end;
    /* find the closing quote: bytes >= 0x80 are never '"' or '\\' in UTF-8 */
    for (end = i; end < p->len && s[end] != '"'; end++)
        if (s[end] == '\\' && ++end >= p->len) break;   /* skip the escaped byte */
    if (end >= p->len) return fail(p, CSUB_ERR_FORMAT, "json: unterminated string starting at byte %zu", start);

    char *o = arena_alloc(&p->a, end - i + 1, 1);
    if (!o) return nomem(p);
    size_t n = 0;
    while (i < end) {
        unsigned char c = s[i];
        if (c < 0x20)
            return fail(p, CSUB_ERR_FORMAT, "json: control character 0x%02x in string at byte %zu", c, i);
        if (c >= 0x80) {
            size_t k = utf8_len(s, i, end);
            if (!k) return fail(p, CSUB_ERR_FORMAT, "json: invalid UTF-8 in string at byte %zu", i);
            memcpy(o + n, s + i, k);
            n += k;
            i += k;
            continue;
        }
        if (c != '\\') {
            o[n++] = (char)c;
            i++;
            continue;
        }
        unsigned char e = s[i + 1];    /* i + 1 < end: the scan above skipped it */
        const char *simple = NULL;
        switch (e) {
        case '"': simple = "\""; break;
        case '\\': simple = "\\"; break;
        case '/': simple = "/"; break;
        case 'b': simple = "\b"; break;
        case 'f': simple = "\f"; break;
        case 'n': simple = "\n"; break;
        case 'r': simple = "\r"; break;
        case 't': simple = "\t"; break;
        case 'u': break;
        default:
            return fail(p, CSUB_ERR_FORMAT, "json: invalid escape in string at byte %zu", i);
        }
        if (simple) {
            o[n++] = simple[0];
            i += 2;
            continue;
        }
        long u = hex4(s, i + 2, end);
        if (u < 0) return fail(p, CSUB_ERR_FORMAT, "json: invalid \\u escape in string at byte %zu", i);
        unsigned long cp = (unsigned long)u;
        if (cp == 0) return fail(p, CSUB_ERR_FORMAT, "json: \\u0000 in string at byte %zu", i);
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return fail(p, CSUB_ERR_FORMAT, "json: unpaired surrogate \\u%04lx in string at byte %zu", cp, i);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            long lo = end - (i + 6) >= 2 && s[i + 6] == '\\' && s[i + 7] == 'u' ? hex4(s, i + 8, end) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF)
                return fail(p, CSUB_ERR_FORMAT, "json: unpaired surrogate \\u%04lx in string at byte %zu", cp, i);
            cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned long)lo - 0xDC00);
            i += 6;
        }
        n += utf8_put(o + n, cp);
        i += 6;
    }
    o[n] = '\0';
    p->pos = end + 1;
    *out = o;
    return CSUB_OK;
}

static int parse_number(parser *p, double *out)
{
    const unsigned char *s = p->s;
    size_t start = p->pos, i = start, len = p->len;
    int frac = 0;
    if (i < len && s[i] == '-') i++;
    if (i < len && s[i] == '0') {
        i++;
    } else if (i < len && s[i] >= '1' && s[i] <= '9') {
        while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    } else {
        return fail(p, CSUB_ERR_FORMAT, "json: invalid number at byte %zu", start);
    }
    if (i < len && s[i] == '.') {
        frac = 1;
        i++;
        if (i >= len || s[i] < '0' || s[i] > '9')
            return fail(p, CSUB_ERR_FORMAT, "json: expected a digit after '.' at byte %zu", i);
        while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= len || s[i] < '0' || s[i] > '9')
            return fail(p, CSUB_ERR_FORMAT, "json: expected a digit in the exponent at byte %zu", i);
        while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    }
    /* a digit straight after a leading zero ("01") is not a number */
    if (i < len && s[i] >= '0' && s[i] <= '9')
        return fail(p, CSUB_ERR_FORMAT, "json: leading zero in number at byte %zu", start);

    /* NUL-terminated copy; '.' becomes the locale's decimal point for strtod */
    const char *dp = frac ? localeconv()->decimal_point : ".";
    size_t dplen = dp && dp[0] ? strlen(dp) : 0;
    if (!dplen) {
        dp = ".";
        dplen = 1;
    }
    size_t n = i - start, need = n + dplen + 1;
    char small[80], *buf = need <= sizeof small ? small : malloc(need);
    if (!buf) return nomem(p);
    size_t k = 0;
    for (size_t j = start; j < i; j++) {
        if (s[j] == '.') {
            memcpy(buf + k, dp, dplen);
            k += dplen;
        } else {
            buf[k++] = (char)s[j];
        }
    }
    buf[k] = '\0';
    char *endp;
    double v = strtod(buf, &endp);
    int whole = endp == buf + k;
    if (buf != small) free(buf);
    if (!whole) return fail(p, CSUB_ERR_FORMAT, "json: number not understood at byte %zu", start);
    *out = v;
    p->pos = i;
    return CSUB_OK;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The keys of an object, in the arena already: no two equal. */
static int check_unique(parser *p, const char **keys, size_t n, size_t at)
{
    const char *dup = NULL;
    if (n <= 16) {
        for (size_t i = 1; i < n && !dup; i++)
            for (size_t j = 0; j < i; j++)
                if (strcmp(keys[i], keys[j]) == 0) {
                    dup = keys[i];
                    break;
                }
    } else {
        const char **sorted = malloc(n * sizeof *sorted);
        if (!sorted) return nomem(p);
        memcpy(sorted, keys, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, cmp_key);
        for (size_t i = 1; i < n; i++)
            if (strcmp(sorted[i], sorted[i - 1]) == 0) {
                dup = sorted[i];
                break;
            }
        free(sorted);
    }
    if (dup) return fail(p, CSUB_ERR_FORMAT, "json: duplicate key \"%.64s\" in the object at byte %zu", dup, at);
    return CSUB_OK;
}

/* Move the items pushed since `base` into the arena as v's items (and keys). */
static int close_container(parser *p, size_t base, csub_json *v, size_t at)
{
    size_t n = p->top - base;
    v->n = n;
    v->items = NULL;
    v->keys = NULL;
    if (n == 0) return CSUB_OK;
    if (n > SIZE_MAX / sizeof(csub_json)) return nomem(p);
    v->items = arena_alloc(&p->a, n * sizeof(csub_json), _Alignof(csub_json));
    if (!v->items) return nomem(p);
    for (size_t i = 0; i < n; i++) v->items[i] = p->stack[base + i].value;
    if (v->type == CSUB_JSON_OBJECT) {
        const char **keys = arena_alloc(&p->a, n * sizeof(const char *), _Alignof(const char *));
        if (!keys) return nomem(p);
        for (size_t i = 0; i < n; i++) keys[i] = p->stack[base + i].key;
        v->keys = keys;
        int st = check_unique(p, keys, n, at);
        if (st) return st;
    }
    p->top = base;
    return CSUB_OK;
}

static int parse_value(parser *p, int depth, csub_json *v);

/* '[' or '{' at p->pos; `depth` counts the containers this one is inside. */
static int parse_container(parser *p, int depth, csub_json *v)
{
    size_t at = p->pos, base = p->top;
    int object = p->s[at] == '{';
    char close = object ? '}' : ']';
    v->type = object ? CSUB_JSON_OBJECT : CSUB_JSON_ARRAY;
    if (depth >= CSUB_JSON_MAX_DEPTH)
        return fail(p, CSUB_ERR_FORMAT, "json: nesting deeper than %d levels at byte %zu",
                    CSUB_JSON_MAX_DEPTH, at);
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return close_container(p, base, v, at);
    }
    for (;;) {
        const char *key = NULL;
        csub_json item;
        int st;
        skip_ws(p);
        if (object) {
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return fail(p, CSUB_ERR_FORMAT, "json: expected a string key at byte %zu", p->pos);
            if ((st = parse_string(p, &key))) return st;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return fail(p, CSUB_ERR_FORMAT, "json: expected ':' at byte %zu", p->pos);
            p->pos++;
        }
        if ((st = parse_value(p, depth + 1, &item))) return st;
        if ((st = push(p, key, &item))) return st;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return close_container(p, base, v, at);
        }
        return fail(p, CSUB_ERR_FORMAT, "json: expected ',' or '%c' at byte %zu", close, p->pos);
    }
}

static int literal(parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return fail(p, CSUB_ERR_FORMAT, "json: invalid literal at byte %zu", p->pos);
    p->pos += n;
    return CSUB_OK;
}

static int parse_value(parser *p, int depth, csub_json *v)
{
    memset(v, 0, sizeof *v);
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, CSUB_ERR_FORMAT, "json: unexpected end of input at byte %zu", p->pos);
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{':
    case '[':
        return parse_container(p, depth, v);
    case '"':
        v->type = CSUB_JSON_STRING;
        return parse_string(p, &v->string);
    case 't':
        v->type = CSUB_JSON_BOOL;
        v->boolean = 1;
        return literal(p, "true");
    case 'f':
        v->type = CSUB_JSON_BOOL;
        return literal(p, "false");
    case 'n':
        v->type = CSUB_JSON_NULL;
        return literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            v->type = CSUB_JSON_NUMBER;
            return parse_number(p, &v->number);
        }
        return fail(p, CSUB_ERR_FORMAT, "json: unexpected character '%c' at byte %zu",
                    c >= 0x20 && c < 0x7F ? c : '?', p->pos);
    }
}

int csub_json_parse(const char *text, size_t len, csub_json **out, char *err, size_t errlen)
{
    parser p;
    memset(&p, 0, sizeof p);
    p.s = (const unsigned char *)text;
    p.len = text ? len : 0;
    p.err = err;
    p.errlen = errlen;
    if (err && errlen) err[0] = '\0';
    if (out) *out = NULL;
    if (!out) return fail(&p, CSUB_ERR_ARG, "json: no output pointer");

    /* the root comes first in the first block, where csub_json_free finds it */
    csub_json *root = arena_alloc(&p.a, sizeof *root, _Alignof(csub_json));
    int st = root ? CSUB_OK : nomem(&p);
    if (!st) st = parse_value(&p, 0, root);
    if (!st) {
        skip_ws(&p);
        if (p.pos < p.len) st = fail(&p, CSUB_ERR_FORMAT, "json: trailing characters at byte %zu", p.pos);
    }
    free(p.stack);
    if (st) {
        arena_release(p.a.first);
        return st;
    }
    *out = root;
    return CSUB_OK;
}

void csub_json_free(csub_json *v)
{
    if (!v) return;
    arena_release((block *)((char *)v - offsetof(block, data)));
}

const csub_json *csub_json_get(const csub_json *v, const char *key)
{
    if (!v || !key || v->type != CSUB_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], key) == 0) return &v->items[i];
    return NULL;
}

int csub_json_int(const csub_json *v, int64_t lo, int64_t hi, int64_t *out)
{
    /* 2^53 - 1: beyond it, distinct integers in the text may parse to one double */
    const double safe = 9007199254740991.0;
    if (!v || v->type != CSUB_JSON_NUMBER) return CSUB_ERR_FORMAT;
    double d = v->number;
    if (!(d >= -safe && d <= safe)) return CSUB_ERR_FORMAT;   /* NaN, inf, too large */
    int64_t i = (int64_t)d;
    if ((double)i != d || i < lo || i > hi) return CSUB_ERR_FORMAT;
    if (out) *out = i;
    return CSUB_OK;
}
