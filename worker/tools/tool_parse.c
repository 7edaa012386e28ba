/* Streaming tool-call parser: generated text in, content and OpenAI tool-call deltas out.
 *
 * One state machine serves every family. Input is appended to a buffer and consumed as far
 * as it can be decided; what cannot be decided yet (the start of a marker, whitespace that
 * may come before a marker, a call whose name is not read yet) stays until more text comes
 * or the output ends. A call is "committed" once its name is known: its start delta goes out
 * and its arguments then stream as they are generated. Before that, the text of the would-be
 * call (from its marker on) is kept, and given back as content if it turns out not to be a
 * call (bad JSON, no name, or, where calls have no marker, a name that is no tool's). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "worker/tools/tools.h"

#define DS_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define DS_CALLS_END "<｜tool▁calls▁end｜>"
#define DS_CALL_BEGIN "<｜tool▁call▁begin｜>"
#define DS_CALL_END "<｜tool▁call▁end｜>"
#define DS_SEP "<｜tool▁sep｜>"
/* Longest name or type read between markers before the text is taken for something else. */
#define MAX_BARE_NAME 256

enum st {
    ST_START,         /* json, llama3_json: only whitespace so far; a call must come first */
    ST_PLAIN,         /* content to the end */
    ST_CONTENT,       /* content, watching for the family's opening marker */
    ST_TRAIL,         /* after the calls: content, its leading whitespace dropped */
    ST_OBJ_OPEN,      /* a call object's '{' */
    ST_KEY_OR_END,    /* in a call object: a key or '}' */
    ST_KEY,           /* a key's characters */
    ST_COLON,
    ST_VALUE,         /* a value's first character */
    ST_NAME,          /* the "name" string */
    ST_ARGS,          /* the arguments value */
    ST_SKIP,          /* another key's value, dropped */
    ST_AFTER_VALUE,   /* ',' or '}' */
    ST_HERMES_CLOSE,  /* </tool_call> */
    ST_SEP,           /* llama3_json: ';' before another call */
    ST_ARRAY_NEXT,    /* ',' or ']' in an array of calls */
    ST_MISTRAL_OPEN,  /* after [TOOL_CALLS]: '[', '{' or a bare name */
    ST_MISTRAL_NAME,  /* a bare name up to [ARGS] */
    ST_RAW_ARGS,      /* the first character of arguments given bare (mistral, deepseek) */
    ST_DS_OPEN,       /* deepseek: the next call, or the end of the calls */
    ST_DS_TYPE,       /* "function" up to the separator */
    ST_DS_NAME,       /* the name up to a newline */
    ST_DS_FENCE,      /* ```json before the arguments */
    ST_DS_CLOSE,      /* ``` after the arguments */
    ST_DS_CALL_END,   /* the call's end marker */
};

enum key_kind { KEY_OTHER, KEY_NAME, KEY_ARGS };
enum call_kind { CALL_OBJECT, CALL_BARE_MISTRAL, CALL_BARE_DEEPSEEK };

/* Where a JSON value ends, seen one character at a time. */
struct jscan {
    char kind; /* 0 before its first character, then '{', '[', '"' or 's' (a scalar) */
    int depth;
    bool in_str, esc;
};
enum { JS_MORE, JS_DONE, JS_ENDED_BEFORE, JS_BAD };

static int jscan_feed(struct jscan *j, char c)
{
    if (!j->kind) {
        if (c == '{' || c == '[') {
            j->kind = c;
            j->depth = 1;
            return JS_MORE;
        }
        if (c == '"') {
            j->kind = '"';
            j->in_str = true;
            return JS_MORE;
        }
        if (c && strchr("-0123456789tfn", c)) {
            j->kind = 's';
            return JS_MORE;
        }
        return JS_BAD;
    }
    if (j->kind == 's') return isalnum((unsigned char)c) || c == '.' || c == '+' || c == '-' ? JS_MORE : JS_ENDED_BEFORE;
    if (j->in_str) {
        if (j->esc) {
            j->esc = false;
        } else if (c == '\\') {
            j->esc = true;
        } else if (c == '"') {
            j->in_str = false;
            if (j->kind == '"') return JS_DONE;
        }
        return JS_MORE;
    }
    if (c == '"') {
        j->in_str = true;
    } else if (c == '{' || c == '[') {
        j->depth++;
    } else if (c == '}' || c == ']') {
        if (--j->depth == 0) return JS_DONE;
    }
    return JS_MORE;
}

struct tool_parser {
    enum tool_family fam;
    char **names;
    size_t n_names;
    bool any_name;
    enum st st;
    struct strbuf buf;
    size_t pos;
    bool eof;
    /* A call not committed yet: its text so far, content again if it is not a call. */
    bool region;
    struct strbuf raw;
    bool check_name; /* no marker showed the call: its name must be a tool's */
    bool in_array;
    bool strip_ws;   /* drop content's leading whitespace (after a call) */
    int n_calls;
    bool in_call;    /* a committed call whose arguments may still come */
    enum call_kind call_kind;
    /* The call being read. */
    enum key_kind key;
    bool have_name, have_args, args_string;
    struct strbuf tmp;         /* a key, the name, or arguments given as a string */
    struct strbuf args_early;  /* arguments that came before the name */
    struct strbuf piece;       /* the committed call's arguments not given out yet */
    struct jscan js;
    struct tool_parse_out *out;
    int err;
};

void tool_parse_out_free(struct tool_parse_out *o)
{
    strbuf_free(&o->content);
    json_decref(o->calls);
    o->calls = NULL;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t avail(const struct tool_parser *p)
{
    return p->buf.len - p->pos;
}

static const char *at(const struct tool_parser *p)
{
    return p->buf.p + p->pos;
}

static void check(struct tool_parser *p, int rc)
{
    if (rc < 0) p->err = -1;
}

static void take(struct tool_parser *p, size_t n)
{
    if (p->region) check(p, strbuf_append(&p->raw, at(p), n));
    p->pos += n;
}

/* Takes whitespace; returns whether a character other than whitespace is there. */
static bool skip_ws(struct tool_parser *p)
{
    while (avail(p) && is_ws(*at(p))) take(p, 1);
    return avail(p) > 0;
}

/* Whether the input starts with m here: 1 yes, 0 no, -1 not known until more comes. */
static int lit(const struct tool_parser *p, const char *m)
{
    size_t n = strlen(m), a = avail(p);
    if (memcmp(at(p), m, a < n ? a : n) != 0) return 0;
    if (a >= n) return 1;
    return p->eof ? 0 : -1;
}

/* The length of the longest end of s[0..n) that begins marker m (and is shorter than it). */
static size_t partial_tail(const char *s, size_t n, const char *m)
{
    size_t k = strlen(m) - 1;
    if (k > n) k = n;
    for (; k > 0; k--)
        if (!memcmp(s + n - k, m, k)) return k;
    return 0;
}

static void emit_content(struct tool_parser *p, const char *s, size_t n)
{
    if (p->strip_ws) {
        while (n && is_ws(*s)) {
            s++;
            n--;
        }
        if (!n) return;
        p->strip_ws = false;
    }
    if (n) check(p, strbuf_append(&p->out->content, s, n));
}

static void region_begin(struct tool_parser *p)
{
    p->region = true;
    strbuf_clear(&p->raw);
}

static json_t *calls_array(struct tool_parser *p)
{
    if (!p->out->calls) p->out->calls = json_array();
    if (!p->out->calls) p->err = -1;
    return p->out->calls;
}

static void flush_piece(struct tool_parser *p)
{
    if (!p->piece.len || !p->n_calls) return;
    json_t *calls = calls_array(p);
    json_t *d = json_pack("{s:i, s:{s:s%}}", "index", p->n_calls - 1, "function", "arguments", p->piece.p,
                          p->piece.len);
    if (!calls || !d || json_array_append_new(calls, d) != 0) p->err = -1;
    strbuf_clear(&p->piece);
}

static void make_id(char *out, size_t cap, bool short_id)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[24];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        static unsigned counter;
        for (size_t i = 0; i < sizeof raw; i++) raw[i] = (unsigned char)(++counter * 131u + i);
    }
    /* Mistral's templates take back only ids of nine letters and digits. */
    size_t n = short_id ? 9 : sizeof raw, o = 0;
    if (!short_id) o = (size_t)snprintf(out, cap, "call_");
    for (size_t i = 0; i < n && o + 1 < cap; i++) out[o++] = alphabet[raw[i] % (sizeof alphabet - 1)];
    out[o] = '\0';
}

static bool name_allowed(const struct tool_parser *p, const char *name)
{
    if (p->any_name) return true;
    for (size_t i = 0; i < p->n_names; i++)
        if (!strcmp(p->names[i], name)) return true;
    return false;
}

/* The call is one: its start delta goes out, with whatever arguments came before its name. */
static void commit(struct tool_parser *p, const char *name, size_t len)
{
    flush_piece(p);
    char id[40];
    make_id(id, sizeof id, p->fam == TOOL_FAMILY_MISTRAL);
    json_t *calls = calls_array(p);
    json_t *d = json_pack("{s:i, s:s, s:s, s:{s:s%, s:s}}", "index", p->n_calls, "id", id, "type", "function",
                          "function", "name", name, len, "arguments", "");
    if (!calls || !d || json_array_append_new(calls, d) != 0) p->err = -1;
    p->n_calls++;
    p->in_call = true;
    p->have_name = true;
    p->region = false;
    strbuf_clear(&p->raw);
    if (p->args_early.len) check(p, strbuf_append(&p->piece, p->args_early.p, p->args_early.len));
    strbuf_clear(&p->args_early);
}

static void reset_call(struct tool_parser *p)
{
    p->key = KEY_OTHER;
    p->have_name = p->have_args = p->args_string = false;
    strbuf_clear(&p->tmp);
    strbuf_clear(&p->args_early);
    memset(&p->js, 0, sizeof p->js);
}

/* Where content goes when a call fails to parse. */
static enum st content_state(const struct tool_parser *p)
{
    if (p->fam == TOOL_FAMILY_JSON || p->fam == TOOL_FAMILY_LLAMA3_JSON) return p->n_calls ? ST_TRAIL : ST_PLAIN;
    return ST_CONTENT;
}

static void end_call(struct tool_parser *p)
{
    flush_piece(p);
    p->in_call = false;
    p->strip_ws = true;
    reset_call(p);
}

/* What followed is not a call: a committed one ends where it got to; the text of one not
 * committed becomes content. The character that did not fit is read again as content. */
static void fail(struct tool_parser *p)
{
    if (p->in_call) end_call(p);
    if (p->region) {
        p->region = false;
        emit_content(p, strbuf_str(&p->raw), p->raw.len);
        strbuf_clear(&p->raw);
    }
    reset_call(p);
    p->in_array = false;
    p->st = content_state(p);
}

/* The call's arguments were read. */
static void args_done(struct tool_parser *p)
{
    if (p->args_string) {
        /* Arguments given as a JSON string hold the JSON text: pass it decoded. */
        json_t *s = json_loadb(strbuf_str(&p->tmp), p->tmp.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (!json_is_string(s)) {
            json_decref(s);
            fail(p);
            return;
        }
        check(p, strbuf_append(p->in_call ? &p->piece : &p->args_early, json_string_value(s), json_string_length(s)));
        json_decref(s);
        strbuf_clear(&p->tmp);
    }
    p->have_args = true;
    if (p->call_kind == CALL_OBJECT) {
        p->st = ST_AFTER_VALUE;
    } else if (p->call_kind == CALL_BARE_DEEPSEEK) {
        end_call(p);
        p->st = ST_DS_CLOSE;
    } else {
        end_call(p);
        p->st = ST_CONTENT;
    }
}

static void after_call(struct tool_parser *p)
{
    end_call(p);
    switch (p->fam) {
    case TOOL_FAMILY_HERMES: p->st = ST_HERMES_CLOSE; break;
    case TOOL_FAMILY_LLAMA3_JSON: p->st = ST_SEP; break;
    case TOOL_FAMILY_JSON: p->st = p->in_array ? ST_ARRAY_NEXT : ST_TRAIL; break;
    default: p->st = p->in_array ? ST_ARRAY_NEXT : ST_CONTENT; break;
    }
}

static const char *opening_marker(enum tool_family f)
{
    return f == TOOL_FAMILY_HERMES ? "<tool_call>" : f == TOOL_FAMILY_MISTRAL ? "[TOOL_CALLS]" : DS_CALLS_BEGIN;
}

static void step_content(struct tool_parser *p)
{
    const char *s = at(p), *m = opening_marker(p->fam);
    size_t n = avail(p), mlen = strlen(m);
    const char *hit = memmem(s, n, m, mlen);
    if (hit) {
        size_t k = (size_t)(hit - s), e = k;
        /* Whitespace between content and a call is neither. */
        while (e && is_ws(s[e - 1])) e--;
        emit_content(p, s, e);
        take(p, k);
        region_begin(p);
        take(p, mlen);
        p->check_name = false;
        p->in_array = false;
        reset_call(p);
        p->call_kind = CALL_OBJECT;
        p->st = p->fam == TOOL_FAMILY_HERMES ? ST_OBJ_OPEN : p->fam == TOOL_FAMILY_MISTRAL ? ST_MISTRAL_OPEN : ST_DS_OPEN;
        return;
    }
    size_t e = n;
    if (!p->eof) {
        e -= partial_tail(s, n, m);
        while (e && is_ws(s[e - 1])) e--;
    }
    emit_content(p, s, e);
    take(p, e);
}

static void step_start(struct tool_parser *p)
{
    if (!skip_ws(p)) return;
    if (p->fam == TOOL_FAMILY_LLAMA3_JSON) {
        int r = lit(p, "<|python_tag|>");
        if (r < 0) return;
        if (r > 0) {
            take(p, strlen("<|python_tag|>"));
            p->check_name = false;
            p->st = ST_OBJ_OPEN;
            return;
        }
    }
    char c = *at(p);
    if (c == '{') {
        p->st = ST_OBJ_OPEN;
    } else if (c == '[' && p->fam == TOOL_FAMILY_JSON) {
        take(p, 1);
        p->in_array = true;
        p->st = ST_OBJ_OPEN;
    } else {
        fail(p);
    }
}

/* A key, the name or a string of arguments: characters up to the closing quote into tmp. */
static bool read_string(struct tool_parser *p)
{
    while (avail(p)) {
        char c = *at(p);
        take(p, 1);
        check(p, strbuf_putc(&p->tmp, c));
        if (p->js.esc) {
            p->js.esc = false;
        } else if (c == '\\') {
            p->js.esc = true;
        } else if (c == '"') {
            return true;
        }
    }
    return false;
}

static void step_value(struct tool_parser *p)
{
    if (!skip_ws(p)) return;
    char c = *at(p);
    memset(&p->js, 0, sizeof p->js);
    strbuf_clear(&p->tmp);
    if (p->key == KEY_NAME) {
        if (c != '"') {
            fail(p);
            return;
        }
        take(p, 1);
        check(p, strbuf_putc(&p->tmp, '"'));
        p->st = ST_NAME;
        return;
    }
    if (jscan_feed(&p->js, c) == JS_BAD) {
        fail(p);
        return;
    }
    take(p, 1);
    if (p->key == KEY_ARGS) {
        p->args_string = c == '"';
        check(p, strbuf_putc(p->args_string ? &p->tmp : p->in_call ? &p->piece : &p->args_early, c));
        p->st = ST_ARGS;
    } else {
        p->st = ST_SKIP;
    }
}

static void step_name(struct tool_parser *p)
{
    if (!read_string(p)) return;
    json_t *s = json_loadb(strbuf_str(&p->tmp), p->tmp.len, JSON_DECODE_ANY, NULL);
    const char *name = json_string_value(s);
    if (!name || !*name || (p->check_name && !name_allowed(p, name))) {
        json_decref(s);
        fail(p);
        return;
    }
    commit(p, name, json_string_length(s));
    json_decref(s);
    strbuf_clear(&p->tmp);
    p->st = ST_AFTER_VALUE;
}

static void step_args(struct tool_parser *p)
{
    while (avail(p)) {
        char c = *at(p);
        int r = jscan_feed(&p->js, c);
        if (r == JS_ENDED_BEFORE) {
            args_done(p);
            return;
        }
        take(p, 1);
        check(p, strbuf_putc(p->args_string ? &p->tmp : p->in_call ? &p->piece : &p->args_early, c));
        if (r == JS_DONE) {
            args_done(p);
            return;
        }
    }
}

static void step_skip(struct tool_parser *p)
{
    while (avail(p)) {
        int r = jscan_feed(&p->js, *at(p));
        if (r == JS_ENDED_BEFORE) {
            p->st = ST_AFTER_VALUE;
            return;
        }
        take(p, 1);
        if (r == JS_DONE) {
            p->st = ST_AFTER_VALUE;
            return;
        }
    }
}

static void step_key(struct tool_parser *p)
{
    if (!read_string(p)) return;
    const char *k = strbuf_str(&p->tmp);
    if (!strcmp(k, "name\"") && !p->have_name) p->key = KEY_NAME;
    else if ((!strcmp(k, "arguments\"") || !strcmp(k, "parameters\"")) && !p->have_args) p->key = KEY_ARGS;
    else p->key = KEY_OTHER;
    strbuf_clear(&p->tmp);
    p->st = ST_COLON;
}

/* Text up to marker m into tmp (at most MAX_BARE_NAME bytes): true once m is taken too. */
static bool read_until(struct tool_parser *p, const char *m)
{
    const char *s = at(p);
    size_t n = avail(p), mlen = strlen(m);
    const char *hit = memmem(s, n, m, mlen);
    size_t k = hit ? (size_t)(hit - s) : n - (p->eof ? 0 : partial_tail(s, n, m));
    if (p->tmp.len + k > MAX_BARE_NAME) {
        fail(p);
        return false;
    }
    check(p, strbuf_append(&p->tmp, s, k));
    take(p, k);
    if (!hit) return false;
    take(p, mlen);
    return true;
}

/* A bare name (mistral's name[ARGS], deepseek's name line) read into tmp: commit it. */
static bool commit_bare_name(struct tool_parser *p, enum call_kind kind)
{
    size_t a = 0, b = p->tmp.len;
    const char *s = strbuf_str(&p->tmp);
    while (a < b && is_ws(s[a])) a++;
    while (b > a && is_ws(s[b - 1])) b--;
    if (a == b || memchr(s + a, '\0', b - a)) {
        fail(p);
        return false;
    }
    p->call_kind = kind;
    commit(p, s + a, b - a);
    strbuf_clear(&p->tmp);
    memset(&p->js, 0, sizeof p->js);
    p->st = ST_RAW_ARGS;
    return true;
}

static void step_raw_args(struct tool_parser *p)
{
    if (!skip_ws(p)) return;
    char c = *at(p);
    if (jscan_feed(&p->js, c) == JS_BAD) {
        fail(p);
        return;
    }
    take(p, 1);
    p->args_string = c == '"';
    check(p, strbuf_putc(p->args_string ? &p->tmp : &p->piece, c));
    p->st = ST_ARGS;
}

static void step(struct tool_parser *p)
{
    int r;
    switch (p->st) {
    case ST_START: step_start(p); break;
    case ST_PLAIN:
    case ST_TRAIL:
        emit_content(p, at(p), avail(p));
        take(p, avail(p));
        break;
    case ST_CONTENT: step_content(p); break;
    case ST_OBJ_OPEN:
        if (!skip_ws(p)) break;
        if (*at(p) != '{') {
            fail(p);
            break;
        }
        take(p, 1);
        reset_call(p);
        p->call_kind = CALL_OBJECT;
        p->st = ST_KEY_OR_END;
        break;
    case ST_KEY_OR_END:
    case ST_AFTER_VALUE:
        if (!skip_ws(p)) break;
        if (*at(p) == '}') {
            take(p, 1);
            if (!p->have_name) {
                fail(p);
                break;
            }
            if (!p->have_args) check(p, strbuf_append(&p->piece, "{}", 2));
            after_call(p);
        } else if (p->st == ST_KEY_OR_END && *at(p) == '"') {
            take(p, 1);
            strbuf_clear(&p->tmp);
            memset(&p->js, 0, sizeof p->js);
            p->st = ST_KEY;
        } else if (p->st == ST_AFTER_VALUE && *at(p) == ',') {
            take(p, 1);
            p->st = ST_KEY_OR_END;
        } else {
            fail(p);
        }
        break;
    case ST_KEY: step_key(p); break;
    case ST_COLON:
        if (!skip_ws(p)) break;
        if (*at(p) != ':') {
            fail(p);
            break;
        }
        take(p, 1);
        p->st = ST_VALUE;
        break;
    case ST_VALUE: step_value(p); break;
    case ST_NAME: step_name(p); break;
    case ST_ARGS: step_args(p); break;
    case ST_SKIP: step_skip(p); break;
    case ST_HERMES_CLOSE:
        if (!skip_ws(p)) break;
        r = lit(p, "</tool_call>");
        if (r < 0) break;
        if (r > 0) take(p, strlen("</tool_call>"));
        p->st = ST_CONTENT; /* a missing end tag is forgiven */
        break;
    case ST_SEP:
        if (!skip_ws(p)) break;
        if (*at(p) == ';') {
            region_begin(p);
            take(p, 1);
            p->st = ST_OBJ_OPEN;
        } else {
            p->st = ST_TRAIL;
        }
        break;
    case ST_ARRAY_NEXT:
        if (!skip_ws(p)) break;
        if (*at(p) == ',') {
            region_begin(p);
            take(p, 1);
            p->st = ST_OBJ_OPEN;
        } else {
            if (*at(p) == ']') take(p, 1);
            p->in_array = false;
            p->st = p->fam == TOOL_FAMILY_MISTRAL ? ST_CONTENT : ST_TRAIL;
        }
        break;
    case ST_MISTRAL_OPEN:
        if (!skip_ws(p)) break;
        if (*at(p) == '[') {
            take(p, 1);
            p->in_array = true;
            p->st = ST_OBJ_OPEN;
        } else if (*at(p) == '{') {
            p->st = ST_OBJ_OPEN;
        } else {
            strbuf_clear(&p->tmp);
            p->st = ST_MISTRAL_NAME;
        }
        break;
    case ST_MISTRAL_NAME:
        if (read_until(p, "[ARGS]")) commit_bare_name(p, CALL_BARE_MISTRAL);
        break;
    case ST_RAW_ARGS: step_raw_args(p); break;
    case ST_DS_OPEN:
        if (!skip_ws(p)) break;
        r = lit(p, DS_CALL_BEGIN);
        if (r < 0) break;
        if (r > 0) {
            if (!p->region) region_begin(p);
            take(p, strlen(DS_CALL_BEGIN));
            strbuf_clear(&p->tmp);
            p->st = ST_DS_TYPE;
            break;
        }
        r = lit(p, DS_CALLS_END);
        if (r < 0) break;
        if (r > 0) {
            take(p, strlen(DS_CALLS_END));
            p->region = false;
            p->st = ST_CONTENT;
        } else {
            fail(p);
        }
        break;
    case ST_DS_TYPE:
        if (read_until(p, DS_SEP)) {
            strbuf_clear(&p->tmp);
            p->st = ST_DS_NAME;
        }
        break;
    case ST_DS_NAME:
        if (read_until(p, "\n") && commit_bare_name(p, CALL_BARE_DEEPSEEK)) p->st = ST_DS_FENCE;
        break;
    case ST_DS_FENCE:
        if (!skip_ws(p)) break;
        r = lit(p, "```json");
        if (r < 0) break;
        if (r > 0) take(p, strlen("```json"));
        p->st = ST_RAW_ARGS;
        break;
    case ST_DS_CLOSE:
        if (!skip_ws(p)) break;
        r = lit(p, "```");
        if (r < 0) break;
        if (r > 0) take(p, 3);
        p->st = ST_DS_CALL_END;
        break;
    case ST_DS_CALL_END:
        if (!skip_ws(p)) break;
        r = lit(p, DS_CALL_END);
        if (r < 0) break;
        if (r > 0) take(p, strlen(DS_CALL_END));
        p->st = ST_DS_OPEN;
        break;
    }
}

static void run(struct tool_parser *p)
{
    while (!p->err) {
        size_t pos = p->pos;
        enum st st = p->st;
        bool region = p->region;
        step(p);
        if (p->pos == pos && p->st == st && p->region == region) break;
    }
}

/* The length of s[0..n) without a UTF-8 character cut off at its end: pieces given out must
 * be whole characters (they become JSON strings), whatever the input's cuts. */
static size_t whole_chars(const char *s, size_t n)
{
    size_t i = n, k = 0;
    while (i > 0 && k < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        k++;
    }
    if (i == 0) return n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = (lead & 0xE0) == 0xC0 ? 2 : (lead & 0xF0) == 0xE0 ? 3 : (lead & 0xF8) == 0xF0 ? 4 : 1;
    return want > 1 && k + 1 < want ? i - 1 : n;
}

/* Runs over the buffer's whole characters (all of it at the end), then drops what was read. */
static void run_buffer(struct tool_parser *p)
{
    if (!p->buf.p) return;
    size_t len = p->buf.len;
    if (!p->eof) p->buf.len = whole_chars(p->buf.p, len);
    run(p);
    p->buf.len = len;
    memmove(p->buf.p, p->buf.p + p->pos, p->buf.len - p->pos);
    p->buf.len -= p->pos;
    p->buf.p[p->buf.len] = '\0';
    p->pos = 0;
}

struct tool_parser *tool_parser_new(enum tool_family f, const json_t *names, bool forced)
{
    struct tool_parser *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->fam = f >= 0 && f < TOOL_FAMILY_COUNT ? f : TOOL_FAMILY_JSON;
    p->any_name = !json_is_array(names);
    if (!p->any_name && json_array_size(names)) {
        p->names = calloc(json_array_size(names), sizeof *p->names);
        if (!p->names) goto fail;
        size_t i;
        json_t *v;
        json_array_foreach(names, i, v) {
            if (!json_is_string(v)) continue;
            if (!(p->names[p->n_names] = strdup(json_string_value(v)))) goto fail;
            p->n_names++;
        }
    }
    switch (p->fam) {
    case TOOL_FAMILY_JSON:
    case TOOL_FAMILY_LLAMA3_JSON:
        region_begin(p);
        p->check_name = !forced;
        p->st = ST_START;
        break;
    case TOOL_FAMILY_MISTRAL:
        /* Forced calls come without [TOOL_CALLS]: a special token no grammar writes. */
        if (forced) region_begin(p);
        p->st = forced ? ST_MISTRAL_OPEN : ST_CONTENT;
        break;
    default: p->st = ST_CONTENT; break;
    }
    return p;
fail:
    tool_parser_free(p);
    return NULL;
}

void tool_parser_free(struct tool_parser *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n_names; i++) free(p->names[i]);
    free(p->names);
    strbuf_free(&p->buf);
    strbuf_free(&p->raw);
    strbuf_free(&p->tmp);
    strbuf_free(&p->args_early);
    strbuf_free(&p->piece);
    free(p);
}

int tool_parser_push(struct tool_parser *p, const char *text, size_t len, struct tool_parse_out *out)
{
    p->out = out;
    if (len && strbuf_append(&p->buf, text, len) < 0) return -1;
    run_buffer(p);
    flush_piece(p);
    p->out = NULL;
    return p->err;
}

int tool_parser_finish(struct tool_parser *p, struct tool_parse_out *out)
{
    p->out = out;
    p->eof = true;
    for (int guard = 0; guard < 16 && !p->err; guard++) {
        run_buffer(p);
        if (!avail(p) && !p->region && !p->in_call) break;
        if (p->st == ST_ARGS && p->js.kind == 's') {
            args_done(p); /* a scalar ends with the text */
            continue;
        }
        fail(p);
    }
    flush_piece(p);
    p->out = NULL;
    return p->err;
}

int tool_parser_calls(const struct tool_parser *p)
{
    return p->n_calls;
}
