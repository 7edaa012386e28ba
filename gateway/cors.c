/* CORS for browser clients (--allowed-origins): the Access-Control-* headers on answers to an
 * allowed Origin, and preflights (OPTIONS with Access-Control-Request-Method) answered before
 * authentication, since browsers send them without credentials. Off by default: then no
 * header is added and OPTIONS is an unknown method, as before. */
#include <stdio.h>
#include <string.h>

#include "gateway/gateway.h"

bool gw_cors_allowed(const char *allowed, const char *origin)
{
    if (!allowed || !*allowed || !origin || !*origin) return false;
    size_t n = strlen(origin);
    for (const char *p = allowed; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *end = p;
        while (*end && *end != ',') end++;
        size_t len = (size_t)(end - p);
        while (len && p[len - 1] == ' ') len--;
        if ((len == 1 && *p == '*') || (len == n && !memcmp(p, origin, n))) return true;
        p = end;
    }
    return false;
}

/* Header values a client sent that may be echoed: printable ASCII only, no CR or LF. */
static bool header_safe(const char *v)
{
    for (; *v; v++)
        if (*v < 0x20 || *v > 0x7e) return false;
    return true;
}

bool gw_cors_handle(struct gw *g, http_request *req, const char *route)
{
    const char *allowed = g->cfg.allowed_origins;
    if (!allowed || !*allowed) return false;
    const char *origin = http_request_header(req, "Origin");
    bool preflight = !strcmp(http_request_method(req), "OPTIONS") &&
                     http_request_header(req, "Access-Control-Request-Method") != NULL;
    if (!origin || !gw_cors_allowed(allowed, origin) || !header_safe(origin)) {
        if (preflight) gw_respond_error(g, req, route, 400, NULL, "Disallowed CORS origin");
        return preflight;
    }
    bool any = gw_cors_allowed(allowed, "*");
    http_response_header(req, "Access-Control-Allow-Origin", any ? "*" : origin);
    /* A list answers per origin: caches must keep one answer per Origin. */
    if (!any) http_response_header(req, "Vary", "Origin");
    http_response_header(req, "Access-Control-Expose-Headers",
                         "X-Request-Id, Retry-After, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
                         "x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
                         "x-ratelimit-reset-tokens");
    if (!preflight) return false;
    http_response_header(req, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    /* Whatever headers the page means to send (Authorization, Content-Type, OpenAI's SDK's
     * own), as vLLM allows them all. */
    const char *asked = http_request_header(req, "Access-Control-Request-Headers");
    if (asked && *asked && header_safe(asked)) http_response_header(req, "Access-Control-Allow-Headers", asked);
    http_response_header(req, "Access-Control-Max-Age", "600");
    gw_metrics_request(g->metrics, route, 204);
    struct gw_reqinfo *info = http_request_get_data(req);
    http_request_set_data(req, NULL);
    http_respond(req, 204, "text/plain", "", 0);
    gw_access_log(g, info, route, 204, NULL);
    gw_reqinfo_free(info);
    return true;
}
