/* One generation request in flight: its choices (one upstream POST /generate each), the
 * controller lookups, and what has been sent to the client. Internal to proxy*.c. */
#ifndef SLUICE_GATEWAY_PROXY_H
#define SLUICE_GATEWAY_PROXY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"
#include "gateway/gateway.h"
#include "gateway/route.h"
#include "gateway/validate.h"

struct gw_gen;

struct gw_choice {
    struct gw_gen *gen;
    size_t index;
    http_call *call;
    char *address;        /* worker of the current attempt */
    int attempts;
    bool got_frame;       /* this attempt delivered a frame: it can no longer be retried */
    bool finished;        /* a frame with finish_reason arrived */
    bool waiting_route;   /* waiting for the retry lookup */
    bool bad_frame;       /* the worker sent something that is not an ndjson frame */
    char *early_error;    /* an error frame that came before any token: retried elsewhere */
    char *line;           /* partial ndjson line */
    size_t line_len, line_cap;
    char *err_body;       /* body of a non-200 answer */
    size_t err_len;
    /* What the choice produced (non-streamed answers keep the text). */
    struct strbuf text;
    json_t *logprobs;     /* chat: content items; completions: the logprobs object */
    json_t *prompt_logprobs; /* vLLM's prompt_logprobs (non-streamed answers) */
    struct strbuf reasoning; /* chat: reasoning_content */
    json_t *tool_calls;   /* chat: the tool calls so far (gw_tool_calls_merge) */
    int64_t offset;       /* completions' text_offset so far */
    char finish[16];
    int64_t prompt_tokens, completion_tokens;
    bool role_sent;
    uint64_t last_token_ns;
    struct trace_span span; /* the current attempt's call to its worker */
};

struct gw_gen {
    struct gw_gen *prev, *next; /* g->gens */
    struct gw *g;
    http_request *req;    /* NULL once answered or gone */
    const char *route;
    struct gw_params p;
    char id[48];
    int64_t created;
    uint64_t start_ns;
    bool first_token;
    size_t n_choices, n_complete;
    struct gw_choice *choices;
    gw_route *lookup;     /* the controller lookup in flight */
    gw_models_wait *models_wait;
    char *retry_address;  /* where failed choices go on their second attempt */
    char *failed_address;
    int retry_asks;
    bool streaming;       /* the SSE response has begun */
    bool ended;           /* answered, failed or gone: nothing more is sent */
    int depth;            /* callbacks on the stack; the gen is freed when it drops to 0 */
    /* For the access line and the rate limits, written and settled when the gen is freed. */
    struct gw_reqinfo *info;
    struct gw_rl_ticket rl;
    double ttft_s;        /* -1 until the first token */
    int status;           /* what the client was answered (499: it left first) */
    char error[256];      /* why it failed, "" when it did not */
};

/* What human log lines call the request: its request id (the X-Request-Id). */
static inline const char *gw_gen_rid(const struct gw_gen *gen)
{
    return gen->info ? gen->info->request_id : gen->id;
}

/* proxy_emit.c: turning frames into what the client sees. */
/* Handles one parsed frame of a choice. */
void gw_emit_frame(struct gw_gen *gen, struct gw_choice *c, const json_t *frame);
/* Every choice completed: sends the rest (usage, [DONE] or the whole response). */
void gw_emit_success(struct gw_gen *gen);
/* Ends the request with an error: an SSE error event then [DONE] once streaming, otherwise an
 * error response with status. */
void gw_emit_error(struct gw_gen *gen, int status, const char *param, const char *message,
                   const char *retry_after);

/* Prompt and completion tokens over every choice, each prompt counted once. */
void gw_gen_totals(const struct gw_gen *gen, int64_t *prompt, int64_t *completion);

/* proxy.c */
/* Cancels everything in flight and marks the gen ended. */
void gw_gen_stop(struct gw_gen *gen);

#endif
