/* What the client sees: SSE chunks as frames arrive, or one response once every choice has
 * finished; and errors in OpenAI's shape either way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"
#include "common/log.h"
#include "common/utf8.h"
#include "gateway/format_openai.h"
#include "gateway/proxy.h"
#include "gateway/proxy_frame.h"

static double since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e9;
}

static void stream_begin(struct gw_gen *gen)
{
    if (gen->streaming) return;
    gen->streaming = true;
    gen->status = 200;
    http_response_header(gen->req, "Cache-Control", "no-cache");
    http_stream_begin(gen->req, 200, "text/event-stream");
    gw_metrics_request(gen->g->metrics, gen->route, 200);
}

/* A write the client cannot take drops the stream: cancelling upstream closes the worker's
 * connection, which aborts the sequence; the server calls on_close next. */
static void stream_send(struct gw_gen *gen, json_t *payload)
{
    char *text = json_dump_compact(payload);
    json_decref(payload);
    int rc = http_stream_sse(gen->req, text, strlen(text));
    free(text);
    if (rc != HTTP_STREAM_OK) {
        log_warn("%s: client %s, dropping the stream", gw_gen_rid(gen), rc == HTTP_STREAM_SLOW ? "too slow" : "gone");
        gw_gen_stop(gen);
    }
}

/* Sends one choice in a chunk; *extra (stolen, then NULL) is vLLM's prompt_logprobs, which
 * ride on the choice's first chunk. */
static void send_choice_with(struct gw_gen *gen, json_t *choice, json_t **extra)
{
    if (extra && *extra) {
        json_object_set_new(choice, "prompt_logprobs", *extra);
        *extra = NULL;
    }
    if (gen->ended) {
        json_decref(choice);
        return;
    }
    json_t *chunk = gw_chunk_new(gen->p.api, gen->id, gen->created, gen->p.model, gen->p.include_usage);
    json_array_append_new(json_object_get(chunk, "choices"), choice);
    stream_send(gen, chunk);
}

static void send_choice(struct gw_gen *gen, json_t *choice)
{
    send_choice_with(gen, choice, NULL);
}

/* Completions' echo with logprobs: the prompt's tokens lead the logprobs, from offset 0. */
static bool echo_logprobs(const struct gw_gen *gen, const json_t *prompt_lps)
{
    return gen->p.api == GW_API_COMPLETION && gen->p.echo && gen->p.logprobs >= 0 && json_is_array(prompt_lps);
}

/* What a chat frame carries besides content: reasoning and tool-call deltas. */
struct frame_extras {
    const char *reasoning;
    size_t reasoning_len;
    const json_t *tool_calls;
    const json_t *prompt_logprobs; /* the prompt's, when asked (prompt_logprobs or echo) */
};

static void stream_frame(struct gw_gen *gen, struct gw_choice *c, const char *text, size_t len,
                         const json_t *lps, const char *prompt_text, const char *finish, const struct frame_extras *x)
{
    enum gw_api api = gen->p.api;
    bool want_lp = gen->p.logprobs >= 0 && json_array_size(lps) > 0;
    const json_t *prompt_lps = x->prompt_logprobs;
    json_t *plp = gen->p.prompt_logprobs >= 0 && json_is_array(prompt_lps) ? gw_prompt_logprobs(prompt_lps) : NULL;
    if (api == GW_API_CHAT && !c->role_sent) {
        c->role_sent = true;
        send_choice_with(gen, gw_chunk_choice(api, c->index, "assistant", "", 0, NULL, NULL), &plp);
    }
    if (api == GW_API_COMPLETION && prompt_text) {
        size_t n = strlen(prompt_text);
        json_t *lp = NULL;
        if (echo_logprobs(gen, prompt_lps)) {
            int64_t at = 0;
            lp = gw_completion_logprobs_new();
            gw_completion_logprobs_append(lp, prompt_lps, &at);
        }
        c->offset += gw_utf8_length(prompt_text, n);
        send_choice_with(gen, gw_chunk_choice(api, c->index, NULL, prompt_text, n, lp, NULL), &plp);
    }
    bool extras = api == GW_API_CHAT && (x->reasoning_len > 0 || json_array_size(x->tool_calls) > 0);
    if (len > 0 || want_lp || extras || plp) {
        json_t *lp = NULL;
        if (want_lp && api == GW_API_CHAT) {
            lp = gw_chat_logprobs(lps);
        } else if (want_lp) {
            lp = gw_completion_logprobs_new();
            gw_completion_logprobs_append(lp, lps, &c->offset);
        }
        if (!want_lp || api == GW_API_CHAT) c->offset += gw_utf8_length(text, len);
        json_t *choice = gw_chunk_choice(api, c->index, NULL, len > 0 || want_lp ? text : NULL, len, lp, NULL);
        if (extras) gw_chat_delta_extras(choice, x->reasoning, x->reasoning_len, x->tool_calls);
        send_choice_with(gen, choice, &plp);
    }
    if (finish) send_choice(gen, gw_chunk_choice(api, c->index, NULL, NULL, 0, NULL, finish));
}

static void collect_frame(struct gw_gen *gen, struct gw_choice *c, const char *text, size_t len,
                          const json_t *lps, const char *prompt_text, const struct frame_extras *x)
{
    const json_t *prompt_lps = x->prompt_logprobs;
    if (gen->p.prompt_logprobs >= 0 && json_is_array(prompt_lps) && !c->prompt_logprobs)
        c->prompt_logprobs = gw_prompt_logprobs(prompt_lps);
    if (echo_logprobs(gen, prompt_lps) && !c->logprobs) {
        int64_t at = 0;
        c->logprobs = gw_completion_logprobs_new();
        gw_completion_logprobs_append(c->logprobs, prompt_lps, &at);
    }
    if (prompt_text) {
        size_t n = strlen(prompt_text);
        strbuf_append(&c->text, prompt_text, n);
        c->offset += gw_utf8_length(prompt_text, n);
    }
    strbuf_append(&c->text, text, len);
    if (gen->p.api == GW_API_CHAT) {
        strbuf_append(&c->reasoning, x->reasoning, x->reasoning_len);
        if (json_array_size(x->tool_calls) > 0) {
            if (!c->tool_calls) c->tool_calls = json_array();
            gw_tool_calls_merge(c->tool_calls, x->tool_calls);
        }
    }
    if (gen->p.logprobs < 0 || !json_is_array(lps)) return;
    if (gen->p.api == GW_API_CHAT) {
        if (!c->logprobs) c->logprobs = json_array();
        json_t *lp = gw_chat_logprobs(lps);
        json_array_extend(c->logprobs, json_object_get(lp, "content"));
        json_decref(lp);
    } else {
        if (!c->logprobs) c->logprobs = gw_completion_logprobs_new();
        gw_completion_logprobs_append(c->logprobs, lps, &c->offset);
    }
}

static void observe_tokens(struct gw_gen *gen, struct gw_choice *c, size_t n_tokens)
{
    if (n_tokens == 0) return;
    uint64_t now = uv_hrtime();
    if (!gen->first_token) {
        gen->first_token = true;
        gen->ttft_s = (double)(now - gen->start_ns) / 1e9;
        gw_metrics_ttft(gen->g->metrics, gen->ttft_s);
    }
    if (c->last_token_ns) {
        double per = (double)(now - c->last_token_ns) / 1e9 / (double)n_tokens;
        for (size_t i = 0; i < n_tokens; i++) gw_metrics_itl(gen->g->metrics, per);
    }
    c->last_token_ns = now;
}

void gw_emit_frame(struct gw_gen *gen, struct gw_choice *c, const json_t *frame)
{
    if (gen->ended) return;
    json_t *t = json_object_get(frame, "text");
    const char *text = json_is_string(t) ? json_string_value(t) : "";
    size_t len = json_is_string(t) ? json_string_length(t) : 0;
    const char *finish = json_string_value(json_object_get(frame, "finish_reason"));
    const char *prompt_text = json_string_value(json_object_get(frame, "prompt_text"));
    const json_t *lps = json_object_get(frame, "logprobs");
    json_t *r = json_object_get(frame, "reasoning_content");
    struct frame_extras x = {.reasoning = json_string_value(r), .reasoning_len = json_string_length(r),
                             .tool_calls = json_object_get(frame, "tool_calls"),
                             .prompt_logprobs = json_object_get(frame, "prompt_logprobs")};
    /* Frames reach here checked (gw_frame_check): counts are integers in 0..INT32_MAX. */
    json_t *usage = json_object_get(frame, "usage");
    if (json_is_object(usage)) {
        c->prompt_tokens = json_integer_value(json_object_get(usage, "prompt_tokens"));
        c->completion_tokens = json_integer_value(json_object_get(usage, "completion_tokens"));
    }
    observe_tokens(gen, c, json_array_size(json_object_get(frame, "token_ids")));

    if (finish && !strcmp(finish, "error")) {
        const char *m = json_string_value(json_object_get(json_object_get(frame, "error"), "message"));
        char msg[512];
        utf8_snprintf(msg, sizeof msg, "the worker failed while generating: %s", m ? m : "unknown error");
        gw_emit_error(gen, 500, NULL, msg, NULL);
        return;
    }
    if (gen->p.stream) {
        stream_begin(gen);
        stream_frame(gen, c, text, len, lps, prompt_text, finish, &x);
    } else {
        collect_frame(gen, c, text, len, lps, prompt_text, &x);
    }
    if (finish) {
        snprintf(c->finish, sizeof c->finish, "%s", finish);
        c->finished = true;
    }
}

void gw_gen_totals(const struct gw_gen *gen, int64_t *prompt, int64_t *completion)
{
    *prompt = *completion = 0;
    for (size_t i = 0; i < gen->n_choices; i++) {
        /* Choices of one prompt share it: count it once. */
        if (i % (size_t)gen->p.n == 0) *prompt += gen->choices[i].prompt_tokens;
        *completion += gen->choices[i].completion_tokens;
    }
}

void gw_emit_success(struct gw_gen *gen)
{
    if (gen->ended) return;
    int64_t prompt, completion;
    gw_gen_totals(gen, &prompt, &completion);
    /* Each count is at most INT32_MAX, so these int64 sums cannot overflow; a total that
     * would not fit a 32-bit int is still no real answer's. */
    if (prompt + completion > GW_FRAME_MAX_COUNT) {
        log_warn("%s: the workers reported %lld prompt and %lld completion tokens", gw_gen_rid(gen), (long long)prompt,
                 (long long)completion);
        gw_emit_error(gen, 502, NULL, "the workers reported more tokens than any answer can have", NULL);
        return;
    }
    gw_metrics_tokens(gen->g->metrics, prompt, completion);
    if (gen->p.stream) {
        if (gen->p.include_usage) {
            json_t *chunk = gw_chunk_new(gen->p.api, gen->id, gen->created, gen->p.model, 0);
            json_object_set_new(chunk, "usage", gw_usage_json(prompt, completion));
            stream_send(gen, chunk);
        }
        if (!gen->ended) {
            http_stream_sse(gen->req, "[DONE]", 6);
            http_stream_end(gen->req);
            gen->req = NULL;
        }
    } else {
        json_t *r = gw_response_new(gen->p.api, gen->id, gen->created, gen->p.model);
        json_t *choices = json_object_get(r, "choices");
        for (size_t i = 0; i < gen->n_choices; i++) {
            struct gw_choice *c = &gen->choices[i];
            json_t *lp = NULL;
            if (c->logprobs && gen->p.api == GW_API_CHAT)
                lp = json_pack("{s:O, s:n}", "content", c->logprobs, "refusal");
            else if (c->logprobs)
                lp = json_incref(c->logprobs);
            json_t *choice = gen->p.api == GW_API_CHAT
                                 ? gw_chat_response_choice(c->index, strbuf_str(&c->text), c->text.len,
                                                           strbuf_str(&c->reasoning), c->reasoning.len,
                                                           gw_tool_calls_final(c->tool_calls), lp, c->finish)
                                 : gw_response_choice(gen->p.api, c->index, strbuf_str(&c->text), c->text.len, lp,
                                                      c->finish);
            /* vLLM puts them on each completion choice, and on a chat response (one prompt). */
            if (c->prompt_logprobs && gen->p.api == GW_API_COMPLETION)
                json_object_set(choice, "prompt_logprobs", c->prompt_logprobs);
            else if (c->prompt_logprobs && i == 0)
                json_object_set(r, "prompt_logprobs", c->prompt_logprobs);
            json_array_append_new(choices, choice);
        }
        json_object_set_new(r, "usage", gw_usage_json(prompt, completion));
        gen->status = 200;
        gw_respond_json(gen->g, gen->req, gen->route, 200, r);
        gen->req = NULL;
    }
    if (!gen->ended) gw_metrics_e2e(gen->g->metrics, since(gen->start_ns));
    gw_gen_stop(gen);
}

void gw_emit_error(struct gw_gen *gen, int status, const char *param, const char *message,
                   const char *retry_after)
{
    if (gen->ended) return;
    log_info("%s: answering %d: %s", gw_gen_rid(gen), status, message);
    utf8_snprintf(gen->error, sizeof gen->error, "%s", message);
    if (!gen->streaming) gen->status = status;
    if (gen->streaming) {
        char *body = openai_error_body(message, openai_error_type_for_status(status), param,
                                       NULL);
        const char *text = body ? body : openai_error_body_oom;
        int rc = http_stream_sse(gen->req, text, strlen(text));
        free(body);
        if (rc == HTTP_STREAM_OK) {
            http_stream_sse(gen->req, "[DONE]", 6);
            http_stream_end(gen->req);
            gen->req = NULL;
        }
    } else {
        if (retry_after) http_response_header(gen->req, "Retry-After", retry_after);
        gw_respond_error(gen->g, gen->req, gen->route, status, param, "%s", message);
        gen->req = NULL;
    }
    gw_gen_stop(gen);
}
