#include "worker/api/gen_output.h"

#include <stdlib.h>
#include <string.h>

struct gen_output {
    struct reasoning_parser *reasoning;
    struct tool_parser *tools;
    struct strbuf content; /* the reasoning parser's content, before the tool parser */
};

void gen_output_piece_free(struct gen_output_piece *p)
{
    strbuf_free(&p->content);
    strbuf_free(&p->reasoning);
    json_decref(p->tool_calls);
    p->tool_calls = NULL;
}

struct gen_output *gen_output_new(const struct gen_output_opts *o, bool *failed)
{
    *failed = false;
    if (!o->tools && !o->reasoning) return NULL;
    struct gen_output *g = calloc(1, sizeof *g);
    if (!g) goto fail;
    if (o->reasoning && !(g->reasoning = reasoning_parser_new(o->reasoning_from_start))) goto fail;
    if (o->tools && !(g->tools = tool_parser_new(o->tool_family, o->tool_names, o->tools_forced))) goto fail;
    return g;
fail:
    gen_output_free(g);
    *failed = true;
    return NULL;
}

void gen_output_free(struct gen_output *g)
{
    if (!g) return;
    reasoning_parser_free(g->reasoning);
    tool_parser_free(g->tools);
    strbuf_free(&g->content);
    free(g);
}

int gen_output_push(struct gen_output *g, const char *text, size_t len, bool final, struct gen_output_piece *out)
{
    const char *content = text;
    size_t content_len = len;
    int rc = 0;
    if (g->reasoning) {
        strbuf_clear(&g->content);
        rc |= reasoning_parser_push(g->reasoning, text, len, &out->reasoning, &g->content);
        if (final) rc |= reasoning_parser_finish(g->reasoning, &out->reasoning, &g->content);
        content = strbuf_str(&g->content);
        content_len = g->content.len;
    }
    if (!g->tools) return strbuf_append(&out->content, content, content_len) < 0 || rc ? -1 : 0;
    struct tool_parse_out t = {0};
    rc |= tool_parser_push(g->tools, content, content_len, &t);
    if (final) rc |= tool_parser_finish(g->tools, &t);
    if (strbuf_append(&out->content, strbuf_str(&t.content), t.content.len) < 0) rc = -1;
    if (!out->tool_calls) {
        out->tool_calls = t.calls;
        t.calls = NULL;
    } else if (t.calls && json_array_extend(out->tool_calls, t.calls) != 0) {
        rc = -1;
    }
    tool_parse_out_free(&t);
    return rc ? -1 : 0;
}

int gen_output_calls(const struct gen_output *g)
{
    return g && g->tools ? tool_parser_calls(g->tools) : 0;
}
