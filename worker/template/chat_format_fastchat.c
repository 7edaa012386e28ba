/* The chat format as a FastChat conversation (fastchat/conversation.py's Conversation).
 *
 * FastChat's openai_api_server does not send chat messages to a worker: it asks
 * /worker_get_conv_template for a Conversation, builds the prompt itself (system_template with
 * the system message, then for each turn its role string, its text and a separator, then the
 * assistant's role) and sends that as a plain prompt. A Conversation cannot say everything a
 * Jinja template can, so the pieces are read off what this format renders for a few probe
 * conversations whose texts are markers: the text before, between and after the markers is
 * the system turn's prefix and suffix, each role's prefix and suffix, and the generation
 * prompt. Where those pieces are regular (one prefix and suffix per role, the generation
 * prompt equal to the assistant's prefix: ChatML, Llama 3, the built-in and JSON formats)
 * FastChat's prompt equals ours, given a system message or where the template writes a
 * system turn of its own without one. What a Conversation cannot express is approximated:
 * a template that writes no system turn without a system message gets an empty one from
 * FastChat (system_message is then ""); a template that folds the system message into the
 * first user turn gets it before that turn. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/strbuf.h"
#include "worker/template/chat_format.h"

/* FastChat's SeparatorStyle values (an IntEnum of auto(), so counted from 1). */
enum { FC_ADD_COLON_SINGLE = 1, FC_ADD_COLON_TWO = 2, FC_NO_COLON_TWO = 5 };

#define MARK_SYSTEM "sluice-probe-system"
#define MARK_USER "sluice-probe-user-1"
#define MARK_ASSISTANT "sluice-probe-assistant"
#define MARK_USER2 "sluice-probe-user-2"

/* Renders a probe conversation: spec holds one letter per message (s system, u and v the two
 * user turns, a the assistant's), each with its marker as content. NULL when the format
 * refuses the conversation. */
static char *probe(const struct chat_format *f, const char *spec, bool add_generation_prompt)
{
    json_t *messages = json_array();
    for (const char *c = spec; *c; c++) {
        const char *role = *c == 's' ? "system" : *c == 'a' ? "assistant" : "user";
        const char *text = *c == 's' ? MARK_SYSTEM : *c == 'a' ? MARK_ASSISTANT : *c == 'u' ? MARK_USER : MARK_USER2;
        json_array_append_new(messages, json_pack("{s:s, s:s}", "role", role, "content", text));
    }
    char *out = NULL;
    struct json_field_error err;
    if (chat_format_render(f, messages, NULL, NULL, add_generation_prompt, &out, &err) != 0) out = NULL;
    json_decref(messages);
    return out;
}

/* Cuts text at the markers, in order: parts[0] is what comes before the first, parts[i] what
 * lies between marker i-1 and marker i, parts[n] what follows the last. Each part is malloc'd.
 * False when a marker is missing (the template did not write the text as given). */
static bool cut(const char *text, const char *const *marks, int n, char **parts)
{
    if (!text) return false;
    const char *p = text;
    for (int i = 0; i < n; i++) {
        const char *at = strstr(p, marks[i]);
        if (!at) {
            for (int k = 0; k < i; k++) {
                free(parts[k]);
                parts[k] = NULL;
            }
            return false;
        }
        parts[i] = strndup(p, (size_t)(at - p));
        p = at + strlen(marks[i]);
    }
    parts[n] = strdup(p);
    return true;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Appends s for Python's str.format, which FastChat applies to system_template. */
static void append_escaped(struct strbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '{' || s[i] == '}') strbuf_putc(b, s[i]);
        strbuf_putc(b, s[i]);
    }
}

/* Whether tokenizing a prompt adds BOS: the worker tokenizes FastChat's prompt as any prompt. */
static bool prompt_gets_bos(const struct tokenizer *tok)
{
    int32_t *ids = NULL;
    size_t n = 0;
    bool adds = tok && tok_bos_id(tok) >= 0 && tok_encode(tok, "", 0, true, &ids, &n) == 0 && n > 0 &&
                ids[0] == tok_bos_id(tok);
    free(ids);
    return adds;
}

/* The special tokens in text (the assistant's end of turn), which end an answer. */
static json_t *special_ids(const struct tokenizer *tok, const char *text)
{
    json_t *out = json_array();
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok && *text && tok_encode(tok, text, strlen(text), false, &ids, &n) == 0)
        for (size_t i = 0; i < n; i++)
            if (tok_is_special(tok, ids[i])) json_array_append_new(out, json_integer(ids[i]));
    free(ids);
    return out;
}

/* FastChat's own default conversation, for a template whose probes could not be read. */
static json_t *default_conv(const struct chat_format *f)
{
    return json_pack("{s:s, s:s, s:s, s:[s,s], s:[], s:i, s:i, s:s, s:n, s:n, s:[]}", "name", f->name,
                     "system_template", "{system_message}", "system_message", "", "roles", "USER",
                     "ASSISTANT", "messages", "offset", 0, "sep_style", FC_ADD_COLON_SINGLE, "sep", "\n",
                     "sep2", "stop_str", "stop_token_ids");
}

json_t *chat_format_fastchat_conv(const struct chat_format *f, const struct tokenizer *tok)
{
    static const char *const turns_marks[] = {MARK_USER, MARK_ASSISTANT, MARK_USER2};
    static const char *const user_marks[] = {MARK_USER};
    static const char *const pair_marks[] = {MARK_USER, MARK_ASSISTANT};
    static const char *const system_marks[] = {MARK_SYSTEM, MARK_USER};
    char *r_turns = probe(f, "uav", true), *r_user = probe(f, "u", false);
    char *r_pair = probe(f, "ua", false), *r_system = probe(f, "suav", true);
    char *t[4] = {0}, *u[2] = {0}, *a[3] = {0}, *s[3] = {0}, *default_message = NULL;
    json_t *conv = NULL;
    struct strbuf tmpl = {0};
    if (!cut(r_turns, turns_marks, 3, t) || !cut(r_user, user_marks, 1, u) || !cut(r_pair, pair_marks, 2, a)) {
        log_warn("the chat template could not be read as a FastChat conversation; "
                 "FastChat's API server gets its default one");
        conv = default_conv(f);
        goto cleanup;
    }
    /* t: before the first user turn, user to assistant, assistant to user, after the last user
     * turn. A role's suffix is what follows its text when its turn is the last one. */
    const char *user_suffix = starts_with(t[1], u[1]) && starts_with(t[3], u[1]) ? u[1] : "";
    const char *assistant_suffix = starts_with(t[2], a[2]) ? a[2] : "";
    const char *user_prefix = t[2] + strlen(assistant_suffix);
    const char *assistant_prefix = t[1] + strlen(user_suffix);
    const char *generation = t[3] + strlen(user_suffix);
    /* What precedes the first user turn without a system message: the template's own system
     * turn, or a BOS only. */
    size_t preamble_len = strlen(t[0]) - (ends_with(t[0], user_prefix) ? strlen(user_prefix) : 0);

    const char *head = t[0], *system_message = "";
    size_t head_len = preamble_len, tail_len = 0;
    const char *tail = "";
    if (cut(r_system, system_marks, 2, s) && ends_with(s[1], user_prefix)) {
        head = s[0];
        head_len = strlen(s[0]);
        tail = s[1];
        tail_len = strlen(s[1]) - strlen(user_prefix);
        /* A template with a default system message writes head + default + tail unasked. */
        if (preamble_len >= head_len + tail_len && starts_with(t[0], head) &&
            memcmp(t[0] + preamble_len - tail_len, tail, tail_len) == 0) {
            default_message = strndup(t[0] + head_len, preamble_len - head_len - tail_len);
            system_message = default_message;
        }
    }

    int style = FC_NO_COLON_TWO;
    const char *role0 = user_prefix, *role1 = strcmp(generation, assistant_prefix) == 0 ? assistant_prefix : generation;
    size_t role0_len = strlen(role0), role1_len = strlen(role1);
    /* "User: text" turns and a bare "Assistant:" to generate after: FastChat's ADD_COLON_TWO,
     * which writes the system prompt's separator itself. */
    size_t gen_len = strlen(generation);
    if (strcmp(generation, assistant_prefix) != 0 && gen_len > 0 && generation[gen_len - 1] == ':' &&
        strlen(assistant_prefix) == gen_len + 1 && starts_with(assistant_prefix, generation) &&
        assistant_prefix[gen_len] == ' ' && ends_with(user_prefix, ": ") && tail_len >= strlen(user_suffix) &&
        memcmp(tail + tail_len - strlen(user_suffix), user_suffix, strlen(user_suffix)) == 0) {
        style = FC_ADD_COLON_TWO;
        role0_len -= 2;
        role1_len = gen_len - 1;
        tail_len -= strlen(user_suffix);
    }

    /* The worker adds BOS to a prompt itself where the tokenizer says so; the template's own
     * BOS text would make it two. */
    const char *bos = f->jinja ? f->bos_token : f->bos;
    bool chat_adds_bos = !f->jinja && f->add_special_tokens;
    if (bos && *bos && !chat_adds_bos && head_len >= strlen(bos) && starts_with(head, bos) && prompt_gets_bos(tok)) {
        head += strlen(bos);
        head_len -= strlen(bos);
    }
    append_escaped(&tmpl, head, head_len);
    strbuf_append(&tmpl, "{system_message}", strlen("{system_message}"));
    append_escaped(&tmpl, tail, tail_len);

    conv = json_pack("{s:s, s:s, s:s, s:[s%,s%], s:[], s:i, s:i, s:s, s:s, s:n, s:o}", "name", f->name,
                     "system_template", strbuf_str(&tmpl), "system_message", system_message, "roles",
                     role0, role0_len, role1, role1_len, "messages", "offset", 0, "sep_style", style, "sep",
                     user_suffix, "sep2", assistant_suffix, "stop_str", "stop_token_ids",
                     special_ids(tok, assistant_suffix));
cleanup:
    strbuf_free(&tmpl);
    for (int i = 0; i < 4; i++) free(t[i]);
    for (int i = 0; i < 2; i++) free(u[i]);
    for (int i = 0; i < 3; i++) free(a[i]);
    for (int i = 0; i < 3; i++) free(s[i]);
    free(default_message);
    free(r_turns);
    free(r_user);
    free(r_pair);
    free(r_system);
    return conv;
}
