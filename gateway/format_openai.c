#include "gateway/format_openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

void gw_format_id(enum gw_api api, char *out, size_t cap)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char raw[24];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        /* getrandom only fails before the pool is seeded; uniqueness still matters more than
         * unpredictability for ids. */
        static unsigned counter;
        for (size_t i = 0; i < sizeof raw; i++) raw[i] = (unsigned char)(++counter * 131u + i);
    }
    char tail[sizeof raw + 1];
    for (size_t i = 0; i < sizeof raw; i++) tail[i] = alphabet[raw[i] % (sizeof alphabet - 1)];
    tail[sizeof raw] = '\0';
    snprintf(out, cap, "%s%s", api == GW_API_CHAT ? "chatcmpl-" : "cmpl-", tail);
}

json_t *gw_chunk_new(enum gw_api api, const char *id, int64_t created, const char *model,
                     int with_usage)
{
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", id, "object",
                          api == GW_API_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)created, "model", model, "choices");
    if (api == GW_API_CHAT) json_object_set_new(c, "system_fingerprint", json_null());
    if (with_usage) json_object_set_new(c, "usage", json_null());
    return c;
}

json_t *gw_chunk_choice(enum gw_api api, size_t index, const char *role, const char *text,
                        size_t text_len, json_t *logprobs, const char *finish)
{
    json_t *choice = json_pack("{s:I}", "index", (json_int_t)index);
    if (api == GW_API_CHAT) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string(role));
        if (text) json_object_set_new(delta, "content", json_stringn(text, text_len));
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", json_stringn(text ? text : "", text ? text_len : 0));
    }
    json_object_set_new(choice, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    return choice;
}

json_t *gw_usage_json(int64_t prompt_tokens, int64_t completion_tokens)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt_tokens,
                     "completion_tokens", (json_int_t)completion_tokens, "total_tokens",
                     (json_int_t)(prompt_tokens + completion_tokens));
}

static json_t *utf8_bytes(const char *s)
{
    json_t *arr = json_array();
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        json_array_append_new(arr, json_integer(*p));
    return arr;
}

/* A frame's "token" string (kept whole, U+0000 included), or "" when absent. */
static json_t *token_string(const json_t *item)
{
    json_t *t = json_object_get(item, "token");
    return json_is_string(t) ? json_incref(t) : json_string("");
}

static json_t *chat_token(const json_t *item)
{
    json_t *token = token_string(item);
    /* The worker sends a token's exact bytes, which differ from its text when the token is
     * part of a character; older workers send only the text. */
    json_t *bytes = json_object_get(item, "bytes");
    return json_pack("{s:o, s:f, s:o}", "token", token, "logprob",
                     json_number_value(json_object_get(item, "logprob")), "bytes",
                     json_is_array(bytes) ? json_incref(bytes) : utf8_bytes(json_string_value(token)));
}

json_t *gw_chat_logprobs(const json_t *frame_logprobs)
{
    json_t *content = json_array();
    size_t i, k;
    json_t *item, *alt;
    json_array_foreach(frame_logprobs, i, item) {
        json_t *entry = chat_token(item);
        json_t *top = json_array();
        json_array_foreach(json_object_get(item, "top_logprobs"), k, alt)
            json_array_append_new(top, chat_token(alt));
        json_object_set_new(entry, "top_logprobs", top);
        json_array_append_new(content, entry);
    }
    return json_pack("{s:o, s:n}", "content", content, "refusal");
}

json_t *gw_completion_logprobs_new(void)
{
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

int64_t gw_utf8_length(const char *s, size_t len)
{
    int64_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) n++;
    return n;
}

void gw_completion_logprobs_append(json_t *acc, const json_t *frame_logprobs, int64_t *offset)
{
    size_t i, k;
    json_t *item, *alt;
    json_array_foreach(frame_logprobs, i, item) {
        json_t *tok = token_string(item);
        const char *token = json_string_value(tok);
        json_t *lp = json_object_get(item, "logprob");
        json_array_append(json_object_get(acc, "tokens"), tok);
        if (json_is_null(lp)) {
            json_array_append_new(json_object_get(acc, "token_logprobs"), json_null());
            json_array_append_new(json_object_get(acc, "top_logprobs"), json_null());
            json_array_append_new(json_object_get(acc, "text_offset"), json_integer(*offset));
            *offset += gw_utf8_length(token, json_string_length(tok));
            json_decref(tok);
            continue;
        }
        json_array_append_new(json_object_get(acc, "token_logprobs"), json_real(json_number_value(lp)));
        json_t *top = json_object();
        json_array_foreach(json_object_get(item, "top_logprobs"), k, alt) {
            const char *t = json_string_value(json_object_get(alt, "token"));
            json_object_set_new(top, t ? t : "", json_real(json_number_value(json_object_get(alt, "logprob"))));
        }
        /* With logprobs=0 the dict still names the sampled token, as vLLM does. */
        if (json_object_size(top) == 0) json_object_set_new(top, token, json_real(json_number_value(lp)));
        json_array_append_new(json_object_get(acc, "top_logprobs"), top);
        json_array_append_new(json_object_get(acc, "text_offset"), json_integer(*offset));
        *offset += gw_utf8_length(token, json_string_length(tok));
        json_decref(tok);
    }
}

json_t *gw_prompt_logprobs(const json_t *frame_prompt_logprobs)
{
    json_t *out = json_array();
    size_t i, k;
    json_t *item, *alt;
    char id[24];
    json_array_foreach(frame_prompt_logprobs, i, item) {
        json_t *lp = json_object_get(item, "logprob");
        if (json_is_null(lp)) {
            json_array_append_new(out, json_null());
            continue;
        }
        json_t *entry = json_object();
        json_array_foreach(json_object_get(item, "top_logprobs"), k, alt) {
            snprintf(id, sizeof id, "%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(alt, "token_id")));
            json_object_set_new(entry, id, json_pack("{s:f, s:I, s:o}", "logprob",
                                                     json_number_value(json_object_get(alt, "logprob")), "rank",
                                                     (json_int_t)(k + 1), "decoded_token", token_string(alt)));
        }
        /* The prompt's own token, with its rank among the whole vocabulary. */
        snprintf(id, sizeof id, "%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(item, "token_id")));
        json_object_set_new(entry, id, json_pack("{s:f, s:I, s:o}", "logprob", json_number_value(lp), "rank",
                                                 json_integer_value(json_object_get(item, "rank")), "decoded_token",
                                                 token_string(item)));
        json_array_append_new(out, entry);
    }
    return out;
}

json_t *gw_response_new(enum gw_api api, const char *id, int64_t created, const char *model)
{
    json_t *r = json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", id, "object",
                          api == GW_API_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)created, "model", model, "choices");
    if (api == GW_API_CHAT) json_object_set_new(r, "system_fingerprint", json_null());
    return r;
}

json_t *gw_response_choice(enum gw_api api, size_t index, const char *text, size_t text_len,
                           json_t *logprobs, const char *finish)
{
    json_t *choice = json_pack("{s:I}", "index", (json_int_t)index);
    json_t *t = json_stringn(text ? text : "", text ? text_len : 0);
    if (api == GW_API_CHAT) {
        json_object_set_new(choice, "message", json_pack("{s:s, s:o, s:n}", "role", "assistant",
                                                         "content", t, "refusal"));
    } else {
        json_object_set_new(choice, "text", t);
    }
    json_object_set_new(choice, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(choice, "finish_reason", json_string(finish ? finish : "stop"));
    return choice;
}

/* One tool-call delta with only the keys OpenAI's have. */
static json_t *tool_call_delta(const json_t *d)
{
    json_t *out = json_pack("{s:O}", "index", json_object_get(d, "index"));
    json_t *fn = json_object_get(d, "function");
    static const char *const keys[] = {"id", "type"};
    for (size_t k = 0; k < 2; k++) {
        json_t *v = json_object_get(d, keys[k]);
        if (json_is_string(v)) json_object_set(out, keys[k], v);
    }
    if (json_is_object(fn)) {
        json_t *f = json_object();
        json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
        if (json_is_string(name)) json_object_set(f, "name", name);
        if (json_is_string(args)) json_object_set(f, "arguments", args);
        json_object_set_new(out, "function", f);
    }
    return out;
}

void gw_chat_delta_extras(json_t *choice, const char *reasoning, size_t reasoning_len, const json_t *tool_calls)
{
    json_t *delta = json_object_get(choice, "delta");
    if (!delta) return;
    if (reasoning && reasoning_len > 0)
        json_object_set_new(delta, "reasoning_content", json_stringn(reasoning, reasoning_len));
    if (json_array_size(tool_calls) > 0) {
        json_t *calls = json_array();
        size_t i;
        json_t *d;
        json_array_foreach(tool_calls, i, d) json_array_append_new(calls, tool_call_delta(d));
        json_object_set_new(delta, "tool_calls", calls);
    }
}

void gw_tool_calls_merge(json_t *acc, const json_t *deltas)
{
    size_t i, k;
    json_t *d, *e;
    json_array_foreach(deltas, i, d) {
        json_int_t index = json_integer_value(json_object_get(d, "index"));
        json_t *call = NULL;
        json_array_foreach(acc, k, e) {
            if (json_integer_value(json_object_get(e, "index")) == index) call = e;
        }
        json_t *fn = json_object_get(d, "function");
        const char *id = json_string_value(json_object_get(d, "id"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        if (!call) {
            const char *type = json_string_value(json_object_get(d, "type"));
            call = json_pack("{s:I, s:s, s:s, s:s, s:s}", "index", index, "id", id ? id : "", "type",
                             type ? type : "function", "name", name ? name : "", "arguments", "");
            if (!call) continue;
            json_array_append_new(acc, call);
        } else if (name && !*json_string_value(json_object_get(call, "name"))) {
            json_object_set_new(call, "name", json_string(name));
        }
        if (args && *args) {
            json_t *old = json_object_get(call, "arguments");
            size_t n = json_string_length(old), m = strlen(args);
            char *joined = malloc(n + m + 1);
            if (!joined) continue;
            memcpy(joined, json_string_value(old), n);
            memcpy(joined + n, args, m + 1);
            json_object_set_new(call, "arguments", json_stringn_nocheck(joined, n + m));
            free(joined);
        }
    }
}

json_t *gw_tool_calls_final(const json_t *acc)
{
    json_t *out = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(acc, i, e) {
        json_array_append_new(out, json_pack("{s:O, s:O, s:{s:O, s:O}}", "id", json_object_get(e, "id"), "type",
                                             json_object_get(e, "type"), "function", "name", json_object_get(e, "name"),
                                             "arguments", json_object_get(e, "arguments")));
    }
    return out;
}

json_t *gw_chat_response_choice(size_t index, const char *text, size_t text_len, const char *reasoning,
                                size_t reasoning_len, json_t *tool_calls, json_t *logprobs, const char *finish)
{
    bool calls = json_array_size(tool_calls) > 0;
    json_t *choice = gw_response_choice(GW_API_CHAT, index, text, text_len, logprobs, finish);
    json_t *message = json_object_get(choice, "message");
    if (calls && text_len == 0) json_object_set_new(message, "content", json_null());
    if (calls) json_object_set(message, "tool_calls", tool_calls);
    if (reasoning && reasoning_len > 0)
        json_object_set_new(message, "reasoning_content", json_stringn(reasoning, reasoning_len));
    json_decref(tool_calls);
    return choice;
}
