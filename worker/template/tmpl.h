/* Internals of the chat template interpreter: arena, values, syntax tree, and the pieces of
 * the evaluator shared between files. Not a public header: see chat_template.h.
 *
 * Memory: the compiler allocates the tree from the template's arena; a render allocates every
 * value from its own arena and frees it whole at the end. That is why errors may unwind with
 * longjmp (tmpl_fail): nothing outside the arena is live while the evaluator runs. */
#ifndef SLUICE_WORKER_TEMPLATE_TMPL_H
#define SLUICE_WORKER_TEMPLATE_TMPL_H

#include <jansson.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* --- arena ------------------------------------------------------------------------------- */
struct tmpl_chunk;
struct tmpl_arena {
    struct tmpl_chunk *head;
    size_t used;   /* bytes handed out, all chunks */
    size_t limit;  /* 0: none */
};
/* Returns NULL when out of memory or over the limit. */
void *tmpl_arena_alloc(struct tmpl_arena *a, size_t n);
void tmpl_arena_free(struct tmpl_arena *a);

/* --- values ------------------------------------------------------------------------------ */
enum tv_type {
    TV_UNDEF = 0, TV_NONE, TV_BOOL, TV_INT, TV_FLOAT, TV_STR, TV_LIST, TV_DICT,
    TV_NS,      /* namespace(): a dict whose attributes may be assigned */
    TV_MACRO,   /* a macro, or `caller` inside a call block */
    TV_FUNC,    /* a global function: range, namespace, raise_exception... */
    TV_METHOD,  /* a bound method: "abc".upper, d.items, loop.cycle */
    TV_LOOP,    /* the loop variable of a for */
};

struct tv {
    uint8_t t;
    uint8_t from;  /* TV_UNDEF: 0 for an unknown name, else 1 + the type whose attribute was missing */
    uint32_t n;  /* TV_STR/TV_UNDEF: byte length */
    union {
        bool b;
        int64_t i;
        double f;
        const char *s;          /* TV_STR; TV_UNDEF: the name, for messages (may be NULL) */
        struct tlist *l;
        struct tdict *d;        /* TV_DICT, TV_NS */
        struct tmacro *m;
        const struct tfunc *fn;
        struct tmethod *me;
        struct tloop *lp;
    };
};

struct tlist { struct tv *v; size_t n, cap; bool tuple; };
struct tkv { const char *k; uint32_t kn; struct tv v; };
struct tdict { struct tkv *kv; size_t n, cap; };
struct tmethod { struct tv self; const char *name; };
struct tloop { struct tv *items; size_t n, i; };

/* --- syntax tree ------------------------------------------------------------------------- */
enum node_kind {
    /* statements */
    N_DATA, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_ATTR, N_SET_BLOCK, N_MACRO, N_CALL_BLOCK,
    N_FILTER_BLOCK, N_BREAK, N_CONTINUE, N_BODY, N_WITH,
    /* expressions */
    E_CONST, E_NAME, E_LIST, E_TUPLE, E_DICT, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER,
    E_TEST, E_NEG, E_POS, E_NOT, E_BIN, E_AND, E_OR, E_COND,
};

enum bin_op {
    OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN,
};

struct node {
    uint8_t kind;
    uint8_t op;       /* E_BIN: enum bin_op; E_TEST: negated */
    int line;
    struct node *a, *b, *c;
    struct node **items; size_t nitems;    /* body, elements, positional args */
    struct node **items2; size_t nitems2;  /* else body, dict values, kwarg values, defaults */
    const char **names; size_t nnames;     /* targets, kwarg names, macro parameters */
    const char *s; size_t sn;              /* data text, names, string constants */
    struct tv k;                            /* E_CONST (never a list or dict) */
};

/* Parses a whole template. Returns the body node, or NULL with err set. */
struct node *tmpl_parse(struct tmpl_arena *a, const char *src, char *err, size_t errlen);

/* --- rendering ----------------------------------------------------------------------------- */
struct tframe { struct tframe *parent; struct tdict vars; };
struct tmacro {
    const struct node *def;     /* N_MACRO, or N_CALL_BLOCK for `caller` */
    struct tframe *closure;
};
struct tbuf { char *p; size_t n, cap; };

struct rctx {
    struct tmpl_arena arena;
    jmp_buf jb;
    int status;        /* CHAT_TEMPLATE_* once failed */
    int line;          /* line of the node being evaluated */
    int depth;
    struct tframe *root;
    struct tframe *frame;  /* innermost scope */
    struct tbuf *out;  /* where output goes now (swapped by block set, macros...) */
    size_t total_out;
    char *err;
    size_t errlen;
};

_Noreturn void tmpl_fail(struct rctx *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define tmpl_error(c, ...) tmpl_fail((c), -2, __VA_ARGS__)
void *tmpl_alloc(struct rctx *c, size_t n);

/* values (tmpl_value.c) */
static inline struct tv tv_undef(const char *name) { return (struct tv){.t = TV_UNDEF, .s = name, .n = name ? (uint32_t)strlen(name) : 0}; }
static inline struct tv tv_none(void) { return (struct tv){.t = TV_NONE}; }
static inline struct tv tv_bool(bool b) { return (struct tv){.t = TV_BOOL, .b = b}; }
static inline struct tv tv_int(int64_t i) { return (struct tv){.t = TV_INT, .i = i}; }
static inline struct tv tv_float(double f) { return (struct tv){.t = TV_FLOAT, .f = f}; }
struct tv tv_str(struct rctx *c, const char *s, size_t n);      /* copies */
static inline struct tv tv_strref(const char *s, size_t n) { return (struct tv){.t = TV_STR, .s = s, .n = (uint32_t)n}; }
struct tv tv_list(struct rctx *c, size_t cap);
struct tv tv_dict(struct rctx *c);
void tv_list_push(struct rctx *c, struct tlist *l, struct tv v);
void tv_dict_set(struct rctx *c, struct tdict *d, const char *k, size_t kn, struct tv v);
struct tv *tv_dict_get(const struct tdict *d, const char *k, size_t kn);
const char *tv_type_name(struct tv v);
bool tv_truthy(struct tv v);
bool tv_equal(struct tv a, struct tv b);
/* <0, 0, >0; fails on types Python cannot order. */
int tv_compare(struct rctx *c, struct tv a, struct tv b);
/* str(v) and repr(v) as Python prints them, appended to b. */
void tv_write_str(struct rctx *c, struct tbuf *b, struct tv v);
void tv_write_repr(struct rctx *c, struct tbuf *b, struct tv v);
struct tv tv_to_str(struct rctx *c, struct tv v);
struct tv tv_from_json(struct rctx *c, const json_t *j);
/* json.dumps(v, ensure_ascii, indent (<0: None), separators (NULL: default), sort_keys). */
void tv_write_json(struct rctx *c, struct tbuf *b, struct tv v, bool ensure_ascii, int indent,
                   const char *item_sep, const char *key_sep, bool sort_keys);
void tv_fmt_float(double f, char *buf, size_t len);
/* "'x' is undefined" or "'dict object' has no attribute 'x'", as jinja2 words them. */
void tv_undef_describe(struct tv v, char *buf, size_t len);
static inline struct tv tv_missing(struct tv owner, const char *name)
{
    struct tv v = tv_undef(name);
    v.from = (uint8_t)(owner.t + 1);
    return v;
}

/* buffers */
void tbuf_put(struct rctx *c, struct tbuf *b, const char *s, size_t n);
static inline void tbuf_puts(struct rctx *c, struct tbuf *b, const char *s) { tbuf_put(c, b, s, strlen(s)); }
struct tv tbuf_str(struct tbuf *b);

/* UTF-8 helpers */
size_t tu_len(const char *s, size_t n);                        /* code points */
size_t tu_offset(const char *s, size_t n, size_t cp);          /* byte offset of code point cp */
uint32_t tu_decode(const char *s, size_t n, size_t *i);        /* reads one, advances *i */
bool tu_isspace(uint32_t cp);

/* builtins: argument binding (tmpl_args.c), globals and methods (tmpl_methods.c), filters
 * (tmpl_filters.c), tests (tmpl_tests.c) */
struct targs { struct tv *pos; size_t npos; const char **kwn; struct tv *kwv; size_t nkw; };
/* Binds args to the named parameters (out[i] undefined where not given); fails on extras. */
void targs_bind(struct rctx *c, const struct targs *a, const char *what, const char *const *params,
                size_t nparams, struct tv *out);
struct tfunc { const char *name; struct tv (*fn)(struct rctx *c, const struct targs *a); };
const struct tfunc *tmpl_global_find(const char *name);
struct tv tmpl_method_call(struct rctx *c, struct tv self, const char *name, const struct targs *a);
/* Is there a method `name` on values like v (used by attribute lookup). */
bool tmpl_method_exists(struct tv v, const char *name, size_t nn);
struct tv tmpl_filter_apply(struct rctx *c, const char *name, struct tv in, const struct targs *a);
bool tmpl_filter_exists(const char *name);
bool tmpl_test_apply(struct rctx *c, const char *name, struct tv in, const struct targs *a);
bool tmpl_test_exists(const char *name);
struct tv tmpl_percent_format(struct rctx *c, struct tv fmt, const struct tv *args, size_t nargs);

/* evaluator entry points used by builtins (tmpl_eval.c) */
struct tv tmpl_call(struct rctx *c, struct tv callee, const struct targs *a);
struct tv tmpl_getattr(struct rctx *c, struct tv obj, const char *name, size_t nn);
struct tv tmpl_getitem(struct rctx *c, struct tv obj, struct tv key);
/* The items a for loop or a filter iterates (dict: keys, string: characters). */
struct tlist *tmpl_iterate(struct rctx *c, struct tv v);
void tmpl_render_body(struct rctx *c, const struct node *body);

#endif
