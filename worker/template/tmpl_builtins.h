/* Shared by the builtins (filters, tests, methods, globals): argument binding and the helpers
 * more than one of them needs. */
#ifndef SLUICE_WORKER_TEMPLATE_TMPL_BUILTINS_H
#define SLUICE_WORKER_TEMPLATE_TMPL_BUILTINS_H

#include "worker/template/tmpl.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Declares `struct tv out[]` holding the arguments bound to the named parameters. */
#define BIND(what, out, ...)                                                                   \
    static const char *const params_[] = {__VA_ARGS__};                                        \
    struct tv out[COUNT(params_)];                                                             \
    targs_bind(c, a, what, params_, COUNT(params_), out)

static inline bool targ_given(struct tv v) { return v.t != TV_UNDEF; }
/* The argument as a string, an integer, or a default; each fails naming `what` otherwise. */
struct tv targ_str(struct rctx *c, struct tv v, const char *what);
const char *targ_cstr(struct rctx *c, struct tv v, const char *what);  /* NUL-terminated */
int64_t targ_int(struct rctx *c, struct tv v, const char *what);
int64_t targ_opt_int(struct rctx *c, struct tv v, int64_t dflt, const char *what);
/* v.a.b.0 for an attribute path "a.b.0" (map, selectattr, sort, join...). */
struct tv tmpl_get_path(struct rctx *c, struct tv v, struct tv path);
struct tv tmpl_lower_if_str(struct rctx *c, struct tv v, bool case_sensitive);
/* Stable sort of vals by keys (Python ordering). */
void tmpl_sort_by(struct rctx *c, struct tv *vals, struct tv *keys, size_t n, bool reverse);
/* Runs test `name` (tmpl_tests.c). */
bool tmpl_test_call(struct rctx *c, const char *name, struct tv in, const struct tv *args, size_t nargs);
/* The |items filter, also dict.items() (tmpl_filters.c). */
struct tv tmpl_items_filter(struct rctx *c, struct tv in, const struct targs *a);

#endif
