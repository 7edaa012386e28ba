/* A request answered by one call to one worker serving its model (POST /v1/embeddings,
 * /tokenize, /detokenize): the controller names the worker as for a generation, the call is
 * retried once on another worker when the first fails before answering (no connection, a
 * timeout, a 5xx), a worker's 4xx is passed on with its message and param, and its 200 answer
 * becomes the client's through the caller's function. */
#ifndef SLUICE_GATEWAY_FORWARD_H
#define SLUICE_GATEWAY_FORWARD_H

#include <jansson.h>
#include <stdint.h>

#include "gateway/gateway.h"
#include "gateway/ratelimit_gw.h"

struct gw_forward_spec {
    const char *route;       /* for metrics and the access line */
    const char *worker_path; /* "/embed", "/tokenize", ... */
    char *model;             /* taken */
    json_t *body;            /* taken: what the worker gets */
    /* The client's answer (a new reference) from the worker's 200 answer, or NULL when that
     * answer is not what the protocol says (then 502). *tokens: the prompt tokens it used,
     * which settle the rate limits. */
    json_t *(*answer)(const json_t *worker_answer, const char *model, void *arg, int64_t *tokens);
    void *arg;
    struct gw_rl_ticket rl;  /* admitted by the caller (or empty), settled at the end */
};

/* Takes the request over (the caller answers nothing more) and counts it in g->active. */
void gw_forward(struct gw *g, http_request *req, struct gw_forward_spec *spec);
/* Ends every forwarded request in flight with a 503 (the drain ran out of time). */
void gw_forward_abort_all(struct gw *g, const char *message);

#endif
