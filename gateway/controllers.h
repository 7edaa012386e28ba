/* The controllers a gateway asks (--controller-address a,b,...), for high availability.
 *
 * Each call goes to the first healthy controller in the order given; one that fails (cannot
 * be reached, times out, answers 5xx or nonsense) is marked failed and the call moves on to
 * the next, so a request is never lost to one controller while another answers. Failed
 * controllers are tried only after every healthy one, as a last resort. A probe of each
 * controller (GET /health, every GW_CTLS_PROBE_MS) marks it failed or healthy again, so that
 * calls prefer the healthy ones without paying a timeout to find out, and
 * sluice_gateway_controller_up tells the truth about one that no call goes to. Every call is
 * bounded: each controller is tried at most once, each try by the controller timeout. */
#ifndef SLUICE_GATEWAY_CONTROLLERS_H
#define SLUICE_GATEWAY_CONTROLLERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/http_client.h"
#include "common/trace.h"

#define GW_CTLS_MAX 8
#define GW_CTLS_PROBE_MS 500

typedef struct gw_ctls gw_ctls;

/* csv: comma-separated base URLs (a trailing slash is dropped). Returns 0, or -1 with err
 * filled (none given, more than GW_CTLS_MAX, an empty one). */
int gw_ctls_init(gw_ctls **out, const char *csv, char *err, size_t err_cap);
void gw_ctls_free(gw_ctls *s);
size_t gw_ctls_count(const gw_ctls *s);
const char *gw_ctls_url(const gw_ctls *s, size_t i);
bool gw_ctls_healthy(const gw_ctls *s, size_t i);
/* The order to try them in: the healthy ones as given, then the failed ones. Returns the
 * count. */
size_t gw_ctls_order(const gw_ctls *s, size_t order[GW_CTLS_MAX]);
/* What a call to controller i found: a failure marks it failed, success healthy. */
void gw_ctls_report(gw_ctls *s, size_t i, bool ok);
/* Calls that moved on to another controller because one failed. */
uint64_t gw_ctls_failovers(const gw_ctls *s);

/* Starts the probes of the controllers on loop (calls through client, bounded by
 * timeout_ms); gw_ctls_free stops them. */
int gw_ctls_start_probes(gw_ctls *s, uv_loop_t *loop, http_client *client, long timeout_ms);

/* One call with failover. judge reads each controller's answer (res->error and status
 * included) and says what it means: */
enum {
    GW_CTL_DONE = 1,    /* the answer is final: stop */
    GW_CTL_NEXT = 0,    /* usable, but another healthy controller may know better: ask the
                           next healthy one if there is one (a restarted controller that has
                           not heard from every worker yet) */
    GW_CTL_FAILED = -1, /* this controller failed: mark it and try the next one */
};
typedef int (*gw_ctl_judge_fn)(size_t ctl, const struct http_call_result *res, void *user);
/* Called once at the end (not after a cancel): done is true when judge said GW_CTL_DONE. */
typedef void (*gw_ctl_end_fn)(bool done, void *user);

struct gw_ctl_call_opts {
    const char *method, *path;
    const json_t *json;              /* the body, or NULL */
    long timeout_ms;
    const char *request_id;          /* sent as X-Request-Id when set */
    const struct trace_span *parent; /* each try is a child span of it, sent as traceparent */
    const char *span_name;
    gw_ctl_judge_fn judge;
    gw_ctl_end_fn end;
    void *user;
};

typedef struct gw_ctl_call gw_ctl_call;
/* Starts the call. Returns 0 (the end callback will run), or -1 when no controller could
 * even be asked (nothing runs). */
int gw_ctls_call(gw_ctls *s, http_client *client, const struct gw_ctl_call_opts *o, gw_ctl_call **out);
/* Stops a call in flight: no callback runs. Safe inside judge. */
void gw_ctl_call_cancel(gw_ctl_call *c);

#endif
