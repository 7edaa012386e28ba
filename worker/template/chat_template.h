/* Chat templates: the Jinja2 subset that models ship in tokenizer_config.json and GGUF
 * (tokenizer.chat_template), rendered the way Hugging Face's apply_chat_template renders them.
 *
 * The environment matches transformers': trim_blocks and lstrip_blocks on, the loopcontrols
 * extension ({% break %}, {% continue %}), the globals raise_exception(msg) and
 * strftime_now(fmt), range/namespace/dict, and tojson as json.dumps(x, ensure_ascii=False,
 * indent=None, separators=None, sort_keys=False). {% generation %} renders its body.
 *
 * A template is compiled once and is then read-only: any number of threads may render the same
 * compiled template at once. Each render allocates from its own arena, bounded in memory, output
 * size, recursion depth and range() length, so a hostile template fails with an error instead of
 * exhausting the worker.
 *
 * Constructs outside the subset (include, extends, import, {% do %}, unknown filters, tests or
 * tags...) fail at compile time where they can be seen then, otherwise at render time, always
 * with a message that names the construct and the template line: "line 12: unknown filter 'foo'".
 * Undefined values follow jinja2's default Undefined: they print as "", are falsy, iterate as
 * empty and are "not defined"; reading an attribute of one yields another (more lenient than
 * jinja2, which raises there). Arithmetic on one, or calling one, is an error.
 *
 * Supported: {{ }}, {% %}, {# #}, "-" and "+" whitespace markers; if/elif/else, for (else,
 * `if` filter, tuple targets, loop.index/index0/revindex/revindex0/first/last/length/previtem/
 * nextitem/cycle), break/continue, set (also `ns.attr =`, tuples, block set with filters),
 * macro (defaults, keyword arguments, caller), call, filter, with, raw, generation; literals,
 * attribute/item access, slices, arithmetic, ~, comparisons (chained), and/or/not, in, is tests,
 * inline if; str/dict/list methods as Python has them (startswith, split, strip, format, items,
 * get, append...). Filters: abs attr batch capitalize count d default dictsort e escape first
 * float forceescape format indent int items join last length list lower map max min reject
 * rejectattr replace reverse round safe select selectattr sort string sum title tojson trim
 * unique upper wordcount. Tests: jinja2's builtin ones. Not supported: include/extends/import,
 * recursive loops, *args and **kwargs, cycler/joiner/lipsum. Differences from transformers: list
 * append/extend work (its immutable sandbox refuses them); upper/lower know ASCII, Latin-1,
 * Greek and Cyrillic only; integers are 64-bit (overflow is an error). */
#ifndef SLUICE_WORKER_TEMPLATE_CHAT_TEMPLATE_H
#define SLUICE_WORKER_TEMPLATE_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Status codes; 0 is success. */
enum {
    CHAT_TEMPLATE_ESYNTAX = -1,  /* the template does not compile */
    CHAT_TEMPLATE_ERENDER = -2,  /* rendering failed: type error, unsupported construct... */
    CHAT_TEMPLATE_ERAISED = -3,  /* the template called raise_exception(msg): err is msg, the
                                  * input was rejected by the template (a client error) */
    CHAT_TEMPLATE_ELIMIT  = -4,  /* output, memory, recursion or range() bound exceeded */
    CHAT_TEMPLATE_ENOMEM  = -5,
    CHAT_TEMPLATE_EARG    = -6,  /* bad argument to the API (messages not an array...) */
};

struct chat_template;

/* Compiles source (NUL-terminated UTF-8). On success *out owns the template; on failure returns
 * a negative code and writes "line N: what" into err (errlen may be 0). */
int chat_template_compile(struct chat_template **out, const char *source, char *err, size_t errlen);

/* Renders with the variables messages (a JSON array), tools (an array, or NULL: then `tools`
 * is none, as transformers passes it), add_generation_prompt, bos_token and eos_token (NULL
 * means ""), plus every key of extra_vars (an object or NULL; e.g. {"enable_thinking": false}),
 * which may override the others. The inputs are only read. On success *out is a malloc'd
 * NUL-terminated string (*out_len, when not NULL, gets its length). */
int chat_template_render(const struct chat_template *t, const json_t *messages, const json_t *tools,
                         bool add_generation_prompt, const char *bos_token, const char *eos_token,
                         const json_t *extra_vars, char **out, size_t *out_len, char *err, size_t errlen);

/* Renders with an arbitrary set of variables: every key of vars (an object) is a template
 * variable. chat_template_render is a shorthand for this. */
int chat_template_render_vars(const struct chat_template *t, const json_t *vars, char **out,
                              size_t *out_len, char *err, size_t errlen);

void chat_template_free(struct chat_template *t);

/* Bounds applied to every render. */
#define CHAT_TEMPLATE_MAX_OUTPUT (64u << 20)   /* bytes of rendered text */
#define CHAT_TEMPLATE_MAX_MEMORY (512u << 20)  /* bytes of working memory per render */
#define CHAT_TEMPLATE_MAX_DEPTH 200            /* nested macro calls and expression depth */
#define CHAT_TEMPLATE_MAX_RANGE 100000         /* items from range(), as jinja2's sandbox */

#endif
