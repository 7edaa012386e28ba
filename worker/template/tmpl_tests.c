/* Tests (`x is defined`, `x is divisibleby 3`...): jinja2's builtin tests. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"
#include "worker/template/tmpl_builtins.h"
#include "worker/template/tmpl_strings.h"

struct ttest { const char *name; int nargs; };
static const struct ttest TESTS[] = {
    {"defined", 0}, {"undefined", 0}, {"none", 0}, {"boolean", 0}, {"true", 0}, {"false", 0},
    {"integer", 0}, {"float", 0}, {"number", 0}, {"string", 0}, {"mapping", 0}, {"iterable", 0},
    {"sequence", 0}, {"callable", 0}, {"odd", 0}, {"even", 0}, {"lower", 0}, {"upper", 0},
    {"escaped", 0}, {"divisibleby", 1}, {"eq", 1}, {"equalto", 1}, {"==", 1}, {"ne", 1}, {"!=", 1},
    {"lt", 1}, {"lessthan", 1}, {"<", 1}, {"le", 1}, {"<=", 1}, {"gt", 1}, {"greaterthan", 1},
    {">", 1}, {"ge", 1}, {">=", 1}, {"in", 1}, {"sameas", 1}, {"filter", 0}, {"test", 0},
};

bool tmpl_test_exists(const char *name)
{
    for (size_t i = 0; i < COUNT(TESTS); i++)
        if (!strcmp(TESTS[i].name, name)) return true;
    return false;
}

bool tmpl_test_call(struct rctx *c, const char *name, struct tv in, const struct tv *args, size_t nargs)
{
    const struct ttest *t = NULL;
    for (size_t i = 0; i < COUNT(TESTS); i++)
        if (!strcmp(TESTS[i].name, name)) t = &TESTS[i];
    if (!t) tmpl_error(c, "unknown test '%s'", name);
    if ((int)nargs != t->nargs) tmpl_error(c, "test '%s' takes %d argument%s, %zu given", name, t->nargs, t->nargs == 1 ? "" : "s", nargs);
    struct tv x = nargs ? args[0] : tv_undef(NULL);
    const char *n = name;
    if (!strcmp(n, "defined")) return in.t != TV_UNDEF;
    if (!strcmp(n, "undefined")) return in.t == TV_UNDEF;
    if (!strcmp(n, "none")) return in.t == TV_NONE;
    if (!strcmp(n, "boolean")) return in.t == TV_BOOL;
    if (!strcmp(n, "true")) return in.t == TV_BOOL && in.b;
    if (!strcmp(n, "false")) return in.t == TV_BOOL && !in.b;
    if (!strcmp(n, "integer")) return in.t == TV_INT;
    if (!strcmp(n, "float")) return in.t == TV_FLOAT;
    if (!strcmp(n, "number")) return in.t == TV_INT || in.t == TV_FLOAT || in.t == TV_BOOL;
    if (!strcmp(n, "string")) return in.t == TV_STR;
    if (!strcmp(n, "mapping")) return in.t == TV_DICT;
    if (!strcmp(n, "iterable")) return in.t == TV_LIST || in.t == TV_DICT || in.t == TV_STR || in.t == TV_UNDEF;
    if (!strcmp(n, "sequence")) return in.t == TV_LIST || in.t == TV_DICT || in.t == TV_STR || in.t == TV_UNDEF;
    if (!strcmp(n, "callable")) return in.t == TV_MACRO || in.t == TV_FUNC || in.t == TV_METHOD;
    if (!strcmp(n, "escaped")) return false;
    if (!strcmp(n, "odd") || !strcmp(n, "even")) {
        /* value % 2 == 1 (odd) or == 0 (even), as Python computes it for ints and floats. */
        if (in.t == TV_FLOAT) {
            double r = fmod(in.f, 2.0);
            if (r < 0) r += 2.0;
            return n[0] == 'o' ? r == 1.0 : r == 0.0;
        }
        int64_t v = targ_int(c, in, n);
        return (v % 2 != 0) == (n[0] == 'o');
    }
    if (!strcmp(n, "lower") || !strcmp(n, "upper")) {
        if (in.t != TV_STR) return false;
        struct tv conv = ts_case(c, in, n[0] == 'l' ? TS_LOWER : TS_UPPER);
        struct tv other = ts_case(c, in, n[0] == 'l' ? TS_UPPER : TS_LOWER);
        return tv_equal(conv, in) && !tv_equal(other, in);
    }
    if (!strcmp(n, "divisibleby")) {
        if (in.t == TV_FLOAT || x.t == TV_FLOAT) {
            double a = in.t == TV_FLOAT ? in.f : (double)targ_int(c, in, n), d = x.t == TV_FLOAT ? x.f : (double)targ_int(c, x, n);
            if (d == 0) tmpl_error(c, "divisibleby: division by zero");
            return fmod(a, d) == 0.0;
        }
        int64_t d = targ_int(c, x, n);
        if (d == 0) tmpl_error(c, "divisibleby: division by zero");
        int64_t v = targ_int(c, in, n);
        return d == -1 || v % d == 0;
    }
    if (!strcmp(n, "eq") || !strcmp(n, "equalto") || !strcmp(n, "==")) return tv_equal(in, x);
    if (!strcmp(n, "ne") || !strcmp(n, "!=")) return !tv_equal(in, x);
    if (!strcmp(n, "lt") || !strcmp(n, "lessthan") || !strcmp(n, "<")) return tv_compare(c, in, x) < 0;
    if (!strcmp(n, "le") || !strcmp(n, "<=")) return tv_compare(c, in, x) <= 0;
    if (!strcmp(n, "gt") || !strcmp(n, "greaterthan") || !strcmp(n, ">")) return tv_compare(c, in, x) > 0;
    if (!strcmp(n, "ge") || !strcmp(n, ">=")) return tv_compare(c, in, x) >= 0;
    if (!strcmp(n, "in")) {
        if (x.t == TV_STR) return in.t == TV_STR && memmem(x.s, x.n, in.s, in.n) != NULL;
        struct tlist *l = tmpl_iterate(c, x);
        for (size_t i = 0; i < l->n; i++)
            if (tv_equal(in, l->v[i])) return true;
        return false;
    }
    if (!strcmp(n, "sameas")) {
        if (in.t != x.t) return false;
        switch (in.t) {
        case TV_NONE:
        case TV_UNDEF: return true;
        case TV_BOOL: return in.b == x.b;
        case TV_LIST: return in.l == x.l;
        case TV_DICT:
        case TV_NS: return in.d == x.d;
        default: return tv_equal(in, x);
        }
    }
    if (!strcmp(n, "filter")) return in.t == TV_STR && tmpl_filter_exists(targ_cstr(c, in, n));
    if (!strcmp(n, "test")) return in.t == TV_STR && tmpl_test_exists(targ_cstr(c, in, n));
    tmpl_error(c, "unknown test '%s'", n);
}

bool tmpl_test_apply(struct rctx *c, const char *name, struct tv in, const struct targs *a)
{
    if (a->nkw) tmpl_error(c, "test '%s' takes no keyword arguments", name);
    return tmpl_test_call(c, name, in, a->pos, a->npos);
}
