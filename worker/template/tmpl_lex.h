/* The lexer's tokens and the state the lexer and parser share (tmpl_lex.c, tmpl_parse.c). */
#ifndef SLUICE_WORKER_TEMPLATE_TMPL_LEX_H
#define SLUICE_WORKER_TEMPLATE_TMPL_LEX_H

#include "worker/template/tmpl.h"

enum tok_type { K_DATA, K_VAR_BEGIN, K_VAR_END, K_BLOCK_BEGIN, K_BLOCK_END, K_NAME, K_STRING, K_INT, K_FLOAT, K_OP, K_EOF };

struct tok {
    uint8_t type;
    int line;
    const char *s;  /* K_DATA, K_NAME, K_STRING (NUL-terminated copies), K_OP (into the source) */
    size_t n;
    int64_t i;
    double f;
};

struct pctx {
    struct tmpl_arena *a;
    jmp_buf jb;
    char *err;
    size_t errlen;
    /* lexer */
    const char *src;
    size_t len, pos;
    int line;
    struct tok *toks;
    size_t ntok, captok;
    /* parser */
    size_t p;
    int loop_depth;
    int depth;
};

/* Compile errors unwind to tmpl_parse with longjmp; everything lives in the template's arena. */
__attribute__((format(printf, 3, 4))) _Noreturn void tmpl_pfail(struct pctx *c, int line, const char *fmt, ...);
void *tmpl_palloc(struct pctx *c, size_t n);  /* zeroed */
char *tmpl_pstrdup(struct pctx *c, const char *s, size_t n);
/* Splits c->src into tokens, applying jinja2's whitespace rules (trim_blocks, lstrip_blocks,
 * "-" and "+" markers) to the text between tags. */
void tmpl_lex(struct pctx *c);

#endif
