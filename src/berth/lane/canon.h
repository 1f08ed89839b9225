/* berth's request fingerprint in C: a strict JSON parser that writes the canonical form
   berth hashes (services/proxy_keys.py: orjson.dumps(params, option=OPT_SORT_KEYS), then
   SHA-256), byte for byte. The first piece of the compiled fast lane (docs/benchmarks.md);
   the C floor's "berth rows" mode uses it for its fingerprints.

   canon_params(body, n, out) finds the top-level object's "params" member of a JSON-RPC
   request and writes its canonical form into out: compact, object keys sorted by their
   UTF-8 bytes, strings with orjson's escapes (\" \\ \b \f \n \r \t, other control
   characters as \u00xx, everything else as its UTF-8), integers as written. It returns 1
   when done, 0 when there is no "params", and -1 when the document is one the lane must
   leave to Python: not strict JSON (or not UTF-8), or a form whose canonical output is
   Python's to decide: a number with a fraction or exponent, -0, an integer of more than
   18 digits, a duplicate key, a lone surrogate, nesting deeper than CANON_DEPTH.
   tests/unit/test_bench_canon.py checks it against orjson on generated documents. */

#ifndef BERTH_CANON_H
#define BERTH_CANON_H

#include <stdlib.h>
#include <string.h>

#define CANON_DEPTH 64

typedef struct cbuf { char *p; size_t n, cap; } cbuf;

static int cb_put(cbuf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = (b->n + n) * 2 + 256;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

typedef struct cparse { const unsigned char *p, *end; } cparse;

static void c_ws(cparse *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int c_value(cparse *s, cbuf *out, int depth);

static int c_hex4(const unsigned char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

static int c_utf8(cbuf *out, unsigned cp) {
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (unsigned char)(0xc0 | cp >> 6); u[1] = (unsigned char)(0x80 | (cp & 0x3f)); n = 2; }
    else if (cp < 0x10000) { u[0] = (unsigned char)(0xe0 | cp >> 12); u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f)); u[2] = (unsigned char)(0x80 | (cp & 0x3f)); n = 3; }
    else { u[0] = (unsigned char)(0xf0 | cp >> 18); u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f)); u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f)); u[3] = (unsigned char)(0x80 | (cp & 0x3f)); n = 4; }
    return cb_put(out, u, n);
}

/* One code point as orjson writes it inside a string. */
static int c_emit(cbuf *out, unsigned cp) {
    static const char hex[] = "0123456789abcdef";
    switch (cp) {
    case '"': return cb_put(out, "\\\"", 2);
    case '\\': return cb_put(out, "\\\\", 2);
    case '\b': return cb_put(out, "\\b", 2);
    case '\f': return cb_put(out, "\\f", 2);
    case '\n': return cb_put(out, "\\n", 2);
    case '\r': return cb_put(out, "\\r", 2);
    case '\t': return cb_put(out, "\\t", 2);
    }
    if (cp < 0x20) {
        char e[6] = {'\\', 'u', '0', '0', hex[cp >> 4], hex[cp & 15]};
        return cb_put(out, e, 6);
    }
    return c_utf8(out, cp);
}

/* A string (s->p at its opening quote), written canonically (with its quotes) to out. */
static int c_string(cparse *s, cbuf *out) {
    s->p++;
    if (cb_put(out, "\"", 1)) return -1;
    while (s->p < s->end) {
        unsigned c = *s->p;
        if (c == '"') { s->p++; return cb_put(out, "\"", 1); }
        if (c < 0x20) return -1; /* a raw control character: not JSON */
        if (c == '\\') {
            if (s->end - s->p < 2) return -1;
            unsigned e = s->p[1], cp;
            s->p += 2;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (s->end - s->p < 4 || c_hex4(s->p, &cp)) return -1;
                s->p += 4;
                if (cp >= 0xdc00 && cp <= 0xdfff) return -1; /* a lone low surrogate */
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    unsigned lo;
                    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || c_hex4(s->p + 2, &lo)) return -1;
                    if (lo < 0xdc00 || lo > 0xdfff) return -1;
                    s->p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                break;
            default: return -1;
            }
            if (c_emit(out, cp)) return -1;
            continue;
        }
        /* raw UTF-8: checked strictly (no overlongs, no surrogates, at most U+10FFFF) */
        size_t n;
        unsigned cp, min;
        if (c < 0x80) { n = 1; cp = c; min = 0; }
        else if ((c & 0xe0) == 0xc0) { n = 2; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { n = 3; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { n = 4; cp = c & 0x07; min = 0x10000; }
        else return -1;
        if ((size_t)(s->end - s->p) < n) return -1;
        for (size_t i = 1; i < n; i++) {
            if ((s->p[i] & 0xc0) != 0x80) return -1;
            cp = cp << 6 | (s->p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
        if (n == 1) { if (c_emit(out, cp)) return -1; }
        else if (cb_put(out, s->p, n)) return -1;
        s->p += n;
    }
    return -1;
}

/* An integer as written (JSON's grammar); anything Python would print otherwise: -1. */
static int c_number(cparse *s, cbuf *out) {
    const unsigned char *start = s->p;
    if (s->p < s->end && *s->p == '-') s->p++;
    const unsigned char *digits = s->p;
    if (s->p >= s->end || *s->p < '0' || *s->p > '9') return -1;
    if (*s->p == '0') s->p++;
    else while (s->p < s->end && *s->p >= '0' && *s->p <= '9') s->p++;
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E')) return -1; /* a float */
    if (s->p - digits > 18) return -1;                     /* past what every int type holds */
    if (s->p - digits == 1 && *digits == '0' && digits != start) return -1; /* -0 */
    return cb_put(out, start, (size_t)(s->p - start));
}

typedef struct ckey { size_t off, klen, len; } ckey; /* a member in the scratch buffer */

/* Keys compare on their bytes between the quotes (a shorter prefix first), as orjson sorts
   a str by its UTF-8. */
static int c_keycmp(const void *a, const void *b, const char *base) {
    const ckey *x = a, *y = b;
    size_t nx = x->klen - 2, ny = y->klen - 2, n = nx < ny ? nx : ny;
    int c = memcmp(base + x->off + 1, base + y->off + 1, n);
    return c ? c : (nx > ny) - (nx < ny);
}

static const char *c_sort_base;
static int c_qcmp(const void *a, const void *b) { return c_keycmp(a, b, c_sort_base); }

static int c_object(cparse *s, cbuf *out, int depth) {
    s->p++;
    cbuf tmp = {0}; /* each member canonically: "key":value, one after another */
    ckey *keys = NULL;
    size_t nkeys = 0, capk = 0;
    int rc = -1;
    c_ws(s);
    if (s->p < s->end && *s->p == '}') { s->p++; return cb_put(out, "{}", 2); }
    for (;;) {
        c_ws(s);
        if (s->p >= s->end || *s->p != '"') goto done;
        if (nkeys == capk) {
            capk = capk * 2 + 8;
            ckey *k = realloc(keys, capk * sizeof *keys);
            if (!k) goto done;
            keys = k;
        }
        size_t off = tmp.n;
        if (c_string(s, &tmp)) goto done;
        size_t klen = tmp.n - off; /* with its quotes */
        c_ws(s);
        if (s->p >= s->end || *s->p != ':') goto done;
        s->p++;
        c_ws(s);
        if (cb_put(&tmp, ":", 1) || c_value(s, &tmp, depth + 1)) goto done;
        keys[nkeys++] = (ckey){off, klen, tmp.n - off};
        c_ws(s);
        if (s->p < s->end && *s->p == ',') { s->p++; continue; }
        if (s->p < s->end && *s->p == '}') { s->p++; break; }
        goto done;
    }
    /* keys compare on their escaped bytes; an escape sorts where its character would
       not ("\\" 0x5c before letters), so a key holding one is Python's to order */
    for (size_t i = 0; i < nkeys; i++)
        if (memchr(tmp.p + keys[i].off + 1, '\\', keys[i].klen - 2)) goto done;
    c_sort_base = tmp.p;
    qsort(keys, nkeys, sizeof *keys, c_qcmp);
    for (size_t i = 1; i < nkeys; i++)
        if (c_keycmp(&keys[i - 1], &keys[i], tmp.p) == 0) goto done; /* a duplicate key */
    if (cb_put(out, "{", 1)) goto done;
    for (size_t i = 0; i < nkeys; i++)
        if ((i && cb_put(out, ",", 1)) || cb_put(out, tmp.p + keys[i].off, keys[i].len)) goto done;
    rc = cb_put(out, "}", 1);
done:
    free(tmp.p);
    free(keys);
    return rc;
}

static int c_array(cparse *s, cbuf *out, int depth) {
    s->p++;
    if (cb_put(out, "[", 1)) return -1;
    c_ws(s);
    if (s->p < s->end && *s->p == ']') { s->p++; return cb_put(out, "]", 1); }
    for (int first = 1;; first = 0) {
        c_ws(s);
        if ((!first && cb_put(out, ",", 1)) || c_value(s, out, depth + 1)) return -1;
        c_ws(s);
        if (s->p < s->end && *s->p == ',') { s->p++; continue; }
        if (s->p < s->end && *s->p == ']') { s->p++; return cb_put(out, "]", 1); }
        return -1;
    }
}

static int c_literal(cparse *s, cbuf *out, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n)) return -1;
    s->p += n;
    return cb_put(out, word, n);
}

static int c_value(cparse *s, cbuf *out, int depth) {
    if (depth > CANON_DEPTH || s->p >= s->end) return -1;
    switch (*s->p) {
    case '{': return c_object(s, out, depth);
    case '[': return c_array(s, out, depth);
    case '"': return c_string(s, out);
    case 't': return c_literal(s, out, "true");
    case 'f': return c_literal(s, out, "false");
    case 'n': return c_literal(s, out, "null");
    default: return c_number(s, out);
    }
}

/* The whole document canonically (the test's entry). 0, or -1: Python's to handle. */
static int canon_doc(const char *body, size_t n, cbuf *out) {
    cparse s = {(const unsigned char *)body, (const unsigned char *)body + n};
    c_ws(&s);
    if (c_value(&s, out, 0)) return -1;
    c_ws(&s);
    return s.p == s.end ? 0 : -1;
}

/* The request's "params" canonically (see the head of this file). */
static int canon_params(const char *body, size_t n, cbuf *out) {
    cbuf doc = {0};
    if (canon_doc(body, n, &doc) || doc.n == 0 || doc.p[0] != '{') { free(doc.p); return -1; }
    /* the canonical document's members are "key":value, one level, keys unescaped */
    const char *k = NULL, *p = doc.p + 1, *end = doc.p + doc.n - 1;
    int depth = 0, in_str = 0, found = 0;
    for (const char *q = p; q < end; q++) { /* find "params": at depth 0 */
        char c = *q;
        if (in_str) { if (c == '\\') q++; else if (c == '"') in_str = 0; continue; }
        if (c == '"') {
            if (depth == 0 && (q == p || q[-1] == ',') && end - q >= 9 && memcmp(q, "\"params\":", 9) == 0) { k = q + 9; break; }
            in_str = 1;
        } else if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') depth--;
    }
    if (k) { /* its value runs to the next comma at depth 0 */
        const char *q = k;
        depth = 0, in_str = 0;
        for (; q < end; q++) {
            char c = *q;
            if (in_str) { if (c == '\\') q++; else if (c == '"') in_str = 0; continue; }
            if (c == '"') in_str = 1;
            else if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') depth--;
            else if (c == ',' && depth == 0) break;
        }
        found = cb_put(out, k, (size_t)(q - k)) ? -1 : 1;
    }
    free(doc.p);
    return found;
}

#endif

#ifdef CANON_MAIN
#include <stdio.h>
/* One document per line on stdin; per line on stdout: its canonical form, or RELAY. With
   the argument "params": the canonical "params" of each (NONE when it has none). */
int main(int argc, char **argv) {
    int params = argc > 1 && strcmp(argv[1], "params") == 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (line[n - 1] == '\n') n--;
        cbuf out = {0};
        int rc = params ? canon_params(line, (size_t)n, &out) : (canon_doc(line, (size_t)n, &out) == 0 ? 1 : -1);
        if (rc == 1) { fwrite(out.p, 1, out.n, stdout); fputc('\n', stdout); }
        else puts(rc == 0 ? "NONE" : "RELAY");
        free(out.p);
    }
    free(line);
    return 0;
}
#endif
