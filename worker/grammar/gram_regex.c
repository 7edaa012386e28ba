/* Regular expressions to GBNF. The whole output must match (as vLLM's guided_regex and
 * Outlines do), so a leading ^ and a trailing $ are accepted and mean nothing more.
 *
 * Supported: literals (UTF-8), escapes \n \r \t \f \v \0 \xHH \x{H..} \uHHHH and escaped
 * punctuation; classes [...] with ranges and negation; \d \w \s \D \W \S (ASCII, in and out of
 * classes); `.` (anything but a newline); groups ( ), (?: ), (?<name> ), (?P<name> );
 * alternation; ? * + {m} {m,} {m,n} {,n}, lazy forms (same language). Refused, with the
 * offset: anchors elsewhere, backreferences, lookaround, \b, possessive quantifiers, flags,
 * POSIX classes. */
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "worker/grammar/grammar_internal.h"

struct rx {
    const char *s;
    size_t n, i;
    struct strbuf *out;
    char *err;
    size_t errlen;
    int depth;
};

static int rx_fail(struct rx *r, const char *what)
{
    gram_err(r->err, r->errlen, "regex: %s at offset %zu", what, r->i);
    return -1;
}

static int rx_peek(const struct rx *r)
{
    return r->i < r->n ? (unsigned char)r->s[r->i] : -1;
}

struct ranges {
    uint32_t *v; /* lo, hi pairs */
    size_t n, cap;
};

static int ranges_add(struct ranges *R, uint32_t lo, uint32_t hi)
{
    if (R->n == R->cap) {
        size_t nc = R->cap ? R->cap * 2 : 16;
        void *q = realloc(R->v, nc * 2 * sizeof *R->v);
        if (!q) return -1;
        R->v = q;
        R->cap = nc;
    }
    R->v[2 * R->n] = lo;
    R->v[2 * R->n + 1] = hi;
    R->n++;
    return 0;
}

/* \d \w \s and their negations as ranges; negated ones as their complement. */
static int shorthand(struct ranges *R, int c)
{
    static const uint32_t d[] = {'0', '9'};
    static const uint32_t w[] = {'0', '9', 'A', 'Z', '_', '_', 'a', 'z'};
    static const uint32_t s[] = {'\t', '\r', ' ', ' '}; /* \t \n \v \f \r and space */
    const uint32_t *set;
    size_t n;
    switch (c | 0x20) {
    case 'd': set = d; n = 1; break;
    case 'w': set = w; n = 4; break;
    default: set = s; n = 2; break;
    }
    if (c >= 'a') {
        for (size_t i = 0; i < n; i++)
            if (ranges_add(R, set[2 * i], set[2 * i + 1]) < 0) return -1;
        return 0;
    }
    uint32_t next = 0;
    for (size_t i = 0; i < n; i++) {
        if (set[2 * i] > next && ranges_add(R, next, set[2 * i] - 1) < 0) return -1;
        next = set[2 * i + 1] + 1;
    }
    return ranges_add(R, next, 0x10FFFF);
}

static int read_hex(struct rx *r, int count, uint32_t *cp)
{
    uint32_t v = 0;
    for (int k = 0; k < count; k++) {
        int h = gram_hexval(rx_peek(r));
        if (h < 0) return rx_fail(r, "expected a hexadecimal digit");
        v = v * 16 + (uint32_t)h;
        r->i++;
    }
    *cp = v;
    return 0;
}

/* A literal character (UTF-8) at r->i. */
static int read_utf8(struct rx *r, uint32_t *cp)
{
    size_t len = utf8_decode((const unsigned char *)r->s + r->i, r->n - r->i, cp);
    if (len == 0) return rx_fail(r, "invalid UTF-8");
    r->i += len;
    return 0;
}

/* After a backslash: a single character (*cp, returns 0) or a shorthand class added to R
 * (returns 1). */
static int read_escape(struct rx *r, uint32_t *cp, struct ranges *R)
{
    int c = rx_peek(r);
    if (c < 0) return rx_fail(r, "a trailing backslash");
    r->i++;
    switch (c) {
    case 'n': *cp = '\n'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case '0': *cp = 0; return 0;
    case 'x':
        if (rx_peek(r) == '{') {
            r->i++;
            uint32_t v = 0;
            int digits = 0;
            while (gram_hexval(rx_peek(r)) >= 0 && digits < 8) {
                v = v * 16 + (uint32_t)gram_hexval(rx_peek(r));
                r->i++;
                digits++;
            }
            if (!digits || rx_peek(r) != '}' || v > 0x10FFFF) return rx_fail(r, "a bad \\x{...} escape");
            r->i++;
            *cp = v;
            return 0;
        }
        return read_hex(r, 2, cp);
    case 'u': return read_hex(r, 4, cp);
    case 'd': case 'w': case 's': case 'D': case 'W': case 'S':
        return shorthand(R, c) < 0 ? rx_fail(r, "out of memory") : 1;
    case 'b': case 'B': case 'A': case 'z': case 'Z': case 'G':
        r->i -= 2; /* report the backslash */
        return rx_fail(r, "anchors and word boundaries are not supported");
    default:
        if (c >= '1' && c <= '9') {
            r->i -= 2;
            return rx_fail(r, "backreferences are not supported");
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            r->i -= 2;
            return rx_fail(r, "an unknown escape");
        }
        if (c >= 0x80) {
            r->i--;
            return read_utf8(r, cp);
        }
        *cp = (uint32_t)c;
        return 0;
    }
}

static int emit_class(struct rx *r, const struct ranges *R, bool negate)
{
    if (strbuf_putc(r->out, '[') < 0 || (negate && strbuf_putc(r->out, '^') < 0)) return -1;
    for (size_t i = 0; i < R->n; i++)
        if (gram_appendf(r->out, "\\U%08X-\\U%08X", R->v[2 * i], R->v[2 * i + 1]) < 0) return -1;
    if (R->n == 0 && negate) return strbuf_putc(r->out, ']'); /* [^] matches anything */
    return strbuf_putc(r->out, ']');
}

static int emit_char(struct rx *r, uint32_t cp)
{
    char buf[4];
    if (cp >= 0xD800 && cp <= 0xDFFF) return rx_fail(r, "a surrogate code point");
    return gram_gbnf_literal(r->out, buf, utf8_encode(cp, buf)) < 0 ? rx_fail(r, "out of memory") : 0;
}

static int parse_class(struct rx *r)
{
    r->i++; /* [ */
    bool negate = false;
    struct ranges R = {0};
    int rc = -1;
    if (rx_peek(r) == '^') {
        negate = true;
        r->i++;
    }
    bool first = true;
    for (;;) {
        int c = rx_peek(r);
        if (c < 0) {
            rx_fail(r, "an unterminated class");
            goto done;
        }
        if (c == ']' && !first) break;
        first = false;
        if (c == '[' && r->i + 1 < r->n && (r->s[r->i + 1] == ':' || r->s[r->i + 1] == '=' || r->s[r->i + 1] == '.')) {
            rx_fail(r, "POSIX classes are not supported");
            goto done;
        }
        uint32_t lo;
        if (c == '\\') {
            r->i++;
            int k = read_escape(r, &lo, &R);
            if (k < 0) goto done;
            if (k == 1) continue;
        } else if (read_utf8(r, &lo) < 0) {
            goto done;
        }
        uint32_t hi = lo;
        if (rx_peek(r) == '-' && r->i + 1 < r->n && r->s[r->i + 1] != ']') {
            r->i++;
            if (rx_peek(r) == '\\') {
                r->i++;
                struct ranges dummy = {0};
                int k = read_escape(r, &hi, &dummy);
                free(dummy.v);
                if (k < 0) goto done;
                if (k == 1) {
                    rx_fail(r, "a range that ends in a class shorthand");
                    goto done;
                }
            } else if (read_utf8(r, &hi) < 0) {
                goto done;
            }
            if (hi < lo) {
                rx_fail(r, "a range whose end comes before its start");
                goto done;
            }
        }
        if (ranges_add(&R, lo, hi) < 0) {
            rx_fail(r, "out of memory");
            goto done;
        }
    }
    r->i++;
    rc = emit_class(r, &R, negate) < 0 ? rx_fail(r, "out of memory") : 0;
done:
    free(R.v);
    return rc;
}

static int parse_alt(struct rx *r);

static int parse_number(struct rx *r, uint32_t *v)
{
    uint64_t x = 0;
    if (rx_peek(r) < '0' || rx_peek(r) > '9') return -1;
    while (rx_peek(r) >= '0' && rx_peek(r) <= '9') {
        x = x * 10 + (uint64_t)(rx_peek(r) - '0');
        if (x > 100000) return -1;
        r->i++;
    }
    *v = (uint32_t)x;
    return 0;
}

/* {m}, {m,}, {m,n} or {,n} at r->i, written out; 1 when it is not a quantifier (a literal {). */
static int parse_braces(struct rx *r)
{
    size_t save = r->i;
    r->i++;
    uint32_t m = 0, n = 0;
    bool has_m = parse_number(r, &m) == 0, comma = false, has_n = false;
    if (rx_peek(r) == ',') {
        comma = true;
        r->i++;
        has_n = parse_number(r, &n) == 0;
    }
    if (rx_peek(r) != '}' || (!has_m && !has_n)) {
        r->i = save;
        return 1;
    }
    r->i++;
    int rc;
    if (!comma) rc = gram_appendf(r->out, "{%u}", m);
    else if (!has_n) rc = gram_appendf(r->out, "{%u,}", m);
    else {
        if (n < m) return rx_fail(r, "a repetition whose maximum is below its minimum");
        rc = gram_appendf(r->out, "{%u,%u}", m, n);
    }
    return rc < 0 ? rx_fail(r, "out of memory") : 0;
}

static int parse_seq(struct rx *r)
{
    bool empty = true;
    for (;;) {
        int c = rx_peek(r);
        if (c < 0 || c == '|' || c == ')') break;
        if (!empty && strbuf_putc(r->out, ' ') < 0) return rx_fail(r, "out of memory");
        empty = false;
        if (c == '(') {
            r->i++;
            if (rx_peek(r) == '?') {
                r->i++;
                int k = rx_peek(r);
                if (k == ':') {
                    r->i++;
                } else if (k == 'P' && r->i + 1 < r->n && r->s[r->i + 1] == '<') {
                    r->i += 2;
                    while (rx_peek(r) >= 0 && rx_peek(r) != '>') r->i++;
                    if (rx_peek(r) != '>') return rx_fail(r, "an unterminated group name");
                    r->i++;
                } else if (k == '<' && r->i + 1 < r->n && r->s[r->i + 1] != '=' && r->s[r->i + 1] != '!') {
                    r->i++;
                    while (rx_peek(r) >= 0 && rx_peek(r) != '>') r->i++;
                    if (rx_peek(r) != '>') return rx_fail(r, "an unterminated group name");
                    r->i++;
                } else if (k == '=' || k == '!' || k == '<') {
                    return rx_fail(r, "lookaround is not supported");
                } else {
                    return rx_fail(r, "inline flags and other (? groups are not supported");
                }
            }
            if (++r->depth > 500) return rx_fail(r, "groups nested too deeply");
            if (strbuf_append(r->out, "( ", 2) < 0) return rx_fail(r, "out of memory");
            if (parse_alt(r) < 0) return -1;
            if (rx_peek(r) != ')') return rx_fail(r, "a missing ')'");
            r->i++;
            r->depth--;
            if (strbuf_append(r->out, " )", 2) < 0) return rx_fail(r, "out of memory");
        } else if (c == '[') {
            if (parse_class(r) < 0) return -1;
        } else if (c == '.') {
            r->i++;
            if (strbuf_append(r->out, "[^\\n]", 5) < 0) return rx_fail(r, "out of memory");
        } else if (c == '\\') {
            r->i++;
            uint32_t cp;
            struct ranges R = {0};
            int k = read_escape(r, &cp, &R);
            if (k < 0) {
                free(R.v);
                return -1;
            }
            int rc = k == 1 ? emit_class(r, &R, false) : emit_char(r, cp);
            free(R.v);
            if (rc < 0) return rx_fail(r, "out of memory");
        } else if (c == '^' || c == '$') {
            return rx_fail(r, "anchors are only supported at the start and the end");
        } else if (c == '*' || c == '+' || c == '?') {
            return rx_fail(r, "nothing to repeat");
        } else if (c == '{' && parse_braces(r) == 0) {
            return rx_fail(r, "nothing to repeat");
        } else {
            uint32_t cp;
            if (read_utf8(r, &cp) < 0 || emit_char(r, cp) < 0) return -1;
        }
        /* Quantifiers. */
        for (bool quantified = false;;) {
            c = rx_peek(r);
            if (c == '*' || c == '+' || c == '?') {
                if (quantified && c == '?') { /* lazy: the same language */
                    r->i++;
                    continue;
                }
                if (quantified && c == '+') return rx_fail(r, "possessive quantifiers are not supported");
                if (quantified) return rx_fail(r, "a repeated quantifier");
                r->i++;
                if (strbuf_putc(r->out, (char)c) < 0) return rx_fail(r, "out of memory");
                quantified = true;
            } else if (c == '{') {
                if (quantified) return rx_fail(r, "a repeated quantifier");
                int k = parse_braces(r);
                if (k < 0) return -1;
                if (k == 1) break; /* a literal { follows */
                quantified = true;
            } else {
                break;
            }
        }
    }
    if (empty && strbuf_append(r->out, "\"\"", 2) < 0) return rx_fail(r, "out of memory");
    return 0;
}

static int parse_alt(struct rx *r)
{
    if (parse_seq(r) < 0) return -1;
    while (rx_peek(r) == '|') {
        r->i++;
        if (strbuf_append(r->out, " | ", 3) < 0) return rx_fail(r, "out of memory");
        if (parse_seq(r) < 0) return -1;
    }
    return 0;
}

int gram_regex_to_gbnf(const char *src, size_t len, struct strbuf *out, char *err, size_t errlen)
{
    struct rx r = {.s = src, .n = len, .out = out, .err = err, .errlen = errlen};
    if (len && src[0] == '^') r.i = 1;
    /* A trailing unescaped $ (an even number of backslashes before it). */
    if (r.n > r.i && src[r.n - 1] == '$') {
        size_t k = r.n - 1, bs = 0;
        while (k > r.i && src[k - 1] == '\\') {
            bs++;
            k--;
        }
        if (bs % 2 == 0) r.n--;
    }
    if (strbuf_append(out, "root ::= ", 9) < 0) return rx_fail(&r, "out of memory");
    if (parse_alt(&r) < 0) return -1;
    if (r.i < r.n) return rx_fail(&r, "an unmatched ')'");
    return strbuf_putc(out, '\n') < 0 ? rx_fail(&r, "out of memory") : 0;
}
