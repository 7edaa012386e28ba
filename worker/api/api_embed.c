/* Embeddings: FastChat's POST /worker_get_embeddings and the native POST /embed the gateway's
 * /v1/embeddings uses. Both take a list of inputs (texts, or token-id lists), submit one
 * engine request per input (prefill only, pooled as --pooling says, L2-normalised) and answer
 * once every input is done; they differ in the shape of the answer and of errors.
 *
 *   FastChat:  {"input": [..], "encoding_format"?} -> {"embedding": [[..]..], "token_num": n}, and
 *              errors as {"text", "error_code"} with status 200, which its clients read.
 *   native:    {"input": str | [str..] | [int..] | [[int..]..], "encoding_format"?, "dimensions"?,
 *              "truncate_prompt_tokens"?} -> {"object": "list", "data": [{"object": "embedding",
 *              "index", "embedding"}..], "usage": {"prompt_tokens", "total_tokens"}}, errors as
 *              an HTTP status and an OpenAI error body.
 * "encoding_format" "base64" gives each vector as the base64 of its little-endian float32s. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/trace.h"
#include "common/utf8.h"
#include "worker/api/request_parse.h"
#include "worker/api/worker.h"

/* FastChat's error codes (fastchat/constants.py). */
enum { FASTCHAT_VALIDATION_ERROR = 40001, FASTCHAT_ENGINE_OVERLOADED = 42903, FASTCHAT_INTERNAL_ERROR = 50001 };

/* Inputs in one request at most, as OpenAI allows. */
#define EMBED_MAX_INPUTS 2048

struct embed_job {
    struct embed_job *next; /* w->embeds */
    struct worker *w;
    http_request *req;      /* NULL once the client is gone */
    bool fastchat;
    bool base64;
    uv_work_t work;
    json_t *body;
    char request_id[TRACE_REQUEST_ID_SIZE];
    /* Parsed on the thread pool: one token list per input. */
    int status;
    struct json_field_error err;
    int32_t n_inputs;
    int32_t **ids;
    int32_t *n_ids;
    /* Submitted: engine ids first_id .. first_id + n_inputs - 1. */
    bool submitted;
    uint64_t first_id;
    int32_t n_done;
    int32_t dim;
    float *vectors;         /* n_inputs x dim */
    int64_t prompt_tokens;
    char error[256];        /* the first input that failed, why */
};

static void job_free(struct embed_job *j)
{
    if (j->ids)
        for (int32_t i = 0; i < j->n_inputs; i++) free(j->ids[i]);
    free(j->ids);
    free(j->n_ids);
    free(j->vectors);
    json_decref(j->body);
    free(j);
}

static void job_unlink(struct embed_job *j)
{
    struct embed_job **p = &j->w->embeds;
    while (*p && *p != j) p = &(*p)->next;
    if (*p) *p = j->next;
}

/* An error before any engine request: FastChat's clients get their frame, ours the status. */
static void reject(http_request *req, bool fastchat, int status, const char *param, const char *message)
{
    if (!fastchat) {
        if (status == 503) http_response_header(req, "Retry-After", "1");
        http_respond_error(req, status, param, "%s", message);
        return;
    }
    int code = status == 503 ? FASTCHAT_ENGINE_OVERLOADED : status >= 500 ? FASTCHAT_INTERNAL_ERROR
                                                                          : FASTCHAT_VALIDATION_ERROR;
    http_respond_json(req, 200, json_pack("{s:o, s:i}", "text", json_string_clean(message), "error_code", code));
}

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The vector's float32s, little-endian, in base64 (as OpenAI and FastChat send them). */
static json_t *vector_base64(const float *v, int32_t dim)
{
    size_t n = (size_t)dim * 4, out_len = (n + 2) / 3 * 4;
    unsigned char *bytes = malloc(n ? n : 1);
    char *out = malloc(out_len + 1);
    if (!bytes || !out) {
        free(bytes);
        free(out);
        return NULL;
    }
    for (int32_t i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int k = 0; k < 4; k++) bytes[4 * i + k] = (unsigned char)(u >> (8 * k));
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t t = (uint32_t)bytes[i] << 16 | (i + 1 < n ? (uint32_t)bytes[i + 1] << 8 : 0) |
                     (i + 2 < n ? bytes[i + 2] : 0);
        out[o++] = b64_alphabet[t >> 18 & 63];
        out[o++] = b64_alphabet[t >> 12 & 63];
        out[o++] = i + 1 < n ? b64_alphabet[t >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64_alphabet[t & 63] : '=';
    }
    json_t *s = json_stringn(out, o);
    free(bytes);
    free(out);
    return s;
}

static json_t *vector_json(const struct embed_job *j, int32_t i)
{
    const float *v = j->vectors + (size_t)i * (size_t)j->dim;
    if (j->base64) return vector_base64(v, j->dim);
    json_t *arr = json_array();
    for (int32_t k = 0; k < j->dim; k++) json_array_append_new(arr, json_real(v[k]));
    return arr;
}

static void respond(struct embed_job *j)
{
    http_request *req = j->req;
    if (j->error[0]) {
        reject(req, j->fastchat, 500, NULL, j->error);
        return;
    }
    if (j->fastchat) {
        json_t *list = json_array();
        for (int32_t i = 0; i < j->n_inputs; i++) json_array_append_new(list, vector_json(j, i));
        http_respond_json(req, 200, json_pack("{s:o, s:I}", "embedding", list, "token_num", (json_int_t)j->prompt_tokens));
        return;
    }
    json_t *data = json_array();
    for (int32_t i = 0; i < j->n_inputs; i++)
        json_array_append_new(data, json_pack("{s:s, s:i, s:o}", "object", "embedding", "index", i, "embedding",
                                              vector_json(j, i)));
    http_respond_json(req, 200,
                      json_pack("{s:s, s:o, s:{s:I, s:I}}", "object", "list", "data", data, "usage", "prompt_tokens",
                                (json_int_t)j->prompt_tokens, "total_tokens", (json_int_t)j->prompt_tokens));
}

bool api_embed_on_event(struct worker *w, const struct engine_event *ev)
{
    struct embed_job *j = w->embeds;
    while (j && !(j->submitted && ev->id >= j->first_id && ev->id < j->first_id + (uint64_t)j->n_inputs)) j = j->next;
    if (!j) return false;
    if (ev->finish == FINISH_NONE) return true;
    int32_t i = (int32_t)(ev->id - j->first_id);
    if (ev->finish == FINISH_STOP && ev->embedding && ev->embedding_dim == j->dim) {
        memcpy(j->vectors + (size_t)i * (size_t)j->dim, ev->embedding, (size_t)j->dim * sizeof(float));
        j->prompt_tokens += ev->prompt_tokens;
    } else if (!j->error[0]) {
        utf8_snprintf(j->error, sizeof j->error, "input %d: %s", i,
                      ev->error ? ev->error : ev->finish == FINISH_ABORT ? "aborted" : "no embedding came back");
    }
    if (++j->n_done < j->n_inputs) return true;
    if (j->req) {
        http_request_on_close(j->req, NULL, NULL);
        respond(j);
    }
    job_unlink(j);
    w->active--;
    job_free(j);
    return true;
}

static void on_client_gone(http_request *req, void *arg)
{
    (void)req;
    struct embed_job *j = arg;
    j->req = NULL;
    if (!j->submitted) return;
    log_debug("embeddings %s: client disconnected, aborting", j->request_id);
    for (int32_t i = 0; i < j->n_inputs; i++) engine_abort(j->w->engine, j->first_id + (uint64_t)i);
}

/* One input: text (tokenized as a prompt), or token ids. */
static int parse_input(struct worker *w, const json_t *body, const json_t *in, int32_t **ids, size_t *n,
                       struct json_field_error *err)
{
    int vocab = w->model->config.vocab_size;
    bool add_special = true;
    if (json_get_bool(body, "add_special_tokens", false, &add_special, err) == JSON_FIELD_INVALID) return 400;
    if (json_is_string(in)) {
        if (tok_encode(w->tok, json_string_value(in), json_string_length(in), add_special, ids, n) != 0)
            return json_field_fail(err, "input", "an input could not be tokenized"), 400;
    } else if (json_is_array(in) && json_array_size(in) > 0) {
        *n = json_array_size(in);
        *ids = malloc(*n * sizeof **ids);
        if (!*ids) return json_field_fail(err, "input", "out of memory"), 400;
        for (size_t k = 0; k < *n; k++) {
            json_t *v = json_array_get(in, k);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
                return json_field_fail(err, "input", "token ids in 'input' must be integers in [0, %d)", vocab), 400;
            (*ids)[k] = (int32_t)json_integer_value(v);
        }
    } else {
        return json_field_fail(err, "input", "'input' must be a string, a list of strings, a list of token ids or "
                               "a list of token-id lists, none of them empty"), 400;
    }
    int status = worker_truncate_prompt(w, body, *ids, n, NULL, err);
    if (status) return status;
    if (*n == 0) return json_field_fail(err, "input", "an input is empty: it must hold at least one token"), 400;
    if ((int64_t)*n > w->max_model_len) {
        json_field_fail(err, "input", "This model's maximum context length is %d tokens. However, an input has %zu "
                        "tokens. Please shorten it, or set truncate_prompt_tokens.", w->max_model_len, *n);
        return 400;
    }
    return 0;
}

static int parse(struct embed_job *j)
{
    struct worker *w = j->w;
    struct json_field_error *err = &j->err;
    const json_t *body = j->body;
    json_t *input = json_object_get(body, "input");
    if (!input || json_is_null(input)) return json_field_fail(err, "input", "'input' is a required field"), 400;
    /* A string or a list of token ids is one input; any other list holds the inputs. */
    bool single = json_is_string(input) || (json_is_array(input) && json_is_integer(json_array_get(input, 0)));
    if (!single && (!json_is_array(input) || json_array_size(input) == 0))
        return json_field_fail(err, "input", "'input' must be a string, a list of strings, a list of token ids or a "
                               "list of token-id lists, and not empty"), 400;
    size_t n = single ? 1 : json_array_size(input);
    if (n > EMBED_MAX_INPUTS)
        return json_field_fail(err, "input", "'input' may hold at most %d inputs", EMBED_MAX_INPUTS), 400;
    const char *format = "float";
    if (json_get_string(body, "encoding_format", false, &format, err) == JSON_FIELD_INVALID) return 400;
    if (strcmp(format, "float") && strcmp(format, "base64"))
        return json_field_fail(err, "encoding_format", "'encoding_format' must be 'float' or 'base64'"), 400;
    j->base64 = !strcmp(format, "base64");
    int64_t dims = 0;
    int rc = json_get_int(body, "dimensions", false, 1, INT32_MAX, &dims, err);
    if (rc == JSON_FIELD_INVALID) return 400;
    /* Only a model trained for it (Matryoshka) may be cut short; this one gives its whole
     * hidden state. */
    if (rc == JSON_FIELD_OK && dims != w->model->config.hidden_size)
        return json_field_fail(err, "dimensions", "this model's embeddings have %d dimensions and cannot be shortened "
                               "to %lld", w->model->config.hidden_size, (long long)dims), 400;
    if (!w->backend->supports_hidden_states) return worker_unsupported(w, "model", "embeddings are", err);
    j->n_inputs = (int32_t)n;
    j->ids = calloc(n, sizeof *j->ids);
    j->n_ids = calloc(n, sizeof *j->n_ids);
    if (!j->ids || !j->n_ids) return json_field_fail(err, NULL, "out of memory"), 500;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        int status = parse_input(w, body, single ? input : json_array_get(input, i), &j->ids[i], &len, err);
        if (status) return status;
        j->n_ids[i] = (int32_t)len;
    }
    return 0;
}

static void job_parse(uv_work_t *work)
{
    struct embed_job *j = work->data;
    j->status = parse(j);
}

static void submit(struct embed_job *j)
{
    struct worker *w = j->w;
    j->dim = w->model->config.hidden_size;
    j->vectors = calloc((size_t)j->n_inputs * (size_t)j->dim, sizeof *j->vectors);
    if (!j->vectors) {
        reject(j->req, j->fastchat, 500, NULL, "out of memory");
        job_unlink(j);
        w->active--;
        job_free(j);
        return;
    }
    j->first_id = w->next_request_id + 1;
    w->next_request_id += (uint64_t)j->n_inputs;
    j->submitted = true;
    http_request_on_close(j->req, on_client_gone, j);
    /* A failure counts the input done, and the last one's frees j: nothing of j is read after. */
    const int32_t n = j->n_inputs;
    const uint64_t first = j->first_id;
    for (int32_t i = 0; i < n; i++) {
        struct engine_request *r = calloc(1, sizeof *r);
        uint64_t id = first + (uint64_t)i;
        struct engine_event ev = {.id = id, .finish = FINISH_ERROR, .error = "out of memory"};
        if (!r) {
            api_embed_on_event(w, &ev); /* may answer and free j when it is the last */
            continue;
        }
        r->id = id;
        r->prompt = j->ids[i];
        j->ids[i] = NULL;
        r->n_prompt = j->n_ids[i];
        r->max_tokens = 1;
        r->pooling = w->pooling;
        r->sampling = (struct sampling_params){.temperature = 0, .top_p = 1, .top_k = -1, .repetition_penalty = 1,
                                               .logprobs = -1};
        r->has_seed = true;
        if (engine_submit(w->engine, r) != 0) {
            ev.error = "the engine is not accepting requests";
            api_embed_on_event(w, &ev);
        }
    }
}

static void job_parsed(uv_work_t *work, int cancelled)
{
    struct embed_job *j = work->data;
    struct worker *w = j->w;
    if (!j->req || cancelled) {
        job_unlink(j);
        w->active--;
        job_free(j);
    } else if (j->status) {
        http_request_on_close(j->req, NULL, NULL);
        reject(j->req, j->fastchat, j->status, j->err.param, j->err.message);
        job_unlink(j);
        w->active--;
        job_free(j);
    } else {
        submit(j);
    }
}

static void job_client_gone(http_request *req, void *arg)
{
    (void)req;
    ((struct embed_job *)arg)->req = NULL;
}

void api_embed(struct worker *w, http_request *req, bool fastchat)
{
    char message[600];
    if (w->draining) {
        reject(req, fastchat, 503, NULL, "this worker is shutting down; retry on another worker");
        return;
    }
    struct engine_stats st;
    engine_get_stats(w->engine, &st);
    if (st.failed) {
        utf8_snprintf(message, sizeof message, "this worker's engine has failed: %s", st.error);
        reject(req, fastchat, 503, NULL, message);
        return;
    }
    if (w->active >= w->opt.limit_worker_concurrency) {
        snprintf(message, sizeof message, "this worker is at its limit of %ld concurrent requests",
                 w->opt.limit_worker_concurrency);
        reject(req, fastchat, 503, NULL, message);
        return;
    }
    size_t len;
    const char *text = http_request_body(req, &len);
    struct json_field_error err = {{0}, {0}};
    json_t *body = json_parse_object(text, len, &err);
    if (!body) {
        reject(req, fastchat, 400, err.param, err.message);
        return;
    }
    struct embed_job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(body);
        reject(req, fastchat, 500, NULL, "out of memory");
        return;
    }
    j->w = w;
    j->req = req;
    j->fastchat = fastchat;
    j->body = body;
    trace_request_id_take(http_request_header(req, "X-Request-Id"), j->request_id);
    http_response_header(req, "X-Request-Id", j->request_id);
    j->work.data = j;
    j->next = w->embeds;
    w->embeds = j;
    w->active++; /* counts against the limit and the drain from now on */
    http_request_on_close(req, job_client_gone, j);
    /* Tokenizing many inputs takes long enough to stall the loop: the thread pool does it. */
    if (uv_queue_work(w->loop, &j->work, job_parse, job_parsed) != 0) {
        http_request_on_close(req, NULL, NULL);
        job_unlink(j);
        w->active--;
        job_free(j);
        reject(req, fastchat, 500, NULL, "could not queue the request");
    }
}
