/* Unicode normalization forms (UAX #15: decomposition, canonical ordering, composition) and
 * the per-character Lowercase and StripAccents of Hugging Face's normalizers. */
#include <pthread.h>
#include <stdlib.h>

#include "worker/tokenizer/tok_internal.h"
#include "worker/tokenizer/tok_unicode_data.h"

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21,
       TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static int ccc_of(uint32_t cp)
{
    if (cp < 0x300) return 0;
    unsigned lo = 0, hi = tok_nfc_ccc_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < tok_nfc_ccc[mid][0]) hi = mid;
        else if (cp > tok_nfc_ccc[mid][1]) lo = mid + 1;
        else return (int)tok_nfc_ccc[mid][2];
    }
    return 0;
}

static const uint32_t *decomp_of(uint32_t cp)
{
    if (cp < 0xC0) return NULL;
    unsigned lo = 0, hi = tok_nfc_decomp_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < tok_nfc_decomp[mid][0]) hi = mid;
        else if (cp > tok_nfc_decomp[mid][0]) lo = mid + 1;
        else return tok_nfc_decomp[mid];
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    uint64_t key = ((uint64_t)a << 21) | b;
    unsigned lo = 0, hi = tok_nfc_comp_n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        uint64_t k = ((uint64_t)tok_nfc_comp[mid][0] << 21) | tok_nfc_comp[mid][1];
        if (key < k) hi = mid;
        else if (key > k) lo = mid + 1;
        else return tok_nfc_comp[mid][2];
    }
    return 0;
}

struct cps {
    uint32_t *v;
    size_t n, cap;
};

static int cps_push(struct cps *c, uint32_t cp)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        uint32_t *v = realloc(c->v, cap * sizeof(*v));
        if (!v) return -1;
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = cp;
    return 0;
}

static int decompose_hangul(struct cps *c, uint32_t cp)
{
    uint32_t s = cp - SBASE;
    if (cps_push(c, LBASE + s / NCOUNT) < 0 || cps_push(c, VBASE + (s % NCOUNT) / TCOUNT) < 0) return -1;
    if (s % TCOUNT && cps_push(c, TBASE + s % TCOUNT) < 0) return -1;
    return 0;
}

static const uint32_t *map_find(const uint32_t (*map)[3], unsigned n, uint32_t cp)
{
    unsigned lo = 0, hi = n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < map[mid][0]) hi = mid;
        else if (cp > map[mid][0]) lo = mid + 1;
        else return map[mid];
    }
    return NULL;
}

/* Full decomposition from the precomputed NFD or NFKD table. */
static int decompose_full(struct cps *c, uint32_t cp, bool compat)
{
    if (cp >= SBASE && cp < SBASE + SCOUNT) return decompose_hangul(c, cp);
    const uint32_t *m = compat ? map_find(tok_nfkd_map, tok_nfkd_map_n, cp) : map_find(tok_nfd_map, tok_nfd_map_n, cp);
    if (!m) return cps_push(c, cp);
    for (uint32_t k = 0; k < m[2]; k++)
        if (cps_push(c, tok_decomp_cps[m[1] + k]) < 0) return -1;
    return 0;
}

static int decompose(struct cps *c, uint32_t cp)
{
    if (cp >= SBASE && cp < SBASE + SCOUNT) return decompose_hangul(c, cp);
    const uint32_t *d = decomp_of(cp);
    if (!d) return cps_push(c, cp);
    if (decompose(c, d[1]) < 0) return -1;
    return d[2] ? decompose(c, d[2]) : 0;
}

/* Characters of the BMP that NFC might change or that might compose with what precedes them:
 * non-zero combining class, a decomposition that does not recompose to itself, or the second
 * half of a composition pair (Hangul vowels and trailing consonants included). Text with none
 * of them is already NFC, which is the common case and skips the full algorithm. */
static uint8_t maybe_bmp[0x10000 / 8];
static pthread_once_t maybe_once = PTHREAD_ONCE_INIT;

static void mark(uint32_t cp)
{
    if (cp < 0x10000) maybe_bmp[cp >> 3] |= (uint8_t)(1u << (cp & 7));
}

static void maybe_build(void)
{
    for (unsigned i = 0; i < tok_nfc_ccc_n; i++)
        for (uint32_t cp = tok_nfc_ccc[i][0]; cp <= tok_nfc_ccc[i][1]; cp++) mark(cp);
    for (unsigned i = 0; i < tok_nfc_decomp_n; i++) {
        uint32_t cp = tok_nfc_decomp[i][0];
        if (!tok_nfc_decomp[i][2] || compose(tok_nfc_decomp[i][1], tok_nfc_decomp[i][2]) != cp) mark(cp);
    }
    for (unsigned i = 0; i < tok_nfc_comp_n; i++) mark(tok_nfc_comp[i][1]);
    for (uint32_t cp = VBASE; cp < VBASE + VCOUNT; cp++) mark(cp);
    for (uint32_t cp = TBASE + 1; cp < TBASE + TCOUNT; cp++) mark(cp);
}

static bool maybe_changes(const char *s, size_t n)
{
    pthread_once(&maybe_once, maybe_build);
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int k = tok_utf8_decode(u + i, n - i, &cp);
        if (k <= 0) return true;
        if (cp < 0x10000 ? (maybe_bmp[cp >> 3] >> (cp & 7)) & 1
                         : ccc_of(cp) != 0 || decomp_of(cp) || (cp >= 0x11000 && cp < 0x12000))
            return true; /* beyond the BMP only Brahmi-family scripts have composition pairs */
        i += (size_t)k;
    }
    return false;
}

static void canonical_order(struct cps *c)
{
    /* A stable sort of each run of non-starters by class. */
    for (size_t j = 1; j < c->n; j++) {
        int cc = ccc_of(c->v[j]);
        if (cc == 0) continue;
        size_t k = j;
        while (k > 0 && ccc_of(c->v[k - 1]) > cc) {
            uint32_t tmp = c->v[k];
            c->v[k] = c->v[k - 1];
            c->v[k - 1] = tmp;
            k--;
        }
    }
}

/* Canonical composition: each character joins the last starter unless blocked. */
static void canonical_compose(struct cps *c)
{
    size_t w = 0;
    long starter = -1;
    int last_cc = -1; /* class of the last character kept after the starter; -1 when none */
    for (size_t j = 0; j < c->n; j++) {
        uint32_t cp = c->v[j];
        int cc = ccc_of(cp);
        if (starter >= 0 && (last_cc == -1 || last_cc < cc)) {
            uint32_t comp = compose(c->v[starter], cp);
            if (comp) {
                c->v[starter] = comp;
                continue;
            }
        }
        if (cc == 0) {
            starter = (long)w;
            last_cc = -1;
        } else
            last_cc = cc;
        c->v[w++] = cp;
    }
    c->n = w;
}

static int put_cps(struct strbuf *out, const struct cps *c)
{
    if (strbuf_reserve(out, c->n * 4) < 0) return -1;
    for (size_t j = 0; j < c->n; j++) out->len += (size_t)tok_utf8_encode(c->v[j], out->p + out->len);
    out->p[out->len] = '\0';
    return 0;
}

int tok_unorm_append(struct strbuf *out, const char *s, size_t n, enum tok_unorm form)
{
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < 0x80) i++;
    if (i == n || (form == TOK_NFC && !maybe_changes(s, n))) return strbuf_append(out, s, n);

    struct cps c = {0};
    int rc = -1;
    const unsigned char *u = (const unsigned char *)s;
    for (i = 0; i < n;) {
        uint32_t cp;
        int k = tok_utf8_decode(u + i, n - i, &cp);
        if (k <= 0) {
            cp = 0xFFFD;
            k = 1;
        }
        int r = form == TOK_NFC ? decompose(&c, cp) : decompose_full(&c, cp, form == TOK_NFKC || form == TOK_NFKD);
        if (r < 0) goto done;
        i += (size_t)k;
    }
    canonical_order(&c);
    if (form == TOK_NFC || form == TOK_NFKC) canonical_compose(&c);
    rc = put_cps(out, &c);
done:
    free(c.v);
    return rc;
}

int tok_nfc_append(struct strbuf *out, const char *s, size_t n)
{
    return tok_unorm_append(out, s, n, TOK_NFC);
}

/* Lowercase (one character at a time, as Rust's char::to_lowercase) or StripAccents (drops
 * every combining mark: Mn, Mc and Me). */
int tok_case_append(struct strbuf *out, const char *s, size_t n, bool strip_accents)
{
    const unsigned char *u = (const unsigned char *)s;
    char enc[4];
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            char ch = (char)(!strip_accents && u[i] >= 'A' && u[i] <= 'Z' ? u[i] + 32 : u[i]);
            if (strbuf_putc(out, ch) < 0) return -1;
            i++;
            continue;
        }
        uint32_t cp;
        int k = tok_utf8_decode(u + i, n - i, &cp);
        if (k <= 0) {
            k = 1;
            cp = 0xFFFD;
        }
        if (strip_accents) {
            unsigned lo = 0, hi = tok_mn_ranges_n;
            bool mn = false;
            while (lo < hi && !mn) {
                unsigned mid = (lo + hi) / 2;
                if (cp < tok_mn_ranges[mid][0]) hi = mid;
                else if (cp > tok_mn_ranges[mid][1]) lo = mid + 1;
                else mn = true;
            }
            if (!mn && strbuf_append(out, enc, (size_t)tok_utf8_encode(cp, enc)) < 0) return -1;
        } else {
            const uint32_t *m = map_find(tok_lower_map, tok_lower_map_n, cp);
            if (!m) {
                if (strbuf_append(out, enc, (size_t)tok_utf8_encode(cp, enc)) < 0) return -1;
            } else {
                for (uint32_t j = 0; j < m[2]; j++)
                    if (strbuf_append(out, enc, (size_t)tok_utf8_encode(tok_lower_cps[m[1] + j], enc)) < 0) return -1;
            }
        }
        i += (size_t)k;
    }
    return 0;
}
