/* Methods of str, dict and list values as Python has them, and the global functions
 * (range, namespace, dict, raise_exception, strftime_now). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"
#include "worker/template/tmpl_builtins.h"
#include "worker/template/tmpl_strings.h"

static const char *const STR_METHODS[] = {"upper", "lower", "strip", "lstrip", "rstrip", "split", "rsplit",
                                          "startswith", "endswith", "replace", "title", "capitalize", "find",
                                          "rfind", "count", "join", "splitlines", "isdigit", "isalpha",
                                          "isalnum", "isspace", "isupper", "islower", "index", "format"};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get"};
static const char *const LIST_METHODS[] = {"append", "extend", "index", "count"};

static bool in_names(const char *const *names, size_t n, const char *name, size_t nn)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == nn && !memcmp(names[i], name, nn)) return true;
    return false;
}

bool tmpl_method_exists(struct tv v, const char *name, size_t nn)
{
    if (v.t == TV_STR) return in_names(STR_METHODS, COUNT(STR_METHODS), name, nn);
    if (v.t == TV_DICT) return in_names(DICT_METHODS, COUNT(DICT_METHODS), name, nn);
    if (v.t == TV_LIST && !v.l->tuple) return in_names(LIST_METHODS, COUNT(LIST_METHODS), name, nn);
    if (v.t == TV_LIST) return nn == 5 ? !memcmp(name, "index", 5) || !memcmp(name, "count", 5) : false;
    return false;
}

static bool affix_match(struct tv s, struct tv x, bool end)
{
    if (x.n > s.n) return false;
    return memcmp(end ? s.s + s.n - x.n : s.s, x.s, x.n) == 0;
}

/* str.format with positional ({}, {0}) and keyword ({name}) fields, !s/!r conversions and a
 * format spec of [[fill]align][width][.precision][type] for types s, d, f, e, g and %. */
static struct tv str_format(struct rctx *c, struct tv fmt, const struct targs *a)
{
    struct tbuf b = {0};
    tbuf_put(c, &b, "", 0);
    size_t auto_index = 0;
    for (size_t i = 0; i < fmt.n; i++) {
        char ch = fmt.s[i];
        if (ch == '}') {
            if (i + 1 < fmt.n && fmt.s[i + 1] == '}') i++;
            else tmpl_error(c, "format: single '}' encountered in format string");
            tbuf_put(c, &b, "}", 1);
            continue;
        }
        if (ch != '{') {
            tbuf_put(c, &b, &ch, 1);
            continue;
        }
        if (i + 1 < fmt.n && fmt.s[i + 1] == '{') {
            tbuf_put(c, &b, "{", 1);
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < fmt.n && fmt.s[j] != '}') j++;
        if (j >= fmt.n) tmpl_error(c, "format: single '{' encountered in format string");
        const char *f = fmt.s + i + 1;
        size_t fn = j - i - 1, name_end = 0;
        while (name_end < fn && f[name_end] != '!' && f[name_end] != ':') name_end++;
        struct tv v;
        if (name_end == 0) {
            if (auto_index >= a->npos) tmpl_error(c, "format: replacement index %zu out of range", auto_index);
            v = a->pos[auto_index++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            size_t idx = 0;
            for (size_t k = 0; k < name_end; k++) {
                if (f[k] < '0' || f[k] > '9') tmpl_error(c, "format: field names with '.' or '[' are not supported");
                idx = idx * 10 + (size_t)(f[k] - '0');
                if (idx > 1000000) break;
            }
            if (idx >= a->npos) tmpl_error(c, "format: replacement index %zu out of range", idx);
            v = a->pos[idx];
        } else {
            size_t k;
            for (k = 0; k < a->nkw; k++)
                if (strlen(a->kwn[k]) == name_end && !memcmp(a->kwn[k], f, name_end)) break;
            if (k == a->nkw) tmpl_error(c, "format: no argument named '%.*s'", (int)name_end, f);
            v = a->kwv[k];
        }
        size_t p = name_end;
        bool repr = false;
        if (p < fn && f[p] == '!') {
            if (p + 1 >= fn || (f[p + 1] != 's' && f[p + 1] != 'r')) tmpl_error(c, "format: unknown conversion");
            repr = f[p + 1] == 'r';
            p += 2;
        }
        const char *spec = p < fn && f[p] == ':' ? f + p + 1 : "";
        size_t sn = p < fn && f[p] == ':' ? fn - p - 1 : 0;
        char fill = ' ', align = 0, type = 0;
        long width = 0, prec = -1;
        size_t k = 0;
        if (sn >= 2 && strchr("<>^", spec[1])) {
            fill = spec[0];
            align = spec[1];
            k = 2;
        } else if (sn >= 1 && strchr("<>^", spec[0])) {
            align = spec[0];
            k = 1;
        }
        while (k < sn && spec[k] >= '0' && spec[k] <= '9' && width < 100000) width = width * 10 + (spec[k++] - '0');
        if (k < sn && spec[k] == '.') {
            prec = 0;
            k++;
            while (k < sn && spec[k] >= '0' && spec[k] <= '9' && prec < 1000) prec = prec * 10 + (spec[k++] - '0');
        }
        if (k < sn) type = spec[k++];
        if (k < sn || (type && !strchr("sdfegF%", type))) tmpl_error(c, "format: unsupported format spec '%.*s'", (int)sn, spec);
        struct tbuf fb = {0};
        tbuf_put(c, &fb, "", 0);
        bool numeric = v.t == TV_INT || v.t == TV_FLOAT || v.t == TV_BOOL;
        if (type && type != 's') {
            if (!numeric) tmpl_error(c, "format: '%c' needs a number, got '%s'", type, tv_type_name(v));
            char out[1200];
            double fv = v.t == TV_FLOAT ? v.f : v.t == TV_INT ? (double)v.i : v.b;
            if (type == 'd') {
                if (v.t == TV_FLOAT) tmpl_error(c, "format: 'd' needs an integer");
                snprintf(out, sizeof(out), "%lld", (long long)(v.t == TV_INT ? v.i : v.b));
            } else if (type == '%') {
                snprintf(out, sizeof(out), "%.*f%%", (int)(prec < 0 ? 6 : prec), fv * 100);
            } else {
                char pf[16];
                snprintf(pf, sizeof(pf), "%%.*%c", type);
                snprintf(out, sizeof(out), pf, (int)(prec < 0 ? 6 : prec), fv);
            }
            tbuf_puts(c, &fb, out);
        } else {
            if (repr) tv_write_repr(c, &fb, v);
            else tv_write_str(c, &fb, v);
            if (prec >= 0 && !numeric && (size_t)prec < tu_len(fb.p, fb.n)) fb.n = tu_offset(fb.p, fb.n, (size_t)prec);
        }
        size_t len = tu_len(fb.p, fb.n);
        if (!align) align = numeric && !repr && type != 's' ? '>' : '<';
        size_t pad = (size_t)width > len ? (size_t)width - len : 0, left = align == '>' ? pad : align == '^' ? pad / 2 : 0;
        for (size_t q = 0; q < left; q++) tbuf_put(c, &b, &fill, 1);
        tbuf_put(c, &b, fb.p, fb.n);
        for (size_t q = left; q < pad; q++) tbuf_put(c, &b, &fill, 1);
        i = j;
    }
    return tbuf_str(&b);
}

static struct tv str_method(struct rctx *c, struct tv s, const char *m, const struct targs *a)
{
    if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") || !strcmp(m, "capitalize")) {
        BIND(m, p, "");
        (void)p;
        return ts_case(c, s, m[0] == 'u' ? TS_UPPER : m[0] == 'l' ? TS_LOWER : m[0] == 't' ? TS_TITLE : TS_CAPITALIZE);
    }
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        BIND(m, p, "chars");
        struct tv chars;
        bool has = targ_given(p[0]) && p[0].t != TV_NONE;
        if (has) chars = targ_str(c, p[0], m);
        return ts_strip(s, has ? &chars : NULL, m[0] != 'r', m[0] != 'l');
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        BIND(m, p, "sep", "maxsplit");
        struct tv sep;
        bool has = targ_given(p[0]) && p[0].t != TV_NONE;
        if (has) sep = targ_str(c, p[0], m);
        return ts_split(c, s, has ? &sep : NULL, targ_opt_int(c, p[1], -1, m), m[0] == 'r');
    }
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        BIND(m, p, "prefix", "start", "end");
        if (targ_given(p[1]) || targ_given(p[2])) {
            int64_t n = (int64_t)tu_len(s.s, s.n), st = targ_opt_int(c, p[1], 0, m), en = targ_opt_int(c, p[2], n, m);
            if (st < 0) st += n;
            if (en < 0) en += n;
            st = st < 0 ? 0 : st > n ? n : st;
            en = en < 0 ? 0 : en > n ? n : en;
            if (en < st) return tv_bool(false);
            size_t bs = tu_offset(s.s, s.n, (size_t)st), be = tu_offset(s.s, s.n, (size_t)en);
            s = tv_strref(s.s + bs, be - bs);
        }
        bool end = m[0] == 'e';
        if (p[0].t == TV_LIST) {
            for (size_t i = 0; i < p[0].l->n; i++)
                if (affix_match(s, targ_str(c, p[0].l->v[i], m), end)) return tv_bool(true);
            return tv_bool(false);
        }
        return tv_bool(affix_match(s, targ_str(c, p[0], m), end));
    }
    if (!strcmp(m, "replace")) {
        BIND(m, p, "old", "new", "count");
        return ts_replace(c, s, targ_str(c, p[0], m), targ_str(c, p[1], m), targ_opt_int(c, p[2], -1, m));
    }
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index")) {
        BIND(m, p, "sub");
        int64_t r = ts_find(s, targ_str(c, p[0], m), m[0] == 'r');
        if (r < 0 && m[0] == 'i') tmpl_error(c, "substring not found");
        return tv_int(r);
    }
    if (!strcmp(m, "format")) return str_format(c, s, a);
    if (!strcmp(m, "count")) {
        BIND(m, p, "sub");
        return tv_int(ts_count(s, targ_str(c, p[0], m)));
    }
    if (!strcmp(m, "join")) {
        BIND(m, p, "iterable");
        struct tlist *l = tmpl_iterate(c, p[0]);
        struct tbuf b = {0};
        tbuf_put(c, &b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            if (i) tbuf_put(c, &b, s.s, s.n);
            struct tv v = targ_str(c, l->v[i], "join");
            tbuf_put(c, &b, v.s, v.n);
        }
        return tbuf_str(&b);
    }
    if (!strcmp(m, "splitlines")) {
        BIND(m, p, "keepends");
        struct tv out = tv_list(c, 0);
        size_t i = 0;
        while (i < s.n) {
            size_t j = i;
            while (j < s.n && s.s[j] != '\n' && s.s[j] != '\r') j++;
            size_t e = j;
            if (j < s.n && s.s[j] == '\r' && j + 1 < s.n && s.s[j + 1] == '\n') j++;
            tv_list_push(c, out.l, tv_strref(s.s + i, (tv_truthy(p[0]) && j < s.n ? j + 1 : e) - i));
            i = j + 1;
        }
        return out;
    }
    if (!strncmp(m, "is", 2)) {
        BIND(m, p, "");
        (void)p;
        if (s.n == 0) return tv_bool(false);
        if (!strcmp(m, "isupper") || !strcmp(m, "islower")) {
            struct tv u = ts_case(c, s, TS_UPPER), l = ts_case(c, s, TS_LOWER);
            if (tv_equal(u, l)) return tv_bool(false);
            return tv_bool(tv_equal(s, m[2] == 'u' ? u : l));
        }
        for (size_t i = 0; i < s.n; i++) {
            unsigned char ch = (unsigned char)s.s[i];
            bool digit = ch >= '0' && ch <= '9', alpha = ((ch | 32) >= 'a' && (ch | 32) <= 'z') || ch >= 0x80;
            bool ok = !strcmp(m, "isdigit") ? digit : !strcmp(m, "isalpha") ? alpha : !strcmp(m, "isalnum") ? digit || alpha
                                                                                                          : tu_isspace(ch);
            if (!ok) return tv_bool(false);
        }
        return tv_bool(true);
    }
    tmpl_error(c, "'str' object has no method '%s'", m);
}

static struct tv dict_method(struct rctx *c, struct tv d, const char *m, const struct targs *a)
{
    if (!strcmp(m, "items")) return tmpl_items_filter(c, d, a);
    if (!strcmp(m, "keys") || !strcmp(m, "values")) {
        BIND(m, p, "");
        (void)p;
        struct tv out = tv_list(c, d.d->n);
        for (size_t i = 0; i < d.d->n; i++)
            tv_list_push(c, out.l, m[0] == 'k' ? tv_strref(d.d->kv[i].k, d.d->kv[i].kn) : d.d->kv[i].v);
        return out;
    }
    if (!strcmp(m, "get")) {
        BIND(m, p, "key", "default");
        struct tv *v = p[0].t == TV_STR ? tv_dict_get(d.d, p[0].s, p[0].n) : NULL;
        return v ? *v : targ_given(p[1]) ? p[1] : tv_none();
    }
    tmpl_error(c, "'dict' object has no method '%s'", m);
}

static struct tv list_method(struct rctx *c, struct tv l, const char *m, const struct targs *a)
{
    if (!strcmp(m, "append")) {
        BIND(m, p, "object");
        tv_list_push(c, l.l, p[0]);
        return tv_none();
    }
    if (!strcmp(m, "extend")) {
        BIND(m, p, "iterable");
        struct tlist *src = tmpl_iterate(c, p[0]);
        for (size_t i = 0; i < src->n; i++) tv_list_push(c, l.l, src->v[i]);
        return tv_none();
    }
    if (!strcmp(m, "index") || !strcmp(m, "count")) {
        BIND(m, p, "value");
        int64_t n = 0;
        for (size_t i = 0; i < l.l->n; i++)
            if (tv_equal(l.l->v[i], p[0])) {
                if (m[0] == 'i') return tv_int((int64_t)i);
                n++;
            }
        if (m[0] == 'i') tmpl_error(c, "list.index(x): x not in list");
        return tv_int(n);
    }
    tmpl_error(c, "'list' object has no method '%s'", m);
}

struct tv tmpl_method_call(struct rctx *c, struct tv self, const char *name, const struct targs *a)
{
    switch (self.t) {
    case TV_STR: return str_method(c, self, name, a);
    case TV_DICT: return dict_method(c, self, name, a);
    case TV_LIST: return list_method(c, self, name, a);
    case TV_LOOP:
        if (a->npos == 0) tmpl_error(c, "loop.cycle needs at least one argument");
        return a->pos[self.lp->i % a->npos];
    default: tmpl_error(c, "'%s' object has no method '%s'", tv_type_name(self), name);
    }
}

/* --- globals ------------------------------------------------------------------------------ */
static struct tv g_range(struct rctx *c, const struct targs *a)
{
    if (a->nkw) tmpl_error(c, "range takes no keyword arguments");
    if (a->npos < 1 || a->npos > 3) tmpl_error(c, "range expects 1 to 3 arguments, got %zu", a->npos);
    int64_t start = 0, stop, step = 1;
    if (a->npos == 1) stop = targ_int(c, a->pos[0], "range");
    else {
        start = targ_int(c, a->pos[0], "range");
        stop = targ_int(c, a->pos[1], "range");
        if (a->npos == 3) step = targ_int(c, a->pos[2], "range");
    }
    if (step == 0) tmpl_error(c, "range() arg 3 must not be zero");
    double count = step > 0 ? ceil(((double)stop - (double)start) / (double)step) : ceil(((double)start - (double)stop) / (double)-step);
    if (count > CHAT_TEMPLATE_MAX_RANGE)
        tmpl_fail(c, CHAT_TEMPLATE_ELIMIT, "range too big, the sandbox allows at most %d items", CHAT_TEMPLATE_MAX_RANGE);
    struct tv out = tv_list(c, count > 0 ? (size_t)count : 0);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) tv_list_push(c, out.l, tv_int(i));
    return out;
}

static struct tv make_dict(struct rctx *c, const struct targs *a, const char *what, int type)
{
    struct tv d = tv_dict(c);
    d.t = (uint8_t)type;
    for (size_t i = 0; i < a->npos; i++) {
        if (a->pos[i].t != TV_DICT) tmpl_error(c, "%s: positional arguments must be dicts", what);
        for (size_t k = 0; k < a->pos[i].d->n; k++)
            tv_dict_set(c, d.d, a->pos[i].d->kv[k].k, a->pos[i].d->kv[k].kn, a->pos[i].d->kv[k].v);
    }
    for (size_t k = 0; k < a->nkw; k++) tv_dict_set(c, d.d, a->kwn[k], strlen(a->kwn[k]), a->kwv[k]);
    return d;
}
static struct tv g_namespace(struct rctx *c, const struct targs *a) { return make_dict(c, a, "namespace", TV_NS); }
static struct tv g_dict(struct rctx *c, const struct targs *a) { return make_dict(c, a, "dict", TV_DICT); }

static struct tv g_raise_exception(struct rctx *c, const struct targs *a)
{
    static const char *const params_[] = {"message"};
    struct tv p[1];
    targs_bind(c, a, "raise_exception", params_, 1, p);
    struct tv msg = tv_to_str(c, p[0]);
    tmpl_fail(c, CHAT_TEMPLATE_ERAISED, "%.*s", (int)msg.n, msg.s);
}

static struct tv g_strftime_now(struct rctx *c, const struct targs *a)
{
    static const char *const params_[] = {"format"};
    struct tv p[1];
    targs_bind(c, a, "strftime_now", params_, 1, p);
    const char *fmt = targ_cstr(c, p[0], "strftime_now");
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char buf[512];
    size_t n = fmt[0] ? strftime(buf, sizeof(buf), fmt, &tm) : 0;
    return tv_str(c, buf, n);
}

static const struct tfunc GLOBALS[] = {
    {"range", g_range}, {"namespace", g_namespace}, {"dict", g_dict},
    {"raise_exception", g_raise_exception}, {"strftime_now", g_strftime_now},
};

const struct tfunc *tmpl_global_find(const char *name)
{
    for (size_t i = 0; i < COUNT(GLOBALS); i++)
        if (!strcmp(GLOBALS[i].name, name)) return &GLOBALS[i];
    return NULL;
}
