/* Generation endpoints: the native ndjson stream the gateway uses (POST /generate) and
 * FastChat's /worker_generate_stream (NUL-delimited frames of cumulative text) and
 * /worker_generate (one JSON answer). All three feed the same engine; they differ only in
 * how engine events become bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/request_parse.h"
#include "worker/worker.h"

/* FastChat's error codes (fastchat/constants.py), so its clients read our errors. */
enum { FASTCHAT_OK = 0, FASTCHAT_CONTEXT_OVERFLOW = 40303, FASTCHAT_INTERNAL_ERROR = 50001 };

struct gen_stream {
    struct gen_stream *next;
    struct worker *w;
    uint64_t id;
    http_request *req;  /* NULL once the client is gone: events are then dropped */
    int mode;
    bool echo;
    int logprobs;
    char *prompt_text;
    /* FastChat modes send cumulative text: keep all of it. */
    char *text;
    size_t text_len, text_cap;
    int tokens_since_frame;
    json_t *logprob_items; /* FastChat blocking: accumulated logprobs */
    uint64_t accepted_ns;  /* for the latency histograms */
    bool got_first_token;
};

static double seconds_since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e9;
}

static struct gen_stream **stream_slot(struct worker *w, uint64_t id)
{
    struct gen_stream **p = &w->streams;
    while (*p && (*p)->id != id) p = &(*p)->next;
    return p;
}

static void stream_free(struct gen_stream *s)
{
    struct gen_stream **p = stream_slot(s->w, s->id);
    if (*p) *p = s->next;
    s->w->active--;
    free(s->prompt_text);
    free(s->text);
    json_decref(s->logprob_items);
    free(s);
}

static void on_client_gone(http_request *req, void *arg)
{
    (void)req;
    struct gen_stream *s = arg;
    s->req = NULL;
    metrics_series_add(s->w->metrics.aborted, 1);
    log_debug("request %llu: client disconnected, aborting", (unsigned long long)s->id);
    engine_abort(s->w->engine, s->id);
}

static void text_append(struct gen_stream *s, const char *t, size_t n)
{
    if (s->text_len + n + 1 > s->text_cap) {
        size_t cap = s->text_cap ? s->text_cap * 2 : 256;
        while (cap < s->text_len + n + 1) cap *= 2;
        s->text = realloc(s->text, cap);
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, t, n);
    s->text_len += n;
    s->text[s->text_len] = '\0';
}

static json_t *token_logprob_json(struct worker *w, int32_t id, float logprob)
{
    char piece[256];
    size_t n = tok_token_piece(w->tok, id, piece, sizeof piece);
    if (n >= sizeof piece) n = sizeof piece - 1;
    return json_pack("{s:i, s:s%, s:f}", "token_id", id, "token", piece, n, "logprob", (double)logprob);
}

static json_t *logprobs_json(struct worker *w, const struct engine_event *ev)
{
    json_t *arr = json_array();
    for (int i = 0; i < ev->n_tokens; i++) {
        const struct engine_token *t = &ev->tokens[i];
        json_t *item = token_logprob_json(w, t->id, t->logprob);
        json_t *top = json_array();
        for (int k = 0; k < t->n_top; k++)
            json_array_append_new(top, token_logprob_json(w, t->top_ids[k], t->top_logprobs[k]));
        json_object_set_new(item, "top_logprobs", top);
        json_array_append_new(arr, item);
    }
    return arr;
}

static json_t *usage_json(const struct engine_event *ev)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", ev->prompt_tokens, "completion_tokens",
                     ev->completion_tokens, "total_tokens", ev->prompt_tokens + ev->completion_tokens);
}

static const char *finish_text(enum finish_reason r)
{
    return r == FINISH_NONE ? NULL : finish_reason_name(r);
}

static void send_native_frame(struct gen_stream *s, const struct engine_event *ev)
{
    json_t *ids = json_array();
    for (int i = 0; i < ev->n_tokens; i++) json_array_append_new(ids, json_integer(ev->tokens[i].id));
    const char *finish = finish_text(ev->finish);
    json_t *frame = json_pack("{s:s%, s:o, s:o, s:o}", "text", ev->text ? ev->text : "",
                              ev->text_len, "token_ids", ids, "finish_reason",
                              finish ? json_string(finish) : json_null(), "usage", usage_json(ev));
    if (s->logprobs >= 0) json_object_set_new(frame, "logprobs", logprobs_json(s->w, ev));
    if (s->echo && s->prompt_text) {
        json_object_set_new(frame, "prompt_text", json_string(s->prompt_text));
        free(s->prompt_text);
        s->prompt_text = NULL;
    }
    if (ev->finish == FINISH_ERROR)
        json_object_set_new(frame, "error", json_pack("{s:s, s:i}", "message",
                                                      ev->error ? ev->error : "generation failed", "code", 500));
    char *line = json_dump_compact(frame);
    json_decref(frame);
    size_t n = strlen(line);
    line[n] = '\n'; /* replaces the NUL: the frame is a line of ndjson */
    http_stream_write(s->req, line, n + 1);
    free(line);
}

static json_t *fastchat_frame(struct gen_stream *s, const struct engine_event *ev)
{
    const char *finish = finish_text(ev->finish);
    bool failed = ev->finish == FINISH_ERROR;
    json_t *frame = json_pack("{s:s%, s:i, s:o, s:o}", "text",
                              failed ? (ev->error ? ev->error : "generation failed") : s->text,
                              failed ? strlen(ev->error ? ev->error : "generation failed") : s->text_len,
                              "error_code", failed ? FASTCHAT_INTERNAL_ERROR : FASTCHAT_OK, "usage",
                              usage_json(ev), "finish_reason",
                              finish && !failed ? json_string(finish) : json_null());
    if (s->logprob_items) json_object_set(frame, "logprobs", s->logprob_items);
    return frame;
}

void api_on_engine_event(const struct engine_event *ev, void *user)
{
    struct worker *w = user;
    struct gen_stream *s = *stream_slot(w, ev->id);
    if (!s) return;
    metrics_series_add(w->metrics.generation_tokens, ev->n_tokens);
    if (ev->n_tokens > 0 && !s->got_first_token) {
        s->got_first_token = true;
        metrics_series_observe(w->metrics.time_to_first_token, seconds_since(s->accepted_ns));
    }
    if (s->req) {
        if (s->mode == GEN_MODE_NATIVE) {
            send_native_frame(s, ev);
        } else {
            text_append(s, ev->text ? ev->text : "", ev->text_len);
            if (s->logprobs >= 0) {
                json_t *items = logprobs_json(w, ev);
                if (!s->logprob_items) s->logprob_items = json_array();
                json_array_extend(s->logprob_items, items);
                json_decref(items);
            }
            s->tokens_since_frame += ev->n_tokens;
            if (s->mode == GEN_MODE_FASTCHAT_STREAM &&
                (ev->finish != FINISH_NONE || s->tokens_since_frame >= w->opt.stream_interval)) {
                s->tokens_since_frame = 0;
                json_t *frame = fastchat_frame(s, ev);
                char *body = json_dump_compact(frame);
                json_decref(frame);
                /* FastChat frames end in a NUL byte, the string's own terminator. */
                http_stream_write(s->req, body, strlen(body) + 1);
                free(body);
            }
        }
    }
    if (ev->finish == FINISH_NONE) return;

    metrics_series_observe(w->metrics.request_latency, seconds_since(s->accepted_ns));
    if (s->req) {
        if (s->mode == GEN_MODE_FASTCHAT_BLOCKING) {
            http_respond_json(s->req, 200, fastchat_frame(s, ev));
        } else {
            http_stream_end(s->req);
        }
    }
    stream_free(s);
}

void api_generate(struct worker *w, http_request *req, int mode)
{
    struct json_field_error err = {{0}, {0}};
    size_t len;
    const char *body = http_request_body(req, &len);
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    if (st.failed) {
        http_response_header(req, "Retry-After", "5");
        http_respond_error(req, 503, NULL, "this worker's engine has failed: %s", st.error);
        return;
    }
    if (w->active >= w->opt.limit_worker_concurrency) {
        metrics_series_add(w->metrics.rejected, 1);
        http_response_header(req, "Retry-After", "1");
        http_respond_error(req, 503, NULL, "this worker is at its limit of %ld concurrent requests",
                           w->opt.limit_worker_concurrency);
        return;
    }
    json_t *root = json_parse_object(body, len, &err);
    if (!root) {
        http_respond_error(req, 400, err.param, "%s", err.message);
        return;
    }
    struct gen_params p;
    int status = gen_params_parse(w, root, &p, &err);
    json_decref(root);
    if (status) {
        metrics_series_add(w->metrics.rejected, 1);
        if (mode == GEN_MODE_NATIVE) {
            http_respond_error(req, status, err.param, "%s", err.message);
        } else {
            /* FastChat's clients read error_code in a 200 frame. */
            bool overflow = strstr(err.message, "context length") != NULL;
            json_t *frame = json_pack("{s:s, s:i}", "text", err.message, "error_code",
                                      overflow ? FASTCHAT_CONTEXT_OVERFLOW : 40001);
            if (mode == GEN_MODE_FASTCHAT_BLOCKING) {
                http_respond_json(req, 200, frame);
            } else {
                char *s = json_dump_compact(frame);
                json_decref(frame);
                http_respond(req, 200, "application/octet-stream", s, strlen(s) + 1);
                free(s);
            }
        }
        gen_params_free(&p);
        return;
    }

    struct gen_stream *s = calloc(1, sizeof *s);
    s->w = w;
    s->id = ++w->next_request_id;
    s->req = req;
    s->mode = mode;
    s->accepted_ns = uv_hrtime();
    s->echo = p.echo;
    s->logprobs = p.logprobs;
    if (p.echo && mode != GEN_MODE_NATIVE) text_append(s, p.prompt_text, strlen(p.prompt_text));
    s->prompt_text = p.echo ? p.prompt_text : NULL;
    if (!p.echo) free(p.prompt_text);
    p.prompt_text = NULL;
    p.req->id = s->id;
    s->next = w->streams;
    w->streams = s;
    w->active++;
    metrics_series_add(w->metrics.requests, 1);
    metrics_series_add(w->metrics.prompt_tokens, p.req->n_prompt);

    http_request_on_close(req, on_client_gone, s);
    if (mode == GEN_MODE_NATIVE)
        http_stream_begin(req, 200, "application/x-ndjson");
    else if (mode == GEN_MODE_FASTCHAT_STREAM)
        http_stream_begin(req, 200, "application/octet-stream");

    struct engine_request *er = p.req;
    p.req = NULL;
    if (engine_submit(w->engine, er) != 0) {
        /* The engine failed between our check and now: end the stream with an error. */
        struct engine_event ev = {.id = s->id, .finish = FINISH_ERROR, .error = "the engine is not accepting requests"};
        api_on_engine_event(&ev, w);
    }
}
