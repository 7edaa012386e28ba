#include "common/http_flags.h"

static unsigned cap_of(long n)
{
    return n == 0 ? HTTP_NO_LIMIT : (unsigned)n;
}

void http_server_flags_apply(const struct http_server_flags *f, struct http_server_config *cfg)
{
    cfg->header_timeout_ms = (unsigned)f->header_timeout_ms;
    cfg->body_timeout_ms = (unsigned)f->body_timeout_ms;
    cfg->idle_timeout_ms = (unsigned)f->idle_timeout_ms;
    cfg->max_connections_per_ip = cap_of(f->max_connections_per_ip);
    cfg->max_connections_per_loopback = cap_of(f->max_connections_per_loopback);
}
