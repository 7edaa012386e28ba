/* Argument binding and helpers shared by the builtins. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"
#include "worker/template/tmpl_builtins.h"
#include "worker/template/tmpl_strings.h"

void targs_bind(struct rctx *c, const struct targs *a, const char *what, const char *const *params,
                size_t nparams, struct tv *out)
{
    for (size_t i = 0; i < nparams; i++) out[i] = tv_undef(NULL);
    if (a->npos > nparams) tmpl_error(c, "%s takes at most %zu arguments, %zu given", what, nparams, a->npos);
    for (size_t i = 0; i < a->npos; i++) out[i] = a->pos[i];
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i;
        for (i = 0; i < nparams; i++)
            if (!strcmp(a->kwn[k], params[i])) break;
        if (i == nparams) tmpl_error(c, "%s got an unexpected keyword argument '%s'", what, a->kwn[k]);
        if (i < a->npos) tmpl_error(c, "%s got multiple values for '%s'", what, params[i]);
        out[i] = a->kwv[k];
    }
}

struct tv targ_str(struct rctx *c, struct tv v, const char *what)
{
    if (v.t != TV_STR) tmpl_error(c, "%s: expected a string, got '%s'", what, tv_type_name(v));
    return v;
}

/* A NUL-terminated copy when v is a view into a longer string. */
const char *targ_cstr(struct rctx *c, struct tv v, const char *what)
{
    v = targ_str(c, v, what);
    if (memchr(v.s, 0, v.n)) tmpl_error(c, "%s: string contains NUL", what);
    return v.s[v.n] == 0 ? v.s : tv_str(c, v.s, v.n).s;
}

int64_t targ_int(struct rctx *c, struct tv v, const char *what)
{
    if (v.t == TV_INT) return v.i;
    if (v.t == TV_BOOL) return v.b;
    tmpl_error(c, "%s: expected an integer, got '%s'", what, tv_type_name(v));
}

int64_t targ_opt_int(struct rctx *c, struct tv v, int64_t dflt, const char *what)
{
    return targ_given(v) && v.t != TV_NONE ? targ_int(c, v, what) : dflt;
}

/* --- attribute paths ("a.b.0") used by map, selectattr, sort, join... ----------------------- */
struct tv tmpl_get_path(struct rctx *c, struct tv v, struct tv path)
{
    if (path.t == TV_INT) return tmpl_getitem(c, v, path);
    path = targ_str(c, path, "attribute");
    size_t i = 0;
    while (i <= path.n) {
        size_t j = i;
        while (j < path.n && path.s[j] != '.') j++;
        bool digits = j > i;
        for (size_t k = i; k < j; k++)
            if (path.s[k] < '0' || path.s[k] > '9') digits = false;
        int64_t idx = 0;
        for (size_t k = i; digits && k < j && idx < INT64_MAX / 10 - 10; k++) idx = idx * 10 + (path.s[k] - '0');
        if (digits) v = tmpl_getitem(c, v, tv_int(idx));
        else v = tmpl_getitem(c, v, tv_strref(path.s + i, j - i));
        i = j + 1;
    }
    return v;
}

struct tv tmpl_lower_if_str(struct rctx *c, struct tv v, bool case_sensitive)
{
    return v.t == TV_STR && !case_sensitive ? ts_case(c, v, TS_LOWER) : v;
}

/* Stable merge sort of values by keys. */
void tmpl_sort_by(struct rctx *c, struct tv *vals, struct tv *keys, size_t n, bool reverse)
{
    if (n < 2) return;
    struct tv *tv = tmpl_alloc(c, n * sizeof(*tv)), *tk = tmpl_alloc(c, n * sizeof(*tk));
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int r = tv_compare(c, keys[j], keys[i]);
                bool take_right = reverse ? r > 0 : r < 0;
                if (take_right) {
                    tv[k] = vals[j];
                    tk[k++] = keys[j++];
                } else {
                    tv[k] = vals[i];
                    tk[k++] = keys[i++];
                }
            }
            while (i < mid) {
                tv[k] = vals[i];
                tk[k++] = keys[i++];
            }
            while (j < hi) {
                tv[k] = vals[j];
                tk[k++] = keys[j++];
            }
        }
        memcpy(vals, tv, n * sizeof(*tv));
        memcpy(keys, tk, n * sizeof(*tk));
    }
}
