/* Filters (`x|trim`, `x|tojson(indent=2)`...): jinja2's builtins with transformers' tojson,
 * plus Python's %-formatting, which the |format filter and the % operator share. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"
#include "worker/template/tmpl_builtins.h"
#include "worker/template/tmpl_strings.h"

typedef struct tv (*filter_fn)(struct rctx *c, struct tv in, const struct targs *a);

static struct tv f_trim(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("trim", p, "chars");
    struct tv s = tv_to_str(c, in);
    if (targ_given(p[0]) && p[0].t != TV_NONE) {
        struct tv chars = targ_str(c, p[0], "trim");
        return ts_strip(s, &chars, true, true);
    }
    return ts_strip(s, NULL, true, true);
}

static struct tv f_case(struct rctx *c, struct tv in, const struct targs *a, enum ts_case mode)
{
    BIND("filter", p, "");
    (void)p;
    return ts_case(c, tv_to_str(c, in), mode);
}
static struct tv f_upper(struct rctx *c, struct tv in, const struct targs *a) { return f_case(c, in, a, TS_UPPER); }
static struct tv f_lower(struct rctx *c, struct tv in, const struct targs *a) { return f_case(c, in, a, TS_LOWER); }
static struct tv f_capitalize(struct rctx *c, struct tv in, const struct targs *a) { return f_case(c, in, a, TS_CAPITALIZE); }
static struct tv f_title(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("title", p, "");
    (void)p;
    return ts_jinja_title(c, tv_to_str(c, in));
}

static int64_t length_of(struct rctx *c, struct tv v)
{
    switch (v.t) {
    case TV_STR: return (int64_t)tu_len(v.s, v.n);
    case TV_LIST: return (int64_t)v.l->n;
    case TV_DICT:
    case TV_NS: return (int64_t)v.d->n;
    case TV_UNDEF: return 0;
    default: tmpl_error(c, "object of type '%s' has no len()", tv_type_name(v));
    }
}

static struct tv f_length(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("length", p, "");
    (void)p;
    return tv_int(length_of(c, in));
}

static struct tv f_tojson(struct rctx *c, struct tv in, const struct targs *a)
{
    /* transformers' override: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False). */
    BIND("tojson", p, "ensure_ascii", "indent", "separators", "sort_keys");
    int indent = -1;
    if (targ_given(p[1]) && p[1].t == TV_STR && p[1].n <= 64 && strspn(p[1].s, " ") >= p[1].n) {
        indent = (int)p[1].n;  /* json.dumps also takes the indent as a string; spaces only here */
    } else if (targ_given(p[1]) && p[1].t != TV_NONE) {
        int64_t k = targ_int(c, p[1], "tojson indent");
        indent = k < 0 ? 0 : k > 64 ? 64 : (int)k;
    }
    const char *isep = NULL, *ksep = NULL;
    if (targ_given(p[2]) && p[2].t != TV_NONE) {
        if (p[2].t != TV_LIST || p[2].l->n != 2 || p[2].l->v[0].t != TV_STR || p[2].l->v[1].t != TV_STR)
            tmpl_error(c, "tojson: separators must be a pair of strings");
        isep = targ_cstr(c, p[2].l->v[0], "tojson separators");
        ksep = targ_cstr(c, p[2].l->v[1], "tojson separators");
    }
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    tv_write_json(c, &b, in, tv_truthy(p[0]), indent, isep, ksep, tv_truthy(p[3]));
    return tbuf_str(&b);
}

static struct tv f_default(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("default", p, "default_value", "boolean");
    bool use = in.t == TV_UNDEF || (tv_truthy(p[1]) && !tv_truthy(in));
    if (!use) return in;
    return targ_given(p[0]) ? p[0] : tv_strref("", 0);
}

static struct tv f_join(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("join", p, "d", "attribute");
    struct tlist *l = tmpl_iterate(c, in);
    struct tv sep = targ_given(p[0]) ? tv_to_str(c, p[0]) : tv_strref("", 0);
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    for (size_t i = 0; i < l->n; i++) {
        if (i) tbuf_put(c, &b, sep.s, sep.n);
        struct tv v = targ_given(p[1]) && p[1].t != TV_NONE ? tmpl_get_path(c, l->v[i], p[1]) : l->v[i];
        tv_write_str(c, &b, v);
    }
    return tbuf_str(&b);
}

static struct tv f_first(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("first", p, "");
    (void)p;
    struct tlist *l = tmpl_iterate(c, in);
    return l->n ? l->v[0] : tv_undef("first");
}

static struct tv f_last(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("last", p, "");
    (void)p;
    struct tlist *l = tmpl_iterate(c, in);
    return l->n ? l->v[l->n - 1] : tv_undef("last");
}

struct tv tmpl_items_filter(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("items", p, "");
    (void)p;
    if (in.t == TV_UNDEF) return tv_list(c, 0);
    if (in.t != TV_DICT && in.t != TV_NS) tmpl_error(c, "items: expected a mapping, got '%s'", tv_type_name(in));
    struct tv out = tv_list(c, in.d->n);
    for (size_t i = 0; i < in.d->n; i++) {
        struct tv pair = tv_list(c, 2);
        pair.l->tuple = true;
        tv_list_push(c, pair.l, tv_strref(in.d->kv[i].k, in.d->kv[i].kn));
        tv_list_push(c, pair.l, in.d->kv[i].v);
        tv_list_push(c, out.l, pair);
    }
    return out;
}

static struct tv f_list(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("list", p, "");
    (void)p;
    struct tlist *l = tmpl_iterate(c, in);
    struct tv out = tv_list(c, l->n);
    for (size_t i = 0; i < l->n; i++) tv_list_push(c, out.l, l->v[i]);
    return out;
}

static struct tv f_string(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("string", p, "");
    (void)p;
    return tv_to_str(c, in);
}

static struct tv f_safe(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("safe", p, "");
    (void)p;
    return in.t == TV_STR ? in : tv_to_str(c, in);
}

/* Python's int(str): optional sign, digits, underscores between digits, surrounding spaces. */
static bool parse_int(struct tv s, int64_t base, int64_t *out)
{
    struct tv t = ts_strip(s, NULL, true, true);
    char buf[80];
    size_t k = 0;
    for (size_t i = 0; i < t.n; i++) {
        if (t.s[i] == '_') continue;
        if (k >= sizeof(buf) - 1) return false;
        buf[k++] = t.s[i];
    }
    buf[k] = 0;
    if (k == 0) return false;
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, (int)base);
    if (*end || errno) return false;
    *out = v;
    return true;
}

static bool parse_float(struct tv s, double *out)
{
    struct tv t = ts_strip(s, NULL, true, true);
    char buf[80];
    if (t.n == 0 || t.n >= sizeof(buf)) return false;
    memcpy(buf, t.s, t.n);
    buf[t.n] = 0;
    char *end;
    *out = strtod(buf, &end);
    return *end == 0;
}

static struct tv f_int(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("int", p, "default", "base");
    struct tv dflt = targ_given(p[0]) ? p[0] : tv_int(0);
    int64_t base = targ_opt_int(c, p[1], 10, "int base");
    switch (in.t) {
    case TV_INT: return in;
    case TV_BOOL: return tv_int(in.b);
    case TV_FLOAT:
        if (isnan(in.f) || isinf(in.f) || fabs(in.f) >= 9.2e18) return dflt;
        return tv_int((int64_t)in.f);
    case TV_STR: {
        int64_t v;
        double f;
        if (parse_int(in, base, &v)) return tv_int(v);
        if (parse_float(in, &f) && !isnan(f) && fabs(f) < 9.2e18) return tv_int((int64_t)f);
        return dflt;
    }
    default: return dflt;
    }
}

static struct tv f_float(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("float", p, "default");
    struct tv dflt = targ_given(p[0]) ? p[0] : tv_float(0.0);
    double f;
    switch (in.t) {
    case TV_FLOAT: return in;
    case TV_INT: return tv_float((double)in.i);
    case TV_BOOL: return tv_float(in.b);
    case TV_STR: return parse_float(in, &f) ? tv_float(f) : dflt;
    default: return dflt;
    }
}

static struct tv f_abs(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("abs", p, "");
    (void)p;
    if (in.t == TV_INT) {
        if (in.i == INT64_MIN) tmpl_error(c, "integer overflow in abs");
        return tv_int(in.i < 0 ? -in.i : in.i);
    }
    if (in.t == TV_BOOL) return tv_int(in.b);
    if (in.t == TV_FLOAT) return tv_float(fabs(in.f));
    tmpl_error(c, "bad operand type for abs(): '%s'", tv_type_name(in));
}

static struct tv f_round(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("round", p, "precision", "method");
    int64_t prec = targ_opt_int(c, p[0], 0, "round precision");
    const char *method = targ_given(p[1]) ? targ_cstr(c, p[1], "round method") : "common";
    if (in.t != TV_INT && in.t != TV_FLOAT && in.t != TV_BOOL) tmpl_error(c, "round: expected a number, got '%s'", tv_type_name(in));
    if (!strcmp(method, "common")) {
        /* Python's round(): ints stay ints; floats round half to even on the exact value. */
        if (in.t != TV_FLOAT) return in.t == TV_BOOL ? tv_int(in.b) : in;
        if (prec < 0 || prec > 300 || isnan(in.f) || isinf(in.f)) {
            double s = pow(10.0, (double)prec);
            return tv_float(rint(in.f * s) / s);
        }
        char buf[400];
        snprintf(buf, sizeof(buf), "%.*f", (int)prec, in.f);
        return tv_float(strtod(buf, NULL));
    }
    double x = in.t == TV_FLOAT ? in.f : in.t == TV_INT ? (double)in.i : in.b;
    double s = pow(10.0, (double)prec);
    if (!strcmp(method, "ceil")) return tv_float(ceil(x * s) / s);
    if (!strcmp(method, "floor")) return tv_float(floor(x * s) / s);
    tmpl_error(c, "round: method must be 'common', 'ceil' or 'floor'");
}

static struct tv f_replace(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("replace", p, "old", "new", "count");
    if (!targ_given(p[0]) || !targ_given(p[1])) tmpl_error(c, "replace needs old and new");
    return ts_replace(c, tv_to_str(c, in), tv_to_str(c, p[0]), tv_to_str(c, p[1]), targ_opt_int(c, p[2], -1, "replace count"));
}

static struct tv f_reverse(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("reverse", p, "");
    (void)p;
    struct tlist *l = tmpl_iterate(c, in);
    if (in.t == TV_STR) {
        struct tbuf b = {0};
        tbuf_put(c, &b, "", 0);
        for (size_t i = l->n; i-- > 0;) tbuf_put(c, &b, l->v[i].s, l->v[i].n);
        return tbuf_str(&b);
    }
    struct tv out = tv_list(c, l->n);
    for (size_t i = l->n; i-- > 0;) tv_list_push(c, out.l, l->v[i]);
    return out;
}

static struct tv f_sort(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("sort", p, "reverse", "case_sensitive", "attribute");
    struct tlist *l = tmpl_iterate(c, in);
    struct tv out = tv_list(c, l->n);
    struct tv *keys = tmpl_alloc(c, (l->n + 1) * sizeof(*keys));
    for (size_t i = 0; i < l->n; i++) {
        tv_list_push(c, out.l, l->v[i]);
        struct tv k = targ_given(p[2]) && p[2].t != TV_NONE ? tmpl_get_path(c, l->v[i], p[2]) : l->v[i];
        keys[i] = tmpl_lower_if_str(c, k, tv_truthy(p[1]));
    }
    tmpl_sort_by(c, out.l->v, keys, l->n, tv_truthy(p[0]));
    return out;
}

static struct tv f_dictsort(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("dictsort", p, "case_sensitive", "by", "reverse");
    struct tv pairs = tmpl_items_filter(c, in, &(struct targs){0});
    bool by_value = false;
    if (targ_given(p[1])) {
        struct tv by = targ_str(c, p[1], "dictsort");
        if (by.n == 5 && !memcmp(by.s, "value", 5)) by_value = true;
        else if (!(by.n == 3 && !memcmp(by.s, "key", 3))) tmpl_error(c, "dictsort: by must be 'key' or 'value'");
    }
    struct tv *keys = tmpl_alloc(c, (pairs.l->n + 1) * sizeof(*keys));
    for (size_t i = 0; i < pairs.l->n; i++) keys[i] = tmpl_lower_if_str(c, pairs.l->v[i].l->v[by_value], tv_truthy(p[0]));
    tmpl_sort_by(c, pairs.l->v, keys, pairs.l->n, tv_truthy(p[2]));
    return pairs;
}

static struct tv f_unique(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("unique", p, "case_sensitive", "attribute");
    struct tlist *l = tmpl_iterate(c, in);
    struct tv out = tv_list(c, 0), seen = tv_list(c, 0);
    for (size_t i = 0; i < l->n; i++) {
        struct tv k = targ_given(p[1]) && p[1].t != TV_NONE ? tmpl_get_path(c, l->v[i], p[1]) : l->v[i];
        k = tmpl_lower_if_str(c, k, tv_truthy(p[0]));
        bool dup = false;
        for (size_t j = 0; j < seen.l->n && !dup; j++) dup = tv_equal(seen.l->v[j], k);
        if (dup) continue;
        tv_list_push(c, seen.l, k);
        tv_list_push(c, out.l, l->v[i]);
    }
    return out;
}

static struct tv min_max(struct rctx *c, struct tv in, const struct targs *a, bool want_max)
{
    BIND(want_max ? "max" : "min", p, "case_sensitive", "attribute");
    struct tlist *l = tmpl_iterate(c, in);
    struct tv best = tv_undef(want_max ? "max" : "min"), best_key = best;
    for (size_t i = 0; i < l->n; i++) {
        struct tv k = targ_given(p[1]) && p[1].t != TV_NONE ? tmpl_get_path(c, l->v[i], p[1]) : l->v[i];
        k = tmpl_lower_if_str(c, k, tv_truthy(p[0]));
        int r = i ? tv_compare(c, k, best_key) : 0;
        if (i == 0 || (want_max ? r > 0 : r < 0)) {
            best = l->v[i];
            best_key = k;
        }
    }
    return best;
}
static struct tv f_min(struct rctx *c, struct tv in, const struct targs *a) { return min_max(c, in, a, false); }
static struct tv f_max(struct rctx *c, struct tv in, const struct targs *a) { return min_max(c, in, a, true); }

static struct tv f_sum(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("sum", p, "attribute", "start");
    struct tlist *l = tmpl_iterate(c, in);
    struct tv acc = targ_given(p[1]) ? p[1] : tv_int(0);
    for (size_t i = 0; i < l->n; i++) {
        struct tv v = targ_given(p[0]) && p[0].t != TV_NONE ? tmpl_get_path(c, l->v[i], p[0]) : l->v[i];
        bool ai = acc.t == TV_INT || acc.t == TV_BOOL, vi = v.t == TV_INT || v.t == TV_BOOL;
        if ((!ai && acc.t != TV_FLOAT) || (!vi && v.t != TV_FLOAT))
            tmpl_error(c, "sum: unsupported operand types '%s' and '%s'", tv_type_name(acc), tv_type_name(v));
        if (ai && vi) {
            int64_t r;
            if (__builtin_add_overflow(acc.t == TV_INT ? acc.i : acc.b, v.t == TV_INT ? v.i : v.b, &r))
                tmpl_error(c, "integer overflow in sum");
            acc = tv_int(r);
        } else {
            double x = acc.t == TV_FLOAT ? acc.f : acc.t == TV_INT ? (double)acc.i : acc.b;
            double y = v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : v.b;
            acc = tv_float(x + y);
        }
    }
    return acc;
}

static struct tv f_indent(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("indent", p, "width", "first", "blank");
    struct tv s = tv_to_str(c, in), ind;
    if (targ_given(p[0]) && p[0].t == TV_STR) ind = p[0];
    else {
        int64_t w = targ_opt_int(c, p[0], 4, "indent width");
        if (w < 0) w = 0;
        if (w > 1024) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "indent width too large");
        char *sp = tmpl_alloc(c, (size_t)w + 1);
        memset(sp, ' ', (size_t)w);
        ind = tv_strref(sp, (size_t)w);
    }
    /* Lines as str.splitlines() after appending "\n", as jinja2 does. */
    struct tv lines = tv_list(c, 0);
    size_t i = 0;
    while (i < s.n) {
        size_t j = i;
        while (j < s.n && s.s[j] != '\n' && s.s[j] != '\r') j++;
        tv_list_push(c, lines.l, tv_strref(s.s + i, j - i));
        if (j < s.n && s.s[j] == '\r' && j + 1 < s.n && s.s[j + 1] == '\n') j++;
        i = j + 1;
    }
    if (lines.l->n == 0) tv_list_push(c, lines.l, tv_strref("", 0));
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    if (tv_truthy(p[1])) tbuf_put(c, &b, ind.s, ind.n);
    for (size_t k = 0; k < lines.l->n; k++) {
        struct tv line = lines.l->v[k];
        if (k) {
            tbuf_put(c, &b, "\n", 1);
            if (line.n || tv_truthy(p[2])) tbuf_put(c, &b, ind.s, ind.n);
        }
        tbuf_put(c, &b, line.s, line.n);
    }
    return tbuf_str(&b);
}

static struct tv f_escape(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("escape", p, "");
    (void)p;
    struct tv s = tv_to_str(c, in);
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    for (size_t i = 0; i < s.n; i++) {
        switch (s.s[i]) {
        case '&': tbuf_puts(c, &b, "&amp;"); break;
        case '<': tbuf_puts(c, &b, "&lt;"); break;
        case '>': tbuf_puts(c, &b, "&gt;"); break;
        case '"': tbuf_puts(c, &b, "&#34;"); break;
        case '\'': tbuf_puts(c, &b, "&#39;"); break;
        default: tbuf_put(c, &b, s.s + i, 1);
        }
    }
    return tbuf_str(&b);
}

static struct tv f_attr(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("attr", p, "name");
    struct tv name = targ_str(c, p[0], "attr");
    return tmpl_getattr(c, in, name.s, name.n);
}

static struct tv f_batch(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("batch", p, "linecount", "fill_with");
    int64_t k = targ_int(c, p[0], "batch");
    if (k <= 0) tmpl_error(c, "batch: linecount must be positive");
    struct tlist *l = tmpl_iterate(c, in);
    struct tv out = tv_list(c, 0), row = tv_undef(NULL);
    for (size_t i = 0; i < l->n; i++) {
        if (i % (size_t)k == 0) {
            row = tv_list(c, (size_t)k);
            tv_list_push(c, out.l, row);
        }
        tv_list_push(c, row.l, l->v[i]);
    }
    if (row.t == TV_LIST && targ_given(p[1]) && p[1].t != TV_NONE)
        while (row.l->n < (size_t)k) tv_list_push(c, row.l, p[1]);
    return out;
}

/* select/reject/selectattr/rejectattr: (attribute,) test name, test arguments. */
static struct tv select_impl(struct rctx *c, struct tv in, const struct targs *a, bool by_attr, bool keep_if, const char *what)
{
    if (a->nkw) tmpl_error(c, "%s takes no keyword arguments", what);
    size_t k = 0;
    struct tv attr = tv_undef(NULL);
    if (by_attr) {
        if (a->npos < 1) tmpl_error(c, "%s needs an attribute name", what);
        attr = a->pos[k++];
    }
    const char *test = NULL;
    if (k < a->npos) test = targ_cstr(c, a->pos[k++], what);
    if (test && !tmpl_test_exists(test)) tmpl_error(c, "%s: unknown test '%s'", what, test);
    struct tlist *l = tmpl_iterate(c, in);
    struct tv out = tv_list(c, 0);
    for (size_t i = 0; i < l->n; i++) {
        struct tv v = by_attr ? tmpl_get_path(c, l->v[i], attr) : l->v[i];
        bool r = test ? tmpl_test_call(c, test, v, a->pos + k, a->npos - k) : tv_truthy(v);
        if (r == keep_if) tv_list_push(c, out.l, l->v[i]);
    }
    return out;
}
static struct tv f_select(struct rctx *c, struct tv in, const struct targs *a) { return select_impl(c, in, a, false, true, "select"); }
static struct tv f_reject(struct rctx *c, struct tv in, const struct targs *a) { return select_impl(c, in, a, false, false, "reject"); }
static struct tv f_selectattr(struct rctx *c, struct tv in, const struct targs *a) { return select_impl(c, in, a, true, true, "selectattr"); }
static struct tv f_rejectattr(struct rctx *c, struct tv in, const struct targs *a) { return select_impl(c, in, a, true, false, "rejectattr"); }

static struct tv f_map(struct rctx *c, struct tv in, const struct targs *a)
{
    struct tlist *l = tmpl_iterate(c, in);
    struct tv out = tv_list(c, l->n);
    struct tv attr = tv_undef(NULL), dflt = tv_undef(NULL);
    for (size_t k = 0; k < a->nkw; k++) {
        if (!strcmp(a->kwn[k], "attribute")) attr = a->kwv[k];
        else if (!strcmp(a->kwn[k], "default")) dflt = a->kwv[k];
        else if (a->npos == 0) tmpl_error(c, "map got an unexpected keyword argument '%s'", a->kwn[k]);
    }
    if (targ_given(attr)) {
        if (a->npos) tmpl_error(c, "map: give a filter name or attribute=, not both");
        for (size_t i = 0; i < l->n; i++) {
            struct tv v = tmpl_get_path(c, l->v[i], attr);
            tv_list_push(c, out.l, v.t == TV_UNDEF && targ_given(dflt) ? dflt : v);
        }
        return out;
    }
    if (a->npos == 0) tmpl_error(c, "map needs a filter name or attribute=");
    const char *name = targ_cstr(c, a->pos[0], "map");
    if (!tmpl_filter_exists(name)) tmpl_error(c, "map: unknown filter '%s'", name);
    struct targs rest = {a->pos + 1, a->npos - 1, a->kwn, a->kwv, a->nkw};
    for (size_t i = 0; i < l->n; i++) tv_list_push(c, out.l, tmpl_filter_apply(c, name, l->v[i], &rest));
    return out;
}

static struct tv f_wordcount(struct rctx *c, struct tv in, const struct targs *a)
{
    BIND("wordcount", p, "");
    (void)p;
    struct tv s = tv_to_str(c, in);
    int64_t n = 0;
    bool inword = false;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.s[i];
        bool w = ch >= 0x80 || ch == '_' || (ch >= '0' && ch <= '9') || ((ch | 32) >= 'a' && (ch | 32) <= 'z');
        if (w && !inword) n++;
        inword = w;
    }
    return tv_int(n);
}

/* Python's printf-style formatting, the `"%s" % x` operator and the |format filter. */
struct tv tmpl_percent_format(struct rctx *c, struct tv fmt, const struct tv *args, size_t nargs)
{
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    size_t used = 0;
    for (size_t i = 0; i < fmt.n; i++) {
        if (fmt.s[i] != '%') {
            tbuf_put(c, &b, fmt.s + i, 1);
            continue;
        }
        char spec[32];
        size_t k = 0;
        spec[k++] = '%';
        i++;
        while (i < fmt.n && strchr("-+ #0", fmt.s[i]) && k < 8) spec[k++] = fmt.s[i++];
        while (i < fmt.n && fmt.s[i] >= '0' && fmt.s[i] <= '9' && k < 16) spec[k++] = fmt.s[i++];
        if (i < fmt.n && fmt.s[i] == '.') {
            spec[k++] = fmt.s[i++];
            while (i < fmt.n && fmt.s[i] >= '0' && fmt.s[i] <= '9' && k < 24) spec[k++] = fmt.s[i++];
        }
        if (i >= fmt.n) tmpl_error(c, "incomplete format");
        char type = fmt.s[i];
        if (type == '%') {
            tbuf_put(c, &b, "%", 1);
            continue;
        }
        if (used >= nargs) tmpl_error(c, "not enough arguments for format string");
        struct tv v = args[used++];
        char out[512];
        if (type == 's' || type == 'r') {
            struct tbuf sb = {0};
            tbuf_put(c, &sb, "", 0);
            if (type == 's') tv_write_str(c, &sb, v);
            else tv_write_repr(c, &sb, v);
            spec[k++] = 's';
            spec[k] = 0;
            if (k == 2) tbuf_put(c, &b, sb.p, sb.n);
            else {
                /* Width and precision count characters; good enough for ASCII padding. */
                char *tmp = tmpl_alloc(c, sb.n + 1024);
                int n = snprintf(tmp, sb.n + 1024, spec, sb.p);
                tbuf_put(c, &b, tmp, n > 0 ? (size_t)n : 0);
            }
            continue;
        }
        bool is_int_type = strchr("dixXo", type) != NULL, is_float_type = strchr("feEgGF", type) != NULL;
        if (!is_int_type && !is_float_type) tmpl_error(c, "unsupported format character '%c'", type);
        if (v.t != TV_INT && v.t != TV_FLOAT && v.t != TV_BOOL)
            tmpl_error(c, "%%%c format: a real number is required, not %s", type, tv_type_name(v));
        if (is_int_type) {
            int64_t iv = v.t == TV_INT ? v.i : v.t == TV_BOOL ? v.b : (int64_t)v.f;
            spec[k++] = 'l';
            spec[k++] = 'l';
            spec[k++] = type == 'i' ? 'd' : type;
            spec[k] = 0;
            snprintf(out, sizeof(out), spec, (long long)iv);
        } else {
            double fv = v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : v.b;
            spec[k++] = type;
            spec[k] = 0;
            snprintf(out, sizeof(out), spec, fv);
        }
        tbuf_puts(c, &b, out);
    }
    if (used < nargs) tmpl_error(c, "not all arguments converted during string formatting");
    return tbuf_str(&b);
}

static struct tv f_format(struct rctx *c, struct tv in, const struct targs *a)
{
    if (a->nkw) tmpl_error(c, "format: keyword arguments are not supported");
    return tmpl_percent_format(c, tv_to_str(c, in), a->pos, a->npos);
}

struct tfilter { const char *name; filter_fn fn; };
static const struct tfilter FILTERS[] = {
    {"abs", f_abs}, {"attr", f_attr}, {"batch", f_batch}, {"capitalize", f_capitalize}, {"count", f_length},
    {"d", f_default}, {"default", f_default}, {"dictsort", f_dictsort}, {"e", f_escape}, {"escape", f_escape}, {"first", f_first},
    {"float", f_float}, {"forceescape", f_escape}, {"format", f_format}, {"indent", f_indent}, {"int", f_int}, {"items", tmpl_items_filter},
    {"join", f_join}, {"last", f_last}, {"length", f_length}, {"list", f_list}, {"lower", f_lower},
    {"map", f_map}, {"max", f_max}, {"min", f_min}, {"reject", f_reject}, {"rejectattr", f_rejectattr},
    {"replace", f_replace}, {"reverse", f_reverse}, {"round", f_round}, {"safe", f_safe}, {"select", f_select},
    {"selectattr", f_selectattr}, {"sort", f_sort}, {"string", f_string}, {"sum", f_sum}, {"title", f_title},
    {"tojson", f_tojson}, {"trim", f_trim}, {"unique", f_unique}, {"upper", f_upper}, {"wordcount", f_wordcount},
};

bool tmpl_filter_exists(const char *name)
{
    for (size_t i = 0; i < COUNT(FILTERS); i++)
        if (!strcmp(FILTERS[i].name, name)) return true;
    return false;
}

struct tv tmpl_filter_apply(struct rctx *c, const char *name, struct tv in, const struct targs *a)
{
    for (size_t i = 0; i < COUNT(FILTERS); i++)
        if (!strcmp(FILTERS[i].name, name)) return FILTERS[i].fn(c, in, a);
    tmpl_error(c, "unknown filter '%s'", name);
}
