/* A generation request's life: validate, ask the controller once, run one upstream
 * POST /generate per choice on the shared loop, retry a choice once on another worker when
 * it failed before its first frame, and tear everything down when the client leaves. */
#include "gateway/proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/json_util.h"
#include "common/log.h"
#include "common/net_addr.h"
#include "common/utf8.h"
#include "gateway/format_openai.h"
#include "gateway/proxy_frame.h"

enum { MAX_ERR_BODY = 64 * 1024, MAX_LINE = 16 * 1024 * 1024, MAX_RETRY_ASKS = 3 };

static void choice_start(struct gw_choice *c, const char *address);

/* The request's access line: what it asked, where it went, what came back. */
static void gen_access_log(struct gw_gen *gen, int64_t prompt, int64_t completion)
{
    struct gw *g = gen->g;
    const struct gw_choice *c0 = gen->n_choices ? &gen->choices[0] : NULL;
    json_t *extra = json_pack("{s:s, s:b, s:I, s:s?, s:I, s:I, s:o, s:s?, s:s?}", "model", gen->p.model, "stream",
                              gen->p.stream, "choices", (json_int_t)gen->n_choices, "worker",
                              c0 && c0->address ? c0->address : NULL, "prompt_tokens", (json_int_t)prompt,
                              "completion_tokens", (json_int_t)completion, "ttft_ms",
                              gen->ttft_s >= 0 ? json_real(gen->ttft_s * 1000.0) : json_null(), "finish_reason",
                              c0 && c0->finish[0] ? c0->finish : NULL, "error", gen->error[0] ? gen->error : NULL);
    if (extra && g->cfg.log_requests) {
        /* Only with --log-requests: prompts are the users' data. */
        if (gen->p.api == GW_API_CHAT) json_object_set(extra, "messages", json_object_get(gen->p.base, "messages"));
        else json_object_set(extra, "prompt", gen->p.prompts);
    }
    gw_access_log(g, gen->info, gen->route, gen->status, extra);
}

static void gen_destroy(struct gw_gen *gen)
{
    int64_t prompt, completion;
    gw_gen_totals(gen, &prompt, &completion);
    gw_rl_settle(gen->g->rl, &gen->rl, (double)(prompt + completion));
    gen_access_log(gen, prompt, completion);
    gw_reqinfo_free(gen->info);
    if (gen->prev) gen->prev->next = gen->next;
    else gen->g->gens = gen->next;
    if (gen->next) gen->next->prev = gen->prev;
    for (size_t i = 0; i < gen->n_choices; i++) {
        struct gw_choice *c = &gen->choices[i];
        free(c->address);
        free(c->line);
        free(c->err_body);
        free(c->early_error);
        strbuf_free(&c->text);
        json_decref(c->logprobs);
        json_decref(c->prompt_logprobs);
        strbuf_free(&c->reasoning);
        json_decref(c->tool_calls);
    }
    free(gen->choices);
    free(gen->retry_address);
    free(gen->failed_address);
    gw_params_free(&gen->p);
    gen->g->active--;
    free(gen);
}

static void gen_enter(struct gw_gen *gen)
{
    gen->depth++;
}

/* Returns true when the gen was freed. */
static bool gen_leave(struct gw_gen *gen)
{
    /* A request still open is answered (or its on_close runs) later: wait for that. */
    if (--gen->depth > 0 || !gen->ended || gen->req) return false;
    gen_destroy(gen);
    return true;
}

void gw_gen_stop(struct gw_gen *gen)
{
    gen->ended = true;
    if (gen->lookup) gw_route_cancel(gen->lookup);
    gen->lookup = NULL;
    if (gen->models_wait) gw_models_wait_cancel(gen->g->models, gen->models_wait);
    gen->models_wait = NULL;
    for (size_t i = 0; i < gen->n_choices; i++) {
        struct gw_choice *c = &gen->choices[i];
        /* Closing the worker's connection is what makes it abort the sequence. */
        if (c->call) http_call_cancel(c->call);
        c->call = NULL;
    }
}

static void on_client_gone(http_request *req, void *arg)
{
    (void)req;
    struct gw_gen *gen = arg;
    gen_enter(gen);
    gen->req = NULL;
    if (!gen->ended) log_debug("%s: client gone, cancelling upstream", gw_gen_rid(gen));
    /* A stream was counted when it began; 499 is nginx's "client closed request". */
    if (!gen->ended && !gen->streaming) gw_metrics_request(gen->g->metrics, gen->route, 499);
    if (!gen->ended) {
        gen->status = 499;
        snprintf(gen->error, sizeof gen->error, "the client went away");
    }
    gw_gen_stop(gen);
    gen_leave(gen);
}

/* --- retries --------------------------------------------------------------------------- */

static void on_retry_route(int rc, const char *address, void *user);

/* The lookup's options: the request's id and span go to the controller too. */
static struct gw_route_opts route_opts(struct gw_gen *gen, const char *exclude, char key[GW_PREFIX_KEY_SIZE])
{
    return (struct gw_route_opts){
        .model = gen->p.model,
        .exclude = exclude,
        .prefix_key = gw_route_prefix_key(&gen->p, key),
        .request_id = gen->info ? gen->info->request_id : NULL,
        .parent = gen->info ? &gen->info->span : NULL,
        .timeout_ms = gen->g->cfg.controller_timeout_ms,
    };
}

static void retry_lookup(struct gw_gen *gen)
{
    gen->retry_asks++;
    struct gw *g = gen->g;
    char key[GW_PREFIX_KEY_SIZE];
    struct gw_route_opts o = route_opts(gen, gen->failed_address, key);
    if (gw_route_start(g->ctls, g->client, &o, on_retry_route, gen, &gen->lookup) != 0) {
        gen->lookup = NULL;
        gw_emit_error(gen, 503, NULL, "the controller could not be asked for another worker", "1");
    }
}

static void on_retry_route(int rc, const char *address, void *user)
{
    struct gw_gen *gen = user;
    gen_enter(gen);
    gen->lookup = NULL;
    if (rc < 0) {
        gw_emit_error(gen, 503, NULL, "the worker failed and the controller could not be reached", "1");
    } else if (!*address) {
        gw_emit_error(gen, 503, "model", "the worker failed and no other worker serves this model", "1");
    } else if (gen->failed_address && !strcmp(address, gen->failed_address) &&
               gen->retry_asks < MAX_RETRY_ASKS) {
        /* The controller may not know yet that the worker is gone: ask again. */
        retry_lookup(gen);
    } else {
        gen->retry_address = strdup(address);
        for (size_t i = 0; i < gen->n_choices && !gen->ended; i++) {
            struct gw_choice *c = &gen->choices[i];
            if (c->waiting_route) {
                c->waiting_route = false;
                choice_start(c, address);
            }
        }
    }
    gen_leave(gen);
}

/* The choice failed before sending anything: try it once more elsewhere. */
static void choice_retry(struct gw_choice *c)
{
    struct gw_gen *gen = c->gen;
    gw_metrics_retry(gen->g->metrics);
    log_info("%s: choice %zu failed on %s before its first token%s%s; retrying on another worker",
             gw_gen_rid(gen), c->index, c->address ? c->address : "?", c->early_error ? ": " : "",
             c->early_error ? c->early_error : "");
    c->line_len = 0;
    c->err_len = 0;
    c->bad_frame = false;
    free(c->early_error);
    c->early_error = NULL;
    if (gen->retry_address) {
        choice_start(c, gen->retry_address);
        return;
    }
    c->waiting_route = true;
    if (!gen->failed_address && c->address) gen->failed_address = strdup(c->address);
    if (!gen->lookup) retry_lookup(gen);
}

/* --- upstream calls ------------------------------------------------------------------------ */

static void error_from_body(const struct gw_choice *c, char *msg, size_t cap, char *param, size_t pcap)
{
    json_t *root = c->err_body ? json_loadb(c->err_body, c->err_len, 0, NULL) : NULL;
    json_t *err = json_object_get(root, "error");
    const char *m = json_string_value(json_object_get(err, "message"));
    const char *p = json_string_value(json_object_get(err, "param"));
    utf8_snprintf(msg, cap, "%s", m ? m : "the worker rejected the request");
    utf8_snprintf(param, pcap, "%s", p ? p : "");
    json_decref(root);
}

static int process_line(struct gw_choice *c, const char *line, size_t len)
{
    if (len == 0) return 0;
    /* Text may hold U+0000 (a byte-level vocabulary has a token for byte 0): allowed, and kept
     * through by lengths, never by strlen. */
    json_t *frame = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(frame)) {
        json_decref(frame);
        c->bad_frame = true;
        return -1;
    }
    char why[256];
    if (gw_frame_check(frame, why, sizeof why) != 0) {
        /* Numbers no real worker sends: the worker is broken (or hostile), and what it said
         * is not passed on. Not retried: it answered, wrongly. */
        struct gw_gen *gen = c->gen;
        log_warn("%s: worker %s sent an invalid frame: %s", gw_gen_rid(gen), c->address ? c->address : "?", why);
        char msg[320];
        snprintf(msg, sizeof msg, "the worker sent an invalid answer: %s", why);
        json_decref(frame);
        c->bad_frame = true;
        gw_emit_error(gen, 502, NULL, msg, NULL);
        return -1;
    }
    if (!c->got_frame && c->attempts < 2 &&
        !strcmp(json_string_value(json_object_get(frame, "finish_reason")) ?: "", "error")) {
        /* The worker failed before producing anything: as good as a 5xx, so try elsewhere. */
        const char *m = json_string_value(json_object_get(json_object_get(frame, "error"), "message"));
        free(c->early_error);
        c->early_error = strdup(m ? m : "unknown error");
        json_decref(frame);
        return -1;
    }
    c->got_frame = true;
    gw_emit_frame(c->gen, c, frame);
    json_decref(frame);
    return 0;
}

static int on_upstream_data(http_call *call, const char *data, size_t len, void *user)
{
    struct gw_choice *c = user;
    struct gw_gen *gen = c->gen;
    if (http_call_status(call) != 200) {
        size_t room = MAX_ERR_BODY - c->err_len;
        size_t n = len < room ? len : room;
        c->err_body = realloc(c->err_body, c->err_len + n + 1);
        memcpy(c->err_body + c->err_len, data, n);
        c->err_len += n;
        c->err_body[c->err_len] = '\0';
        return 0;
    }
    gen_enter(gen);
    int stop = 0;
    while (len && !gen->ended && !stop) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (c->line_len == 0 && nl) {
            /* The whole line is in this piece: no copy. */
            stop = process_line(c, data, take) != 0;
        } else {
            if (c->line_len + take + 1 > c->line_cap) {
                c->line_cap = (c->line_len + take + 1) * 2;
                c->line = realloc(c->line, c->line_cap);
            }
            memcpy(c->line + c->line_len, data, take);
            c->line_len += take;
            if (c->line_len > MAX_LINE) {
                c->bad_frame = true;
                stop = 1;
            } else if (nl) {
                stop = process_line(c, c->line, c->line_len) != 0;
                c->line_len = 0;
            }
        }
        data += nl ? take + 1 : take;
        len -= nl ? take + 1 : take;
    }
    bool abort = gen->ended || stop;
    gen_leave(gen);
    return abort ? 1 : 0;
}

static void on_upstream_done(http_call *call, const struct http_call_result *res, void *user)
{
    (void)call;
    struct gw_choice *c = user;
    struct gw_gen *gen = c->gen;
    gen_enter(gen);
    c->call = NULL;
    trace_span_log(&c->span, "gateway.generate",
                   json_pack("{s:s?, s:s?, s:I, s:I, s:I, s:s?}", "request_id", gen->info ? gen->info->request_id : NULL,
                             "worker", c->address, "choice", (json_int_t)c->index, "attempt", (json_int_t)c->attempts,
                             "status", (json_int_t)res->status,
                             "error", res->error ? http_call_error_describe(res->error) : NULL));
    if (gen->ended) goto out;

    if (res->error == HTTP_CALL_OK && res->status != 200 && res->status != 0) {
        if (res->status >= 500 && c->attempts < 2) {
            choice_retry(c);
        } else {
            char msg[512], param[96];
            error_from_body(c, msg, sizeof msg, param, sizeof param);
            int status = gw_frame_error_status(res->status);
            if (status != res->status)
                log_warn("%s: worker %s answered HTTP %ld: passing it on as %d", gw_gen_rid(gen), c->address, res->status,
                         status);
            gw_emit_error(gen, status, param, msg, status == 503 || status == 429 ? "1" : NULL);
        }
        goto out;
    }
    if (res->error == HTTP_CALL_OK && c->finished && !c->bad_frame) {
        if (++gen->n_complete == gen->n_choices) gw_emit_success(gen);
        goto out;
    }
    /* Connect error, timeout, broken stream, garbage, or a stream that ended unfinished. */
    if (!c->got_frame && c->attempts < 2) {
        choice_retry(c);
    } else if (!c->got_frame) {
        bool unreachable = res->error == HTTP_CALL_CONNECT || res->error == HTTP_CALL_TIMEOUT;
        gw_emit_error(gen, unreachable ? 503 : 502, NULL,
                      unreachable ? "no worker for this model could be reached"
                                  : "the worker failed before answering",
                      unreachable ? "1" : NULL);
    } else {
        char msg[256];
        snprintf(msg, sizeof msg, "the worker failed in the middle of the answer (%s)",
                 c->bad_frame ? "it sent a malformed frame"
                 : res->error ? http_call_error_describe(res->error) : "its stream ended early");
        gw_emit_error(gen, 502, NULL, msg, NULL);
    }
out:
    gen_leave(gen);
}

static void choice_start(struct gw_choice *c, const char *address)
{
    struct gw_gen *gen = c->gen;
    struct gw *g = gen->g;
    /* Only scheme://host:port is fetched, whatever the controller says: an address with a
     * path, query or credentials would let whoever registered it aim the gateway elsewhere. */
    char url[NET_BASE_URL_MAX];
    const char *why = "";
    bool valid = net_base_url_parse(address, url, sizeof url, &why) == 0;
    free(c->address);
    c->address = strdup(valid ? url : address);
    c->attempts++;
    c->got_frame = false;
    c->finished = false;
    memset(&c->span, 0, sizeof c->span); /* this attempt's, set once it is sent */
    if (!valid) {
        log_warn("%s: the controller named '%.300s' for model %s, which is not a worker address (%s): not sending to it",
                 gw_gen_rid(gen), address, gen->p.model, why);
        struct http_call_result res = {.error = HTTP_CALL_INTERNAL, .error_text = "not a worker address"};
        on_upstream_done(NULL, &res, c);
        return;
    }
    json_t *body = gw_params_upstream_body(&gen->p, c->index);
    /* The worker logs its side under the same id, and its span under this call's. */
    const char *rid = gw_gen_rid(gen);
    json_object_set_new(body, "request_id", json_string(rid));
    char rid_header[32 + TRACE_REQUEST_ID_SIZE], tp_header[32 + TRACE_TRACEPARENT_SIZE], tp[TRACE_TRACEPARENT_SIZE];
    const char *headers[3] = {rid_header, NULL, NULL};
    snprintf(rid_header, sizeof rid_header, "X-Request-Id: %s", rid);
    if (gen->info) trace_span_child(&c->span, &gen->info->span);
    if (trace_span_active(&c->span)) {
        trace_span_header(&c->span, tp);
        snprintf(tp_header, sizeof tp_header, "traceparent: %s", tp);
        headers[1] = tp_header;
    }
    struct http_call_opts opts = {
        .method = "POST",
        .url = url,
        .path = "/generate",
        .json = body,
        .headers = headers,
        .connect_timeout_ms = g->cfg.worker_connect_timeout_ms,
        .timeout_ms = 0,
        .idle_timeout_ms = g->cfg.worker_idle_timeout_ms,
        .on_data = on_upstream_data,
        .on_done = on_upstream_done,
        .user = c,
    };
    int rc = http_client_request(g->client, &opts, &c->call);
    json_decref(body);
    if (rc != 0) {
        c->call = NULL;
        struct http_call_result res = {.error = HTTP_CALL_INTERNAL, .error_text = "cannot start call"};
        on_upstream_done(NULL, &res, c);
    }
}

/* --- the first lookup ---------------------------------------------------------------------- */

/* The model was served lately and will be again (its workers or the controller restart). */
static void no_worker_now(struct gw_gen *gen)
{
    char msg[256], model[160];
    utf8_clip(model, sizeof model, gen->p.model, strlen(gen->p.model));
    snprintf(msg, sizeof msg, "no worker is serving the model '%s' right now; retry shortly", model);
    gw_emit_error(gen, 503, "model", msg, "1");
}

static void on_models_for_404(int rc, const json_t *names, void *user)
{
    struct gw_gen *gen = user;
    gen_enter(gen);
    gen->models_wait = NULL;
    bool listed = false;
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) {
        if (!strcmp(json_string_value(v), gen->p.model)) listed = true;
    }
    if (rc < 0) {
        gw_emit_error(gen, 503, NULL, "the controller could not be reached", "1");
    } else if (listed || gw_models_recently_served(gen->g->models, gen->p.model)) {
        no_worker_now(gen);
    } else {
        char msg[256], model[160];
        utf8_clip(model, sizeof model, gen->p.model, strlen(gen->p.model));
        snprintf(msg, sizeof msg, "The model '%s' does not exist", model);
        gw_emit_error(gen, 404, "model", msg, NULL);
    }
    gen_leave(gen);
}

static void on_first_route(int rc, const char *address, void *user)
{
    struct gw_gen *gen = user;
    gen_enter(gen);
    gen->lookup = NULL;
    if (rc < 0) {
        gw_emit_error(gen, 503, NULL, "the controller could not be reached", "1");
    } else if (rc == GW_ROUTE_RECENT) {
        no_worker_now(gen);
    } else if (!*address) {
        /* Only this path costs a second controller call: 404 and 503 need the model list. */
        gw_models_get(gen->g->models, on_models_for_404, gen, &gen->models_wait);
    } else {
        gw_models_note_served(gen->g->models, gen->p.model);
        for (size_t i = 0; i < gen->n_choices && !gen->ended; i++) choice_start(&gen->choices[i], address);
    }
    gen_leave(gen);
}

void gw_generate(struct gw *g, http_request *req, const char *route, int api)
{
    struct gw_reqinfo *info = http_request_get_data(req);
    if (g->cfg.max_concurrent_requests > 0 && g->active >= (unsigned long)g->cfg.max_concurrent_requests) {
        http_response_header(req, "Retry-After", "1");
        gw_respond_error(g, req, route, 429, NULL,
                         "the gateway is at its limit of %ld concurrent requests; retry later",
                         g->cfg.max_concurrent_requests);
        return;
    }
    struct json_field_error err = {{0}, {0}};
    size_t len;
    const char *body = http_request_body(req, &len);
    json_t *root = json_parse_object(body, len, &err);
    struct gw_params p;
    int status = 400;
    if (root) status = api == GW_API_CHAT ? gw_validate_chat(root, &p, &err) : gw_validate_completion(root, &p, &err);
    json_decref(root);
    if (status) {
        gw_respond_error(g, req, route, 400, err.param, "%s", err.message);
        return;
    }
    struct gw_rl_ticket ticket;
    char why[320];
    size_t api_key_len;
    const char *api_key = gw_auth_key_of(g->auth, http_request_header(req, "Authorization"), &api_key_len);
    if (!gw_rl_admit(g->rl, api_key, api_key_len, &p, req, &ticket, why, sizeof why)) {
        gw_metrics_rate_limited(g->metrics, ticket.by_tokens);
        gw_params_free(&p);
        gw_respond_error(g, req, route, 429, NULL, "%s", why);
        return;
    }

    size_t n_choices = gw_params_choice_count(&p);
    struct gw_gen *gen = calloc(1, sizeof *gen);
    struct gw_choice *choices = calloc(n_choices, sizeof *choices);
    if (!gen || !choices) {
        free(gen);
        free(choices);
        gw_rl_settle(g->rl, &ticket, 0); /* what it reserved goes back */
        gw_params_free(&p);
        http_response_header(req, "Retry-After", "1");
        gw_respond_error(g, req, route, 503, NULL, "the gateway is out of memory; retry later");
        return;
    }
    gen->info = info;
    http_request_set_data(req, NULL); /* the gen logs the access line now */
    gen->rl = ticket;
    gen->ttft_s = -1;
    gen->status = 500;
    gen->g = g;
    gen->req = req;
    gen->route = route;
    gen->p = p;
    gen->created = (int64_t)time(NULL);
    gen->start_ns = uv_hrtime();
    gw_format_id((enum gw_api)api, gen->id, sizeof gen->id);
    gen->n_choices = n_choices;
    gen->choices = choices;
    for (size_t i = 0; i < gen->n_choices; i++) {
        gen->choices[i].gen = gen;
        gen->choices[i].index = i;
    }
    g->active++;
    gen->next = g->gens;
    if (g->gens) g->gens->prev = gen;
    g->gens = gen;
    http_request_on_close(req, on_client_gone, gen);

    gen_enter(gen);
    char key[GW_PREFIX_KEY_SIZE];
    struct gw_route_opts o = route_opts(gen, NULL, key);
    if (gw_route_start(g->ctls, g->client, &o, on_first_route, gen, &gen->lookup) != 0) {
        gen->lookup = NULL;
        gw_emit_error(gen, 503, NULL, "the controller could not be reached", "1");
    }
    gen_leave(gen);
}

void gw_generate_abort_all(struct gw *g, const char *message)
{
    struct gw_gen *gen = g->gens;
    while (gen) {
        gen_enter(gen);
        gw_emit_error(gen, 503, NULL, message, "1");
        struct gw_gen *next = gen->next; /* read before gen_leave, which may free gen */
        gen_leave(gen);
        gen = next;
    }
}
