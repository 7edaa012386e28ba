#include "worker/template/chat_format.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/strbuf.h"
#include "worker/template/chat_template.h"
#include "worker/template/chat_template_source.h"

static const char *const role_names[CHAT_ROLE_COUNT] = {"system", "user", "assistant", "tool"};

static int has_token(const struct tokenizer *tok, const char *text)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int found = tok && tok_encode(tok, text, strlen(text), false, &ids, &n) == 0 && n == 1 &&
                tok_is_special(tok, ids[0]);
    free(ids);
    return found;
}

static void set_builtin(struct chat_format *f, const char *name, const char *bos,
                        const char *const prefix[CHAT_ROLE_COUNT], const char *suffix,
                        const char *generation_prompt, bool add_special)
{
    f->name = strdup(name);
    f->bos = strdup(bos);
    for (int r = 0; r < CHAT_ROLE_COUNT; r++) {
        f->prefix[r] = strdup(prefix[r]);
        f->suffix[r] = strdup(suffix);
    }
    f->generation_prompt = strdup(generation_prompt);
    f->add_special_tokens = add_special;
}

/* A simple format from its JSON object (root is borrowed). */
static int load_simple(struct chat_format *f, const json_t *root, const char *file, char *err, size_t errlen)
{
    const char *s;
    f->name = strdup(json_get_string(root, "name", false, &s, NULL) == JSON_FIELD_OK ? s : file);
    f->bos = strdup(json_get_string(root, "bos", false, &s, NULL) == JSON_FIELD_OK ? s : "");
    f->generation_prompt = strdup(
        json_get_string(root, "generation_prompt", false, &s, NULL) == JSON_FIELD_OK ? s : "");
    bool add = false;
    json_get_bool(root, "add_special_tokens", false, &add, NULL);
    f->add_special_tokens = add;
    for (int r = 0; r < CHAT_ROLE_COUNT; r++) {
        json_t *role = json_object_get(root, role_names[r]);
        const char *prefix = "", *suffix = "";
        if (role && !json_is_object(role)) {
            snprintf(err, errlen, "%s: field '%s' must be an object with prefix and suffix", file,
                     role_names[r]);
            chat_format_free(f);
            return -1;
        }
        json_get_string(role, "prefix", false, &prefix, NULL);
        json_get_string(role, "suffix", false, &suffix, NULL);
        f->prefix[r] = strdup(prefix);
        f->suffix[r] = strdup(suffix);
    }
    return 0;
}

/* bos and eos: the token texts the template sees; NULL takes the tokenizer's. */
static int compile_jinja(struct chat_format *f, const struct tokenizer *tok, const char *source,
                         const char *bos, const char *eos, const char *origin, char *err, size_t errlen)
{
    char terr[512];
    if (chat_template_compile(&f->jinja, source, terr, sizeof terr) != 0) {
        snprintf(err, errlen, "%s: the chat template does not compile: %s", origin, terr);
        return -1;
    }
    f->name = strdup("jinja");
    f->bos_token = strdup(bos ? bos : tok ? tok_bos_text(tok) : "");
    f->eos_token = strdup(eos ? eos : tok ? tok_eos_text(tok) : "");
    return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* --chat-template FILE, as vLLM's takes it: a Jinja template of any name, or our simple format
 * as a JSON object. A *.json file must be the JSON format and a *.jinja (or *.j2) file is
 * Jinja whatever it starts with (a template may well open with a literal '{'); any other file
 * is the JSON format when it parses as a JSON object and Jinja otherwise. A text with no Jinja
 * markup at all cannot place the messages anywhere, so it is taken for broken JSON and its
 * JSON error reported. A UTF-8 byte order mark, which some editors write, belongs to neither. */
static int load_file(struct chat_format *f, const struct tokenizer *tok, const char *file, char *err,
                     size_t errlen)
{
    char *text = chat_template_read_file(file);
    if (!text) {
        snprintf(err, errlen, "%s: cannot read the chat template", file);
        return -1;
    }
    const char *body = strncmp(text, "\xEF\xBB\xBF", 3) == 0 ? text + 3 : text;
    bool jinja_name = ends_with(file, ".jinja") || ends_with(file, ".j2");
    bool has_markup = strstr(body, "{{") || strstr(body, "{%");
    json_error_t jerr = {0};
    json_t *root = jinja_name ? NULL : json_loads(body, JSON_REJECT_DUPLICATES, &jerr);
    int rc;
    if (json_is_object(root)) {
        rc = load_simple(f, root, file, err, errlen);
    } else if (!jinja_name && (ends_with(file, ".json") || !has_markup)) {
        snprintf(err, errlen, "%s: not a JSON chat format (%s, line %d) nor a Jinja template", file,
                 root ? "expected an object" : jerr.text, jerr.line);
        rc = -1;
    } else {
        rc = compile_jinja(f, tok, body, NULL, NULL, file, err, errlen);
    }
    json_decref(root);
    free(text);
    return rc;
}

int chat_format_init(struct chat_format *f, const struct tokenizer *tok, const char *tokenizer_path,
                     const char *file, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    if (file && *file) return load_file(f, tok, file, err, errlen);
    /* The model's own template: tokenizer_config.json, chat_template.jinja, or GGUF. */
    struct chat_template_source src = {0};
    char serr[256];
    if (tokenizer_path && chat_template_source_load(&src, tokenizer_path, serr, sizeof serr) == 0) {
        int rc = compile_jinja(f, tok, src.source, src.bos_token, src.eos_token, tokenizer_path, err, errlen);
        chat_template_source_free(&src);
        return rc;
    }
    chat_template_source_free(&src);
    if (has_token(tok, "<|im_start|>")) {
        static const char *const p[] = {"<|im_start|>system\n", "<|im_start|>user\n",
                                        "<|im_start|>assistant\n", "<|im_start|>tool\n"};
        set_builtin(f, "chatml", "", p, "<|im_end|>\n", "<|im_start|>assistant\n", false);
    } else if (has_token(tok, "<|start_header_id|>")) {
        static const char *const p[] = {
            "<|start_header_id|>system<|end_header_id|>\n\n",
            "<|start_header_id|>user<|end_header_id|>\n\n",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|start_header_id|>ipython<|end_header_id|>\n\n"};
        set_builtin(f, "llama3", "<|begin_of_text|>", p, "<|eot_id|>",
                    "<|start_header_id|>assistant<|end_header_id|>\n\n", false);
    } else {
        static const char *const p[] = {"System: ", "User: ", "Assistant: ", "Tool: "};
        set_builtin(f, "plain", "", p, "\n", "Assistant:", true);
    }
    return 0;
}

void chat_format_free(struct chat_format *f)
{
    chat_template_free(f->jinja);
    free(f->bos_token);
    free(f->eos_token);
    free(f->name);
    free(f->bos);
    free(f->generation_prompt);
    for (int r = 0; r < CHAT_ROLE_COUNT; r++) {
        free(f->prefix[r]);
        free(f->suffix[r]);
    }
    memset(f, 0, sizeof *f);
}

/* Message content: a string, or a list of parts of which the text ones are joined. Returns 0
 * or JSON_FIELD_INVALID with err filled. */
static int append_content(struct strbuf *b, const json_t *content, struct json_field_error *err)
{
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) {
        if (strbuf_append(b, json_string_value(content), json_string_length(content)) < 0)
            return json_field_fail(err, "messages", "out of memory rendering the messages");
        return 0;
    }
    if (!json_is_array(content))
        return json_field_fail(err, "messages", "'content' must be a string or an array of content parts");
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        const char *type = NULL;
        if (json_get_string(part, "type", true, &type, err) != JSON_FIELD_OK) return JSON_FIELD_INVALID;
        if (strcmp(type, "text") != 0)
            return json_field_fail(err, "messages", "only content parts of type 'text' are supported");
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(text)) return json_field_fail(err, "messages", "a text content part needs a 'text' string");
        if (strbuf_append(b, json_string_value(text), json_string_length(text)) < 0)
            return json_field_fail(err, "messages", "out of memory rendering the messages");
    }
    return 0;
}

/* A copy of messages whose assistant turns without content have "" instead, or NULL when
 * there are none such. OpenAI's clients send an assistant turn that only called tools with
 * content null; some templates test for exactly that (DeepSeek's), others read it as a
 * string and fail on null (Qwen3's `'</think>' in message.content`). */
static json_t *null_content_as_empty(const json_t *messages)
{
    json_t *copy = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        json_t *c = json_object_get(m, "content");
        if (strcmp(json_string_value(json_object_get(m, "role")) ?: "", "assistant") || (c && !json_is_null(c)))
            continue;
        if (!copy && !(copy = json_deep_copy(messages))) return NULL;
        json_object_set_new(json_array_get(copy, i), "content", json_string(""));
    }
    return copy;
}

static int render_jinja(const struct chat_format *f, const json_t *messages, const json_t *tools,
                        const json_t *kwargs, bool add_generation_prompt, char **out,
                        struct json_field_error *err)
{
    char terr[200]; /* leaves room for the sentence around it in err->message */
    int rc = chat_template_render(f->jinja, messages, tools, add_generation_prompt, f->bos_token,
                                  f->eos_token, kwargs, out, NULL, terr, sizeof terr);
    if (rc == CHAT_TEMPLATE_ERENDER) {
        /* A template that cannot take a tool-calling turn's null content gets "" instead. */
        json_t *retry = null_content_as_empty(messages);
        if (retry && chat_template_render(f->jinja, retry, tools, add_generation_prompt, f->bos_token, f->eos_token,
                                          kwargs, out, NULL, terr, sizeof terr) == 0)
            rc = 0;
        json_decref(retry);
    }
    if (rc == 0) return 0;
    snprintf(err->param, sizeof err->param, "messages");
    if (rc == CHAT_TEMPLATE_ERAISED || rc == CHAT_TEMPLATE_EARG) {
        snprintf(err->message, sizeof err->message, "the chat template rejected the messages: %s", terr);
        return 400;
    }
    snprintf(err->message, sizeof err->message, "the chat template could not be rendered: %s", terr);
    return 500;
}

/* A simple format: prefixes and suffixes. Returns 0 or JSON_FIELD_INVALID. */
static int render_simple(const struct chat_format *f, const json_t *messages,
                         bool add_generation_prompt, char **out, struct json_field_error *err)
{
    struct strbuf b = {0};
    if (strbuf_append(&b, f->bos, strlen(f->bos)) < 0) goto oom;
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg) {
        const char *role = json_string_value(json_object_get(msg, "role"));
        int r = -1;
        for (int k = 0; k < CHAT_ROLE_COUNT; k++)
            if (!strcmp(role, role_names[k])) r = k;
        if (!strcmp(role, "developer")) r = CHAT_ROLE_SYSTEM; /* OpenAI's newer name for system */
        if (r < 0) {
            strbuf_free(&b);
            return json_field_fail(err, "messages", "a message's 'role' must be system, developer, user, assistant or tool");
        }
        if (strbuf_append(&b, f->prefix[r], strlen(f->prefix[r])) < 0) goto oom;
        if (append_content(&b, json_object_get(msg, "content"), err) != 0) {
            strbuf_free(&b);
            return JSON_FIELD_INVALID;
        }
        if (strbuf_append(&b, f->suffix[r], strlen(f->suffix[r])) < 0) goto oom;
    }
    if (add_generation_prompt && strbuf_append(&b, f->generation_prompt, strlen(f->generation_prompt)) < 0)
        goto oom;
    *out = b.p;
    return 0;
oom:
    strbuf_free(&b);
    return json_field_fail(err, "messages", "out of memory rendering the messages");
}

/* What every template may rely on: each message an object with a string role, and content a
 * string, an array of parts, or (for an assistant turn that only calls tools) null. */
static int check_messages(const json_t *messages, struct json_field_error *err)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return json_field_fail(err, "messages", "'messages' must be a non-empty array");
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg) {
        json_t *role = json_object_get(msg, "role");
        if (!json_is_object(msg) || !json_is_string(role))
            return json_field_fail(err, "messages", "each message must be an object with a string 'role'");
        json_t *content = json_object_get(msg, "content");
        bool may_be_null = !strcmp(json_string_value(role), "assistant");
        if (!(json_is_string(content) || json_is_array(content) ||
              (may_be_null && (!content || json_is_null(content)))))
            return json_field_fail(err, "messages", "each message needs 'content': a string or an array of content parts");
    }
    return 0;
}

int chat_format_render(const struct chat_format *f, const json_t *messages, const json_t *tools,
                       const json_t *template_kwargs, bool add_generation_prompt, char **out,
                       struct json_field_error *err)
{
    if (check_messages(messages, err) != 0) return 400;
    if (f->jinja) return render_jinja(f, messages, tools, template_kwargs, add_generation_prompt, out, err);
    return render_simple(f, messages, add_generation_prompt, out, err) == 0 ? 0 : 400;
}
