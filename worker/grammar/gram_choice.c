/* A choice among strings (vLLM's guided_choice, a schema's enum) as a GBNF expression,
 * factored on common prefixes ("yes" | "yellow" becomes "ye" ( "s" | "llow" )), so that a
 * long list does not put one stack per string in every state. Prefixes are cut on UTF-8
 * character boundaries, since GBNF literals are text. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

struct str {
    const char *s;
    size_t n;
};

static int cmp_str(const void *a, const void *b)
{
    const struct str *x = a, *y = b;
    int r = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return r ? r : (x->n > y->n) - (x->n < y->n);
}

/* Length of the character starting at s[0] (a continuation byte counts as one). */
static size_t char_len(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    size_t k = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return k > n ? n : k;
}

/* v[lo, hi) are sorted, distinct, and share their first off bytes. */
static int factor(struct strbuf *e, const struct str *v, size_t lo, size_t hi, size_t off, int depth)
{
    if (depth > 2000) return -1;
    if (hi - lo == 1) return gram_gbnf_literal(e, v[lo].s + off, v[lo].n - off);
    /* The common prefix of the first and the last is everyone's (they are sorted). */
    size_t p = 0;
    const struct str *a = &v[lo], *b = &v[hi - 1];
    while (off + p < a->n && off + p < b->n) {
        size_t k = char_len(a->s + off + p, a->n - off - p);
        if (off + p + k > b->n || memcmp(a->s + off + p, b->s + off + p, k) != 0) break;
        p += k;
    }
    if (p > 0) {
        if (gram_gbnf_literal(e, a->s + off, p) < 0 || strbuf_putc(e, ' ') < 0) return -1;
        return factor(e, v, lo, hi, off + p, depth + 1);
    }
    if (strbuf_append(e, "( ", 2) < 0) return -1;
    size_t i = lo;
    bool first = true;
    if (v[i].n == off) { /* one string ends here; it sorts first */
        if (strbuf_append(e, "\"\"", 2) < 0) return -1;
        first = false;
        i++;
    }
    while (i < hi) {
        size_t k = char_len(v[i].s + off, v[i].n - off), j = i + 1;
        while (j < hi && v[j].n >= off + k && memcmp(v[j].s + off, v[i].s + off, k) == 0) j++;
        if (!first && strbuf_append(e, " | ", 3) < 0) return -1;
        if (factor(e, v, i, j, off, depth + 1) < 0) return -1;
        first = false;
        i = j;
    }
    return strbuf_append(e, " )", 2);
}

int gram_choice_expr(struct strbuf *e, char **strs, size_t *lens, size_t n)
{
    struct str *v = malloc((n + 1) * sizeof *v);
    if (!v) return -1;
    for (size_t i = 0; i < n; i++) v[i] = (struct str){strs[i], lens[i]};
    qsort(v, n, sizeof *v, cmp_str);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || cmp_str(&v[m - 1], &v[i]) != 0) v[m++] = v[i];
    int rc = strbuf_append(e, "( ", 2) < 0 || factor(e, v, 0, m, 0, 0) < 0 || strbuf_append(e, " )", 2) < 0 ? -1 : 0;
    free(v);
    return rc;
}

int gram_choice_to_gbnf(const char *src, size_t len, struct strbuf *out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *a = json_loadb(src, len, 0, &je);
    char **strs = NULL;
    size_t *lens = NULL;
    int rc = -1;
    if (!a || !json_is_array(a) || json_array_size(a) == 0) {
        gram_err(err, errlen, "choice: expected a non-empty JSON array of strings");
        goto done;
    }
    size_t n = json_array_size(a);
    strs = calloc(n, sizeof *strs);
    lens = calloc(n, sizeof *lens);
    if (!strs || !lens) {
        gram_err(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(a, i);
        if (!json_is_string(s)) {
            gram_err(err, errlen, "choice: element %zu is not a string", i);
            goto done;
        }
        strs[i] = (char *)json_string_value(s);
        lens[i] = json_string_length(s);
    }
    if (strbuf_append(out, "root ::= ", 9) < 0 || gram_choice_expr(out, strs, lens, n) < 0 ||
        strbuf_putc(out, '\n') < 0) {
        gram_err(err, errlen, "choice: out of memory, or strings too long to factor");
        goto done;
    }
    rc = 0;
done:
    json_decref(a);
    free(strs);
    free(lens);
    return rc;
}
