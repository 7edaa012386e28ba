/* The engine thread: drains submits and aborts, schedules one ragged batch per step, runs the
 * backend, applies stops and detokenizes, and hands events to the loop thread. */
#include "worker/engine/engine.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/strbuf.h"
#include "worker/engine/scheduler.h"
#include "worker/engine/stop.h"

enum in_kind { IN_SUBMIT, IN_ABORT, IN_ABORT_ALL };

struct in_item {
    struct in_item *next;
    enum in_kind kind;
    struct engine_request *req;
    uint64_t id;
    char *message;                 /* IN_ABORT_ALL */
    double t_submit_ms;
};

struct out_item {
    struct out_item *next;
    struct engine_event ev;
    struct engine_token *tokens;
    char *text;
    char *error;
    struct prompt_logprob *prompt_logprobs;
    float *embedding;
};

/* A request the engine thread is serving. */
struct live_req {
    struct live_req *prev, *next;
    struct engine_request *req;
    struct sched_seq *seq;
    struct sampling_params sp;
    struct tok_stream *ts;
    struct stop_state stop;
    double t_submit_ms;
    double first_token_ms;         /* < 0 until the first token */
    /* This step's output. */
    struct engine_token step_tok;
    bool has_step_tok;
    struct strbuf step_text; /* this step's new text, handed to the event */
    enum finish_reason finish;
    const char *error;       /* FINISH_ERROR: why (a static string) */
    /* Structured output: the matcher of req->grammar, advanced token by token; mask_error:
     * why this step's mask could not be made (the token it samples then ends the request). */
    struct grammar_matcher *gm;
    const char *mask_error;
    /* min_tokens: what the sampler excludes until then (the stop token ids and, unless
     * ignore_eos, the EOS ids). */
    int32_t suppress[ENGINE_MAX_STOPS + STOP_MAX_EOS];
    int32_t n_suppress;
    /* prompt_logprobs: one entry per prompt position but the last, filled by the prefill steps,
     * handed to the first event with a token (NULL from then on). */
    struct prompt_logprob *plp;
    /* Embedding requests: the pooled hidden state (a sum, or the last row's), and whether it is
     * complete (the step computing the prompt's last token was taken). */
    float *hidden;
    bool embedded;
};

/* The sampled rows of a submitted step, kept until its tokens are taken. */
struct step_rows {
    int32_t n;
    struct live_req **lr; /* per row, in the step's order; NULL once the request ended */
    int32_t *pos;         /* where the row's token goes: a placeholder's place, or the end */
    /* Embedding requests whose prompt this step completes (NULL once the request ended). */
    int32_t n_embedded;
    struct live_req **embedded;
    /* Prompt logprob and hidden-state buffers of requests that ended while a queued step may
     * still write them (a backend that writes them at collect, as CUDA does): freed once this
     * step, the newest queued when they ended, is collected. */
    int32_t n_parked, parked_cap;
    void **parked;
};

/* Keeps p (malloc'd) until sr is collected; false when there is no room (then p must not be
 * freed: leaking it is the safe choice). */
static bool park_buffer(struct step_rows *sr, void *p)
{
    if (!p) return true;
    if (sr->n_parked == sr->parked_cap) {
        int32_t cap = sr->parked_cap ? 2 * sr->parked_cap : 8;
        void **n = realloc(sr->parked, (size_t)cap * sizeof *n);
        if (!n) return false;
        sr->parked = n;
        sr->parked_cap = cap;
    }
    sr->parked[sr->n_parked++] = p;
    return true;
}

static void free_parked(struct step_rows *sr)
{
    for (int32_t i = 0; i < sr->n_parked; i++) free(sr->parked[i]);
    sr->n_parked = 0;
}

struct engine {
    struct backend *backend;
    const struct tokenizer *tok;
    struct engine_options opt;
    engine_event_fn on_event;
    void *user;
    uv_async_t *async;
    pthread_t thread;

    pthread_mutex_t in_mu;
    pthread_cond_t in_cv;
    struct in_item *in_head, *in_tail;
    bool stopping;
    bool refusing;                 /* failed: submits are refused */

    pthread_mutex_t out_mu;
    struct out_item *out_head, *out_tail;

    pthread_mutex_t stats_mu;
    struct engine_stats stats;

    /* Engine thread only from here on. */
    struct scheduler sched;
    struct live_req *live;
    uint64_t seed_counter;
    int32_t ctx;
    int32_t max_tokens_per_step, max_seqs_per_step;
    struct batch_seq *bseqs;
    int32_t *btokens;
    struct sample_result *results;
    /* Structured output: per sampled row of a step, its mask of mask_words words. */
    uint32_t *masks;
    size_t mask_words;
    /* The submitted step's mask_later rows (backend_sample), by their row in the step. */
    int32_t *later_rows;
    /* Submitted steps whose tokens are not taken yet, oldest first from flight_head: at most
     * the one just submitted and the one before it. */
    struct step_rows flight[2];
    int flight_head, n_flight;
    bool overlap;                  /* backend_submit returns early, or the options ask for it */
    bool failed;
    char error[512];
    uint64_t tokens_generated, prompt_tokens, steps, overlapped_steps;
    uint64_t grammar_masks;
    double grammar_mask_ms;
};

const char *finish_reason_name(enum finish_reason r)
{
    switch (r) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_ABORT: return "abort";
    case FINISH_ERROR: return "error";
    default: return NULL;
    }
}

void engine_request_free(struct engine_request *req)
{
    if (!req) return;
    free(req->prompt);
    free(req->bias_ids);
    free(req->bias_values);
    for (int i = 0; i < req->n_stop && i < ENGINE_MAX_STOPS; i++) free(req->stop[i]);
    if (req->grammar) grammar_compiled_unref(req->grammar);
    free(req);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- the output queue (engine thread -> loop thread) ------------------------------------ */

static void out_items_free(struct out_item *it)
{
    while (it) {
        struct out_item *next = it->next;
        free(it->tokens);
        free(it->text);
        free(it->error);
        free(it->prompt_logprobs);
        free(it->embedding);
        free(it);
        it = next;
    }
}

static void on_async(uv_async_t *h)
{
    struct engine *e = h->data;
    if (!e) return;
    pthread_mutex_lock(&e->out_mu);
    struct out_item *list = e->out_head;
    e->out_head = e->out_tail = NULL;
    pthread_mutex_unlock(&e->out_mu);
    for (struct out_item *it = list; it; it = it->next) e->on_event(&it->ev, e->user);
    out_items_free(list);
}

static void on_async_closed(uv_handle_t *h)
{
    free(h);
}

/* Queues an event for lr. Takes text (malloc'd or NULL), and from lr the prompt logprobs (on
 * the first event with a token) and a finished embedding. */
static void post_event(struct engine *e, struct live_req *lr, uint64_t id, int32_t n_prompt,
                       int32_t n_completion, char *text, size_t text_len, enum finish_reason finish,
                       const char *error)
{
    struct out_item *it = calloc(1, sizeof *it);
    if (!it) {
        free(text);
        log_error("engine: out of memory queueing an event for request %llu", (unsigned long long)id);
        return;
    }
    if (lr && lr->has_step_tok) {
        it->tokens = malloc(sizeof *it->tokens);
        if (it->tokens) {
            *it->tokens = lr->step_tok;
            it->ev.n_tokens = 1;
        }
    }
    if (lr && lr->plp && it->ev.n_tokens > 0) {
        it->prompt_logprobs = lr->plp;
        lr->plp = NULL;
        it->ev.prompt_logprobs = it->prompt_logprobs;
        it->ev.n_prompt_logprobs = lr->req->n_prompt - 1;
    }
    if (lr && lr->embedded && lr->hidden) {
        it->embedding = lr->hidden;
        lr->hidden = NULL;
        it->ev.embedding = it->embedding;
        it->ev.embedding_dim = e->backend->config.hidden_size;
    }
    it->text = text ? text : strdup("");
    if (error) it->error = strdup(error);
    it->ev.id = id;
    it->ev.tokens = it->tokens;
    it->ev.text = it->text ? it->text : "";
    it->ev.text_len = it->text ? (text ? text_len : 0) : 0;
    it->ev.finish = finish;
    it->ev.error = it->error ? it->error : (error ? "error" : NULL);
    it->ev.prompt_tokens = n_prompt;
    it->ev.completion_tokens = n_completion;
    it->ev.first_token_ms = lr && lr->first_token_ms >= 0 ? lr->first_token_ms : 0.0;
    it->ev.time_ms = now_ms();
    pthread_mutex_lock(&e->out_mu);
    if (e->out_tail) e->out_tail->next = it;
    else e->out_head = it;
    e->out_tail = it;
    pthread_mutex_unlock(&e->out_mu);
}

/* ---- live requests ----------------------------------------------------------------------- */

static void live_unlink(struct engine *e, struct live_req *lr)
{
    if (lr->prev) lr->prev->next = lr->next;
    else e->live = lr->next;
    if (lr->next) lr->next->prev = lr->prev;
}

static void live_destroy(struct engine *e, struct live_req *lr)
{
    live_unlink(e, lr);
    /* A queued step may still carry it: its row is skipped when the step's tokens come. The
     * blocks can go back now: every later step is queued behind that one on the device. */
    for (int i = 0; i < e->n_flight; i++) {
        struct step_rows *sr = &e->flight[(e->flight_head + i) % 2];
        for (int32_t r = 0; r < sr->n; r++)
            if (sr->lr[r] == lr) sr->lr[r] = NULL;
        for (int32_t r = 0; r < sr->n_embedded; r++)
            if (sr->embedded[r] == lr) sr->embedded[r] = NULL;
    }
    if (e->n_flight > 0) {
        /* A queued step may write them when it is collected: they go when the newest does. */
        struct step_rows *newest = &e->flight[(e->flight_head + e->n_flight - 1) % 2];
        if (!park_buffer(newest, lr->plp)) log_warn("engine: out of memory; leaking a prompt logprob buffer");
        if (!park_buffer(newest, lr->hidden)) log_warn("engine: out of memory; leaking a hidden-state buffer");
        lr->plp = NULL;
        lr->hidden = NULL;
    }
    if (lr->seq) sched_seq_remove(&e->sched, lr->seq);
    if (lr->ts) tok_stream_free(lr->ts);
    stop_free(&lr->stop);
    grammar_matcher_free(lr->gm);
    engine_request_free(lr->req);
    strbuf_free(&lr->step_text);
    free(lr->plp);
    free(lr->hidden);
    free(lr);
}

/* The BACKEND_TOKEN_FROM_PREV placeholders that end a sequence: tokens sampled by steps whose
 * results the engine has not taken yet (at most the last two). */
static int32_t placeholders(const struct sched_seq *q)
{
    int32_t k = 0;
    while (k < sched_seq_generated(q) && q->tokens[q->n_tokens - 1 - k] < 0) k++;
    return k;
}

/* Generated tokens the engine knows. */
static int32_t live_generated(const struct live_req *lr)
{
    return lr->seq ? sched_seq_generated(lr->seq) - placeholders(lr->seq) : 0;
}

/* Ends lr with an event (no text beyond what the caller passes) and frees it. */
static void live_end(struct engine *e, struct live_req *lr, enum finish_reason finish, const char *error)
{
    post_event(e, lr, lr->req->id, lr->req->n_prompt, live_generated(lr), NULL, 0, finish, error);
    live_destroy(e, lr);
}

static void step_text_append(struct live_req *lr, const char *t, size_t n)
{
    /* Out of memory loses this piece of text, not the request: the tokens still count. */
    if (n) strbuf_append(&lr->step_text, t, n);
}

/* Passes detokenized text through the stop matcher into this step's output. Returns true on
 * a stop string match. */
static bool push_text(struct live_req *lr, const char *text, size_t len)
{
    char *out = NULL;
    size_t out_len = 0;
    int rc = stop_push_text(&lr->stop, text, len, &out, &out_len);
    if (rc >= 0) step_text_append(lr, out, out_len);
    free(out);
    return rc == 1;
}

/* Takes the token sampled for lr, which goes at position pos of its sequence: into the
 * placeholder there, or appended when pos is the end. */
static void handle_token(struct engine *e, struct live_req *lr, const struct sample_result *res, int32_t pos)
{
    struct sched_seq *seq = lr->seq;
    if (lr->first_token_ms < 0) lr->first_token_ms = now_ms() - lr->t_submit_ms;
    if (pos < seq->n_tokens) {
        seq->tokens[pos] = res->token;
    } else if (sched_seq_append(seq, res->token) != 0) {
        lr->finish = FINISH_ERROR;
        lr->error = "out of memory";
        return;
    }
    e->tokens_generated++;
    struct engine_token *t = &lr->step_tok;
    memset(t, 0, sizeof *t);
    t->id = res->token;
    t->logprob = res->logprob;
    if (lr->sp.logprobs > 0) {
        t->n_top = res->n_top < lr->sp.logprobs ? res->n_top : lr->sp.logprobs;
        if (t->n_top > SAMPLER_MAX_TOP_LOGPROBS) t->n_top = SAMPLER_MAX_TOP_LOGPROBS;
        if (t->n_top < 0) t->n_top = 0;
        memcpy(t->top_ids, res->top_ids, (size_t)t->n_top * sizeof *t->top_ids);
        memcpy(t->top_logprobs, res->top_logprobs, (size_t)t->n_top * sizeof *t->top_logprobs);
    }
    lr->has_step_tok = true;

    bool emit;
    enum finish_reason finish = stop_check_token(&lr->stop, res->token, pos + 1 - seq->n_prompt, pos + 1, &emit);
    if (lr->gm) {
        /* The mask made the token one the grammar takes; anything else is the engine's bug or
         * a mask that could not be made, and ends the request rather than break its output. */
        if (lr->mask_error || grammar_matcher_accept_token(lr->gm, res->token) != 0) {
            lr->finish = FINISH_ERROR;
            lr->error = lr->mask_error ? lr->mask_error : "structured output: the sampled token is outside the grammar";
            return;
        }
        /* Nothing but the end can follow: done, without a step for the stop token (and a
         * stop, not a length, when the last token allowed is the one that completes it). */
        if ((finish == FINISH_NONE || finish == FINISH_LENGTH) && grammar_matcher_is_done(lr->gm)) finish = FINISH_STOP;
    }
    bool matched = false;
    char *piece = NULL;
    size_t len = 0;
    /* Before min_tokens, stop strings are not looked for (vLLM's rule): the text goes out as
     * it is, and the matcher starts with the min_tokens-th token's. */
    const bool armed = pos + 1 - seq->n_prompt >= lr->req->min_tokens;
    if (emit && lr->ts && tok_stream_push(lr->ts, res->token, &piece, &len) == 0) {
        if (armed) matched = push_text(lr, piece, len);
        else step_text_append(lr, piece, len);
    }
    free(piece);
    piece = NULL;
    if (matched) {
        finish = FINISH_STOP;
    } else if (finish != FINISH_NONE) {
        /* Ending for another reason: what the detokenizer and the stop matcher still hold
         * becomes final (a stop string can still complete in the detokenizer's tail). */
        if (lr->ts && tok_stream_flush(lr->ts, &piece, &len) == 0) {
            if (!armed) step_text_append(lr, piece, len);
            else if (push_text(lr, piece, len)) finish = FINISH_STOP;
        }
        free(piece);
        char *rest = NULL;
        size_t rest_len = 0;
        if (stop_flush_text(&lr->stop, &rest, &rest_len) == 0) step_text_append(lr, rest, rest_len);
        free(rest);
    }
    lr->finish = finish;
}

/* ---- inputs -------------------------------------------------------------------------------- */

static void reject(struct engine *e, struct engine_request *req, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reject(struct engine *e, struct engine_request *req, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    post_event(e, NULL, req->id, req->n_prompt, 0, NULL, 0, FINISH_ERROR, msg);
    engine_request_free(req);
}

/* Whether min_tokens has tokens to keep the sampler from: stop token ids, or EOS ids. */
static bool holds_back(const struct engine_request *req, const struct backend *be)
{
    return req->n_stop_ids > 0 || (!req->ignore_eos && be->config.n_eos > 0);
}

static void accept_request(struct engine *e, struct engine_request *req, double t_submit_ms)
{
    if (e->failed) {
        reject(e, req, "the engine has failed: %s", e->error);
        return;
    }
    if (!req->prompt || req->n_prompt < 1) {
        reject(e, req, "the prompt is empty");
        return;
    }
    const bool embed = req->pooling != ENGINE_POOL_NONE;
    if (embed ? req->n_prompt > e->ctx : req->n_prompt >= e->ctx) {
        reject(e, req, "the prompt has %d tokens, which leaves no room for the completion in a context of %d",
               req->n_prompt, e->ctx);
        return;
    }
    /* What the backend cannot do is refused, never ignored (the worker says so with a 400
     * first; this is for every other caller). */
    const struct backend *be = e->backend;
    const char *missing = NULL;
    if (req->n_bias > 0 && !be->supports_logit_bias) missing = "logit_bias";
    else if (req->min_tokens > 0 && !be->supports_suppress && holds_back(req, be)) missing = "min_tokens";
    else if (req->prompt_logprobs && !embed && !be->supports_prompt_logprobs) missing = "prompt logprobs";
    else if (embed && !be->supports_hidden_states) missing = "embeddings";
    if (missing) {
        reject(e, req, "%s %s not supported on the %s backend yet", missing,
               !strcmp(missing, "embeddings") || !strcmp(missing, "prompt logprobs") ? "are" : "is", be->name);
        return;
    }
    struct live_req *lr = calloc(1, sizeof *lr);
    if (!lr) {
        reject(e, req, "out of memory");
        return;
    }
    lr->req = req;
    lr->sp = req->sampling;
    if (!req->has_seed) lr->sp.seed = e->opt.seed + e->seed_counter++;
    lr->t_submit_ms = t_submit_ms;
    lr->first_token_ms = -1.0;
    int rc = SCHED_ERR_NOMEM;
    if (req->grammar) {
        if (!e->backend->supports_token_mask) {
            free(lr);
            reject(e, req, "structured output is not supported on the %s backend", e->backend->name);
            return;
        }
        /* Masks cover the model's rows and the grammar's vocabulary, whichever is wider. */
        size_t words = ((size_t)e->backend->config.vocab_size + 31) / 32;
        size_t gw = grammar_vocab_mask_words(grammar_compiled_vocab(req->grammar));
        if (gw > words) words = gw;
        if (words > e->mask_words) {
            uint32_t *m = realloc(e->masks, (size_t)e->max_seqs_per_step * words * sizeof *m);
            if (!m) goto fail;
            e->masks = m;
            e->mask_words = words;
        }
        if (grammar_matcher_new(&lr->gm, req->grammar) != 0) goto fail;
    }
    if (e->tok && !embed) {
        lr->ts = tok_stream_new(e->tok, req->skip_special);
        if (!lr->ts) goto fail;
    }
    if (embed && !(lr->hidden = calloc((size_t)be->config.hidden_size, sizeof *lr->hidden))) goto fail;
    if (!embed && req->prompt_logprobs && req->n_prompt > 1 &&
        !(lr->plp = calloc((size_t)req->n_prompt - 1, sizeof *lr->plp)))
        goto fail;
    const struct model_config *cfg = &e->backend->config;
    int32_t n_stops = req->n_stop < ENGINE_MAX_STOPS ? req->n_stop : ENGINE_MAX_STOPS;
    int32_t n_stop_ids = req->n_stop_ids < ENGINE_MAX_STOPS ? req->n_stop_ids : ENGINE_MAX_STOPS;
    stop_init(&lr->stop, req->ignore_eos ? NULL : cfg->eos_ids, req->ignore_eos ? 0 : cfg->n_eos,
              req->stop_ids, n_stop_ids, req->stop, n_stops, req->max_tokens, e->ctx);
    lr->stop.min_tokens = req->min_tokens;
    lr->stop.include_stop = req->include_stop_str;
    if (req->min_tokens > 0) {
        for (int32_t i = 0; i < n_stop_ids; i++) lr->suppress[lr->n_suppress++] = req->stop_ids[i];
        for (int32_t i = 0; i < lr->stop.n_eos; i++) lr->suppress[lr->n_suppress++] = lr->stop.eos[i];
    }
    if (req->n_bias > 0) {
        lr->sp.n_bias = req->n_bias;
        lr->sp.bias_ids = req->bias_ids;
        lr->sp.bias_values = req->bias_values;
    } else {
        lr->sp.n_bias = 0;
    }
    rc = sched_add(&e->sched, req->id, req->prompt, req->n_prompt, lr, &lr->seq);
    if (rc != 0) goto fail;
    lr->seq->salt = req->cache_salt;
    /* Every prompt position's logits (prompt logprobs) or hidden state (a mean) is needed: none
     * of them may come from the cache, where only K and V are kept. */
    lr->seq->no_cached_prefix = lr->plp || req->pooling == ENGINE_POOL_MEAN;
    req->prompt = NULL; /* the scheduler owns it now */
    lr->next = e->live;
    if (e->live) e->live->prev = lr;
    e->live = lr;
    e->prompt_tokens += (uint64_t)req->n_prompt;
    return;

fail:
    if (lr->ts) tok_stream_free(lr->ts);
    stop_free(&lr->stop);
    grammar_matcher_free(lr->gm);
    free(lr->plp);
    free(lr->hidden);
    free(lr);
    if (rc == SCHED_ERR_TOO_LONG)
        reject(e, req, "the prompt has %d tokens, more than the KV cache holds (%d blocks of %d)",
               req->n_prompt, e->sched.kv.num_blocks, KV_BLOCK_SIZE);
    else
        reject(e, req, "out of memory");
}

static void handle_abort(struct engine *e, uint64_t id)
{
    for (struct live_req *lr = e->live; lr; lr = lr->next) {
        if (lr->req->id == id) {
            live_end(e, lr, FINISH_ABORT, NULL);
            return;
        }
    }
}

static void fail_all(struct engine *e, const char *why)
{
    e->failed = true;
    snprintf(e->error, sizeof e->error, "%s", why && *why ? why : "the backend failed");
    log_error("engine: backend %s failed: %s; ending every request", e->backend->name, e->error);
    pthread_mutex_lock(&e->in_mu);
    e->refusing = true;
    pthread_mutex_unlock(&e->in_mu);
    while (e->live) live_end(e, e->live, FINISH_ERROR, e->error);
    e->n_flight = 0; /* the backend failed: their tokens will not come */
}

/* ---- one step ------------------------------------------------------------------------------ */

/* Whether the token the sequence samples next is certainly its last by length: then no step
 * is queued after it on a guess. */
static bool next_token_ends_by_length(const struct live_req *lr)
{
    const struct sched_seq *q = lr->seq;
    return (lr->stop.max_tokens > 0 && sched_seq_generated(q) + 1 >= lr->stop.max_tokens) ||
           (lr->stop.max_total > 0 && q->n_tokens + 1 >= lr->stop.max_total);
}

/* Records the sampled rows of the step just submitted. With overlap, each sequence gets a
 * placeholder for its token, so that the next step can be scheduled (and queued) with the
 * sequence one token longer before that token is on the host. */
static void record_step(struct engine *e, const struct sched_entry *ent, int32_t n_ent, bool overlap)
{
    struct step_rows *sr = &e->flight[(e->flight_head + e->n_flight) % 2];
    e->n_flight++;
    sr->n = 0;
    sr->n_embedded = 0;
    for (int32_t i = 0; i < n_ent; i++) {
        /* An embedding request's last prompt chunk: it is done once this step is taken. */
        if (ent[i].sample && !e->bseqs[i].sample) sr->embedded[sr->n_embedded++] = ent[i].seq->user;
        if (!e->bseqs[i].sample) continue;
        struct sched_seq *q = ent[i].seq;
        struct live_req *lr = q->user;
        const int32_t r = sr->n++;
        sr->lr[r] = lr;
        sr->pos[r] = q->n_tokens;
        /* Without it (a failed append too) the token is appended when it comes. */
        if (overlap && !next_token_ends_by_length(lr)) (void)sched_seq_append(q, BACKEND_TOKEN_FROM_PREV(r));
    }
}

/* Takes the tokens of the oldest queued step: stops, text, events. Returns its row count. */
static int32_t collect_step(struct engine *e)
{
    struct step_rows *sr = &e->flight[e->flight_head];
    e->flight_head = (e->flight_head + 1) % 2;
    e->n_flight--;
    e->backend->error[0] = '\0';
    const int collect_rc = backend_collect(e->backend, e->results);
    free_parked(sr);
    if (collect_rc != 0) {
        fail_all(e, e->backend->error);
        return sr->n;
    }
    /* Collect first (sampling appends to the sequences), then post. */
    struct live_req *touched[sr->n > 0 ? sr->n : 1];
    int32_t n_touched = 0;
    for (int32_t r = 0; r < sr->n; r++) {
        struct live_req *lr = sr->lr[r];
        if (!lr) continue; /* ended while the step ran */
        handle_token(e, lr, &e->results[r], sr->pos[r]);
        touched[n_touched++] = lr;
    }
    for (int32_t k = 0; k < sr->n_embedded; k++) {
        struct live_req *lr = sr->embedded[k];
        if (!lr) continue;
        /* L2-normalised: the mean's division by the token count cancels out. */
        const int32_t h = e->backend->config.hidden_size;
        double norm = 0.0;
        for (int32_t j = 0; j < h; j++) norm += (double)lr->hidden[j] * lr->hidden[j];
        float inv = norm > 0.0 ? (float)(1.0 / sqrt(norm)) : 0.0f;
        for (int32_t j = 0; j < h; j++) lr->hidden[j] *= inv;
        lr->embedded = true;
        lr->first_token_ms = now_ms() - lr->t_submit_ms;
        post_event(e, lr, lr->req->id, lr->req->n_prompt, 0, NULL, 0, FINISH_STOP, NULL);
        live_destroy(e, lr);
    }
    for (int32_t i = 0; i < n_touched; i++) {
        struct live_req *lr = touched[i];
        char *text = lr->step_text.p; /* the event takes the buffer */
        size_t len = lr->step_text.len;
        lr->step_text = (struct strbuf){0};
        post_event(e, lr, lr->req->id, lr->req->n_prompt, live_generated(lr), text, len, lr->finish,
                   lr->finish == FINISH_ERROR ? (lr->error ? lr->error : "out of memory") : NULL);
        lr->has_step_tok = false;
        if (lr->finish != FINISH_NONE) live_destroy(e, lr);
    }
    return sr->n;
}

/* lr's mask for its next token into mask (its matcher has every token before it). A mask that
 * cannot be made, or allows nothing (no token of this vocabulary continues the grammar), ends the
 * request, not the backend: lr->mask_error says why, and the token the row samples is dropped.
 * Returns whether the mask is good. */
static bool make_mask(struct engine *e, struct live_req *lr, uint32_t *mask)
{
    lr->mask_error = NULL;
    const double t_mask = now_ms();
    const int fill_rc = grammar_matcher_fill_mask(lr->gm, mask, e->mask_words);
    e->grammar_mask_ms += now_ms() - t_mask;
    e->grammar_masks++;
    if (fill_rc != 0) {
        lr->mask_error = "structured output: out of memory making the token mask";
    } else {
        /* Only the model's rows count: a tokenizer may have more ids than it. */
        uint32_t vocab = (uint32_t)e->backend->config.vocab_size, any = 0;
        for (uint32_t w = 0; w < vocab / 32 && !any; w++) any = mask[w];
        if (!any && vocab % 32) any = mask[vocab / 32] & ((1u << (vocab % 32)) - 1);
        if (!any) lr->mask_error = "structured output: no token can continue the grammar";
    }
    return lr->mask_error == NULL;
}

/* The masks of the newest submitted step's n_later mask_later rows (backend_sample), made once
 * every step before it is taken: each matcher then has its sequence's every token but the one
 * this step's input is. A row whose request ended meanwhile, or whose mask could not be made,
 * samples unmasked (its token is dropped). */
static int send_late_masks(struct engine *e, int32_t n_later)
{
    const struct step_rows *sr = &e->flight[(e->flight_head + e->n_flight - 1) % 2];
    const uint32_t *masks[n_later];
    for (int32_t k = 0; k < n_later; k++) {
        const int32_t r = e->later_rows[k];
        uint32_t *mask = e->masks + (size_t)r * e->mask_words;
        struct live_req *lr = sr->lr[r];
        if (!lr || !make_mask(e, lr, mask)) memset(mask, 0xff, e->mask_words * sizeof *mask);
        masks[k] = mask;
    }
    e->backend->error[0] = '\0';
    return backend_sample(e->backend, masks, n_later);
}

/* Runs one step: schedules and submits the next one, then takes the tokens of every step
 * before it, and of this one too unless it overlaps the next (the device then goes on to the
 * next step while the host detokenizes this one's tokens). Returns how many sequences it
 * carried or finished taking, 0 when there was nothing to do. */
static int32_t run_step(struct engine *e)
{
    const struct sched_entry *ent;
    int32_t n_ent;
    if (sched_schedule(&e->sched, &ent, &n_ent) != 0) {
        fail_all(e, "out of memory while scheduling");
        return 0;
    }
    int32_t done = n_ent, keep = 0;
    if (n_ent > 0) {
        int32_t n_tok = 0;
        bool history = false, constrained = false;
        /* Masks made while the device runs the model, on a backend that takes them late. */
        const bool defer = backend_defers_masks(e->backend);
        int32_t n_later = 0, n_rows = 0;
        for (int32_t i = 0; i < n_ent; i++) {
            const struct sched_entry *en = &ent[i];
            struct sched_seq *q = en->seq;
            struct live_req *lr = q->user;
            struct batch_seq *bs = &e->bseqs[i];
            bs->n_new = en->n_new;
            bs->start_pos = en->start_pos;
            bs->block_table = q->table.blocks;
            bs->n_blocks = q->table.n_blocks;
            bs->sample = en->sample;
            bs->prompt = en->start_pos < q->n_prompt;
            bs->sampling = &lr->sp;
            bs->n_generated = (uint64_t)sched_seq_generated(q);
            bs->history = q->tokens;
            bs->n_history = q->n_tokens;
            bs->n_output = sched_seq_generated(q);
            bs->allowed = NULL;
            bs->mask_later = false;
            bs->suppress = NULL;
            bs->n_suppress = 0;
            if (en->sample && lr->n_suppress > 0 && bs->n_generated < (uint64_t)lr->req->min_tokens) {
                bs->suppress = lr->suppress;
                bs->n_suppress = lr->n_suppress;
            }
            /* Prompt logprobs: every row whose next token is a prompt token (a recompute after a
             * preemption writes the same numbers again). */
            const int32_t chunk_end = en->start_pos + en->n_new;
            const int32_t lp_end = chunk_end < q->n_prompt - 1 ? chunk_end : q->n_prompt - 1;
            bs->lp_first = 0;
            bs->lp_rows = lr->plp && lp_end > en->start_pos ? lp_end - en->start_pos : 0;
            bs->lp_top = lr->req->prompt_top_logprobs;
            bs->lp_targets = bs->lp_rows ? q->tokens + en->start_pos + 1 : NULL;
            bs->lp_out = bs->lp_rows ? lr->plp + en->start_pos : NULL;
            bs->hidden_sum = bs->hidden_last = NULL;
            if (lr->hidden) {
                /* An embedding: nothing is sampled; a mean restarts with the prompt (a recompute). */
                bs->sample = false;
                if (lr->req->pooling == ENGINE_POOL_MEAN) {
                    if (en->start_pos == 0)
                        memset(lr->hidden, 0, (size_t)e->backend->config.hidden_size * sizeof *lr->hidden);
                    bs->hidden_sum = lr->hidden;
                } else if (en->sample) {
                    bs->hidden_last = lr->hidden;
                }
            }
            history |= bs->sample && sampling_uses_history(&lr->sp);
            if (bs->sample && lr->gm) {
                if (defer) {
                    /* Made after the submit (send_late_masks), when the step before is taken. */
                    bs->mask_later = true;
                    e->later_rows[n_later++] = n_rows;
                } else {
                    /* The sequence's steps are never overlapped here: its matcher has every
                     * token. A mask that cannot be made leaves the row unmasked (make_mask). */
                    uint32_t *mask = e->masks + (size_t)i * e->mask_words;
                    bs->allowed = make_mask(e, lr, mask) ? mask : NULL;
                }
                constrained = true;
            }
            n_rows += bs->sample;
            /* Placeholders among these are the previous step's tokens (BACKEND_TOKEN_FROM_PREV). */
            memcpy(e->btokens + n_tok, q->tokens + en->start_pos, (size_t)en->n_new * sizeof *e->btokens);
            n_tok += en->n_new;
        }
        struct batch batch = {
            .n_seqs = n_ent, .seqs = e->bseqs, .n_tokens = n_tok, .tokens = e->btokens, .logits_out = NULL,
        };
        e->backend->error[0] = '\0';
        int rc = backend_submit(e->backend, &batch);
        e->steps++;
        if (rc != 0) {
            fail_all(e, e->backend->error);
            return n_ent;
        }
        /* Penalties read every token of the sequence on the host: no guessing ahead for them. A
         * grammar's mask needs the last token: it is overlapped only when the mask can come
         * after the submit. */
        const bool overlap = e->overlap && !history && (!constrained || defer);
        record_step(e, ent, n_ent, overlap);
        keep = overlap;
        e->overlapped_steps += overlap && e->n_flight == 2;
        if (n_later > 0) {
            /* The device runs this step's model while the host takes the step before and makes
             * the masks this step samples with. */
            while (e->n_flight > 1 && !e->failed) done += collect_step(e);
            if (e->failed) return done;
            if (send_late_masks(e, n_later) != 0) {
                fail_all(e, e->backend->error);
                return done;
            }
        }
    }
    while (e->n_flight > keep && !e->failed) done += collect_step(e);
    return done;
}

static void publish_stats(struct engine *e)
{
    pthread_mutex_lock(&e->stats_mu);
    e->stats.waiting = e->sched.waiting.count;
    e->stats.running = e->sched.running.count;
    e->stats.kv_blocks_total = e->sched.kv.num_blocks;
    e->stats.kv_blocks_free = kv_cache_num_free(&e->sched.kv);
    e->stats.steps = e->steps;
    e->stats.overlapped_steps = e->overlapped_steps;
    e->stats.grammar_masks = e->grammar_masks;
    e->stats.grammar_mask_seconds = e->grammar_mask_ms / 1e3;
    e->stats.preemptions = e->sched.preemptions;
    e->stats.tokens_generated = e->tokens_generated;
    e->stats.prompt_tokens = e->prompt_tokens;
    e->stats.prefix_query_tokens = e->sched.prefix_query_tokens;
    e->stats.prefix_hit_tokens = e->sched.prefix_hit_tokens;
    e->stats.kv_blocks_cached = kv_cache_num_cached(&e->sched.kv);
    e->stats.prefix_evictions = e->sched.kv.pc.evictions;
    if (e->failed && !e->stats.failed) {
        e->stats.failed = true;
        snprintf(e->stats.error, sizeof e->stats.error, "%s", e->error);
    }
    pthread_mutex_unlock(&e->stats_mu);
}

static void *engine_main(void *arg)
{
    struct engine *e = arg;
    /* Set when the scheduler had work but could run none of it; only new input (an abort
     * freeing blocks) can change that, so the thread sleeps instead of spinning. */
    bool stalled = false;
    for (;;) {
        pthread_mutex_lock(&e->in_mu);
        while (!e->stopping && !e->in_head &&
               (e->failed || (e->n_flight == 0 && (stalled || sched_idle(&e->sched)))))
            pthread_cond_wait(&e->in_cv, &e->in_mu);
        struct in_item *items = e->in_head;
        e->in_head = e->in_tail = NULL;
        bool stopping = e->stopping;
        pthread_mutex_unlock(&e->in_mu);

        if (stopping) {
            while (items) {
                struct in_item *next = items->next;
                engine_request_free(items->req);
                free(items->message);
                free(items);
                items = next;
            }
            break;
        }
        while (items) {
            struct in_item *next = items->next;
            if (items->kind == IN_SUBMIT) accept_request(e, items->req, items->t_submit_ms);
            else if (items->kind == IN_ABORT) handle_abort(e, items->id);
            else while (e->live) live_end(e, e->live, FINISH_ERROR, items->message);
            free(items->message);
            free(items);
            items = next;
        }
        uint64_t preemptions = e->sched.preemptions;
        stalled = !e->failed && run_step(e) == 0 && !sched_idle(&e->sched) &&
                  e->sched.preemptions == preemptions;
        if (stalled) log_warn("engine: %d sequences wait but none can be scheduled", e->sched.waiting.count);
        publish_stats(e);
        pthread_mutex_lock(&e->out_mu);
        bool any = e->out_head != NULL;
        pthread_mutex_unlock(&e->out_mu);
        if (any) uv_async_send(e->async);
    }
    /* Stopping: in-flight requests end without events. */
    while (e->live) live_destroy(e, e->live);
    publish_stats(e);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------------------ */

static void step_rows_free(struct engine *e)
{
    for (int i = 0; i < 2; i++) {
        free(e->flight[i].lr);
        free(e->flight[i].pos);
        free(e->flight[i].embedded);
        free_parked(&e->flight[i]);
        free(e->flight[i].parked);
    }
}

int64_t engine_model_context(const struct backend *backend)
{
    const struct model_config *c = &backend->config;
    if (c->rope_scaling.type == ROPE_SCALING_DYNAMIC && c->rope_scaling.factor > 1.0f)
        return (int64_t)((double)c->max_position * c->rope_scaling.factor);
    return c->max_position;
}

bool engine_windowed(const struct backend *backend, int32_t step_tokens)
{
    /* A step's rows at positions p .. p + step_tokens - 1 read from p - window + 1 on. */
    const struct model_family *f = &backend->config.fam;
    return f->all_sliding && f->sliding_window > 0 &&
           backend->num_kv_blocks >= (f->sliding_window + step_tokens - 2) / KV_BLOCK_SIZE + 2;
}

int engine_create(struct engine **out, struct backend *backend, const struct tokenizer *tok,
                  const struct engine_options *opt, uv_loop_t *loop, engine_event_fn on_event,
                  void *user)
{
    *out = NULL;
    if (!backend || !opt || !loop || !on_event || backend->num_kv_blocks < 1) return -EINVAL;
    struct engine *e = calloc(1, sizeof *e);
    if (!e) return -ENOMEM;
    e->backend = backend;
    e->tok = tok;
    e->opt = *opt;
    e->on_event = on_event;
    e->user = user;

    int32_t max_tok = opt->max_num_batched_tokens > 0 ? opt->max_num_batched_tokens : 2048;
    if (backend->max_batch_tokens > 0 && backend->max_batch_tokens < max_tok) max_tok = backend->max_batch_tokens;
    int32_t max_seqs = opt->max_num_seqs > 0 ? opt->max_num_seqs : 256;
    if (backend->max_batch_seqs > 0 && backend->max_batch_seqs < max_seqs) max_seqs = backend->max_batch_seqs;
    e->max_tokens_per_step = max_tok;
    e->max_seqs_per_step = max_seqs;

    int64_t cap_tokens = (int64_t)backend->num_kv_blocks * KV_BLOCK_SIZE;
    int64_t ctx = opt->max_model_len > 0 ? opt->max_model_len : engine_model_context(backend);
    const int32_t window = backend->config.fam.all_sliding ? backend->config.fam.sliding_window : 0;
    if (ctx <= 0 || (ctx > cap_tokens && !engine_windowed(backend, max_tok))) ctx = cap_tokens;
    e->ctx = (int32_t)ctx;

    int rc = -ENOMEM;
    const enum rope_scaling_type rope_t = backend->config.rope_scaling.type;
    struct sched_options so = {
        .max_num_seqs = max_seqs, .max_num_batched_tokens = max_tok, .prefix_caching = !opt->no_prefix_caching,
        .prefix_cache_prompt_only = opt->prefix_cache_prompt_only,
        .sliding_window = window,
        .recompute_past = rope_t == ROPE_SCALING_LONGROPE ? backend->config.rope_scaling.original_max_position : 0};
    /* The K/V of dynamic NTK and LongRoPE depend on the sequence's length when computed, which
     * a prefix hash of tokens does not capture: no prefix caching for them. */
    if (rope_t == ROPE_SCALING_DYNAMIC || rope_t == ROPE_SCALING_LONGROPE) so.prefix_caching = false;
    if (sched_init(&e->sched, backend->num_kv_blocks, &so) != 0) goto fail_sched;
    e->bseqs = calloc((size_t)max_seqs, sizeof *e->bseqs);
    e->btokens = calloc((size_t)max_tok, sizeof *e->btokens);
    e->results = calloc((size_t)max_seqs, sizeof *e->results);
    e->later_rows = calloc((size_t)max_seqs, sizeof *e->later_rows);
    e->async = calloc(1, sizeof *e->async);
    if (!e->bseqs || !e->btokens || !e->results || !e->later_rows || !e->async) goto fail_mem;
    for (int i = 0; i < 2; i++) {
        struct step_rows *sr = &e->flight[i];
        sr->lr = calloc((size_t)max_seqs, sizeof *sr->lr);
        sr->pos = calloc((size_t)max_seqs, sizeof *sr->pos);
        sr->embedded = calloc((size_t)max_seqs, sizeof *sr->embedded);
        if (!sr->lr || !sr->pos || !sr->embedded) goto fail_mem;
    }
    e->overlap = opt->overlap_always || (backend_submit_returns_early(backend) && !opt->overlap_never);
    pthread_mutex_init(&e->in_mu, NULL);
    pthread_cond_init(&e->in_cv, NULL);
    pthread_mutex_init(&e->out_mu, NULL);
    pthread_mutex_init(&e->stats_mu, NULL);
    e->stats.kv_blocks_total = e->stats.kv_blocks_free = backend->num_kv_blocks;
    e->stats.prefix_caching = so.prefix_caching;
    if (uv_async_init(loop, e->async, on_async) != 0) {
        rc = -EIO;
        goto fail_sync;
    }
    e->async->data = e;
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        rc = -EAGAIN;
        e->async->data = NULL;
        uv_close((uv_handle_t *)e->async, on_async_closed);
        e->async = NULL;
        goto fail_sync;
    }
    *out = e;
    return 0;

fail_sync:
    pthread_mutex_destroy(&e->in_mu);
    pthread_cond_destroy(&e->in_cv);
    pthread_mutex_destroy(&e->out_mu);
    pthread_mutex_destroy(&e->stats_mu);
fail_mem:
    sched_free(&e->sched);
fail_sched:
    step_rows_free(e);
    free(e->bseqs);
    free(e->later_rows);
    free(e->btokens);
    free(e->results);
    free(e->async);
    free(e);
    return rc;
}

static int push_input(struct engine *e, struct in_item *it)
{
    pthread_mutex_lock(&e->in_mu);
    /* Refused from an abort-all on, whether or not it can be queued itself. */
    if (it->kind == IN_ABORT_ALL) e->refusing = true;
    if (e->stopping || (it->kind == IN_SUBMIT && e->refusing)) {
        pthread_mutex_unlock(&e->in_mu);
        return -1;
    }
    if (e->in_tail) e->in_tail->next = it;
    else e->in_head = it;
    e->in_tail = it;
    pthread_cond_signal(&e->in_cv);
    pthread_mutex_unlock(&e->in_mu);
    return 0;
}

int engine_submit(struct engine *e, struct engine_request *req)
{
    struct in_item *it = calloc(1, sizeof *it);
    if (!it) {
        engine_request_free(req);
        return -ENOMEM;
    }
    it->kind = IN_SUBMIT;
    it->req = req;
    it->id = req->id;
    it->t_submit_ms = now_ms();
    if (push_input(e, it) != 0) {
        engine_request_free(req);
        free(it);
        return -EPIPE;
    }
    return 0;
}

void engine_abort(struct engine *e, uint64_t id)
{
    struct in_item *it = calloc(1, sizeof *it);
    if (!it) return;
    it->kind = IN_ABORT;
    it->id = id;
    if (push_input(e, it) != 0) free(it);
}

void engine_abort_all(struct engine *e, const char *message)
{
    struct in_item *it = calloc(1, sizeof *it);
    char *msg = strdup(message ? message : "aborted");
    if (it && msg) {
        it->kind = IN_ABORT_ALL;
        it->message = msg;
        if (push_input(e, it) == 0) return;
    } else {
        /* Out of memory: what runs is not ended, but nothing new starts. */
        pthread_mutex_lock(&e->in_mu);
        e->refusing = true;
        pthread_mutex_unlock(&e->in_mu);
    }
    free(it);
    free(msg);
}

void engine_get_stats(struct engine *e, struct engine_stats *out)
{
    pthread_mutex_lock(&e->stats_mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->stats_mu);
}

void engine_free(struct engine *e)
{
    if (!e) return;
    pthread_mutex_lock(&e->in_mu);
    e->stopping = true;
    pthread_cond_signal(&e->in_cv);
    pthread_mutex_unlock(&e->in_mu);
    pthread_join(e->thread, NULL);

    /* Undelivered events are dropped; the handle is freed by libuv's close callback, since
     * the loop may still hold it until its next iteration. */
    e->async->data = NULL;
    uv_close((uv_handle_t *)e->async, on_async_closed);
    out_items_free(e->out_head);
    sched_free(&e->sched);
    pthread_mutex_destroy(&e->in_mu);
    pthread_cond_destroy(&e->in_cv);
    pthread_mutex_destroy(&e->out_mu);
    pthread_mutex_destroy(&e->stats_mu);
    step_rows_free(e);
    free(e->bseqs);
    free(e->later_rows);
    free(e->btokens);
    free(e->results);
    free(e->masks);
    free(e);
}
