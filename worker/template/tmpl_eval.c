/* The evaluator: statements write to the current output buffer, expressions yield values.
 * Scopes follow jinja2: a for loop gives each iteration a fresh scope (a set inside it does not
 * leak out, hence namespace()), a macro runs in a scope whose parent is where it was defined. */
#include <math.h>
#include <stdio.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"

enum { FLOW_NORMAL = 0, FLOW_BREAK, FLOW_CONTINUE };

static struct tv eval(struct rctx *c, const struct node *n);
static int exec_list(struct rctx *c, struct node *const *items, size_t n);

_Noreturn static void fail_undefined(struct rctx *c, struct tv v)
{
    char msg[256];
    tv_undef_describe(v, msg, sizeof(msg));
    tmpl_error(c, "%s", msg);
}

/* --- variables --------------------------------------------------------------------------- */
static struct tv lookup(struct rctx *c, const char *name, size_t nn)
{
    for (struct tframe *f = c->frame; f; f = f->parent) {
        struct tv *v = tv_dict_get(&f->vars, name, nn);
        if (v) return *v;
    }
    const struct tfunc *fn = tmpl_global_find(name);
    if (fn) return (struct tv){.t = TV_FUNC, .fn = fn};
    return tv_undef(name);
}

static void assign(struct rctx *c, const char *name, struct tv v)
{
    tv_dict_set(c, &c->frame->vars, name, strlen(name), v);
}

static void assign_targets(struct rctx *c, const char *const *names, size_t n, struct tv v)
{
    if (n == 1) {
        assign(c, names[0], v);
        return;
    }
    if (v.t != TV_LIST) tmpl_error(c, "cannot unpack '%s' into %zu names", tv_type_name(v), n);
    if (v.l->n != n) tmpl_error(c, "cannot unpack %zu values into %zu names", v.l->n, n);
    for (size_t i = 0; i < n; i++) assign(c, names[i], v.l->v[i]);
}

static struct tframe *push_frame(struct rctx *c, struct tframe *parent)
{
    struct tframe *f = tmpl_alloc(c, sizeof(*f));
    memset(f, 0, sizeof(*f));
    f->parent = parent;
    return f;
}

/* --- iteration, attributes, items -------------------------------------------------------- */
struct tlist *tmpl_iterate(struct rctx *c, struct tv v)
{
    struct tlist *l;
    switch (v.t) {
    case TV_LIST:
        /* A snapshot: appending inside the loop does not extend it. */
        l = tmpl_alloc(c, sizeof(*l));
        *l = *v.l;
        l->cap = l->n;
        return l;
    case TV_DICT:
    case TV_NS:
        l = tv_list(c, v.d->n).l;
        for (size_t i = 0; i < v.d->n; i++) tv_list_push(c, l, tv_strref(v.d->kv[i].k, v.d->kv[i].kn));
        return l;
    case TV_STR:
        l = tv_list(c, v.n).l;
        for (size_t i = 0; i < v.n;) {
            size_t s = i;
            tu_decode(v.s, v.n, &i);
            tv_list_push(c, l, tv_strref(v.s + s, i - s));
        }
        return l;
    case TV_UNDEF: return tv_list(c, 0).l;
    default: tmpl_error(c, "'%s' object is not iterable", tv_type_name(v));
    }
}

static struct tv loop_attr(struct rctx *c, struct tloop *lp, const char *name)
{
    int64_t i = (int64_t)lp->i, n = (int64_t)lp->n;
    if (!strcmp(name, "index")) return tv_int(i + 1);
    if (!strcmp(name, "index0")) return tv_int(i);
    if (!strcmp(name, "revindex")) return tv_int(n - i);
    if (!strcmp(name, "revindex0")) return tv_int(n - i - 1);
    if (!strcmp(name, "first")) return tv_bool(i == 0);
    if (!strcmp(name, "last")) return tv_bool(i == n - 1);
    if (!strcmp(name, "length")) return tv_int(n);
    if (!strcmp(name, "depth")) return tv_int(1);
    if (!strcmp(name, "depth0")) return tv_int(0);
    if (!strcmp(name, "previtem")) return i > 0 ? lp->items[i - 1] : tv_undef("previtem");
    if (!strcmp(name, "nextitem")) return i + 1 < n ? lp->items[i + 1] : tv_undef("nextitem");
    if (!strcmp(name, "cycle")) {
        struct tmethod *m = tmpl_alloc(c, sizeof(*m));
        m->self = (struct tv){.t = TV_LOOP, .lp = lp};
        m->name = "cycle";
        return (struct tv){.t = TV_METHOD, .me = m};
    }
    return tv_undef(name);
}

static struct tv method_value(struct rctx *c, struct tv self, const char *name)
{
    struct tmethod *m = tmpl_alloc(c, sizeof(*m));
    m->self = self;
    m->name = name;
    return (struct tv){.t = TV_METHOD, .me = m};
}

static const char *cstr(struct rctx *c, const char *s, size_t n)
{
    if (s[n] == 0) return s;
    return tv_str(c, s, n).s;
}

struct tv tmpl_getattr(struct rctx *c, struct tv obj, const char *name, size_t nn)
{
    switch (obj.t) {
    case TV_UNDEF: return obj;
    case TV_DICT: {
        /* jinja2 tries the Python attribute first: d.items is the method even with an "items" key. */
        if (tmpl_method_exists(obj, name, nn)) return method_value(c, obj, cstr(c, name, nn));
        struct tv *v = tv_dict_get(obj.d, name, nn);
        return v ? *v : tv_missing(obj, cstr(c, name, nn));
    }
    case TV_NS: {
        struct tv *v = tv_dict_get(obj.d, name, nn);
        return v ? *v : tv_missing(obj, cstr(c, name, nn));
    }
    case TV_LOOP: return loop_attr(c, obj.lp, cstr(c, name, nn));
    case TV_STR:
    case TV_LIST:
        if (tmpl_method_exists(obj, name, nn)) return method_value(c, obj, cstr(c, name, nn));
        return tv_missing(obj, cstr(c, name, nn));
    default: return tv_missing(obj, cstr(c, name, nn));
    }
}

static bool as_index(struct tv k, int64_t *out)
{
    if (k.t == TV_INT) *out = k.i;
    else if (k.t == TV_BOOL) *out = k.b;
    else return false;
    return true;
}

struct tv tmpl_getitem(struct rctx *c, struct tv obj, struct tv key)
{
    int64_t i;
    switch (obj.t) {
    case TV_UNDEF: return obj;
    case TV_DICT:
    case TV_NS:
        if (key.t == TV_STR) {
            struct tv *v = tv_dict_get(obj.d, key.s, key.n);
            if (v) return *v;
            if (obj.t == TV_DICT && tmpl_method_exists(obj, key.s, key.n)) return method_value(c, obj, cstr(c, key.s, key.n));
            return tv_missing(obj, cstr(c, key.s, key.n));
        }
        return tv_missing(obj, NULL);
    case TV_LIST:
        if (as_index(key, &i)) {
            int64_t n = (int64_t)obj.l->n;
            if (i < 0) i += n;
            return i >= 0 && i < n ? obj.l->v[i] : tv_missing(obj, NULL);
        }
        if (key.t == TV_STR) return tmpl_getattr(c, obj, key.s, key.n);
        return tv_undef(NULL);
    case TV_STR:
        if (as_index(key, &i)) {
            int64_t n = (int64_t)tu_len(obj.s, obj.n);
            if (i < 0) i += n;
            if (i < 0 || i >= n) return tv_missing(obj, NULL);
            size_t a = tu_offset(obj.s, obj.n, (size_t)i), b = a;
            tu_decode(obj.s, obj.n, &b);
            return tv_strref(obj.s + a, b - a);
        }
        if (key.t == TV_STR) return tmpl_getattr(c, obj, key.s, key.n);
        return tv_undef(NULL);
    case TV_LOOP:
        if (key.t == TV_STR) return loop_attr(c, obj.lp, cstr(c, key.s, key.n));
        return tv_undef(NULL);
    default: return tv_undef(NULL);
    }
}

/* Python's slice.indices, then the selected positions. */
static struct tv do_slice(struct rctx *c, struct tv obj, struct tv vs, struct tv ve, struct tv vstep)
{
    int64_t n, step = 1, start = 0, stop = 0;
    if (obj.t == TV_UNDEF) return obj;
    if (obj.t == TV_LIST) n = (int64_t)obj.l->n;
    else if (obj.t == TV_STR) n = (int64_t)tu_len(obj.s, obj.n);
    else return tv_missing(obj, NULL);  /* as jinja2: a failed subscript is undefined */
    if (vstep.t != TV_NONE && vstep.t != TV_UNDEF && !as_index(vstep, &step)) tmpl_error(c, "slice step must be an integer");
    if (step == 0) tmpl_error(c, "slice step cannot be zero");
    bool has_s = vs.t != TV_NONE && vs.t != TV_UNDEF, has_e = ve.t != TV_NONE && ve.t != TV_UNDEF;
    if ((has_s && !as_index(vs, &start)) || (has_e && !as_index(ve, &stop))) tmpl_error(c, "slice indices must be integers");
    if (!has_s) start = step < 0 ? n - 1 : 0;
    else {
        if (start < 0) start += n;
        if (start < 0) start = step < 0 ? -1 : 0;
        if (start >= n) start = step < 0 ? n - 1 : n;
    }
    if (!has_e) stop = step < 0 ? -1 : n;
    else {
        if (stop < 0) stop += n;
        if (stop < 0) stop = step < 0 ? -1 : 0;
        if (stop >= n) stop = step < 0 ? n - 1 : n;
    }
    if (obj.t == TV_LIST) {
        struct tv out = tv_list(c, 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) tv_list_push(c, out.l, obj.l->v[i]);
        out.l->tuple = obj.l->tuple;
        return out;
    }
    bool ascii = tu_len(obj.s, obj.n) == obj.n;
    if (ascii && step == 1) return tv_strref(obj.s + start, stop > start ? (size_t)(stop - start) : 0);
    size_t *off = tmpl_alloc(c, ((size_t)n + 1) * sizeof(*off));
    for (size_t i = 0, k = 0; i <= obj.n && k <= (size_t)n; k++) {
        off[k] = i;
        if (i < obj.n) tu_decode(obj.s, obj.n, &i);
        else i++;
    }
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
        tbuf_put(c, &b, obj.s + off[i], off[i + 1] - off[i]);
    return tbuf_str(&b);
}

/* --- calls ------------------------------------------------------------------------------- */
static void capture_begin(struct rctx *c, struct tbuf *b, struct tbuf **saved)
{
    memset(b, 0, sizeof(*b));
    *saved = c->out;
    c->out = b;
}

static struct tv call_macro(struct rctx *c, struct tmacro *m, const struct targs *a)
{
    const struct node *def = m->def;
    const char *name = def->kind == N_MACRO ? def->s : "caller";
    if (a->npos > def->nnames) tmpl_error(c, "macro '%s' takes %zu arguments, %zu given", name, def->nnames, a->npos);
    if (++c->depth > CHAT_TEMPLATE_MAX_DEPTH) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "macro calls nested deeper than %d", CHAT_TEMPLATE_MAX_DEPTH);
    struct tframe *saved_frame = c->frame;
    struct tframe *f = push_frame(c, m->closure);
    for (size_t k = 0; k < a->nkw; k++) {
        bool found = !strcmp(a->kwn[k], "caller");
        for (size_t i = 0; i < def->nnames && !found; i++) found = !strcmp(a->kwn[k], def->names[i]);
        if (!found) tmpl_error(c, "macro '%s' has no parameter '%s'", name, a->kwn[k]);
        if (!strcmp(a->kwn[k], "caller")) tv_dict_set(c, &f->vars, "caller", 6, a->kwv[k]);
    }
    c->frame = f;
    for (size_t i = 0; i < def->nnames; i++) {
        struct tv v = tv_undef(def->names[i]);
        bool given = false;
        if (i < a->npos) {
            v = a->pos[i];
            given = true;
        }
        for (size_t k = 0; k < a->nkw; k++)
            if (!strcmp(a->kwn[k], def->names[i])) {
                if (given) tmpl_error(c, "macro '%s' got multiple values for '%s'", name, def->names[i]);
                v = a->kwv[k];
                given = true;
            }
        if (!given && def->items2 && def->items2[i]) v = eval(c, def->items2[i]);
        assign(c, def->names[i], v);
    }
    struct tbuf b, *saved_out;
    capture_begin(c, &b, &saved_out);
    exec_list(c, def->items, def->nitems);
    c->out = saved_out;
    c->frame = saved_frame;
    c->depth--;
    return tbuf_str(&b);
}

struct tv tmpl_call(struct rctx *c, struct tv callee, const struct targs *a)
{
    switch (callee.t) {
    case TV_FUNC: return callee.fn->fn(c, a);
    case TV_MACRO: return call_macro(c, callee.m, a);
    case TV_METHOD: return tmpl_method_call(c, callee.me->self, callee.me->name, a);
    case TV_UNDEF: fail_undefined(c, callee);
    default: tmpl_error(c, "'%s' object is not callable", tv_type_name(callee));
    }
}

static void eval_args(struct rctx *c, const struct node *n, struct targs *a, size_t extra_kw)
{
    a->npos = n->nitems;
    a->pos = n->nitems ? tmpl_alloc(c, n->nitems * sizeof(struct tv)) : NULL;
    for (size_t i = 0; i < n->nitems; i++) a->pos[i] = eval(c, n->items[i]);
    a->nkw = n->nnames;
    a->kwn = tmpl_alloc(c, (n->nnames + extra_kw) * sizeof(char *));
    a->kwv = tmpl_alloc(c, (n->nnames + extra_kw) * sizeof(struct tv));
    for (size_t i = 0; i < n->nnames; i++) {
        a->kwn[i] = n->names[i];
        a->kwv[i] = eval(c, n->items2[i]);
    }
}

static struct tv apply_filter(struct rctx *c, const struct node *f, struct tv in)
{
    struct targs a;
    eval_args(c, f, &a, 0);
    c->line = f->line;
    return tmpl_filter_apply(c, f->s, in, &a);
}

/* --- operators --------------------------------------------------------------------------- */
static bool numeric(struct tv v) { return v.t == TV_INT || v.t == TV_FLOAT || v.t == TV_BOOL; }
static double as_f(struct tv v) { return v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : (double)v.b; }
static int64_t as_i(struct tv v) { return v.t == TV_INT ? v.i : (int64_t)v.b; }

static const char *op_name(int op)
{
    static const char *const names[] = {"", "+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in", "not in"};
    return names[op];
}

static struct tv repeat(struct rctx *c, struct tv seq, int64_t k)
{
    if (k < 0) k = 0;
    if (seq.t == TV_STR) {
        if (seq.n && (uint64_t)k > CHAT_TEMPLATE_MAX_OUTPUT / seq.n) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "string repetition too large");
        struct tbuf b = {0};
        tbuf_put(c, &b, "", 0);
        for (int64_t i = 0; i < k; i++) tbuf_put(c, &b, seq.s, seq.n);
        return tbuf_str(&b);
    }
    if (seq.l->n && (uint64_t)k > CHAT_TEMPLATE_MAX_RANGE / seq.l->n) tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "list repetition too large");
    struct tv out = tv_list(c, 0);
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.l->n; j++) tv_list_push(c, out.l, seq.l->v[j]);
    return out;
}

static bool contains(struct rctx *c, struct tv item, struct tv seq)
{
    switch (seq.t) {
    case TV_STR:
        if (item.t != TV_STR) tmpl_error(c, "'in <string>' requires string as left operand, not %s", tv_type_name(item));
        return item.n == 0 || memmem(seq.s, seq.n, item.s, item.n) != NULL;
    case TV_LIST:
        for (size_t i = 0; i < seq.l->n; i++)
            if (tv_equal(item, seq.l->v[i])) return true;
        return false;
    case TV_DICT:
    case TV_NS: return item.t == TV_STR && tv_dict_get(seq.d, item.s, item.n) != NULL;
    case TV_UNDEF: return false;
    default: tmpl_error(c, "argument of type '%s' is not iterable", tv_type_name(seq));
    }
}

static struct tv arith(struct rctx *c, int op, struct tv x, struct tv y)
{
    if (x.t == TV_UNDEF) fail_undefined(c, x);
    if (y.t == TV_UNDEF) fail_undefined(c, y);
    if (op == OP_ADD) {
        if (x.t == TV_STR && y.t == TV_STR) {
            struct tbuf b = {0};
            tbuf_put(c, &b, x.s, x.n);
            tbuf_put(c, &b, y.s, y.n);
            return tbuf_str(&b);
        }
        if (x.t == TV_LIST && y.t == TV_LIST) {
            struct tv out = tv_list(c, x.l->n + y.l->n);
            for (size_t i = 0; i < x.l->n; i++) tv_list_push(c, out.l, x.l->v[i]);
            for (size_t i = 0; i < y.l->n; i++) tv_list_push(c, out.l, y.l->v[i]);
            out.l->tuple = x.l->tuple && y.l->tuple;
            return out;
        }
    }
    if (op == OP_MOD && x.t == TV_STR) {
        if (y.t == TV_LIST && y.l->tuple) return tmpl_percent_format(c, x, y.l->v, y.l->n);
        return tmpl_percent_format(c, x, &y, 1);
    }
    if (op == OP_MUL) {
        if ((x.t == TV_STR || x.t == TV_LIST) && (y.t == TV_INT || y.t == TV_BOOL)) return repeat(c, x, as_i(y));
        if ((y.t == TV_STR || y.t == TV_LIST) && (x.t == TV_INT || x.t == TV_BOOL)) return repeat(c, y, as_i(x));
    }
    if (!numeric(x) || !numeric(y))
        tmpl_error(c, "unsupported operand type(s) for %s: '%s' and '%s'", op_name(op), tv_type_name(x), tv_type_name(y));
    bool ints = x.t != TV_FLOAT && y.t != TV_FLOAT;
    if (ints && op != OP_DIV) {
        int64_t a = as_i(x), b = as_i(y), r = 0;
        bool ovf = false;
        switch (op) {
        case OP_ADD: ovf = __builtin_add_overflow(a, b, &r); break;
        case OP_SUB: ovf = __builtin_sub_overflow(a, b, &r); break;
        case OP_MUL: ovf = __builtin_mul_overflow(a, b, &r); break;
        case OP_FLOORDIV:
        case OP_MOD:
            if (b == 0) tmpl_error(c, "integer division or modulo by zero");
            if (a == INT64_MIN && b == -1) {
                ovf = op == OP_FLOORDIV;
                break;
            }
            r = op == OP_FLOORDIV ? a / b : a % b;
            if (op == OP_FLOORDIV && (a % b != 0) && ((a < 0) != (b < 0))) r--;
            if (op == OP_MOD && r != 0 && ((r < 0) != (b < 0))) r += b;
            break;
        case OP_POW:
            if (b < 0) return tv_float(pow((double)a, (double)b));
            r = 1;
            for (int64_t i = 0; i < b && !ovf; i++) {
                ovf = __builtin_mul_overflow(r, a, &r);
                if (r == 0 || r == 1) break;
            }
            if (a == -1) r = (b % 2) ? -1 : 1;
            break;
        }
        if (ovf) tmpl_error(c, "integer overflow in '%s'", op_name(op));
        return tv_int(r);
    }
    double a = as_f(x), b = as_f(y);
    switch (op) {
    case OP_ADD: return tv_float(a + b);
    case OP_SUB: return tv_float(a - b);
    case OP_MUL: return tv_float(a * b);
    case OP_DIV:
        if (b == 0) tmpl_error(c, "division by zero");
        return tv_float(a / b);
    case OP_FLOORDIV:
        if (b == 0) tmpl_error(c, "float floor division by zero");
        return tv_float(floor(a / b));
    case OP_MOD: {
        if (b == 0) tmpl_error(c, "float modulo");
        double r = fmod(a, b);
        if (r != 0 && ((r < 0) != (b < 0))) r += b;
        return tv_float(r);
    }
    case OP_POW: return tv_float(pow(a, b));
    }
    return tv_none();
}

static struct tv eval_bin(struct rctx *c, const struct node *n)
{
    struct tv x = eval(c, n->a), y = eval(c, n->b);
    c->line = n->line;
    switch (n->op) {
    case OP_CONCAT: {
        struct tbuf b = {0};
        tbuf_put(c, &b, "", 0);
        tv_write_str(c, &b, x);
        tv_write_str(c, &b, y);
        return tbuf_str(&b);
    }
    case OP_EQ: return tv_bool(tv_equal(x, y));
    case OP_NE: return tv_bool(!tv_equal(x, y));
    case OP_LT: return tv_bool(tv_compare(c, x, y) < 0);
    case OP_LE: return tv_bool(tv_compare(c, x, y) <= 0);
    case OP_GT: return tv_bool(tv_compare(c, x, y) > 0);
    case OP_GE: return tv_bool(tv_compare(c, x, y) >= 0);
    case OP_IN: return tv_bool(contains(c, x, y));
    case OP_NOTIN: return tv_bool(!contains(c, x, y));
    default: return arith(c, n->op, x, y);
    }
}

static struct tv eval(struct rctx *c, const struct node *n)
{
    c->line = n->line;
    switch (n->kind) {
    case E_CONST: return n->k;
    case E_NAME: return lookup(c, n->s, n->sn);
    case E_LIST:
    case E_TUPLE: {
        struct tv l = tv_list(c, n->nitems);
        for (size_t i = 0; i < n->nitems; i++) tv_list_push(c, l.l, eval(c, n->items[i]));
        l.l->tuple = n->kind == E_TUPLE;
        return l;
    }
    case E_DICT: {
        struct tv d = tv_dict(c);
        for (size_t i = 0; i < n->nitems; i++) {
            struct tv k = eval(c, n->items[i]);
            if (k.t != TV_STR) tmpl_error(c, "dict keys must be strings, not '%s'", tv_type_name(k));
            tv_dict_set(c, d.d, k.s, k.n, eval(c, n->items2[i]));
        }
        return d;
    }
    case E_ATTR: {
        struct tv obj = eval(c, n->a);
        return tmpl_getattr(c, obj, n->s, n->sn);
    }
    case E_ITEM: {
        struct tv obj = eval(c, n->a), key = eval(c, n->b);
        c->line = n->line;
        return tmpl_getitem(c, obj, key);
    }
    case E_SLICE: {
        struct tv obj = eval(c, n->a), p[3];
        for (int i = 0; i < 3; i++) p[i] = n->items[i] ? eval(c, n->items[i]) : tv_none();
        c->line = n->line;
        return do_slice(c, obj, p[0], p[1], p[2]);
    }
    case E_CALL: {
        struct tv callee = eval(c, n->a);
        struct targs a;
        eval_args(c, n, &a, 0);
        c->line = n->line;
        return tmpl_call(c, callee, &a);
    }
    case E_FILTER: return apply_filter(c, n, eval(c, n->a));
    case E_TEST: {
        struct tv in = eval(c, n->a);
        struct targs a;
        eval_args(c, n, &a, 0);
        c->line = n->line;
        bool r = tmpl_test_apply(c, n->s, in, &a);
        return tv_bool(n->op ? !r : r);
    }
    case E_NEG:
    case E_POS: {
        struct tv v = eval(c, n->a);
        c->line = n->line;
        if (v.t == TV_UNDEF) fail_undefined(c, v);
        if (n->kind == E_POS && numeric(v)) return v.t == TV_BOOL ? tv_int(v.b) : v;
        if (v.t == TV_FLOAT) return tv_float(-v.f);
        if (v.t == TV_INT && v.i != INT64_MIN) return tv_int(-v.i);
        if (v.t == TV_BOOL) return tv_int(-(int64_t)v.b);
        tmpl_error(c, "bad operand type for unary %s: '%s'", n->kind == E_NEG ? "-" : "+", tv_type_name(v));
    }
    case E_NOT: return tv_bool(!tv_truthy(eval(c, n->a)));
    case E_AND: {
        struct tv x = eval(c, n->a);
        return tv_truthy(x) ? eval(c, n->b) : x;
    }
    case E_OR: {
        struct tv x = eval(c, n->a);
        return tv_truthy(x) ? x : eval(c, n->b);
    }
    case E_COND:
        if (tv_truthy(eval(c, n->a))) return eval(c, n->b);
        return n->c ? eval(c, n->c) : tv_undef(NULL);
    case E_BIN: return eval_bin(c, n);
    default: tmpl_error(c, "internal error: node %d is not an expression", n->kind);
    }
}

/* --- statements -------------------------------------------------------------------------- */
static int exec_for(struct rctx *c, const struct node *n)
{
    struct tlist *items = tmpl_iterate(c, eval(c, n->a));
    struct tframe *outer = c->frame;
    if (n->b) {
        /* `for x in xs if cond`: filter first, so loop.index and loop.length count kept items. */
        struct tlist *kept = tv_list(c, items->n).l;
        for (size_t i = 0; i < items->n; i++) {
            c->frame = push_frame(c, outer);
            assign_targets(c, n->names, n->nnames, items->v[i]);
            bool keep = tv_truthy(eval(c, n->b));
            c->frame = outer;
            if (keep) tv_list_push(c, kept, items->v[i]);
        }
        items = kept;
    }
    struct tloop *lp = tmpl_alloc(c, sizeof(*lp));
    lp->items = items->v;
    lp->n = items->n;
    /* Each iteration starts with an empty scope; reusing one frame keeps long loops from
     * allocating per iteration. */
    struct tframe *body = push_frame(c, outer);
    for (size_t i = 0; i < items->n; i++) {
        lp->i = i;
        body->vars.n = 0;
        c->frame = body;
        assign(c, "loop", (struct tv){.t = TV_LOOP, .lp = lp});
        assign_targets(c, n->names, n->nnames, items->v[i]);
        int flow = exec_list(c, n->items, n->nitems);
        c->frame = outer;
        if (flow == FLOW_BREAK) break;
    }
    if (items->n == 0 && n->nitems2) {
        c->frame = push_frame(c, outer);
        int flow = exec_list(c, n->items2, n->nitems2);
        c->frame = outer;
        return flow;
    }
    return FLOW_NORMAL;
}

static struct tv capture_body(struct rctx *c, const struct node *n)
{
    struct tbuf b, *saved;
    capture_begin(c, &b, &saved);
    int flow = exec_list(c, n->items, n->nitems);
    c->out = saved;
    if (flow != FLOW_NORMAL) tmpl_error(c, "break or continue inside a captured block");
    return tbuf_str(&b);
}

static int exec_stmt(struct rctx *c, const struct node *n)
{
    c->line = n->line;
    switch (n->kind) {
    case N_DATA: tbuf_put(c, c->out, n->s, n->sn); return FLOW_NORMAL;
    case N_OUTPUT: {
        struct tv v = eval(c, n->a);
        tv_write_str(c, c->out, v);
        return FLOW_NORMAL;
    }
    case N_IF:
        if (tv_truthy(eval(c, n->a))) return exec_list(c, n->items, n->nitems);
        return exec_list(c, n->items2, n->nitems2);
    case N_FOR: return exec_for(c, n);
    case N_SET: {
        struct tv v = eval(c, n->a);
        c->line = n->line;
        assign_targets(c, n->names, n->nnames, v);
        return FLOW_NORMAL;
    }
    case N_SET_ATTR: {
        struct tv ns = lookup(c, n->s, strlen(n->s));
        struct tv v = eval(c, n->a);
        c->line = n->line;
        if (ns.t != TV_NS) tmpl_error(c, "cannot assign attribute on non-namespace object '%s'", n->s);
        tv_dict_set(c, ns.d, n->names[0], strlen(n->names[0]), v);
        return FLOW_NORMAL;
    }
    case N_SET_BLOCK: {
        struct tv v = capture_body(c, n);
        for (size_t i = 0; i < n->nitems2; i++) v = apply_filter(c, n->items2[i], v);
        assign(c, n->names[0], v);
        return FLOW_NORMAL;
    }
    case N_FILTER_BLOCK: {
        struct tv v = capture_body(c, n);
        for (size_t i = 0; i < n->nitems2; i++) v = apply_filter(c, n->items2[i], v);
        tv_write_str(c, c->out, v);
        return FLOW_NORMAL;
    }
    case N_MACRO: {
        struct tmacro *m = tmpl_alloc(c, sizeof(*m));
        m->def = n;
        m->closure = c->frame;
        assign(c, n->s, (struct tv){.t = TV_MACRO, .m = m});
        return FLOW_NORMAL;
    }
    case N_CALL_BLOCK: {
        struct tmacro *m = tmpl_alloc(c, sizeof(*m));
        m->def = n;
        m->closure = c->frame;
        const struct node *call = n->a;
        struct tv callee = eval(c, call->a);
        struct targs a;
        eval_args(c, call, &a, 1);
        a.kwn[a.nkw] = "caller";
        a.kwv[a.nkw++] = (struct tv){.t = TV_MACRO, .m = m};
        c->line = n->line;
        tv_write_str(c, c->out, tmpl_call(c, callee, &a));
        return FLOW_NORMAL;
    }
    case N_BREAK: return FLOW_BREAK;
    case N_CONTINUE: return FLOW_CONTINUE;
    case N_BODY: return exec_list(c, n->items, n->nitems);
    case N_WITH: {
        struct tframe *outer = c->frame, *f = push_frame(c, outer);
        for (size_t i = 0; i < n->nnames; i++) {
            struct tv v = eval(c, n->items2[i]);
            tv_dict_set(c, &f->vars, n->names[i], strlen(n->names[i]), v);
        }
        c->frame = f;
        int flow = exec_list(c, n->items, n->nitems);
        c->frame = outer;
        return flow;
    }
    default: tmpl_error(c, "internal error: node %d is not a statement", n->kind);
    }
}

static int exec_list(struct rctx *c, struct node *const *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int flow = exec_stmt(c, items[i]);
        if (flow != FLOW_NORMAL) return flow;
    }
    return FLOW_NORMAL;
}

void tmpl_render_body(struct rctx *c, const struct node *body)
{
    exec_list(c, body->items, body->nitems);
}
