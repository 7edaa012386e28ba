/* Lexer: template text and tags to tokens, with jinja2's whitespace rules as transformers
 * configures them (trim_blocks, lstrip_blocks). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl_lex.h"

_Noreturn void tmpl_pfail(struct pctx *c, int line, const char *fmt, ...)
{
    if (c->errlen) {
        int k = snprintf(c->err, c->errlen, "line %d: ", line);
        if (k >= 0 && (size_t)k < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    longjmp(c->jb, 1);
}

void *tmpl_palloc(struct pctx *c, size_t n)
{
    void *p = tmpl_arena_alloc(c->a, n);
    if (!p) tmpl_pfail(c, c->line, "out of memory");
    memset(p, 0, n);
    return p;
}

char *tmpl_pstrdup(struct pctx *c, const char *s, size_t n)
{
    char *p = tmpl_palloc(c, n + 1);
    memcpy(p, s, n);
    return p;
}

static struct tok *emit(struct pctx *c, int type)
{
    if (c->ntok == c->captok) {
        size_t cap = c->captok ? c->captok * 2 : 256;
        struct tok *t = tmpl_palloc(c, cap * sizeof(*t));
        if (c->ntok) memcpy(t, c->toks, c->ntok * sizeof(*t));
        c->toks = t;
        c->captok = cap;
    }
    struct tok *t = &c->toks[c->ntok++];
    memset(t, 0, sizeof(*t));
    t->type = (uint8_t)type;
    t->line = c->line;
    return t;
}

static bool is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }
static bool is_name_start(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }
static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static void advance(struct pctx *c, size_t to)
{
    for (size_t i = c->pos; i < to; i++)
        if (c->src[i] == '\n') c->line++;
    c->pos = to;
}

static void emit_data(struct pctx *c, size_t from, size_t to)
{
    if (to > from) {
        struct tok *t = emit(c, K_DATA);
        t->s = c->src + from;
        t->n = to - from;
    }
    advance(c, to);
}

static void skip_ws_after(struct pctx *c)
{
    size_t i = c->pos;
    while (i < c->len && is_ws(c->src[i])) i++;
    advance(c, i);
}

static void put_utf8(char *o, size_t *k, uint32_t cp)
{
    if (cp < 0x80) o[(*k)++] = (char)cp;
    else if (cp < 0x800) {
        o[(*k)++] = (char)(0xC0 | (cp >> 6));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        o[(*k)++] = (char)(0xE0 | (cp >> 12));
        o[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        o[(*k)++] = (char)(0xF0 | (cp >> 18));
        o[(*k)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int hexval(char ch)
{
    if (is_digit(ch)) return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* A string literal with Python's escapes, from the quote at c->pos. */
static void lex_string(struct pctx *c)
{
    char q = c->src[c->pos];
    int line = c->line;
    size_t i = c->pos + 1;
    char *o = tmpl_palloc(c, c->len - c->pos + 1);
    size_t k = 0;
    for (;;) {
        if (i >= c->len) tmpl_pfail(c, line, "unterminated string literal");
        char ch = c->src[i];
        if (ch == q) break;
        if (ch != '\\') {
            o[k++] = ch;
            i++;
            continue;
        }
        if (i + 1 >= c->len) tmpl_pfail(c, line, "unterminated string literal");
        char e = c->src[i + 1];
        i += 2;
        switch (e) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '0': o[k++] = '\0'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int d = 0; d < nd; d++) {
                int h = i < c->len ? hexval(c->src[i]) : -1;
                if (h < 0) tmpl_pfail(c, line, "bad \\%c escape in string literal", e);
                cp = cp * 16 + (uint32_t)h;
                i++;
            }
            if (cp > 0x10FFFF) tmpl_pfail(c, line, "bad \\%c escape in string literal", e);
            put_utf8(o, &k, cp);
            break;
        }
        default:
            /* Python keeps unknown escapes as they are. */
            o[k++] = '\\';
            o[k++] = e;
        }
    }
    struct tok *t = emit(c, K_STRING);
    t->line = line;
    t->s = o;
    t->n = k;
    advance(c, i + 1);
}

static const char *const OPS[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                  "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", ";"};

/* Tokens inside {{ }} or {% %} up to the closing delimiter, which it consumes with its
 * whitespace rule. */
static void lex_tag(struct pctx *c, bool block)
{
    int start_line = c->line;
    int nesting = 0;  /* open brackets: "}}" inside {'a': {'b': 1}} does not end the tag */
    for (;;) {
        skip_ws_after(c);
        const char *s = c->src + c->pos;
        size_t left = c->len - c->pos;
        if (left == 0) tmpl_pfail(c, start_line, "unexpected end of template, expected '%s'", block ? "%}" : "}}");
        if (nesting > 0) {
        } else if (block) {
            if (left >= 3 && (s[0] == '-' || s[0] == '+') && s[1] == '%' && s[2] == '}') {
                emit(c, K_BLOCK_END);
                advance(c, c->pos + 3);
                if (s[0] == '-') skip_ws_after(c);
                return;
            }
            if (left >= 2 && s[0] == '%' && s[1] == '}') {
                emit(c, K_BLOCK_END);
                advance(c, c->pos + 2);
                if (c->pos < c->len && c->src[c->pos] == '\n') advance(c, c->pos + 1);
                return;
            }
        } else {
            if (left >= 3 && s[0] == '-' && s[1] == '}' && s[2] == '}') {
                emit(c, K_VAR_END);
                advance(c, c->pos + 3);
                skip_ws_after(c);
                return;
            }
            if (left >= 2 && s[0] == '}' && s[1] == '}') {
                emit(c, K_VAR_END);
                advance(c, c->pos + 2);
                return;
            }
        }
        if (is_name_start(*s)) {
            size_t n = 1;
            while (n < left && (is_name_start(s[n]) || is_digit(s[n]))) n++;
            struct tok *t = emit(c, K_NAME);
            t->s = tmpl_pstrdup(c, s, n);
            t->n = n;
            advance(c, c->pos + n);
        } else if (is_digit(*s)) {
            char buf[64];
            size_t n = 0, k = 0;
            bool is_float = false;
            bool after_dot = c->pos > 0 && c->src[c->pos - 1] == '.';
            while (n < left && (is_digit(s[n]) || s[n] == '_')) {
                if (s[n] != '_' && k < sizeof(buf) - 1) buf[k++] = s[n];
                n++;
            }
            if (!after_dot && n + 1 < left && s[n] == '.' && is_digit(s[n + 1])) {
                is_float = true;
                buf[k++] = s[n++];
                while (n < left && (is_digit(s[n]) || s[n] == '_')) {
                    if (s[n] != '_' && k < sizeof(buf) - 1) buf[k++] = s[n];
                    n++;
                }
            }
            if (!after_dot && n < left && (s[n] == 'e' || s[n] == 'E')) {
                size_t m = n + 1;
                if (m < left && (s[m] == '+' || s[m] == '-')) m++;
                if (m < left && is_digit(s[m])) {
                    is_float = true;
                    while (n < m && k < sizeof(buf) - 1) buf[k++] = s[n++];
                    while (n < left && is_digit(s[n])) {
                        if (k < sizeof(buf) - 1) buf[k++] = s[n];
                        n++;
                    }
                }
            }
            buf[k] = 0;
            struct tok *t = emit(c, is_float ? K_FLOAT : K_INT);
            if (is_float) {
                t->f = strtod(buf, NULL);
            } else {
                errno = 0;
                unsigned long long v = strtoull(buf, NULL, 10);
                if (errno || v > INT64_MAX) tmpl_pfail(c, c->line, "integer literal too large");
                t->i = (int64_t)v;
            }
            advance(c, c->pos + n);
        } else if (*s == '\'' || *s == '"') {
            lex_string(c);
        } else {
            size_t i;
            for (i = 0; i < sizeof(OPS) / sizeof(OPS[0]); i++) {
                size_t n = strlen(OPS[i]);
                if (left >= n && memcmp(s, OPS[i], n) == 0) {
                    struct tok *t = emit(c, K_OP);
                    t->s = OPS[i];
                    t->n = n;
                    if (n == 1 && (*s == '(' || *s == '[' || *s == '{')) nesting++;
                    if (n == 1 && (*s == ')' || *s == ']' || *s == '}') && nesting > 0) nesting--;
                    advance(c, c->pos + n);
                    break;
                }
            }
            if (i == sizeof(OPS) / sizeof(OPS[0])) tmpl_pfail(c, c->line, "unexpected character '%c'", *s);
        }
    }
}

/* At "{%": is this "{% raw %}"? Returns the offset just past its "%}" or 0, and whether it
 * ended with "-%}". */
static size_t match_tag_word(const char *s, size_t left, const char *word, bool *strip_after, bool *strip_before)
{
    size_t i = 2;
    *strip_before = false;
    if (i < left && (s[i] == '-' || s[i] == '+')) {
        *strip_before = s[i] == '-';
        i++;
    }
    while (i < left && is_ws(s[i])) i++;
    size_t wn = strlen(word);
    if (left - i < wn || memcmp(s + i, word, wn) != 0) return 0;
    i += wn;
    if (i < left && (is_name_start(s[i]) || is_digit(s[i]))) return 0;
    while (i < left && is_ws(s[i])) i++;
    *strip_after = false;
    if (i < left && (s[i] == '-' || s[i] == '+')) {
        *strip_after = s[i] == '-';
        i++;
    }
    if (left - i >= 2 && s[i] == '%' && s[i + 1] == '}') return i + 2;
    return 0;
}

void tmpl_lex(struct pctx *c)
{
    while (c->pos < c->len) {
        const char *hit = NULL;
        for (const char *p = c->src + c->pos; (p = memchr(p, '{', (size_t)(c->src + c->len - p))); p++) {
            if (p + 1 < c->src + c->len && (p[1] == '{' || p[1] == '%' || p[1] == '#')) {
                hit = p;
                break;
            }
        }
        if (!hit) {
            emit_data(c, c->pos, c->len);
            break;
        }
        size_t tag = (size_t)(hit - c->src);
        char kind = hit[1];
        char sign = tag + 2 < c->len ? hit[2] : 0;
        size_t text_end = tag;
        if (sign == '-') {
            while (text_end > c->pos && is_ws(c->src[text_end - 1])) text_end--;
        } else if (sign != '+' && kind != '{') {
            /* lstrip_blocks: drop spaces and tabs between a line start and a block or comment. */
            size_t l = text_end;
            while (l > c->pos && c->src[l - 1] != '\n') l--;
            bool at_line_start = l > c->pos || c->pos == 0 || c->src[c->pos - 1] == '\n';
            bool only_ws = l < text_end;
            for (size_t i = l; i < text_end && only_ws; i++)
                if (!is_ws(c->src[i])) only_ws = false;
            if (at_line_start && only_ws) text_end = l;
        }
        emit_data(c, c->pos, text_end);
        advance(c, tag);
        if (kind == '#') {
            const char *e = NULL;
            for (const char *p = hit + 2; p + 1 < c->src + c->len; p++)
                if (p[0] == '#' && p[1] == '}') {
                    e = p;
                    break;
                }
            if (!e) tmpl_pfail(c, c->line, "unterminated comment");
            bool strip = e > hit + 2 && e[-1] == '-';
            advance(c, (size_t)(e - c->src) + 2);
            if (strip) skip_ws_after(c);
            else if (c->pos < c->len && c->src[c->pos] == '\n') advance(c, c->pos + 1);
            continue;
        }
        if (kind == '{') {
            emit(c, K_VAR_BEGIN);
            advance(c, tag + 2 + (sign == '-' || sign == '+'));
            lex_tag(c, false);
            continue;
        }
        bool strip_after, strip_before;
        size_t raw_end = match_tag_word(hit, c->len - tag, "raw", &strip_after, &strip_before);
        if (raw_end) {
            int line = c->line;
            advance(c, tag + raw_end);
            if (strip_after) skip_ws_after(c);
            size_t body = c->pos, end_tag = 0, after = 0;
            for (size_t i = body; i + 1 < c->len; i++) {
                if (c->src[i] == '{' && c->src[i + 1] == '%') {
                    bool sa, sb;
                    size_t k = match_tag_word(c->src + i, c->len - i, "endraw", &sa, &sb);
                    if (k) {
                        end_tag = i;
                        after = i + k;
                        size_t te = i;
                        if (sb)
                            while (te > body && is_ws(c->src[te - 1])) te--;
                        emit_data(c, body, te);
                        advance(c, after);
                        if (sa) skip_ws_after(c);
                        else if (c->pos < c->len && c->src[c->pos] == '\n') advance(c, c->pos + 1);
                        break;
                    }
                }
            }
            if (!after) tmpl_pfail(c, line, "missing {%% endraw %%} for {%% raw %%}");
            (void)end_tag;
            continue;
        }
        emit(c, K_BLOCK_BEGIN);
        advance(c, tag + 2 + (sign == '-' || sign == '+'));
        lex_tag(c, true);
    }
    emit(c, K_EOF);
}
