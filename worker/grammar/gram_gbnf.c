/* GBNF, llama.cpp's grammar syntax, parsed into the builder:
 *
 *     root  ::= "{" ws pair ("," ws pair)* "}"     # a comment
 *     pair  ::= [a-z]+ ":" ws ( "yes" | "no" )
 *     ws    ::= [ \t\n]*
 *
 * Literals "..." and classes [...] (ranges, ^ to negate) are over code points, written as
 * UTF-8 or with escapes \n \r \t \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH; `.` is any code point.
 * Groups ( ), postfix * + ? {m} {m,} {,n} {m,n}. A rule's alternatives end at a newline
 * unless inside parentheses or right after `|`. The grammar starts at `root`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "worker/grammar/grammar_internal.h"

struct gp {
    const char *s;
    size_t n, i;
    struct gbuild *b;
    char *err;
    size_t errlen;
    int depth;
    bool failed;
};

static void where(const struct gp *p, size_t at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t k = 0; k < at && k < p->n; k++) {
        if (p->s[k] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static int fail(struct gp *p, const char *what)
{
    if (p->failed) return -1;
    int line, col;
    where(p, p->i, &line, &col);
    gram_err(p->err, p->errlen, "grammar: %s at line %d column %d", what, line, col);
    p->failed = true;
    return -1;
}

/* A builder error (its message is in err already) gets the position added. */
static int fail_build(struct gp *p)
{
    if (p->failed) return -1;
    char msg[256];
    snprintf(msg, sizeof msg, "%s", p->err && p->errlen ? p->err : "error");
    return fail(p, msg);
}

static int peek(const struct gp *p)
{
    return p->i < p->n ? (unsigned char)p->s[p->i] : -1;
}

static bool is_word(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
}

static void skip_space(struct gp *p, bool newline_ok)
{
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (c == ' ' || c == '\t' || (c == '\r' && newline_ok)) {
            p->i++;
        } else if (c == '#') {
            while (p->i < p->n && p->s[p->i] != '\n') p->i++;
        } else if (c == '\n' && newline_ok) {
            p->i++;
        } else if (c == '\r' && p->i + 1 < p->n && p->s[p->i + 1] == '\n' && newline_ok) {
            p->i += 2;
        } else {
            break;
        }
    }
}

static int hexdigits(struct gp *p, int count, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < count; k++) {
        int d = gram_hexval(peek(p));
        if (d < 0) return fail(p, "expected a hexadecimal digit");
        v = v * 16 + (uint32_t)d;
        p->i++;
    }
    *out = v;
    return 0;
}

/* One character of a literal or class: an escape or a UTF-8 sequence, as a code point. */
static int parse_char(struct gp *p, uint32_t *cp)
{
    int c = peek(p);
    if (c < 0) return fail(p, "unexpected end of grammar");
    if (c == '\\') {
        p->i++;
        int e = peek(p);
        p->i++;
        switch (e) {
        case 'n': *cp = '\n'; return 0;
        case 'r': *cp = '\r'; return 0;
        case 't': *cp = '\t'; return 0;
        case 'f': *cp = '\f'; return 0;
        case 'v': *cp = '\v'; return 0;
        case '0': *cp = 0; return 0;
        case '\\': case '"': case '[': case ']': case '-': case '^': case '\'': case '/': case '.':
            *cp = (uint32_t)e;
            return 0;
        case 'x': return hexdigits(p, 2, cp);
        case 'u': return hexdigits(p, 4, cp);
        case 'U':
            if (hexdigits(p, 8, cp) < 0) return -1;
            if (*cp > 0x10FFFF) return fail(p, "code point above U+10FFFF");
            return 0;
        default:
            p->i--;
            return fail(p, "unknown escape");
        }
    }
    size_t len = utf8_decode((const unsigned char *)p->s + p->i, p->n - p->i, cp);
    if (len == 0) return fail(p, "invalid UTF-8");
    p->i += len;
    return 0;
}

static int parse_literal(struct gp *p, uint32_t alt)
{
    p->i++; /* the opening quote */
    while (peek(p) != '"') {
        if (peek(p) < 0 || peek(p) == '\n') return fail(p, "unterminated string literal");
        uint32_t cp;
        if (parse_char(p, &cp) < 0) return -1;
        if (cp >= 0xD800 && cp <= 0xDFFF) return fail(p, "a surrogate code point in a literal");
        char buf[4];
        if (gb_push_literal(p->b, alt, buf, utf8_encode(cp, buf)) < 0) return fail_build(p);
    }
    p->i++;
    return 0;
}

static int parse_class(struct gp *p, uint32_t alt)
{
    p->i++; /* [ */
    bool negate = false;
    if (peek(p) == '^') {
        negate = true;
        p->i++;
    }
    uint32_t *r = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;
    while (peek(p) != ']') {
        if (peek(p) < 0) {
            fail(p, "unterminated character class");
            goto done;
        }
        uint32_t lo, hi;
        if (parse_char(p, &lo) < 0) goto done;
        hi = lo;
        if (peek(p) == '-' && p->i + 1 < p->n && p->s[p->i + 1] != ']') {
            p->i++;
            if (parse_char(p, &hi) < 0) goto done;
            if (hi < lo) {
                fail(p, "a character range whose end comes before its start");
                goto done;
            }
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            uint32_t *q = realloc(r, cap * 2 * sizeof *r);
            if (!q) {
                fail(p, "out of memory");
                goto done;
            }
            r = q;
        }
        r[2 * n] = lo;
        r[2 * n + 1] = hi;
        n++;
    }
    p->i++;
    if (gb_push_class(p->b, alt, r, n, negate) < 0) {
        fail_build(p);
        goto done;
    }
    rc = 0;
done:
    free(r);
    return rc;
}

static int parse_uint(struct gp *p, uint32_t *out)
{
    if (peek(p) < '0' || peek(p) > '9') return fail(p, "expected a number");
    uint64_t v = 0;
    while (peek(p) >= '0' && peek(p) <= '9') {
        v = v * 10 + (uint64_t)(peek(p) - '0');
        if (v > 1000000) return fail(p, "repetition count too large");
        p->i++;
    }
    *out = (uint32_t)v;
    return 0;
}

static int parse_alternates(struct gp *p, uint32_t rule, bool nested);

static int parse_sequence(struct gp *p, uint32_t alt, bool nested)
{
    for (;;) {
        int c = peek(p);
        uint32_t start = p->b->alts[alt].n;
        if (c == '"') {
            if (parse_literal(p, alt) < 0) return -1;
        } else if (c == '[') {
            if (parse_class(p, alt) < 0) return -1;
        } else if (c == '.') {
            p->i++;
            uint32_t any[2] = {0, 0x10FFFF};
            if (gb_push_class(p->b, alt, any, 1, false) < 0) return fail_build(p);
        } else if (c == '(') {
            if (++p->depth > 500) return fail(p, "groups nested too deeply");
            p->i++;
            skip_space(p, true);
            int64_t r = gb_rule_anon(p->b);
            if (r < 0) return fail_build(p);
            if (parse_alternates(p, (uint32_t)r, true) < 0) return -1;
            if (peek(p) != ')') return fail(p, "expected ')'");
            p->i++;
            p->depth--;
            if (gb_push(p->b, alt, GEL_MAKE(GEL_RULE, r)) < 0) return fail_build(p);
        } else if (c >= 0 && is_word(c)) {
            size_t s = p->i;
            while (is_word(peek(p))) p->i++;
            /* `name ::=` starts the next rule: this sequence ended at the newline before it. */
            size_t save = p->i;
            skip_space(p, false);
            if (p->i + 3 <= p->n && memcmp(p->s + p->i, "::=", 3) == 0) {
                p->i = s;
                return fail(p, "a rule definition inside an expression (missing newline?)");
            }
            p->i = save;
            int64_t r = gb_rule_named(p->b, p->s + s, p->i - s);
            if (r < 0) return fail_build(p);
            if (gb_push(p->b, alt, GEL_MAKE(GEL_RULE, r)) < 0) return fail_build(p);
        } else {
            return 0;
        }
        skip_space(p, nested);
        for (;;) {
            c = peek(p);
            uint32_t min, max = 0;
            bool unbounded = false;
            if (c == '*') {
                min = 0;
                unbounded = true;
            } else if (c == '+') {
                min = 1;
                unbounded = true;
            } else if (c == '?') {
                min = 0;
                max = 1;
            } else if (c == '{') {
                p->i++;
                skip_space(p, nested);
                min = 0;
                if (peek(p) != ',' && parse_uint(p, &min) < 0) return -1;
                skip_space(p, nested);
                if (peek(p) == ',') {
                    p->i++;
                    skip_space(p, nested);
                    if (peek(p) == '}') unbounded = true;
                    else if (parse_uint(p, &max) < 0) return -1;
                    skip_space(p, nested);
                } else {
                    max = min;
                }
                if (peek(p) != '}') return fail(p, "expected '}'");
            } else {
                break;
            }
            p->i++;
            if (gb_quantify(p->b, alt, start, min, unbounded ? -1 : (int64_t)max) < 0) return fail_build(p);
            skip_space(p, nested);
        }
    }
}

static int parse_alternates(struct gp *p, uint32_t rule, bool nested)
{
    int64_t alt = gb_alt_new(p->b, rule);
    if (alt < 0) return fail_build(p);
    if (parse_sequence(p, (uint32_t)alt, nested) < 0) return -1;
    for (;;) {
        /* An alternative may also start a line of its own (an extension of llama.cpp's syntax). */
        size_t save = p->i;
        skip_space(p, true);
        if (peek(p) != '|') {
            p->i = save;
            break;
        }
        p->i++;
        skip_space(p, true);
        alt = gb_alt_new(p->b, rule);
        if (alt < 0) return fail_build(p);
        if (parse_sequence(p, (uint32_t)alt, nested) < 0) return -1;
    }
    return 0;
}

int gram_gbnf_parse(const char *src, size_t len, struct grammar **out, char *err, size_t errlen)
{
    struct gbuild b;
    struct gp p = {.s = src, .n = len, .b = &b, .err = err, .errlen = errlen};
    int rc = -1;
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    gb_init(&b, err, errlen);
    skip_space(&p, true);
    while (p.i < p.n) {
        size_t s = p.i;
        while (is_word(peek(&p))) p.i++;
        if (p.i == s) {
            fail(&p, "expected a rule name");
            goto done;
        }
        int64_t r = gb_rule_named(&b, p.s + s, p.i - s);
        if (r < 0) {
            fail_build(&p);
            goto done;
        }
        if (b.rules[r].defined) {
            p.i = s;
            fail(&p, "rule defined twice");
            goto done;
        }
        b.rules[r].defined = true;
        skip_space(&p, false);
        if (p.i + 3 > p.n || memcmp(p.s + p.i, "::=", 3) != 0) {
            fail(&p, "expected '::='");
            goto done;
        }
        p.i += 3;
        skip_space(&p, true);
        if (parse_alternates(&p, (uint32_t)r, false) < 0) goto done;
        int c = peek(&p);
        if (c == ')') {
            fail(&p, "unbalanced ')'");
            goto done;
        }
        if (c >= 0 && c != '\n' && c != '\r') {
            fail(&p, "expected a newline or the end of the grammar");
            goto done;
        }
        skip_space(&p, true);
    }
    int64_t root = -1;
    for (uint32_t r = 0; r < b.n_rules; r++)
        if (b.rules[r].name && strcmp(b.rules[r].name, "root") == 0) root = r;
    if (root < 0 || !b.rules[root].defined) {
        gram_err(err, errlen, "grammar: no rule named 'root'");
        goto done;
    }
    if (gb_finish(&b, (uint32_t)root, out) < 0) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", err && errlen ? err : "error");
        gram_err(err, errlen, "grammar: %s", msg);
        goto done;
    }
    rc = 0;
done:
    gb_free(&b);
    return rc;
}
