/* Starting and stopping the controller: registry, HTTP server and client, sweep timer. */
#include <stdlib.h>

#include "common/auth.h"
#include "common/log.h"
#include "controller/controller.h"

static void on_sweep(uv_timer_t *t)
{
    struct ctl *c = t->data;
    ctl_registry_sweep(c->reg);
}

/* A dead worker must become unroutable within the expiration: dispatch already checks each
 * worker's age, and the sweep keeps the registry (and /workers, /metrics) tidy. It runs four
 * times per expiration, and at least once a second. */
static uint64_t sweep_interval_ms(double expiration_s)
{
    double ms = expiration_s * 250.0;
    if (ms > 1000) ms = 1000;
    if (ms < 10) ms = 10;
    return (uint64_t)ms;
}

int ctl_start(struct ctl *c, uv_loop_t *loop, const struct ctl_config *cfg)
{
    c->cfg = *cfg;
    c->loop = loop;
    ctl_rng_seed(&c->rng, cfg->seed);
    if (ctl_registry_init(&c->reg, cfg->heartbeat_expiration, NULL, NULL) != 0 ||
        strmap_init(&c->dispatch_counts) != 0) {
        log_error("out of memory");
        goto fail;
    }
    if (http_client_init(&c->client, loop) != 0) {
        log_error("cannot start the HTTP client");
        goto fail;
    }
    /* The client only asks workers for /worker_get_status, which needs the token too. */
    if (auth_client_token(c->client, cfg->internal_token) != 0) goto fail;
    struct http_server_config scfg = {.host = cfg->host, .port = (int)cfg->port};
    http_server_flags_apply(&cfg->http, &scfg);
    if (http_server_init(&c->server, loop, &scfg, ctl_handle, c) != 0) {
        log_error("cannot listen on %s:%ld", cfg->host, cfg->port);
        goto fail;
    }
    uv_timer_init(loop, &c->sweep_timer);
    c->sweep_timer.data = c;
    uint64_t every = sweep_interval_ms(cfg->heartbeat_expiration);
    uv_timer_start(&c->sweep_timer, on_sweep, every, every);
    c->sweep_timer_started = true;
    return 0;
fail:
    ctl_stop(c);
    return -1;
}

static void on_server_closed(void *arg)
{
    (void)arg;
}

void ctl_stop(struct ctl *c)
{
    if (c->reg) ctl_refresh_cancel_all(c);
    if (c->server) http_server_close(c->server, on_server_closed, NULL);
    c->server = NULL;
    if (c->client) http_client_free(c->client);
    c->client = NULL;
    if (c->sweep_timer_started) {
        uv_timer_stop(&c->sweep_timer);
        uv_close((uv_handle_t *)&c->sweep_timer, NULL);
        c->sweep_timer_started = false;
    }
}

static void free_counts(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    free(value);
}

void ctl_free(struct ctl *c)
{
    if (c->dispatch_counts) strmap_each(c->dispatch_counts, free_counts, NULL);
    strmap_free(c->dispatch_counts);
    c->dispatch_counts = NULL;
    ctl_registry_free(c->reg);
    c->reg = NULL;
}
