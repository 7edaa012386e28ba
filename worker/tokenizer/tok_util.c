/* Containers and UTF-8 helpers shared by the tokenizer's stages. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "worker/tokenizer/tok_internal.h"

char *tok_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

int tok_pieces_add(struct tok_pieces *p, const char *s, size_t len, bool at_origin)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct tok_piece *v = realloc(p->v, cap * sizeof(*v));
        if (!v) return -1;
        p->v = v;
        p->cap = cap;
    }
    size_t off = p->arena.len;
    if (strbuf_append(&p->arena, s, len) < 0) return -1;
    p->v[p->n++] = (struct tok_piece){.off = off, .len = len, .at_origin = at_origin};
    return 0;
}

void tok_pieces_clear(struct tok_pieces *p)
{
    p->n = 0;
    p->arena.len = 0;
}

void tok_pieces_free(struct tok_pieces *p)
{
    strbuf_free(&p->arena);
    free(p->v);
    p->v = NULL;
    p->n = p->cap = 0;
}

/* ---- hash maps ---------------------------------------------------------------------------- */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static size_t table_size(size_t expected)
{
    size_t n = 16;
    while (n < expected * 2) n *= 2;
    return n;
}

int tok_strmap_init(struct tok_strmap *m, size_t expected)
{
    size_t n = table_size(expected);
    m->slots = calloc(n, sizeof(*m->slots));
    if (!m->slots) return -1;
    m->mask = n - 1;
    m->count = 0;
    return 0;
}

void tok_strmap_free(struct tok_strmap *m)
{
    free(m->slots);
    m->slots = NULL;
}

static int strmap_grow(struct tok_strmap *m)
{
    struct tok_strmap old = *m;
    if (tok_strmap_init(m, (old.mask + 1)) < 0) {
        *m = old;
        return -1;
    }
    for (size_t i = 0; i <= old.mask; i++)
        if (old.slots[i].key) tok_strmap_put(m, old.slots[i].key, old.slots[i].len, old.slots[i].val);
    free(old.slots);
    return 0;
}

int tok_strmap_put(struct tok_strmap *m, const char *key, uint32_t len, int32_t val)
{
    if ((m->count + 1) * 2 > m->mask + 1 && strmap_grow(m) < 0) return -1;
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) {
            m->slots[i].val = val;
            return 0;
        }
        i = (i + 1) & m->mask;
    }
    m->slots[i] = (struct tok_strmap_slot){.key = key, .len = len, .val = val};
    m->count++;
    return 0;
}

int32_t tok_strmap_get(const struct tok_strmap *m, const char *key, size_t len)
{
    if (!m->slots) return -1;
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) return m->slots[i].val;
        i = (i + 1) & m->mask;
    }
    return -1;
}

static uint64_t hash_pair(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

#define PAIR_EMPTY UINT64_MAX

int tok_pairmap_init(struct tok_pairmap *m, size_t expected)
{
    size_t n = table_size(expected);
    m->slots = malloc(n * sizeof(*m->slots));
    if (!m->slots) return -1;
    for (size_t i = 0; i < n; i++) m->slots[i].key = PAIR_EMPTY;
    m->mask = n - 1;
    m->count = 0;
    return 0;
}

void tok_pairmap_free(struct tok_pairmap *m)
{
    free(m->slots);
    m->slots = NULL;
}

static int pairmap_grow(struct tok_pairmap *m)
{
    struct tok_pairmap old = *m;
    if (tok_pairmap_init(m, old.mask + 1) < 0) {
        *m = old;
        return -1;
    }
    for (size_t i = 0; i <= old.mask; i++)
        if (old.slots[i].key != PAIR_EMPTY)
            tok_pairmap_put(m, (int32_t)(old.slots[i].key >> 32), (int32_t)(uint32_t)old.slots[i].key,
                            old.slots[i].rank, old.slots[i].merged);
    free(old.slots);
    return 0;
}

int tok_pairmap_put(struct tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    if ((m->count + 1) * 2 > m->mask + 1 && pairmap_grow(m) < 0) return -1;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash_pair(key) & m->mask;
    while (m->slots[i].key != PAIR_EMPTY) {
        if (m->slots[i].key == key) return 0;
        i = (i + 1) & m->mask;
    }
    m->slots[i] = (struct tok_pair_slot){.key = key, .rank = rank, .merged = merged};
    m->count++;
    return 0;
}

const struct tok_pair_slot *tok_pairmap_get(const struct tok_pairmap *m, int32_t a, int32_t b)
{
    if (!m->slots) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash_pair(key) & m->mask;
    while (m->slots[i].key != PAIR_EMPTY) {
        if (m->slots[i].key == key) return &m->slots[i];
        i = (i + 1) & m->mask;
    }
    return NULL;
}

/* ---- UTF-8 -------------------------------------------------------------------------------- */
/* Returns the length of a valid character at s, or -k where k >= 1 is the length of the
 * maximal invalid subpart (the bytes one U+FFFD replaces): common/utf8.h's reading. */
static int utf8_scan(const unsigned char *s, size_t n)
{
    size_t skip, k = utf8_char_len(s, n, &skip);
    return k ? (int)k : -(int)skip;
}

int tok_utf8_valid_len(const unsigned char *s, size_t n)
{
    if (n == 0) return 0;
    int k = utf8_scan(s, n);
    return k > 0 ? k : 0;
}

int tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    return (int)utf8_decode(s, n, cp);
}

int tok_utf8_encode(uint32_t cp, char *out)
{
    return (int)utf8_encode(cp, out);
}

bool tok_utf8_is_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_scan(u + i, n - i);
        if (k < 0) return false;
        i += (size_t)k;
    }
    return true;
}

size_t tok_utf8_incomplete_tail(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    /* A lead byte always starts a new unit of the forward scan (a maximal invalid subpart
     * never takes one in past its first byte), so looking back from the end is enough. */
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = u[n - k];
        if (c < 0x80) return 0;
        if (c < 0xC0) continue;
        if (c < 0xC2 || c > 0xF4) return 0; /* never starts a character */
        int r = utf8_scan(u + n - k, k);
        return r == -(int)k ? k : 0; /* ran out of bytes with every byte so far allowed */
    }
    return 0;
}

int tok_utf8_lossy_append(struct strbuf *out, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        int k = u[i] < 0x80 ? 1 : utf8_scan(u + i, n - i);
        if (k > 0) {
            i += (size_t)k;
            continue;
        }
        if (strbuf_append(out, s + run, i - run) < 0 || strbuf_append(out, "\xEF\xBF\xBD", 3) < 0) return -1;
        i += (size_t)(-k);
        run = i;
    }
    return strbuf_append(out, s + run, n - run);
}

bool tok_is_space_cp(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* ---- ByteLevel ---------------------------------------------------------------------------- */
/* GPT-2 maps the printable bytes to themselves and the rest, in order, to U+0100 onward. */
const uint16_t tok_bytelevel_char[256] = {
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271,
    272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287,
    288, 33,  34,  35,  36,  37,  38,  39,  40,  41,  42,  43,  44,  45,  46,  47,
    48,  49,  50,  51,  52,  53,  54,  55,  56,  57,  58,  59,  60,  61,  62,  63,
    64,  65,  66,  67,  68,  69,  70,  71,  72,  73,  74,  75,  76,  77,  78,  79,
    80,  81,  82,  83,  84,  85,  86,  87,  88,  89,  90,  91,  92,  93,  94,  95,
    96,  97,  98,  99,  100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 289,
    290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305,
    306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321,
    322, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 323, 174, 175,
    176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
    192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207,
    208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223,
    224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239,
    240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255,
};

int tok_bytelevel_byte(uint32_t cp)
{
    if (cp >= 33 && cp <= 126) return (int)cp;
    if (cp >= 161 && cp <= 255 && cp != 173) return (int)cp;
    if (cp >= 256 && cp <= 323) {
        /* The non-printable bytes in ascending order: 0-32, 127-160, 173. */
        uint32_t k = cp - 256;
        if (k <= 32) return (int)k;
        if (k <= 32 + 34) return (int)(127 + (k - 33));
        if (k == 67) return 173;
    }
    return -1;
}

/* Hugging Face runs these patterns on Oniguruma (and Rust's regex), whose \\s is the Unicode
 * White_Space property and whose \\w is Alphabetic, marks, decimal digits, connector
 * punctuation and the joiners. PCRE2's differ at the edges (its \\s takes U+180E), so the
 * classes are spelled out as properties before compiling. */
static int translate_classes(const char *p, size_t n, struct strbuf *out)
{
    static const char word[] = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}";
    bool in_class = false;
    size_t class_start = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            i++;
            if (e == 's') rc = strbuf_append(out, "\\p{White_Space}", 15);
            else if (e == 'S') rc = strbuf_append(out, "\\P{White_Space}", 15);
            else if (e == 'w' && in_class) rc = strbuf_append(out, word, sizeof(word) - 1);
            else if (e == 'w') {
                rc = strbuf_putc(out, '[');
                if (rc == 0) rc = strbuf_append(out, word, sizeof(word) - 1);
                if (rc == 0) rc = strbuf_putc(out, ']');
            } else if (e == 'W' && !in_class) {
                rc = strbuf_append(out, "[^", 2);
                if (rc == 0) rc = strbuf_append(out, word, sizeof(word) - 1);
                if (rc == 0) rc = strbuf_putc(out, ']');
            } else {
                rc = strbuf_putc(out, '\\');
                if (rc == 0) rc = strbuf_putc(out, e);
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = i + 1;
            if (class_start < n && p[class_start] == '^') class_start++;
        } else if (in_class && c == ']' && i > class_start) {
            in_class = false;
        }
        rc = strbuf_putc(out, c);
    }
    return rc;
}

pcre2_code *tok_regex_compile(const char *pattern, size_t len, bool literal, char *msg, size_t msglen)
{
    int errcode;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    struct strbuf tr = {0};
    if (literal) {
        opts = PCRE2_UTF | PCRE2_LITERAL;
    } else {
        if (translate_classes(pattern, len, &tr) < 0 || strbuf_reserve(&tr, 0) < 0) {
            strbuf_free(&tr);
            if (msg) snprintf(msg, msglen, "out of memory");
            return NULL;
        }
        pattern = tr.p;
        len = tr.len;
    }
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &errcode, &erroff, NULL);
    strbuf_free(&tr);
    if (!re) {
        PCRE2_UCHAR buf[160];
        pcre2_get_error_message(errcode, buf, sizeof(buf));
        if (msg) snprintf(msg, msglen, "%s at offset %zu", (const char *)buf, (size_t)erroff);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter when absent */
    return re;
}
