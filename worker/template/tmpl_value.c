/* Values of the template language: arena, buffers, UTF-8, and Python's rules for truth,
 * equality, ordering, str(), repr() and json.dumps(). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"

/* --- arena ------------------------------------------------------------------------------- */
struct tmpl_chunk {
    struct tmpl_chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
};

#define CHUNK_SIZE (64u << 10)

void *tmpl_arena_alloc(struct tmpl_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    if (a->limit && a->used + n > a->limit) return NULL;
    struct tmpl_chunk *h = a->head;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > CHUNK_SIZE / 4 ? n : CHUNK_SIZE;
        struct tmpl_chunk *k = malloc(sizeof(*k) + cap);
        if (!k) return NULL;
        k->cap = cap;
        k->used = 0;
        /* A big one-off block goes behind the head so the head's free space stays usable. */
        if (h && cap != CHUNK_SIZE) {
            k->next = h->next;
            h->next = k;
        } else {
            k->next = h;
            a->head = k;
        }
        h = k;
    }
    void *p = h->data + h->used;
    h->used += n;
    a->used += n;
    return p;
}

void tmpl_arena_free(struct tmpl_arena *a)
{
    struct tmpl_chunk *k = a->head;
    while (k) {
        struct tmpl_chunk *next = k->next;
        free(k);
        k = next;
    }
    a->head = NULL;
    a->used = 0;
}

void *tmpl_alloc(struct rctx *c, size_t n)
{
    void *p = tmpl_arena_alloc(&c->arena, n);
    if (!p) {
        if (c->arena.limit && c->arena.used + n > c->arena.limit)
            tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "template needs more than %u MiB of memory",
                      CHAT_TEMPLATE_MAX_MEMORY >> 20);
        tmpl_fail(c, CHAT_TEMPLATE_ENOMEM, "out of memory");
    }
    return p;
}

void tmpl_fail(struct rctx *c, int status, const char *fmt, ...)
{
    if (c->errlen) {
        int k = 0;
        if (status != CHAT_TEMPLATE_ERAISED && c->line > 0) k = snprintf(c->err, c->errlen, "line %d: ", c->line);
        if (k < 0) k = 0;
        if ((size_t)k < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    c->status = status;
    longjmp(c->jb, 1);
}

/* --- buffers ----------------------------------------------------------------------------- */
void tbuf_put(struct rctx *c, struct tbuf *b, const char *s, size_t n)
{
    if (b == c->out) {
        c->total_out += n;
        if (c->total_out > CHAT_TEMPLATE_MAX_OUTPUT)
            tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "output exceeds %u MiB", CHAT_TEMPLATE_MAX_OUTPUT >> 20);
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n + 1) cap *= 2;
        if (cap > CHAT_TEMPLATE_MAX_MEMORY) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "string too long");
        char *p = tmpl_alloc(c, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

struct tv tbuf_str(struct tbuf *b)
{
    return tv_strref(b->p ? b->p : "", b->n);
}

/* --- UTF-8 ------------------------------------------------------------------------------- */
uint32_t tu_decode(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[*i];
    int k = c < 0x80 ? 0 : c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    if (k) c &= 0x3Fu >> k;
    (*i)++;
    while (k-- > 0 && *i < n && (u[*i] & 0xC0) == 0x80) c = (c << 6) | (u[(*i)++] & 0x3F);
    return c;
}

size_t tu_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}

size_t tu_offset(const char *s, size_t n, size_t cp)
{
    size_t i = 0;
    while (i < n && cp > 0) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        cp--;
    }
    return i;
}

/* Python's str.isspace. */
bool tu_isspace(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == ' ' || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* --- constructors ------------------------------------------------------------------------ */
struct tv tv_str(struct rctx *c, const char *s, size_t n)
{
    if (n > UINT32_MAX / 2) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "string too long");
    char *p = tmpl_alloc(c, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return tv_strref(p, n);
}

struct tv tv_list(struct rctx *c, size_t cap)
{
    struct tlist *l = tmpl_alloc(c, sizeof(*l));
    l->n = 0;
    l->cap = cap;
    l->tuple = false;
    l->v = cap ? tmpl_alloc(c, cap * sizeof(struct tv)) : NULL;
    return (struct tv){.t = TV_LIST, .l = l};
}

struct tv tv_dict(struct rctx *c)
{
    struct tdict *d = tmpl_alloc(c, sizeof(*d));
    memset(d, 0, sizeof(*d));
    return (struct tv){.t = TV_DICT, .d = d};
}

void tv_list_push(struct rctx *c, struct tlist *l, struct tv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct tv *p = tmpl_alloc(c, cap * sizeof(*p));
        if (l->n) memcpy(p, l->v, l->n * sizeof(*p));
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

struct tv *tv_dict_get(const struct tdict *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->kv[i].kn == kn && memcmp(d->kv[i].k, k, kn) == 0) return &d->kv[i].v;
    return NULL;
}

void tv_dict_set(struct rctx *c, struct tdict *d, const char *k, size_t kn, struct tv v)
{
    struct tv *old = tv_dict_get(d, k, kn);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        struct tkv *p = tmpl_alloc(c, cap * sizeof(*p));
        if (d->n) memcpy(p, d->kv, d->n * sizeof(*p));
        d->kv = p;
        d->cap = cap;
    }
    d->kv[d->n++] = (struct tkv){.k = k, .kn = (uint32_t)kn, .v = v};
}

struct tv tv_from_json(struct rctx *c, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_STRING: return tv_strref(json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return tv_int(json_integer_value(j));
    case JSON_REAL: return tv_float(json_real_value(j));
    case JSON_TRUE: return tv_bool(true);
    case JSON_FALSE: return tv_bool(false);
    case JSON_NULL: return tv_none();
    case JSON_ARRAY: {
        struct tv l = tv_list(c, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++) tv_list_push(c, l.l, tv_from_json(c, json_array_get(j, i)));
        return l;
    }
    case JSON_OBJECT: {
        struct tv d = tv_dict(c);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) tv_dict_set(c, d.d, k, strlen(k), tv_from_json(c, v));
        return d;
    }
    }
    return tv_none();
}

/* --- Python semantics -------------------------------------------------------------------- */
const char *tv_type_name(struct tv v)
{
    switch (v.t) {
    case TV_UNDEF: return "Undefined";
    case TV_NONE: return "NoneType";
    case TV_BOOL: return "bool";
    case TV_INT: return "int";
    case TV_FLOAT: return "float";
    case TV_STR: return "str";
    case TV_LIST: return v.l->tuple ? "tuple" : "list";
    case TV_DICT: return "dict";
    case TV_NS: return "Namespace";
    case TV_MACRO: return "Macro";
    case TV_FUNC: return "function";
    case TV_METHOD: return "method";
    case TV_LOOP: return "LoopContext";
    }
    return "?";
}

bool tv_truthy(struct tv v)
{
    switch (v.t) {
    case TV_UNDEF:
    case TV_NONE: return false;
    case TV_BOOL: return v.b;
    case TV_INT: return v.i != 0;
    case TV_FLOAT: return v.f != 0.0;
    case TV_STR: return v.n != 0;
    case TV_LIST: return v.l->n != 0;
    case TV_DICT: return v.d->n != 0;
    default: return true;
    }
}

static bool is_num(struct tv v) { return v.t == TV_INT || v.t == TV_FLOAT || v.t == TV_BOOL; }
static double num_f(struct tv v) { return v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : (double)v.b; }

bool tv_equal(struct tv a, struct tv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != TV_FLOAT && b.t != TV_FLOAT) return (a.t == TV_INT ? a.i : a.b) == (b.t == TV_INT ? b.i : b.b);
        return num_f(a) == num_f(b);
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case TV_UNDEF:
    case TV_NONE: return true;
    case TV_STR: return a.n == b.n && memcmp(a.s, b.s, a.n) == 0;
    case TV_LIST:
        if (a.l->n != b.l->n) return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!tv_equal(a.l->v[i], b.l->v[i])) return false;
        return true;
    case TV_DICT:
        if (a.d->n != b.d->n) return false;
        for (size_t i = 0; i < a.d->n; i++) {
            struct tv *o = tv_dict_get(b.d, a.d->kv[i].k, a.d->kv[i].kn);
            if (!o || !tv_equal(a.d->kv[i].v, *o)) return false;
        }
        return true;
    case TV_NS: return a.d == b.d;
    case TV_MACRO: return a.m == b.m;
    case TV_FUNC: return a.fn == b.fn;
    default: return false;
    }
}

int tv_compare(struct rctx *c, struct tv a, struct tv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != TV_FLOAT && b.t != TV_FLOAT) {
            int64_t x = a.t == TV_INT ? a.i : a.b, y = b.t == TV_INT ? b.i : b.b;
            return x < y ? -1 : x > y;
        }
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == TV_STR && b.t == TV_STR) {
        size_t n = a.n < b.n ? a.n : b.n;
        int r = memcmp(a.s, b.s, n);
        if (r) return r < 0 ? -1 : 1;
        return a.n < b.n ? -1 : a.n > b.n;
    }
    if (a.t == TV_LIST && b.t == TV_LIST) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++) {
            if (tv_equal(a.l->v[i], b.l->v[i])) continue;
            return tv_compare(c, a.l->v[i], b.l->v[i]);
        }
        return a.l->n < b.l->n ? -1 : a.l->n > b.l->n;
    }
    if (a.t == TV_UNDEF || b.t == TV_UNDEF) {
        char msg[256];
        tv_undef_describe(a.t == TV_UNDEF ? a : b, msg, sizeof(msg));
        tmpl_error(c, "%s", msg);
    }
    tmpl_error(c, "cannot compare '%s' with '%s'", tv_type_name(a), tv_type_name(b));
}

void tv_undef_describe(struct tv v, char *buf, size_t len)
{
    const char *name = v.s ? v.s : "value";
    int n = v.s ? (int)v.n : 5;
    if (v.from && v.s) {
        struct tlist empty = {0};
        struct tv owner = {.t = (uint8_t)(v.from - 1), .l = &empty};  /* only the type is read */
        snprintf(buf, len, "'%s object' has no attribute '%.*s'", tv_type_name(owner), n, name);
    } else if (v.from) {
        snprintf(buf, len, "'%s object' has no such item", v.from - 1 == TV_LIST ? "list" : v.from - 1 == TV_STR ? "str" : "dict");
    } else {
        snprintf(buf, len, "'%.*s' is undefined", n, name);
    }
}

void tv_fmt_float(double f, char *buf, size_t len)
{
    if (isnan(f)) {
        snprintf(buf, len, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, len, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp is [-]d[.ddd]e[+-]XX: take the digits and the exponent apart. */
    char digits[24];
    size_t nd = 0;
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg) p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (exp >= -4 && exp < 16) {
        if (exp >= 0) {
            for (int i = 0; i <= exp; i++) out[o++] = (size_t)i < nd ? digits[i] : '0';
            out[o++] = '.';
            if ((size_t)exp + 1 < nd)
                for (size_t i = (size_t)exp + 1; i < nd; i++) out[o++] = digits[i];
            else
                out[o++] = '0';
        } else {
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -exp - 1; i++) out[o++] = '0';
            for (size_t i = 0; i < nd; i++) out[o++] = digits[i];
        }
        out[o] = 0;
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t i = 1; i < nd; i++) out[o++] = digits[i];
        }
        snprintf(out + o, sizeof(out) - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
    snprintf(buf, len, "%s", out);
}

static void write_repr_str(struct rctx *c, struct tbuf *b, const char *s, size_t n)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    tbuf_put(c, b, &q, 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char hex[8];
        if (ch == '\\') esc = "\\\\";
        else if (ch == (unsigned char)q) esc = q == '\'' ? "\\'" : "\\\"";
        else if (ch == '\n') esc = "\\n";
        else if (ch == '\r') esc = "\\r";
        else if (ch == '\t') esc = "\\t";
        else if (ch < 0x20 || ch == 0x7F) {
            snprintf(hex, sizeof(hex), "\\x%02x", ch);
            esc = hex;
        }
        if (!esc) continue;
        tbuf_put(c, b, s + run, i - run);
        tbuf_puts(c, b, esc);
        run = i + 1;
    }
    tbuf_put(c, b, s + run, n - run);
    tbuf_put(c, b, &q, 1);
}

static void write_value(struct rctx *c, struct tbuf *b, struct tv v, bool repr)
{
    char num[64];
    switch (v.t) {
    case TV_UNDEF:
        if (repr) tbuf_puts(c, b, "Undefined");
        return;
    case TV_NONE: tbuf_puts(c, b, "None"); return;
    case TV_BOOL: tbuf_puts(c, b, v.b ? "True" : "False"); return;
    case TV_INT: snprintf(num, sizeof(num), "%lld", (long long)v.i); tbuf_puts(c, b, num); return;
    case TV_FLOAT: tv_fmt_float(v.f, num, sizeof(num)); tbuf_puts(c, b, num); return;
    case TV_STR:
        if (repr) write_repr_str(c, b, v.s, v.n);
        else tbuf_put(c, b, v.s, v.n);
        return;
    case TV_LIST:
        tbuf_puts(c, b, v.l->tuple ? "(" : "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) tbuf_puts(c, b, ", ");
            write_value(c, b, v.l->v[i], true);
        }
        tbuf_puts(c, b, v.l->tuple ? (v.l->n == 1 ? ",)" : ")") : "]");
        return;
    case TV_DICT:
    case TV_NS:
        tbuf_puts(c, b, v.t == TV_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) tbuf_puts(c, b, ", ");
            write_repr_str(c, b, v.d->kv[i].k, v.d->kv[i].kn);
            tbuf_puts(c, b, ": ");
            write_value(c, b, v.d->kv[i].v, true);
        }
        tbuf_puts(c, b, v.t == TV_NS ? "}>" : "}");
        return;
    default:
        tbuf_puts(c, b, "<");
        tbuf_puts(c, b, tv_type_name(v));
        tbuf_puts(c, b, ">");
    }
}

void tv_write_str(struct rctx *c, struct tbuf *b, struct tv v) { write_value(c, b, v, false); }
void tv_write_repr(struct rctx *c, struct tbuf *b, struct tv v) { write_value(c, b, v, true); }

struct tv tv_to_str(struct rctx *c, struct tv v)
{
    if (v.t == TV_STR) return v;
    if (v.t == TV_UNDEF) return tv_strref("", 0);
    struct tbuf b = {0};
    write_value(c, &b, v, false);
    return tbuf_str(&b);
}

/* --- json.dumps ------------------------------------------------------------------------- */
static void json_str(struct rctx *c, struct tbuf *b, const char *s, size_t n, bool ensure_ascii)
{
    tbuf_puts(c, b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        char esc[16];
        size_t start = i;
        if (ch >= 0x80 && ensure_ascii) {
            uint32_t cp = tu_decode(s, n, &i);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(esc, sizeof(esc), "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(esc, sizeof(esc), "\\u%04x", cp);
            }
        } else {
            i++;
            if (ch == '"') strcpy(esc, "\\\"");
            else if (ch == '\\') strcpy(esc, "\\\\");
            else if (ch == '\n') strcpy(esc, "\\n");
            else if (ch == '\r') strcpy(esc, "\\r");
            else if (ch == '\t') strcpy(esc, "\\t");
            else if (ch == '\b') strcpy(esc, "\\b");
            else if (ch == '\f') strcpy(esc, "\\f");
            else if (ch < 0x20 || (ch == 0x7F && ensure_ascii)) snprintf(esc, sizeof(esc), "\\u%04x", ch);
            else continue;
        }
        tbuf_put(c, b, s + run, start - run);
        tbuf_puts(c, b, esc);
        run = i;
    }
    tbuf_put(c, b, s + run, n - run);
    tbuf_puts(c, b, "\"");
}

static void json_newline(struct rctx *c, struct tbuf *b, int indent, int level)
{
    tbuf_puts(c, b, "\n");
    for (int i = 0; i < indent * level; i++) tbuf_puts(c, b, " ");
}

static int cmp_kv(const void *x, const void *y)
{
    const struct tkv *a = *(const struct tkv *const *)x, *b = *(const struct tkv *const *)y;
    size_t n = a->kn < b->kn ? a->kn : b->kn;
    int r = memcmp(a->k, b->k, n);
    return r ? r : (a->kn > b->kn) - (a->kn < b->kn);
}

static void json_value(struct rctx *c, struct tbuf *b, struct tv v, bool ea, int indent, const char *isep,
                       const char *ksep, bool sort, int level)
{
    char num[64];
    if (level > CHAT_TEMPLATE_MAX_DEPTH) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "tojson: value nested too deep");
    switch (v.t) {
    case TV_NONE: tbuf_puts(c, b, "null"); return;
    case TV_BOOL: tbuf_puts(c, b, v.b ? "true" : "false"); return;
    case TV_INT: snprintf(num, sizeof(num), "%lld", (long long)v.i); tbuf_puts(c, b, num); return;
    case TV_FLOAT:
        if (isnan(v.f)) tbuf_puts(c, b, "NaN");
        else if (isinf(v.f)) tbuf_puts(c, b, v.f < 0 ? "-Infinity" : "Infinity");
        else {
            tv_fmt_float(v.f, num, sizeof(num));
            tbuf_puts(c, b, num);
        }
        return;
    case TV_STR: json_str(c, b, v.s, v.n, ea); return;
    case TV_LIST:
        if (v.l->n == 0) {
            tbuf_puts(c, b, "[]");
            return;
        }
        tbuf_puts(c, b, "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i) tbuf_puts(c, b, isep);
            if (indent >= 0) json_newline(c, b, indent, level + 1);
            json_value(c, b, v.l->v[i], ea, indent, isep, ksep, sort, level + 1);
        }
        if (indent >= 0) json_newline(c, b, indent, level);
        tbuf_puts(c, b, "]");
        return;
    case TV_DICT: {
        if (v.d->n == 0) {
            tbuf_puts(c, b, "{}");
            return;
        }
        const struct tkv **order = tmpl_alloc(c, v.d->n * sizeof(*order));
        for (size_t i = 0; i < v.d->n; i++) order[i] = &v.d->kv[i];
        if (sort) qsort(order, v.d->n, sizeof(*order), cmp_kv);
        tbuf_puts(c, b, "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i) tbuf_puts(c, b, isep);
            if (indent >= 0) json_newline(c, b, indent, level + 1);
            json_str(c, b, order[i]->k, order[i]->kn, ea);
            tbuf_puts(c, b, ksep);
            json_value(c, b, order[i]->v, ea, indent, isep, ksep, sort, level + 1);
        }
        if (indent >= 0) json_newline(c, b, indent, level);
        tbuf_puts(c, b, "}");
        return;
    }
    case TV_UNDEF: {
        char msg[256];
        tv_undef_describe(v, msg, sizeof(msg));
        tmpl_error(c, "tojson: %s", msg);
    }
    default: tmpl_error(c, "tojson: object of type '%s' is not JSON serializable", tv_type_name(v));
    }
}

void tv_write_json(struct rctx *c, struct tbuf *b, struct tv v, bool ensure_ascii, int indent,
                   const char *item_sep, const char *key_sep, bool sort_keys)
{
    if (!item_sep) item_sep = indent >= 0 ? "," : ", ";
    if (!key_sep) key_sep = ": ";
    json_value(c, b, v, ensure_ascii, indent, item_sep, key_sep, sort_keys, 0);
}
