/* Reasoning between <think> and </think>, split from the answer as the text streams. */
#include <stdlib.h>
#include <string.h>

#include "worker/tools/tools.h"

#define THINK_OPEN "<think>"
#define THINK_CLOSE "</think>"

enum rstate {
    R_START,   /* only whitespace so far: does the output open with <think>? */
    R_THINK,   /* reasoning, up to </think> */
    R_AFTER,   /* right after </think>: whitespace before the answer is dropped */
    R_CONTENT, /* the answer */
};

struct reasoning_parser {
    enum rstate st;
    bool from_start;
    struct strbuf buf; /* what is not decided yet */
};

const char *reasoning_family_name(enum reasoning_family f)
{
    return f == REASONING_QWEN3 ? "qwen3" : f == REASONING_DEEPSEEK_R1 ? "deepseek_r1" : "none";
}

int reasoning_family_from_name(const char *name, enum reasoning_family *out)
{
    if (!name) return -1;
    if (!strcmp(name, "qwen3")) *out = REASONING_QWEN3;
    else if (!strcmp(name, "deepseek_r1")) *out = REASONING_DEEPSEEK_R1;
    else if (!strcmp(name, "none")) *out = REASONING_NONE;
    else return -1;
    return 0;
}

const char *const *reasoning_markers(void)
{
    static const char *const m[] = {THINK_OPEN, THINK_CLOSE, NULL};
    return m;
}

struct reasoning_parser *reasoning_parser_new(bool from_start)
{
    struct reasoning_parser *p = calloc(1, sizeof *p);
    if (p) p->from_start = from_start;
    return p;
}

void reasoning_parser_free(struct reasoning_parser *p)
{
    if (!p) return;
    strbuf_free(&p->buf);
    free(p);
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The length of the longest end of s[0..n) that begins m (shorter than m). */
static size_t partial_tail(const char *s, size_t n, const char *m)
{
    size_t k = strlen(m) - 1;
    if (k > n) k = n;
    for (; k > 0; k--)
        if (!memcmp(s + n - k, m, k)) return k;
    return 0;
}

/* Decides as much of buf as can be: *used bytes of it. Returns 0, or -1 when out of memory. */
static int run(struct reasoning_parser *p, bool eof, struct strbuf *reasoning, struct strbuf *content, size_t *used)
{
    const char *s = strbuf_str(&p->buf);
    size_t n = p->buf.len, i = 0;
    int rc = 0;
    while (i < n && rc == 0) {
        if (p->st == R_START) {
            size_t k = i;
            while (k < n && is_ws(s[k])) k++;
            size_t left = n - k, olen = strlen(THINK_OPEN);
            if (left == 0 || (left < olen && !eof && !memcmp(s + k, THINK_OPEN, left))) break; /* undecided */
            if (left >= olen && !memcmp(s + k, THINK_OPEN, olen)) {
                i = k + olen;
                p->st = R_THINK;
            } else {
                p->st = p->from_start ? R_THINK : R_CONTENT;
            }
        } else if (p->st == R_THINK) {
            const char *hit = memmem(s + i, n - i, THINK_CLOSE, strlen(THINK_CLOSE));
            size_t e = hit ? (size_t)(hit - s) : eof ? n : n - partial_tail(s + i, n - i, THINK_CLOSE);
            rc = strbuf_append(reasoning, s + i, e - i);
            i = e;
            if (!hit) break;
            i += strlen(THINK_CLOSE);
            p->st = R_AFTER;
        } else if (p->st == R_AFTER) {
            while (i < n && is_ws(s[i])) i++;
            if (i < n) p->st = R_CONTENT;
        } else {
            rc = strbuf_append(content, s + i, n - i);
            i = n;
        }
    }
    if (eof && p->st == R_START && i < n) {
        /* Only whitespace came. */
        rc = strbuf_append(p->from_start ? reasoning : content, s + i, n - i);
        i = n;
    }
    *used = i;
    return rc < 0 ? -1 : 0;
}

static int feed(struct reasoning_parser *p, const char *text, size_t len, bool eof, struct strbuf *reasoning,
                struct strbuf *content)
{
    if (len && strbuf_append(&p->buf, text, len) < 0) return -1;
    if (!p->buf.len) return 0;
    size_t used = 0;
    int rc = run(p, eof, reasoning, content, &used);
    memmove(p->buf.p, p->buf.p + used, p->buf.len - used);
    p->buf.len -= used;
    p->buf.p[p->buf.len] = '\0';
    return rc;
}

int reasoning_parser_push(struct reasoning_parser *p, const char *text, size_t len, struct strbuf *reasoning,
                          struct strbuf *content)
{
    return feed(p, text, len, false, reasoning, content);
}

int reasoning_parser_finish(struct reasoning_parser *p, struct strbuf *reasoning, struct strbuf *content)
{
    return feed(p, NULL, 0, true, reasoning, content);
}
