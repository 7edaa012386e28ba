/* Python string operations for the template builtins (tmpl_strings.c). */
#ifndef SLUICE_WORKER_TEMPLATE_TMPL_STRINGS_H
#define SLUICE_WORKER_TEMPLATE_TMPL_STRINGS_H

#include "worker/template/tmpl.h"

enum ts_case { TS_UPPER, TS_LOWER, TS_CAPITALIZE, TS_TITLE };
/* str.upper/lower/capitalize/title. */
struct tv ts_case(struct rctx *c, struct tv s, enum ts_case mode);
/* jinja2's |title filter, which splits words differently from str.title. */
struct tv ts_jinja_title(struct rctx *c, struct tv s);
/* str.strip/lstrip/rstrip; chars NULL strips whitespace. Returns a view into s. */
struct tv ts_strip(struct tv s, const struct tv *chars, bool left, bool right);
/* str.split/rsplit; sep NULL splits on whitespace runs; maxsplit < 0: no limit. */
struct tv ts_split(struct rctx *c, struct tv s, const struct tv *sep, int64_t maxsplit, bool from_right);
struct tv ts_replace(struct rctx *c, struct tv s, struct tv old, struct tv new, int64_t count);
/* str.find/rfind in code points; -1 when absent. */
int64_t ts_find(struct tv s, struct tv sub, bool from_right);
int64_t ts_count(struct tv s, struct tv sub);

#endif
