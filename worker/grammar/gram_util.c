/* Small helpers the grammar files share: error messages, formatted appends, array growth. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/grammar/grammar_internal.h"

void gram_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int gram_appendf(struct strbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) return strbuf_append(b, tmp, (size_t)n);
    if (strbuf_reserve(b, (size_t)n + 1) < 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int gram_grow(void **p, uint32_t *cap, uint64_t need, size_t elsize, uint32_t first)
{
    if (need <= *cap) return 0;
    if (need > UINT32_MAX / 2) return -1;
    uint32_t nc = *cap ? *cap : first;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * elsize);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

const char *grammar_kind_name(enum grammar_kind kind)
{
    switch (kind) {
    case GRAMMAR_JSON_SCHEMA: return "json_schema";
    case GRAMMAR_JSON_OBJECT: return "json_object";
    case GRAMMAR_REGEX: return "regex";
    case GRAMMAR_CHOICE: return "choice";
    case GRAMMAR_GBNF: return "grammar";
    }
    return "unknown";
}

int grammar_to_gbnf(enum grammar_kind kind, const char *source, size_t len, char **gbnf, char *err,
                    size_t errlen)
{
    struct strbuf b = {0};
    int rc = -1;
    *gbnf = NULL;
    switch (kind) {
    case GRAMMAR_JSON_SCHEMA: rc = gram_json_schema_to_gbnf(source, len, &b, err, errlen); break;
    case GRAMMAR_JSON_OBJECT: rc = gram_json_object_gbnf(&b); break;
    case GRAMMAR_REGEX: rc = gram_regex_to_gbnf(source, len, &b, err, errlen); break;
    case GRAMMAR_CHOICE: rc = gram_choice_to_gbnf(source, len, &b, err, errlen); break;
    case GRAMMAR_GBNF: rc = strbuf_append(&b, source, len); break;
    }
    if (rc == 0 && strbuf_reserve(&b, 0) < 0) rc = -1;
    if (rc < 0) {
        if (err && errlen && !err[0]) gram_err(err, errlen, "out of memory");
        strbuf_free(&b);
        return -1;
    }
    *gbnf = b.p;
    return 0;
}

int grammar_compile(struct grammar **out, enum grammar_kind kind, const char *source, size_t len,
                    char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (kind == GRAMMAR_GBNF) return gram_gbnf_parse(source, len, out, err, errlen);
    char *text = NULL;
    if (grammar_to_gbnf(kind, source, len, &text, err, errlen) < 0) return -1;
    char sub[512] = "";
    int rc = gram_gbnf_parse(text, strlen(text), out, sub, sizeof sub);
    if (rc < 0)
        gram_err(err, errlen, "%s: the translated grammar does not compile: %s", grammar_kind_name(kind), sub);
    free(text);
    return rc;
}

uint64_t grammar_hash(const struct grammar *g)
{
    return g->hash;
}

void grammar_free(struct grammar *g)
{
    if (!g) return;
    free(g->el);
    free(g->el_rule);
    free(g->alt_off);
    free(g->alt_pos);
    free(g->sets);
    free(g->ret_off);
    free(g->ret);
    free(g->ret_many);
    free(g->rule_class);
    free(g);
}
