/* SIGHUP, as nginx and most daemons take it: read the configuration files again without a
 * restart. The API key file (--api-key-file; --api-keys stay as given) and the rate limits
 * (--rate-limit-file) are read again, and replace the old ones only when read whole, so a
 * half-written file never locks every client out; the access log file is opened again, for
 * logrotate. Requests in flight keep the key they were admitted with. */
#include <signal.h>

#include "common/jsonlog.h"
#include "common/log.h"
#include "gateway/gateway.h"

void gw_reload(struct gw *g)
{
    gw_auth *fresh = NULL;
    if (gw_auth_init(&fresh, g->cfg.api_keys, g->cfg.api_key_file) == 0) {
        gw_auth_free(g->auth);
        g->auth = fresh;
        log_info("SIGHUP: %zu API key(s)", gw_auth_key_count(g->auth));
    } else {
        log_error("SIGHUP: keeping the %zu API key(s) already loaded", gw_auth_key_count(g->auth));
    }
    gw_rl_reload(g->rl);
    jsonlog_reopen();
}

static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    gw_reload(h->data);
}

int gw_reload_watch(struct gw *g)
{
    int rc = uv_signal_init(g->loop, &g->sighup);
    if (rc < 0) return rc;
    g->sighup.data = g;
    g->sighup_open = true;
    return uv_signal_start(&g->sighup, on_sighup, SIGHUP);
}

void gw_reload_close(struct gw *g)
{
    if (!g->sighup_open) return;
    g->sighup_open = false;
    uv_close((uv_handle_t *)&g->sighup, NULL);
}
