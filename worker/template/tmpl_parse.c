/* Parser: tokens to syntax tree, following jinja2's grammar and operator precedence. */
#include <stdio.h>
#include <stdlib.h>

#include "worker/template/chat_template.h"
#include "worker/template/tmpl_lex.h"

static struct tok *cur(struct pctx *c) { return &c->toks[c->p]; }
static struct tok *next_tok(struct pctx *c)
{
    struct tok *t = &c->toks[c->p];
    if (t->type != K_EOF) c->p++;
    return t;
}
static bool is_op(struct pctx *c, const char *op) { struct tok *t = cur(c); return t->type == K_OP && strcmp(t->s, op) == 0; }
static bool is_name(struct pctx *c, const char *name) { struct tok *t = cur(c); return t->type == K_NAME && strcmp(t->s, name) == 0; }
static bool skip_op(struct pctx *c, const char *op) { if (!is_op(c, op)) return false; c->p++; return true; }
static bool skip_name(struct pctx *c, const char *name) { if (!is_name(c, name)) return false; c->p++; return true; }

static const char *describe(struct tok *t)
{
    switch (t->type) {
    case K_DATA: return "template text";
    case K_VAR_BEGIN: return "'{{'";
    case K_VAR_END: return "'}}'";
    case K_BLOCK_BEGIN: return "'{%'";
    case K_BLOCK_END: return "'%}'";
    case K_NAME: return t->s;
    case K_STRING: return "a string";
    case K_INT: return "an integer";
    case K_FLOAT: return "a float";
    case K_OP: return t->s;
    default: return "end of template";
    }
}

static void expect_op(struct pctx *c, const char *op)
{
    if (!skip_op(c, op)) tmpl_pfail(c, cur(c)->line, "expected '%s', got '%s'", op, describe(cur(c)));
}

static const char *expect_name(struct pctx *c)
{
    struct tok *t = cur(c);
    if (t->type != K_NAME) tmpl_pfail(c, t->line, "expected a name, got '%s'", describe(t));
    c->p++;
    return t->s;
}

static void expect_block_end(struct pctx *c)
{
    struct tok *t = cur(c);
    if (t->type != K_BLOCK_END) tmpl_pfail(c, t->line, "expected end of statement '%%}', got '%s'", describe(t));
    c->p++;
}

static struct node *mk(struct pctx *c, int kind, int line)
{
    struct node *n = tmpl_palloc(c, sizeof(*n));
    n->kind = (uint8_t)kind;
    n->line = line;
    return n;
}

/* A growable node list in the arena. */
struct nlist { struct node **v; size_t n, cap; };
static void nl_push(struct pctx *c, struct nlist *l, struct node *x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct node **v = tmpl_palloc(c, cap * sizeof(*v));
        if (l->n) memcpy(v, l->v, l->n * sizeof(*v));
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}
struct slist { const char **v; size_t n, cap; };
static void sl_push(struct pctx *c, struct slist *l, const char *x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        const char **v = tmpl_palloc(c, cap * sizeof(*v));
        if (l->n) memcpy(v, l->v, l->n * sizeof(*v));
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static struct node *parse_expr(struct pctx *c, bool condexpr);
static struct node *parse_unary(struct pctx *c, bool with_filter);
static struct node *parse_or(struct pctx *c);

static void enter(struct pctx *c)
{
    if (++c->depth > CHAT_TEMPLATE_MAX_DEPTH) tmpl_pfail(c, cur(c)->line, "expression nested too deep");
}

/* Arguments of a call, filter or test: positional ones, then name=value. */
static void parse_call_args(struct pctx *c, struct node *n)
{
    struct nlist pos = {0}, kwv = {0};
    struct slist kwn = {0};
    expect_op(c, "(");
    while (!is_op(c, ")")) {
        if (pos.n + kwv.n) expect_op(c, ",");
        if (is_op(c, ")")) break;
        if (is_op(c, "*") || is_op(c, "**")) tmpl_pfail(c, cur(c)->line, "*args and **kwargs in calls are not supported");
        if (cur(c)->type == K_NAME && c->toks[c->p + 1].type == K_OP && strcmp(c->toks[c->p + 1].s, "=") == 0) {
            sl_push(c, &kwn, expect_name(c));
            c->p++;
            nl_push(c, &kwv, parse_expr(c, true));
        } else {
            if (kwv.n) tmpl_pfail(c, cur(c)->line, "positional argument after keyword argument");
            nl_push(c, &pos, parse_expr(c, true));
        }
    }
    c->p++;
    n->items = pos.v;
    n->nitems = pos.n;
    n->names = kwn.v;
    n->nnames = kwn.n;
    n->items2 = kwv.v;
    n->nitems2 = kwv.n;
}

static const char *dotted_name(struct pctx *c)
{
    const char *name = expect_name(c);
    while (is_op(c, ".") && c->toks[c->p + 1].type == K_NAME) {
        c->p++;
        const char *part = expect_name(c);
        size_t n = strlen(name) + strlen(part) + 2;
        char *s = tmpl_palloc(c, n);
        snprintf(s, n, "%s.%s", name, part);
        name = s;
    }
    return name;
}

static struct node *parse_filter(struct pctx *c, struct node *in)
{
    int line = cur(c)->line;
    const char *name = dotted_name(c);
    if (!tmpl_filter_exists(name)) tmpl_pfail(c, line, "unknown filter '%s'", name);
    struct node *n = mk(c, E_FILTER, line);
    n->a = in;
    n->s = name;
    if (is_op(c, "(")) parse_call_args(c, n);
    return n;
}

static struct node *parse_primary(struct pctx *c);
static struct node *parse_postfix(struct pctx *c, struct node *n);

static struct node *parse_test(struct pctx *c, struct node *in)
{
    int line = cur(c)->line;
    bool negated = skip_name(c, "not");
    const char *name = dotted_name(c);
    if (!tmpl_test_exists(name)) tmpl_pfail(c, line, "unknown test '%s'", name);
    struct node *n = mk(c, E_TEST, line);
    n->a = in;
    n->s = name;
    n->op = negated;
    struct tok *t = cur(c);
    if (is_op(c, "(")) {
        parse_call_args(c, n);
    } else if ((t->type == K_NAME && strcmp(t->s, "else") && strcmp(t->s, "or") && strcmp(t->s, "and")) ||
               t->type == K_STRING || t->type == K_INT || t->type == K_FLOAT || is_op(c, "[") || is_op(c, "{")) {
        if (is_name(c, "is")) tmpl_pfail(c, t->line, "cannot chain multiple tests with 'is'");
        struct node **arg = tmpl_palloc(c, sizeof(*arg));
        arg[0] = parse_postfix(c, parse_primary(c));
        n->items = arg;
        n->nitems = 1;
    }
    return n;
}

static struct node *parse_filter_expr(struct pctx *c, struct node *n)
{
    for (;;) {
        if (skip_op(c, "|")) n = parse_filter(c, n);
        else if (skip_name(c, "is")) n = parse_test(c, n);
        else if (is_op(c, "(")) {
            struct node *call = mk(c, E_CALL, cur(c)->line);
            call->a = n;
            parse_call_args(c, call);
            n = call;
        } else return n;
    }
}

static struct node *parse_postfix(struct pctx *c, struct node *n)
{
    for (;;) {
        int line = cur(c)->line;
        if (skip_op(c, ".")) {
            struct tok *t = next_tok(c);
            if (t->type == K_NAME) {
                struct node *a = mk(c, E_ATTR, line);
                a->a = n;
                a->s = t->s;
                a->sn = t->n;
                n = a;
            } else if (t->type == K_INT) {
                struct node *k = mk(c, E_CONST, line);
                k->k = tv_int(t->i);
                struct node *a = mk(c, E_ITEM, line);
                a->a = n;
                a->b = k;
                n = a;
            } else {
                tmpl_pfail(c, t->line, "expected an attribute name after '.', got '%s'", describe(t));
            }
        } else if (skip_op(c, "[")) {
            struct node *parts[3] = {NULL, NULL, NULL};
            bool slice = false;
            for (int k = 0; k < 3; k++) {
                if (!is_op(c, ":") && !is_op(c, "]")) parts[k] = parse_expr(c, true);
                if (k < 2 && skip_op(c, ":")) slice = true;
                else break;
            }
            expect_op(c, "]");
            if (slice) {
                struct node *s = mk(c, E_SLICE, line);
                s->a = n;
                s->items = tmpl_palloc(c, 3 * sizeof(struct node *));
                memcpy(s->items, parts, sizeof(parts));
                s->nitems = 3;
                n = s;
            } else {
                if (!parts[0]) tmpl_pfail(c, line, "empty subscript");
                struct node *s = mk(c, E_ITEM, line);
                s->a = n;
                s->b = parts[0];
                n = s;
            }
        } else if (is_op(c, "(")) {
            struct node *call = mk(c, E_CALL, line);
            call->a = n;
            parse_call_args(c, call);
            n = call;
        } else {
            return n;
        }
    }
}

static struct node *parse_primary(struct pctx *c)
{
    struct tok *t = cur(c);
    int line = t->line;
    enter(c);
    struct node *n;
    if (t->type == K_NAME) {
        c->p++;
        n = mk(c, E_CONST, line);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->k = tv_bool(true);
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->k = tv_bool(false);
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->k = tv_none();
        else {
            n->kind = E_NAME;
            n->s = t->s;
            n->sn = t->n;
        }
    } else if (t->type == K_STRING) {
        /* Adjacent literals concatenate, as in Python. */
        size_t total = 0, i = c->p;
        for (; c->toks[i].type == K_STRING; i++) total += c->toks[i].n;
        char *s = tmpl_palloc(c, total + 1);
        size_t k = 0;
        for (; c->toks[c->p].type == K_STRING; c->p++) {
            memcpy(s + k, c->toks[c->p].s, c->toks[c->p].n);
            k += c->toks[c->p].n;
        }
        n = mk(c, E_CONST, line);
        n->k = tv_strref(s, total);
    } else if (t->type == K_INT || t->type == K_FLOAT) {
        c->p++;
        n = mk(c, E_CONST, line);
        n->k = t->type == K_INT ? tv_int(t->i) : tv_float(t->f);
    } else if (skip_op(c, "(")) {
        struct nlist items = {0};
        bool comma = false;
        while (!is_op(c, ")")) {
            if (items.n) {
                expect_op(c, ",");
                comma = true;
                if (is_op(c, ")")) break;
            }
            nl_push(c, &items, parse_expr(c, true));
        }
        c->p++;
        if (items.n == 1 && !comma) {
            n = items.v[0];
        } else {
            n = mk(c, E_TUPLE, line);
            n->items = items.v;
            n->nitems = items.n;
        }
    } else if (skip_op(c, "[")) {
        struct nlist items = {0};
        while (!is_op(c, "]")) {
            if (items.n) {
                expect_op(c, ",");
                if (is_op(c, "]")) break;
            }
            nl_push(c, &items, parse_expr(c, true));
        }
        c->p++;
        n = mk(c, E_LIST, line);
        n->items = items.v;
        n->nitems = items.n;
    } else if (skip_op(c, "{")) {
        struct nlist keys = {0}, vals = {0};
        while (!is_op(c, "}")) {
            if (keys.n) {
                expect_op(c, ",");
                if (is_op(c, "}")) break;
            }
            nl_push(c, &keys, parse_expr(c, true));
            expect_op(c, ":");
            nl_push(c, &vals, parse_expr(c, true));
        }
        c->p++;
        n = mk(c, E_DICT, line);
        n->items = keys.v;
        n->nitems = keys.n;
        n->items2 = vals.v;
        n->nitems2 = vals.n;
    } else {
        tmpl_pfail(c, line, "unexpected '%s'", describe(t));
    }
    c->depth--;
    return n;
}

static struct node *parse_unary(struct pctx *c, bool with_filter)
{
    int line = cur(c)->line;
    struct node *n;
    enter(c);
    if (skip_op(c, "-")) {
        n = mk(c, E_NEG, line);
        n->a = parse_unary(c, false);
    } else if (skip_op(c, "+")) {
        n = mk(c, E_POS, line);
        n->a = parse_unary(c, false);
    } else {
        n = parse_primary(c);
    }
    n = parse_postfix(c, n);
    if (with_filter) n = parse_filter_expr(c, n);
    c->depth--;
    return n;
}

static struct node *binary(struct pctx *c, int op, struct node *a, struct node *b, int line)
{
    struct node *n = mk(c, E_BIN, line);
    n->op = (uint8_t)op;
    n->a = a;
    n->b = b;
    return n;
}

static struct node *parse_pow(struct pctx *c)
{
    struct node *n = parse_unary(c, true);
    while (is_op(c, "**")) {
        int line = next_tok(c)->line;
        n = binary(c, OP_POW, n, parse_unary(c, true), line);
    }
    return n;
}

static struct node *parse_math2(struct pctx *c)
{
    struct node *n = parse_pow(c);
    for (;;) {
        int op = is_op(c, "*") ? OP_MUL : is_op(c, "/") ? OP_DIV : is_op(c, "//") ? OP_FLOORDIV : is_op(c, "%") ? OP_MOD : 0;
        if (!op) return n;
        int line = next_tok(c)->line;
        n = binary(c, op, n, parse_pow(c), line);
    }
}

static struct node *parse_concat(struct pctx *c)
{
    struct node *n = parse_math2(c);
    while (is_op(c, "~")) {
        int line = next_tok(c)->line;
        n = binary(c, OP_CONCAT, n, parse_math2(c), line);
    }
    return n;
}

static struct node *parse_math1(struct pctx *c)
{
    struct node *n = parse_concat(c);
    for (;;) {
        int op = is_op(c, "+") ? OP_ADD : is_op(c, "-") ? OP_SUB : 0;
        if (!op) return n;
        int line = next_tok(c)->line;
        n = binary(c, op, n, parse_concat(c), line);
    }
}

static struct node *parse_compare(struct pctx *c)
{
    struct node *left = parse_math1(c), *result = NULL;
    for (;;) {
        int line = cur(c)->line, op = 0;
        if (is_op(c, "==")) op = OP_EQ;
        else if (is_op(c, "!=")) op = OP_NE;
        else if (is_op(c, "<")) op = OP_LT;
        else if (is_op(c, "<=")) op = OP_LE;
        else if (is_op(c, ">")) op = OP_GT;
        else if (is_op(c, ">=")) op = OP_GE;
        else if (is_name(c, "in")) op = OP_IN;
        else if (is_name(c, "not") && c->toks[c->p + 1].type == K_NAME && !strcmp(c->toks[c->p + 1].s, "in")) {
            op = OP_NOTIN;
            c->p++;
        }
        if (!op) return result ? result : left;
        c->p++;
        struct node *right = parse_math1(c);
        struct node *cmp = binary(c, op, left, right, line);
        /* a < b < c means a < b and b < c. */
        if (result) {
            struct node *both = mk(c, E_AND, line);
            both->a = result;
            both->b = cmp;
            result = both;
        } else {
            result = cmp;
        }
        left = right;
    }
}

static struct node *parse_not(struct pctx *c)
{
    if (is_name(c, "not")) {
        int line = next_tok(c)->line;
        enter(c);
        struct node *n = mk(c, E_NOT, line);
        n->a = parse_not(c);
        c->depth--;
        return n;
    }
    return parse_compare(c);
}

static struct node *parse_and(struct pctx *c)
{
    struct node *n = parse_not(c);
    while (is_name(c, "and")) {
        struct node *x = mk(c, E_AND, next_tok(c)->line);
        x->a = n;
        x->b = parse_not(c);
        n = x;
    }
    return n;
}

static struct node *parse_or(struct pctx *c)
{
    struct node *n = parse_and(c);
    while (is_name(c, "or")) {
        struct node *x = mk(c, E_OR, next_tok(c)->line);
        x->a = n;
        x->b = parse_and(c);
        n = x;
    }
    return n;
}

static struct node *parse_expr(struct pctx *c, bool condexpr)
{
    enter(c);
    struct node *n = parse_or(c);
    while (condexpr && is_name(c, "if")) {
        struct node *x = mk(c, E_COND, next_tok(c)->line);
        x->a = parse_or(c);
        x->b = n;
        if (skip_name(c, "else")) x->c = parse_expr(c, true);
        n = x;
    }
    c->depth--;
    return n;
}

/* `a` or `a, b, ...` (a tuple without parentheses), as in {{ }}, set and for. */
static struct node *parse_tuple(struct pctx *c, bool condexpr)
{
    int line = cur(c)->line;
    struct node *first = parse_expr(c, condexpr);
    if (!is_op(c, ",")) return first;
    struct nlist items = {0};
    nl_push(c, &items, first);
    while (skip_op(c, ",")) {
        struct tok *t = cur(c);
        if (t->type == K_BLOCK_END || t->type == K_VAR_END || is_name(c, "if")) break;
        nl_push(c, &items, parse_expr(c, condexpr));
    }
    struct node *n = mk(c, E_TUPLE, line);
    n->items = items.v;
    n->nitems = items.n;
    return n;
}

/* --- statements -------------------------------------------------------------------------- */
static struct node *parse_body(struct pctx *c, const char *const *stops, const char *opener, int open_line);

static void parse_targets(struct pctx *c, struct slist *names)
{
    bool paren = skip_op(c, "(");
    do {
        sl_push(c, names, expect_name(c));
    } while (skip_op(c, ",") && cur(c)->type == K_NAME);
    if (paren) expect_op(c, ")");
}

static struct node *parse_for(struct pctx *c, int line)
{
    struct node *n = mk(c, N_FOR, line);
    struct slist names = {0};
    parse_targets(c, &names);
    n->names = names.v;
    n->nnames = names.n;
    if (!skip_name(c, "in")) tmpl_pfail(c, cur(c)->line, "expected 'in' in for loop, got '%s'", describe(cur(c)));
    n->a = parse_tuple(c, false);
    if (skip_name(c, "if")) n->b = parse_expr(c, true);
    if (is_name(c, "recursive")) tmpl_pfail(c, cur(c)->line, "recursive for loops are not supported");
    expect_block_end(c);
    c->loop_depth++;
    static const char *const stops[] = {"endfor", "else", NULL};
    struct node *body = parse_body(c, stops, "for", line);
    c->loop_depth--;
    n->items = body->items;
    n->nitems = body->nitems;
    if (!strcmp(body->s, "else")) {
        expect_block_end(c);
        static const char *const stops2[] = {"endfor", NULL};
        struct node *els = parse_body(c, stops2, "for", line);
        n->items2 = els->items;
        n->nitems2 = els->nitems;
    }
    expect_block_end(c);
    return n;
}

static struct node *parse_if(struct pctx *c, int line)
{
    struct node *n = mk(c, N_IF, line);
    n->a = parse_tuple(c, false);
    expect_block_end(c);
    static const char *const stops[] = {"elif", "else", "endif", NULL};
    struct node *body = parse_body(c, stops, "if", line);
    n->items = body->items;
    n->nitems = body->nitems;
    if (!strcmp(body->s, "elif")) {
        struct node **e = tmpl_palloc(c, sizeof(*e));
        e[0] = parse_if(c, cur(c)->line);
        n->items2 = e;
        n->nitems2 = 1;
        return n;  /* the nested if consumed endif */
    }
    if (!strcmp(body->s, "else")) {
        expect_block_end(c);
        static const char *const stops2[] = {"endif", NULL};
        struct node *els = parse_body(c, stops2, "if", line);
        n->items2 = els->items;
        n->nitems2 = els->nitems;
    }
    expect_block_end(c);
    return n;
}

static struct node *parse_set(struct pctx *c, int line)
{
    struct slist names = {0};
    const char *first = expect_name(c);
    if (skip_op(c, ".")) {
        struct node *n = mk(c, N_SET_ATTR, line);
        n->s = first;
        n->names = tmpl_palloc(c, sizeof(char *));
        n->names[0] = expect_name(c);
        n->nnames = 1;
        expect_op(c, "=");
        n->a = parse_tuple(c, true);
        expect_block_end(c);
        return n;
    }
    sl_push(c, &names, first);
    while (skip_op(c, ",")) sl_push(c, &names, expect_name(c));
    if (skip_op(c, "=")) {
        struct node *n = mk(c, N_SET, line);
        n->names = names.v;
        n->nnames = names.n;
        n->a = parse_tuple(c, true);
        expect_block_end(c);
        return n;
    }
    if (names.n != 1) tmpl_pfail(c, line, "a block set assigns one name");
    struct node *n = mk(c, N_SET_BLOCK, line);
    n->names = names.v;
    n->nnames = 1;
    struct nlist filters = {0};
    while (skip_op(c, "|")) nl_push(c, &filters, parse_filter(c, NULL));
    n->items2 = filters.v;
    n->nitems2 = filters.n;
    expect_block_end(c);
    static const char *const stops[] = {"endset", NULL};
    struct node *body = parse_body(c, stops, "set", line);
    n->items = body->items;
    n->nitems = body->nitems;
    expect_block_end(c);
    return n;
}

/* Macro parameters: (a, b=default, ...). */
static void parse_params(struct pctx *c, struct node *n)
{
    struct slist names = {0};
    struct nlist defs = {0};
    bool any_default = false;
    expect_op(c, "(");
    while (!is_op(c, ")")) {
        if (names.n) expect_op(c, ",");
        if (is_op(c, ")")) break;
        sl_push(c, &names, expect_name(c));
        if (skip_op(c, "=")) {
            nl_push(c, &defs, parse_expr(c, true));
            any_default = true;
        } else {
            if (any_default) tmpl_pfail(c, cur(c)->line, "non-default parameter follows default parameter");
            nl_push(c, &defs, NULL);
        }
    }
    c->p++;
    n->names = names.v;
    n->nnames = names.n;
    n->items2 = defs.v;
    n->nitems2 = defs.n;
}

static struct node *parse_macro(struct pctx *c, int line)
{
    struct node *n = mk(c, N_MACRO, line);
    n->s = expect_name(c);
    parse_params(c, n);
    expect_block_end(c);
    int saved = c->loop_depth;
    c->loop_depth = 0;
    static const char *const stops[] = {"endmacro", NULL};
    struct node *body = parse_body(c, stops, "macro", line);
    c->loop_depth = saved;
    n->items = body->items;
    n->nitems = body->nitems;
    if (cur(c)->type == K_NAME) c->p++;  /* {% endmacro name %} */
    expect_block_end(c);
    return n;
}

static struct node *parse_call_block(struct pctx *c, int line)
{
    struct node *n = mk(c, N_CALL_BLOCK, line);
    if (is_op(c, "(")) parse_params(c, n);
    n->a = parse_expr(c, true);
    if (n->a->kind != E_CALL) tmpl_pfail(c, line, "expected a macro call in {%% call %%}");
    expect_block_end(c);
    int saved = c->loop_depth;
    c->loop_depth = 0;
    static const char *const stops[] = {"endcall", NULL};
    struct node *body = parse_body(c, stops, "call", line);
    c->loop_depth = saved;
    n->items = body->items;
    n->nitems = body->nitems;
    expect_block_end(c);
    return n;
}

static struct node *parse_filter_block(struct pctx *c, int line)
{
    struct node *n = mk(c, N_FILTER_BLOCK, line);
    struct nlist filters = {0};
    do {
        nl_push(c, &filters, parse_filter(c, NULL));
    } while (skip_op(c, "|"));
    n->items2 = filters.v;
    n->nitems2 = filters.n;
    expect_block_end(c);
    static const char *const stops[] = {"endfilter", NULL};
    struct node *body = parse_body(c, stops, "filter", line);
    n->items = body->items;
    n->nitems = body->nitems;
    expect_block_end(c);
    return n;
}

static struct node *parse_statement(struct pctx *c)
{
    struct tok *t = cur(c);
    int line = t->line;
    if (t->type != K_NAME) tmpl_pfail(c, line, "expected a tag name, got '%s'", describe(t));
    c->p++;
    const char *w = t->s;
    if (!strcmp(w, "if")) return parse_if(c, line);
    if (!strcmp(w, "for")) return parse_for(c, line);
    if (!strcmp(w, "set")) return parse_set(c, line);
    if (!strcmp(w, "macro")) return parse_macro(c, line);
    if (!strcmp(w, "call")) return parse_call_block(c, line);
    if (!strcmp(w, "filter")) return parse_filter_block(c, line);
    if (!strcmp(w, "break") || !strcmp(w, "continue")) {
        if (c->loop_depth == 0) tmpl_pfail(c, line, "'%s' outside of a loop", w);
        expect_block_end(c);
        return mk(c, w[0] == 'b' ? N_BREAK : N_CONTINUE, line);
    }
    if (!strcmp(w, "with")) {
        /* {% with a = 1, b = x %}...{% endwith %}: the body gets a scope of its own. */
        struct node *n = mk(c, N_WITH, line);
        struct slist names = {0};
        struct nlist values = {0};
        while (cur(c)->type != K_BLOCK_END) {
            if (names.n) expect_op(c, ",");
            sl_push(c, &names, expect_name(c));
            expect_op(c, "=");
            nl_push(c, &values, parse_expr(c, true));
        }
        expect_block_end(c);
        static const char *const stops[] = {"endwith", NULL};
        struct node *body = parse_body(c, stops, "with", line);
        expect_block_end(c);
        n->names = names.v;
        n->nnames = names.n;
        n->items2 = values.v;
        n->nitems2 = values.n;
        n->items = body->items;
        n->nitems = body->nitems;
        return n;
    }
    if (!strcmp(w, "generation")) {
        /* transformers marks assistant text with it; rendering is the body itself. */
        expect_block_end(c);
        static const char *const stops[] = {"endgeneration", NULL};
        struct node *body = parse_body(c, stops, "generation", line);
        expect_block_end(c);
        return body;
    }
    static const char *const known[] = {"include", "extends", "import", "from", "block", "do", "autoescape",
                                        "trans", NULL};
    for (int i = 0; known[i]; i++)
        if (!strcmp(w, known[i])) tmpl_pfail(c, line, "unsupported tag '%s'", w);
    tmpl_pfail(c, line, "unknown tag '%s'", w);
}

/* Statements up to one of stops (NULL-terminated; NULL: end of template). Returns an N_BODY
 * whose s is the stop word found, the parser left just past it. */
static struct node *parse_body(struct pctx *c, const char *const *stops, const char *opener, int open_line)
{
    struct node *body = mk(c, N_BODY, cur(c)->line);
    struct nlist items = {0};
    if (++c->depth > CHAT_TEMPLATE_MAX_DEPTH) tmpl_pfail(c, cur(c)->line, "blocks nested too deep");
    for (;;) {
        struct tok *t = cur(c);
        if (t->type == K_EOF) {
            if (stops) tmpl_pfail(c, open_line, "missing {%% %s %%} for {%% %s %%}", stops[0], opener);
            body->s = "";
            break;
        }
        if (t->type == K_DATA) {
            struct node *d = mk(c, N_DATA, t->line);
            d->s = t->s;
            d->sn = t->n;
            nl_push(c, &items, d);
            c->p++;
        } else if (t->type == K_VAR_BEGIN) {
            c->p++;
            struct node *o = mk(c, N_OUTPUT, t->line);
            o->a = parse_tuple(c, true);
            if (cur(c)->type != K_VAR_END) tmpl_pfail(c, cur(c)->line, "expected '}}', got '%s'", describe(cur(c)));
            c->p++;
            nl_push(c, &items, o);
        } else if (t->type == K_BLOCK_BEGIN) {
            struct tok *w = &c->toks[c->p + 1];
            bool stop = false;
            for (int i = 0; stops && stops[i] && w->type == K_NAME; i++)
                if (!strcmp(w->s, stops[i])) {
                    body->s = stops[i];
                    stop = true;
                }
            if (stop) {
                c->p += 2;
                break;
            }
            if (w->type == K_NAME && (!strncmp(w->s, "end", 3) || !strcmp(w->s, "else") || !strcmp(w->s, "elif")))
                tmpl_pfail(c, w->line, "unexpected '%s'%s", w->s, opener ? "" : " (nothing to close)");
            c->p++;
            nl_push(c, &items, parse_statement(c));
        } else {
            tmpl_pfail(c, t->line, "unexpected '%s'", describe(t));
        }
    }
    c->depth--;
    body->items = items.v;
    body->nitems = items.n;
    return body;
}

struct node *tmpl_parse(struct tmpl_arena *a, const char *src, char *err, size_t errlen)
{
    struct pctx c = {.a = a, .err = err, .errlen = errlen, .line = 1};
    /* jinja2 reads \r\n and \r as \n and drops one trailing newline. */
    size_t n = strlen(src);
    char *s = tmpl_arena_alloc(a, n + 1);
    if (!s) {
        if (errlen) snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < n && src[i + 1] == '\n') i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k && s[k - 1] == '\n') k--;
    s[k] = 0;
    c.src = s;
    c.len = k;
    if (setjmp(c.jb)) return NULL;
    tmpl_lex(&c);
    c.line = 1;
    return parse_body(&c, NULL, NULL, 1);
}
