/* The public face of the template interpreter: compile once, render from any thread. */
#include <stdio.h>
#include <stdlib.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl.h"

struct chat_template {
    struct tmpl_arena arena;  /* owns the tree; read-only once compiled */
    struct node *root;
};

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (errlen) snprintf(err, errlen, "%s", msg);
}

int chat_template_compile(struct chat_template **out, const char *source, char *err, size_t errlen)
{
    *out = NULL;
    if (!source) {
        set_err(err, errlen, "no template source");
        return CHAT_TEMPLATE_EARG;
    }
    struct chat_template *t = calloc(1, sizeof(*t));
    if (!t) {
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ENOMEM;
    }
    if (errlen) err[0] = 0;
    t->root = tmpl_parse(&t->arena, source, err, errlen);
    if (!t->root) {
        chat_template_free(t);
        return CHAT_TEMPLATE_ESYNTAX;
    }
    *out = t;
    return 0;
}

void chat_template_free(struct chat_template *t)
{
    if (!t) return;
    tmpl_arena_free(&t->arena);
    free(t);
}

/* What a render starts from: an object of variables, or the chat variables one by one. */
struct render_input {
    const json_t *vars;
    const json_t *messages, *tools, *extra;
    bool add_generation_prompt;
    const char *bos, *eos;
};

static void set_var(struct rctx *c, const char *name, struct tv v)
{
    tv_dict_set(c, &c->root->vars, name, strlen(name), v);
}

/* Inputs are converted without copying their strings and without touching their reference
 * counts, so several threads may render from the same JSON at once. */
static void bind_inputs(struct rctx *c, const struct render_input *in)
{
    const char *k;
    json_t *v;
    if (in->vars) json_object_foreach((json_t *)in->vars, k, v) set_var(c, k, tv_from_json(c, v));
    if (!in->messages) return;
    set_var(c, "messages", tv_from_json(c, in->messages));
    set_var(c, "tools", in->tools ? tv_from_json(c, in->tools) : tv_none());
    set_var(c, "add_generation_prompt", tv_bool(in->add_generation_prompt));
    set_var(c, "bos_token", in->bos ? tv_strref(in->bos, strlen(in->bos)) : tv_strref("", 0));
    set_var(c, "eos_token", in->eos ? tv_strref(in->eos, strlen(in->eos)) : tv_strref("", 0));
    if (in->extra) json_object_foreach((json_t *)in->extra, k, v) set_var(c, k, tv_from_json(c, v));
}

static int render(const struct chat_template *t, const struct render_input *in, char **out, size_t *out_len,
                  char *err, size_t errlen)
{
    struct rctx *c = calloc(1, sizeof(*c));
    if (!c) {
        set_err(err, errlen, "out of memory");
        return CHAT_TEMPLATE_ENOMEM;
    }
    c->arena.limit = CHAT_TEMPLATE_MAX_MEMORY;
    c->err = err;
    c->errlen = errlen;
    if (errlen) err[0] = 0;
    int rc = 0;
    if (setjmp(c->jb)) {
        rc = c->status ? c->status : CHAT_TEMPLATE_ERENDER;
        goto done;
    }
    c->root = tmpl_alloc(c, sizeof(*c->root));
    memset(c->root, 0, sizeof(*c->root));
    c->frame = c->root;
    bind_inputs(c, in);
    struct tbuf *b = tmpl_alloc(c, sizeof(*b));
    memset(b, 0, sizeof(*b));
    c->out = b;
    tbuf_put(c, b, "", 0);
    tmpl_render_body(c, t->root);
    *out = malloc(b->n + 1);
    if (!*out) {
        set_err(err, errlen, "out of memory");
        rc = CHAT_TEMPLATE_ENOMEM;
        goto done;
    }
    memcpy(*out, b->p, b->n + 1);
    if (out_len) *out_len = b->n;
done:
    tmpl_arena_free(&c->arena);
    free(c);
    return rc;
}

int chat_template_render_vars(const struct chat_template *t, const json_t *vars, char **out, size_t *out_len,
                              char *err, size_t errlen)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || (vars && !json_is_object(vars))) {
        set_err(err, errlen, "variables must be a JSON object");
        return CHAT_TEMPLATE_EARG;
    }
    struct render_input in = {.vars = vars};
    return render(t, &in, out, out_len, err, errlen);
}

int chat_template_render(const struct chat_template *t, const json_t *messages, const json_t *tools,
                         bool add_generation_prompt, const char *bos_token, const char *eos_token,
                         const json_t *extra_vars, char **out, size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !json_is_array(messages)) {
        set_err(err, errlen, "messages must be a JSON array");
        return CHAT_TEMPLATE_EARG;
    }
    if (tools && !json_is_array(tools) && !json_is_null(tools)) {
        set_err(err, errlen, "tools must be a JSON array");
        return CHAT_TEMPLATE_EARG;
    }
    if (extra_vars && !json_is_object(extra_vars)) {
        set_err(err, errlen, "extra variables must be a JSON object");
        return CHAT_TEMPLATE_EARG;
    }
    struct render_input in = {.messages = messages, .tools = tools, .extra = extra_vars,
                              .add_generation_prompt = add_generation_prompt, .bos = bos_token, .eos = eos_token};
    return render(t, &in, out, out_len, err, errlen);
}
