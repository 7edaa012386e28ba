/* Generation endpoints: the native ndjson stream the gateway uses (POST /generate) and
 * FastChat's /worker_generate_stream (NUL-delimited frames of cumulative text) and
 * /worker_generate (one JSON answer). All three feed the same engine; they differ only in
 * how engine events become bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonlog.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "common/trace.h"
#include "common/utf8.h"
#include "worker/api/gen_output.h"
#include "worker/api/request_parse.h"
#include "worker/api/worker.h"

/* FastChat's error codes (fastchat/constants.py), so its clients read our errors. */
enum {
    FASTCHAT_OK = 0,
    FASTCHAT_VALIDATION_ERROR = 40001,
    FASTCHAT_CONTEXT_OVERFLOW = 40303,
    FASTCHAT_ENGINE_OVERLOADED = 42903,
    FASTCHAT_INTERNAL_ERROR = 50001,
};

struct gen_stream {
    struct gen_stream *next;
    struct worker *w;
    uint64_t id;
    http_request *req;  /* NULL once the client is gone: events are then dropped */
    int mode;
    bool echo;
    int logprobs;
    char *prompt_text;
    /* The prompt tokens' logprobs go out on the first frame with a token (then this is false);
     * the first prompt token, which has none, is named by first_prompt_id. */
    bool prompt_logprobs;
    int32_t first_prompt_id;
    /* FastChat modes send cumulative text: keep all of it. */
    struct strbuf text;
    int tokens_since_frame;
    /* FastChat modes: every token's logprob so far, as FastChat's own worker sends them
     * (fastchat/serve/inference.py): {"text_offset", "tokens", "token_logprobs",
     * "top_logprobs"}, offsets in characters of the cumulative text. */
    json_t *fastchat_logprobs;
    int64_t fastchat_offset;
    /* Native mode: tool calls and reasoning read out of the text (NULL: it is all content). */
    struct gen_output *output;
    uint64_t accepted_ns;  /* for the latency histograms */
    bool got_first_token;
    double ttft_s;
    /* The caller's request id (the gateway's X-Request-Id) and trace: the request line and the
     * span carry them. */
    char request_id[TRACE_REQUEST_ID_SIZE];
    struct trace_span span;
};

static const char *mode_endpoint(int mode)
{
    return mode == GEN_MODE_NATIVE ? "/generate" : mode == GEN_MODE_FASTCHAT_STREAM ? "/worker_generate_stream"
                                                                                   : "/worker_generate";
}

/* One JSON line per generation request (--access-log), and its span when traced. */
static void request_line(const char *request_id, const struct trace_span *span, int mode, int status,
                         json_t *extra, double duration_s)
{
    json_t *line = json_pack("{s:s, s:s, s:s, s:i, s:f, s:s?}", "type", "request", "request_id", request_id, "endpoint",
                             mode_endpoint(mode), "status", status, "duration_ms", duration_s * 1000.0, "trace_id",
                             trace_span_active(span) ? span->trace_id : NULL);
    if (line && extra) json_object_update(line, extra);
    trace_span_log(span, "worker.generate",
                   json_pack("{s:s, s:s, s:i}", "request_id", request_id, "endpoint", mode_endpoint(mode), "status",
                             status));
    json_decref(extra);
    jsonlog_write(line);
}

double api_queue_wait_s(struct worker *w)
{
    uint64_t now = uv_hrtime(), oldest = 0;
    for (struct gen_stream *s = w->streams; s; s = s->next)
        if (!s->got_first_token && now - s->accepted_ns > oldest) oldest = now - s->accepted_ns;
    return (double)oldest / 1e9;
}

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
    strbuf_free(&s->text);
    json_decref(s->fastchat_logprobs);
    gen_output_free(s->output);
    free(s);
}

static void on_client_gone(http_request *req, void *arg)
{
    (void)req;
    struct gen_stream *s = arg;
    s->req = NULL;
    metrics_series_add(s->w->metrics.aborted, 1);
    log_debug("request %s: client disconnected, aborting", s->request_id);
    engine_abort(s->w->engine, s->id);
}

/* The UTF-8 sequence starting at s[0] (at most n bytes): sets *len to the bytes it covers and
 * returns whether it is a whole character. An incomplete character covers its lead byte and
 * the continuation bytes that follow, so that it becomes one U+FFFD, as Python's and Rust's
 * lossy decoders make it. */
static bool utf8_sequence(const unsigned char *s, size_t n, size_t *len)
{
    size_t want = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3
                : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    size_t k = 1;
    while (want > 1 && k < want && k < n && (s[k] & 0xC0) == 0x80) k++;
    *len = k;
    return want > 0 && k == want;
}

/* A token's text for logprobs. One character often spans several byte tokens, so a piece may
 * not be valid UTF-8 alone: "token" carries it with U+FFFD for such bytes (as OpenAI does),
 * and "bytes" the exact bytes. */
static json_t *token_logprob_json(struct worker *w, int32_t id, float logprob)
{
    unsigned char piece[256];
    size_t n = tok_token_piece(w->tok, id, (char *)piece, sizeof piece);
    if (n > sizeof piece) n = sizeof piece;
    char text[3 * sizeof piece + 1];
    size_t len = 0;
    json_t *bytes = json_array();
    for (size_t i = 0; i < n;) {
        size_t k;
        if (utf8_sequence(piece + i, n - i, &k)) {
            memcpy(text + len, piece + i, k);
            len += k;
        } else {
            memcpy(text + len, "\xEF\xBF\xBD", 3);
            len += 3;
        }
        for (size_t j = i; j < i + k; j++) json_array_append_new(bytes, json_integer(piece[j]));
        i += k;
    }
    return json_pack("{s:i, s:s%, s:f, s:o}", "token_id", id, "token", text, len, "logprob",
                     (double)logprob, "bytes", bytes);
}

/* The prompt's tokens with their logprobs: the first with "logprob": null (nothing comes
 * before it), then each with its rank and alternatives. */
static json_t *prompt_logprobs_json(struct worker *w, int32_t first_id, const struct engine_event *ev)
{
    json_t *arr = json_array();
    json_t *first = token_logprob_json(w, first_id, 0.0f);
    json_object_set_new(first, "logprob", json_null());
    json_object_set_new(first, "top_logprobs", json_array());
    json_array_append_new(arr, first);
    for (int32_t i = 0; i < ev->n_prompt_logprobs; i++) {
        const struct prompt_logprob *p = &ev->prompt_logprobs[i];
        json_t *item = token_logprob_json(w, p->token, p->logprob);
        json_object_set_new(item, "rank", json_integer(p->rank));
        json_t *top = json_array();
        for (int k = 0; k < p->n_top; k++)
            json_array_append_new(top, token_logprob_json(w, p->top_ids[k], p->top_logprobs[k]));
        json_object_set_new(item, "top_logprobs", top);
        json_array_append_new(arr, item);
    }
    return arr;
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

/* Why a FINISH_ERROR event failed. */
static const char *error_text(const struct engine_event *ev)
{
    return ev->error ? ev->error : "generation failed";
}

/* A frame that cannot be built or encoded is a bug (all text is whole UTF-8), so it is not
 * dropped in silence, which left the client a stream that just stopped: it is logged and the
 * request ends with an error frame, which always encodes, and its sequence is aborted (the
 * engine's last event for it then finds no client). */
static void fail_frame(struct gen_stream *s, const struct engine_event *ev)
{
    static const char msg[] = "the worker could not encode the next part of this answer (a bug); generation was stopped";
    log_error("request %s: could not build or encode a %s frame; ending the request with an error",
              s->request_id, s->mode == GEN_MODE_NATIVE ? "native" : "FastChat");
    char frame[512];
    int n;
    if (s->mode == GEN_MODE_NATIVE)
        n = snprintf(frame, sizeof frame,
                     "{\"text\":\"\",\"token_ids\":[],\"finish_reason\":\"error\",\"usage\":{\"prompt_tokens\":%d,"
                     "\"completion_tokens\":%d,\"total_tokens\":%d},\"error\":{\"message\":\"%s\",\"code\":500}}\n",
                     ev->prompt_tokens, ev->completion_tokens, ev->prompt_tokens + ev->completion_tokens, msg);
    else
        n = snprintf(frame, sizeof frame, "{\"text\":\"%s\",\"error_code\":%d}", msg, FASTCHAT_INTERNAL_ERROR) + 1;
    if (s->mode == GEN_MODE_FASTCHAT_BLOCKING) {
        http_respond(s->req, 200, "application/json", frame, strlen(frame));
    } else {
        http_stream_write(s->req, frame, (size_t)n); /* a FastChat frame ends in its NUL */
        http_stream_end(s->req);
    }
    s->req = NULL;
    if (ev->finish == FINISH_NONE) engine_abort(s->w->engine, s->id);
}

static void send_native_frame(struct gen_stream *s, const struct engine_event *ev)
{
    const char *text = ev->text ? ev->text : "";
    size_t text_len = ev->text_len;
    const char *finish = finish_text(ev->finish);
    struct gen_output_piece piece = {0};
    if (s->output) {
        /* The text becomes content, reasoning and tool-call deltas (gen_output.h). */
        if (gen_output_push(s->output, text, text_len, ev->finish != FINISH_NONE, &piece) != 0) {
            gen_output_piece_free(&piece);
            fail_frame(s, ev);
            return;
        }
        text = strbuf_str(&piece.content);
        text_len = piece.content.len;
        /* A model that called tools and stopped is waiting for their results. */
        if (ev->finish == FINISH_STOP && gen_output_calls(s->output) > 0) finish = "tool_calls";
    }
    json_t *ids = json_array();
    for (int i = 0; i < ev->n_tokens; i++) json_array_append_new(ids, json_integer(ev->tokens[i].id));
    json_t *frame = json_pack("{s:s%, s:o, s:o, s:o}", "text", text, text_len, "token_ids", ids, "finish_reason",
                              finish ? json_string(finish) : json_null(), "usage", usage_json(ev));
    if (frame && piece.reasoning.len) {
        json_t *r = json_stringn(piece.reasoning.p, piece.reasoning.len);
        if (!r || json_object_set_new(frame, "reasoning_content", r) != 0) {
            json_decref(frame);
            frame = NULL;
        }
    }
    if (frame && piece.tool_calls) json_object_set(frame, "tool_calls", piece.tool_calls);
    gen_output_piece_free(&piece);
    if (s->logprobs >= 0) json_object_set_new(frame, "logprobs", logprobs_json(s->w, ev));
    if (s->prompt_logprobs && ev->n_tokens > 0) {
        json_object_set_new(frame, "prompt_logprobs", prompt_logprobs_json(s->w, s->first_prompt_id, ev));
        s->prompt_logprobs = false;
    }
    if (s->echo && s->prompt_text) {
        json_object_set_new(frame, "prompt_text", json_string(s->prompt_text));
        free(s->prompt_text);
        s->prompt_text = NULL;
    }
    if (ev->finish == FINISH_ERROR)
        json_object_set_new(frame, "error", json_pack("{s:s, s:i}", "message", error_text(ev), "code", 500));
    char *line = frame ? json_dump_compact(frame) : NULL;
    json_decref(frame);
    if (!line) {
        fail_frame(s, ev);
        return;
    }
    size_t n = strlen(line);
    line[n] = '\n'; /* replaces the NUL: the frame is a line of ndjson */
    http_stream_write(s->req, line, n + 1);
    free(line);
}

/* The FastChat frame for ev, encoded (malloc'd), or NULL when it could not be (fail_frame). */
static char *fastchat_frame(struct gen_stream *s, const struct engine_event *ev)
{
    const char *finish = finish_text(ev->finish);
    bool failed = ev->finish == FINISH_ERROR;
    json_t *frame = json_pack("{s:s%, s:i, s:o, s:o}", "text", failed ? error_text(ev) : strbuf_str(&s->text),
                              failed ? strlen(error_text(ev)) : s->text.len, "error_code",
                              failed ? FASTCHAT_INTERNAL_ERROR : FASTCHAT_OK, "usage", usage_json(ev), "finish_reason",
                              finish && !failed ? json_string(finish) : json_null());
    if (frame && s->fastchat_logprobs) json_object_set(frame, "logprobs", s->fastchat_logprobs);
    char *body = frame ? json_dump_compact(frame) : NULL;
    json_decref(frame);
    return body;
}

static int64_t utf8_chars(const char *s, size_t len)
{
    int64_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) n++;
    return n;
}

/* Appends logprob items (a frame's "logprobs" or "prompt_logprobs") to FastChat's dict,
 * offsets counted from s->fastchat_offset. */
static void fastchat_logprobs_append(struct gen_stream *s, json_t *items)
{
    json_t *offsets = json_object_get(s->fastchat_logprobs, "text_offset");
    json_t *tokens = json_object_get(s->fastchat_logprobs, "tokens");
    json_t *lps = json_object_get(s->fastchat_logprobs, "token_logprobs");
    json_t *tops = json_object_get(s->fastchat_logprobs, "top_logprobs");
    size_t i, k;
    json_t *item, *alt;
    json_array_foreach(items, i, item) {
        json_t *token = json_object_get(item, "token");
        json_t *top = json_object();
        json_array_foreach(json_object_get(item, "top_logprobs"), k, alt)
            json_object_set(top, json_string_value(json_object_get(alt, "token")), json_object_get(alt, "logprob"));
        /* With logprobs=0 the dict still names the sampled token, as vLLM's does (the first
         * prompt token, whose logprob is null, gets an empty one, as FastChat gives it). */
        bool none = json_is_null(json_object_get(item, "logprob"));
        if (json_object_size(top) == 0 && !none)
            json_object_set(top, json_string_value(token), json_object_get(item, "logprob"));
        json_array_append_new(offsets, json_integer(s->fastchat_offset));
        json_array_append(tokens, token);
        json_array_append(lps, json_object_get(item, "logprob"));
        json_array_append_new(tops, top);
        s->fastchat_offset += utf8_chars(json_string_value(token), json_string_length(token));
    }
    json_decref(items);
}

/* Adds the event's tokens to the stream's FastChat logprobs. The first call starts them after
 * the text already there (the prompt, when echoed), so the offsets index the frames' text;
 * with echo the prompt's own tokens come first, from offset 0. */
static void fastchat_logprobs_add(struct gen_stream *s, const struct engine_event *ev)
{
    if (!s->fastchat_logprobs) {
        s->fastchat_logprobs = json_pack("{s:[], s:[], s:[], s:[]}", "text_offset", "tokens",
                                         "token_logprobs", "top_logprobs");
        s->fastchat_offset = 0;
        if (s->prompt_logprobs && ev->n_tokens > 0) {
            fastchat_logprobs_append(s, prompt_logprobs_json(s->w, s->first_prompt_id, ev));
            s->prompt_logprobs = false;
        }
        s->fastchat_offset = utf8_chars(strbuf_str(&s->text), s->text.len);
    }
    fastchat_logprobs_append(s, logprobs_json(s->w, ev));
}

void api_on_engine_event(const struct engine_event *ev, void *user)
{
    struct worker *w = user;
    if (w->embeds && api_embed_on_event(w, ev)) return;
    struct gen_stream *s = *stream_slot(w, ev->id);
    if (!s) return;
    metrics_series_add(w->metrics.generation_tokens, ev->n_tokens);
    if (ev->n_tokens > 0 && !s->got_first_token) {
        s->got_first_token = true;
        s->ttft_s = seconds_since(s->accepted_ns);
        metrics_series_observe(w->metrics.time_to_first_token, s->ttft_s);
    }
    if (s->req) {
        if (s->mode == GEN_MODE_NATIVE) {
            send_native_frame(s, ev);
        } else {
            if (s->logprobs >= 0) fastchat_logprobs_add(s, ev);
            strbuf_append(&s->text, ev->text ? ev->text : "", ev->text_len);
            s->tokens_since_frame += ev->n_tokens;
            if (s->mode == GEN_MODE_FASTCHAT_STREAM &&
                (ev->finish != FINISH_NONE || s->tokens_since_frame >= w->opt.stream_interval)) {
                s->tokens_since_frame = 0;
                char *body = fastchat_frame(s, ev);
                /* FastChat frames end in a NUL byte, the string's own terminator. */
                if (body) http_stream_write(s->req, body, strlen(body) + 1);
                else fail_frame(s, ev);
                free(body);
            }
        }
    }
    if (ev->finish == FINISH_NONE) return;

    metrics_series_observe(w->metrics.request_latency, seconds_since(s->accepted_ns));
    const char *finish = finish_text(ev->finish);
    request_line(s->request_id, &s->span, s->mode, 200,
                 json_pack("{s:i, s:i, s:s?, s:o, s:b, s:s?}", "prompt_tokens", ev->prompt_tokens, "completion_tokens",
                           ev->completion_tokens, "finish_reason", finish, "ttft_ms",
                           s->got_first_token ? json_real(s->ttft_s * 1000.0) : json_null(), "client_gone", !s->req,
                           "error", ev->finish == FINISH_ERROR ? error_text(ev) : NULL),
                 seconds_since(s->accepted_ns));
    if (s->req) {
        if (s->mode == GEN_MODE_FASTCHAT_BLOCKING) {
            char *body = fastchat_frame(s, ev);
            if (body) http_respond(s->req, 200, "application/json", body, strlen(body));
            else fail_frame(s, ev);
            free(body);
        } else {
            http_stream_end(s->req);
        }
    }
    stream_free(s);
}

/* An error before generation. FastChat's clients split the body on NUL bytes and read
 * error_code without looking at the status, so they get a 200 frame; ours get the status and
 * an OpenAI error body. */
static void reject(http_request *req, int mode, int status, const char *param, const char *message,
                   int fastchat_code)
{
    if (mode == GEN_MODE_NATIVE) {
        if (status == 503) http_response_header(req, "Retry-After", "1");
        http_respond_error(req, status, param, "%s", message);
        return;
    }
    json_t *frame = json_pack("{s:o, s:i}", "text", json_string_clean(message), "error_code", fastchat_code);
    if (mode == GEN_MODE_FASTCHAT_BLOCKING) {
        http_respond_json(req, 200, frame);
        return;
    }
    char *text = frame ? json_dump_compact(frame) : NULL;
    json_decref(frame);
    if (text) http_respond(req, 200, "application/octet-stream", text, strlen(text) + 1);
    else http_respond_error(req, 500, NULL, "out of memory");
    free(text);
}

/* Tokenizing a long prompt, or rendering a chat template, takes long enough (about 0.1 s per
 * MiB) to stall every other stream, so it runs on libuv's thread pool; the loop picks the
 * request up again when it is parsed. Everything it reads (the tokenizer, the compiled chat
 * template, the model config) is read-only, and the body is the job's alone. */
struct gen_job {
    uv_work_t work;
    struct worker *w;
    http_request *req; /* NULL once the client is gone */
    int mode;
    char request_id[TRACE_REQUEST_ID_SIZE];
    struct trace_span span;
    uint64_t accepted_ns;
    json_t *body;
    struct gen_params params;
    struct json_field_error err;
    int status;
};

static void job_client_gone(http_request *req, void *arg)
{
    (void)req;
    ((struct gen_job *)arg)->req = NULL;
}

static void job_parse(uv_work_t *work)
{
    struct gen_job *job = work->data;
    job->status = gen_params_parse(job->w, job->body, &job->params, &job->err);
}

static void start_stream(struct worker *w, struct gen_job *job, struct gen_params *p, struct gen_output *output)
{
    http_request *req = job->req;
    int mode = job->mode;
    struct gen_stream *s = calloc(1, sizeof *s);
    s->w = w;
    s->id = ++w->next_request_id;
    s->req = req;
    s->mode = mode;
    s->accepted_ns = job->accepted_ns;
    memcpy(s->request_id, job->request_id, sizeof s->request_id);
    s->span = job->span;
    s->echo = p->echo;
    s->logprobs = p->logprobs;
    s->prompt_logprobs = p->req->prompt_logprobs;
    s->first_prompt_id = p->n_prompt_ids > 0 ? p->prompt_ids[0] : 0;
    s->output = output;
    if (p->echo && mode != GEN_MODE_NATIVE) strbuf_append(&s->text, p->prompt_text, strlen(p->prompt_text));
    s->prompt_text = p->echo ? p->prompt_text : NULL;
    if (!p->echo) free(p->prompt_text);
    p->prompt_text = NULL;
    p->req->id = s->id;
    s->next = w->streams;
    w->streams = s;
    metrics_series_add(w->metrics.requests, 1);
    metrics_series_add(w->metrics.prompt_tokens, p->req->n_prompt);

    http_request_on_close(req, on_client_gone, s);
    if (mode == GEN_MODE_NATIVE)
        http_stream_begin(req, 200, "application/x-ndjson");
    else if (mode == GEN_MODE_FASTCHAT_STREAM)
        http_stream_begin(req, 200, "application/octet-stream");

    struct engine_request *er = p->req;
    p->req = NULL;
    if (engine_submit(w->engine, er) != 0) {
        /* The engine failed between our check and now: end the stream with an error. */
        struct engine_event ev = {.id = s->id, .finish = FINISH_ERROR, .error = "the engine is not accepting requests"};
        api_on_engine_event(&ev, w);
    }
}

static void job_parsed(uv_work_t *work, int cancelled)
{
    struct gen_job *job = work->data;
    struct worker *w = job->w;
    json_decref(job->body);
    if (!job->req || cancelled) {
        /* The client left while we parsed (or the loop is closing): nothing was started. */
        w->active--;
    } else if (job->status) {
        w->active--;
        metrics_series_add(w->metrics.rejected, 1);
        bool overflow = strstr(job->err.message, "context length") != NULL;
        request_line(job->request_id, &job->span, job->mode, job->status,
                     json_pack("{s:s, s:s?}", "error", job->err.message, "param", job->err.param[0] ? job->err.param : NULL),
                     seconds_since(job->accepted_ns));
        reject(job->req, job->mode, job->status, job->err.param, job->err.message,
               overflow ? FASTCHAT_CONTEXT_OVERFLOW : FASTCHAT_VALIDATION_ERROR);
    } else {
        bool failed = false;
        struct gen_output *output = job->mode == GEN_MODE_NATIVE ? gen_output_new(&job->params.output, &failed) : NULL;
        if (failed) {
            w->active--;
            reject(job->req, job->mode, 500, NULL, "out of memory", FASTCHAT_INTERNAL_ERROR);
        } else {
            http_request_on_close(job->req, NULL, NULL);
            start_stream(w, job, &job->params, output);
        }
    }
    gen_params_free(&job->params);
    free(job);
}

void api_generate(struct worker *w, http_request *req, int mode)
{
    struct json_field_error err = {{0}, {0}};
    char message[600];
    if (w->draining) {
        /* worker/api/shutdown.c: what is running finishes, nothing new starts. */
        reject(req, mode, 503, NULL, "this worker is shutting down; retry on another worker", FASTCHAT_ENGINE_OVERLOADED);
        return;
    }
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    if (st.failed) {
        utf8_snprintf(message, sizeof message, "this worker's engine has failed: %s", st.error);
        reject(req, mode, 503, NULL, message, FASTCHAT_INTERNAL_ERROR);
        return;
    }
    if (w->active >= w->opt.limit_worker_concurrency) {
        metrics_series_add(w->metrics.rejected, 1);
        snprintf(message, sizeof message, "this worker is at its limit of %ld concurrent requests",
                 w->opt.limit_worker_concurrency);
        reject(req, mode, 503, NULL, message, FASTCHAT_ENGINE_OVERLOADED);
        return;
    }
    size_t len;
    const char *body = http_request_body(req, &len);
    json_t *root = json_parse_object(body, len, &err);
    if (!root) {
        reject(req, mode, 400, err.param, err.message, FASTCHAT_VALIDATION_ERROR);
        return;
    }
    struct gen_job *job = calloc(1, sizeof *job);
    if (!job) {
        json_decref(root);
        reject(req, mode, 500, NULL, "out of memory", FASTCHAT_INTERNAL_ERROR);
        return;
    }
    job->w = w;
    job->req = req;
    job->mode = mode;
    job->body = root;
    job->accepted_ns = uv_hrtime();
    /* The gateway's id for the request ("request_id", or its X-Request-Id header), else one
     * of our own, so that every line about the request names it. */
    const char *rid = json_string_value(json_object_get(root, "request_id"));
    if (!trace_request_id_valid(rid)) rid = http_request_header(req, "X-Request-Id");
    trace_request_id_take(rid, job->request_id);
    trace_span_continue(&job->span, http_request_header(req, "traceparent"));
    http_response_header(req, "X-Request-Id", job->request_id);
    job->work.data = job;
    w->active++; /* counts against the limit from now on, parsed or not */
    http_request_on_close(req, job_client_gone, job);
    if (uv_queue_work(w->loop, &job->work, job_parse, job_parsed) != 0) {
        http_request_on_close(req, NULL, NULL);
        w->active--;
        json_decref(root);
        free(job);
        reject(req, mode, 500, NULL, "could not queue the request", FASTCHAT_INTERNAL_ERROR);
    }
}
