/* Shared helpers of the tools unit tests: running a parser over a text cut into pieces, and
 * assembling its deltas the way the OpenAI SDK does (a delta with an id starts call `index`,
 * later ones add to its arguments). */
#ifndef SLUICE_TESTS_TOOLS_TEST_UTIL_H
#define SLUICE_TESTS_TOOLS_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/tools/tools.h"

#define TT_MAX_CALLS 16

struct tt_result {
    struct strbuf content;
    int n_calls;
    char *id[TT_MAX_CALLS];
    char *name[TT_MAX_CALLS];
    struct strbuf args[TT_MAX_CALLS];
};

static inline void tt_result_free(struct tt_result *r)
{
    strbuf_free(&r->content);
    for (int i = 0; i < r->n_calls; i++) {
        free(r->id[i]);
        free(r->name[i]);
        strbuf_free(&r->args[i]);
    }
    memset(r, 0, sizeof *r);
}

/* Adds one push's output to r, checking the deltas' shape on the way. */
static inline void tt_collect(struct tt_result *r, struct tool_parse_out *o)
{
    strbuf_append(&r->content, strbuf_str(&o->content), o->content.len);
    size_t i;
    json_t *d;
    json_array_foreach(o->calls, i, d) {
        int index = (int)json_integer_value(json_object_get(d, "index"));
        json_t *fn = json_object_get(d, "function");
        const char *id = json_string_value(json_object_get(d, "id"));
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        cr_assert(json_is_integer(json_object_get(d, "index")));
        cr_assert_not_null(args, "every delta carries arguments (\"\" at the start)");
        if (id) {
            cr_assert_eq(index, r->n_calls, "calls start in order");
            cr_assert_lt(r->n_calls, TT_MAX_CALLS);
            cr_assert_str_eq(json_string_value(json_object_get(d, "type")), "function");
            const char *name = json_string_value(json_object_get(fn, "name"));
            cr_assert_not_null(name, "a call's first delta names it");
            r->id[index] = strdup(id);
            r->name[index] = strdup(name);
            r->n_calls++;
        } else {
            cr_assert_eq(index, r->n_calls - 1, "arguments go to the call being written");
            cr_assert_null(json_object_get(fn, "name"));
        }
        strbuf_append(&r->args[index], args, strlen(args));
    }
    tool_parse_out_free(o);
}

/* Runs a parser over text in pieces: cuts[] are the offsets where a piece ends (n_cuts of
 * them, ascending), the rest is the last piece. */
static inline void tt_run_cuts(enum tool_family f, const json_t *names, bool forced, const char *text,
                               const size_t *cuts, size_t n_cuts, struct tt_result *r)
{
    memset(r, 0, sizeof *r);
    struct tool_parser *p = tool_parser_new(f, names, forced);
    cr_assert_not_null(p);
    size_t len = strlen(text), from = 0;
    for (size_t k = 0; k <= n_cuts; k++) {
        size_t to = k < n_cuts ? cuts[k] : len;
        struct tool_parse_out o = {0};
        cr_assert_eq(tool_parser_push(p, text + from, to - from, &o), 0);
        tt_collect(r, &o);
        from = to;
    }
    struct tool_parse_out o = {0};
    cr_assert_eq(tool_parser_finish(p, &o), 0);
    tt_collect(r, &o);
    cr_assert_eq(tool_parser_calls(p), r->n_calls);
    tool_parser_free(p);
}

static inline void tt_run(enum tool_family f, const json_t *names, bool forced, const char *text, size_t piece,
                          struct tt_result *r)
{
    size_t len = strlen(text), n = 0;
    size_t *cuts = calloc(len + 1, sizeof *cuts);
    for (size_t at = piece; piece && at < len; at += piece) cuts[n++] = at;
    tt_run_cuts(f, names, forced, text, cuts, n, r);
    free(cuts);
}

static inline void tt_assert_same(const struct tt_result *a, const struct tt_result *b, const char *what)
{
    cr_assert_str_eq(strbuf_str(&a->content), strbuf_str(&b->content), "%s: content", what);
    cr_assert_eq(a->n_calls, b->n_calls, "%s: calls", what);
    for (int i = 0; i < a->n_calls; i++) {
        cr_assert_str_eq(a->name[i], b->name[i], "%s: call %d's name", what, i);
        cr_assert_str_eq(strbuf_str(&a->args[i]), strbuf_str(&b->args[i]), "%s: call %d's arguments", what, i);
    }
}

#endif
