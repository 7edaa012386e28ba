/* The listening side of the HTTP server: configuration, binding, accepting, and closing
 * everything in order. Connections live in http_conn.c, answers in http_response.c. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/http_internal.h"
#include "common/log.h"

static void config_defaults(struct http_server_config *c)
{
    if (!c->host || !*c->host) c->host = "127.0.0.1";
    if (!c->max_header_bytes) c->max_header_bytes = 16 * 1024;
    if (!c->max_body_bytes) c->max_body_bytes = 1024 * 1024;
    if (!c->header_timeout_ms) c->header_timeout_ms = HTTP_DEFAULT_HEADER_TIMEOUT_MS;
    if (!c->body_timeout_ms) c->body_timeout_ms = HTTP_DEFAULT_BODY_TIMEOUT_MS;
    if (!c->idle_timeout_ms) c->idle_timeout_ms = HTTP_DEFAULT_IDLE_TIMEOUT_MS;
    if (!c->max_connections) c->max_connections = 4096;
    if (!c->max_connections_per_ip) c->max_connections_per_ip = HTTP_DEFAULT_MAX_CONNECTIONS_PER_IP;
    if (!c->max_connections_per_loopback) c->max_connections_per_loopback = HTTP_DEFAULT_MAX_CONNECTIONS_PER_LOOPBACK;
    if (!c->max_stream_buffer) c->max_stream_buffer = 4 * 1024 * 1024;
}

static void on_connection(uv_stream_t *listener, int status)
{
    http_server *srv = listener->data;
    if (status < 0) {
        log_warn("http: accept failed: %s", uv_strerror(status));
        return;
    }
    if (srv->closing) return;
    http_conn_accept(srv);
}

static void on_listener_closed(uv_handle_t *h)
{
    http_server *srv = h->data;
    srv->listener_closed = true;
    http_server_maybe_finish(srv);
}

void http_server_maybe_finish(http_server *srv)
{
    if (!srv->closing || !srv->listener_closed || srv->n_conns || srv->n_rejects) return;
    void (*cb)(void *) = srv->on_closed;
    void *arg = srv->on_closed_arg;
    http_peers_free(srv->peers);
    free(srv);
    if (cb) cb(arg);
}

/* A write to a client that has gone raises SIGPIPE, whose default action ends the process:
 * a server must see EPIPE instead. A handler the program installed itself is left alone. */
static void ignore_sigpipe(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

int http_server_init(http_server **out, uv_loop_t *loop, const struct http_server_config *cfg,
                     http_handler_fn handler, void *user)
{
    int rc;
    *out = NULL;
    ignore_sigpipe();
    http_server *srv = calloc(1, sizeof *srv);
    if (!srv) return -1;
    srv->loop = loop;
    if (cfg) srv->cfg = *cfg;
    config_defaults(&srv->cfg);
    srv->handler = handler;
    srv->user = user;
    if (http_peers_init(&srv->peers) != 0) {
        free(srv);
        return -1;
    }

    struct sockaddr_storage addr;
    if (strchr(srv->cfg.host, ':'))
        rc = uv_ip6_addr(srv->cfg.host, srv->cfg.port, (struct sockaddr_in6 *)&addr);
    else
        rc = uv_ip4_addr(srv->cfg.host, srv->cfg.port, (struct sockaddr_in *)&addr);
    if (rc < 0) {
        log_error("http: invalid listen address '%s': %s", srv->cfg.host, uv_strerror(rc));
        http_peers_free(srv->peers);
        free(srv);
        return -1;
    }
    rc = uv_tcp_init(loop, &srv->listener);
    if (rc < 0) {
        http_peers_free(srv->peers);
        free(srv);
        return -1;
    }
    srv->listener.data = srv;
    rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    if (rc < 0) {
        log_error("http: cannot listen on %s:%d: %s", srv->cfg.host, srv->cfg.port,
                  uv_strerror(rc));
        goto fail;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    if (rc < 0) goto fail;
    srv->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = srv;
    return 0;
fail:
    /* The handle is registered with the loop: the memory goes when the loop closes it. */
    srv->closing = true;
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    return -1;
}

int http_server_port(const http_server *srv)
{
    return srv->port;
}

unsigned http_server_connection_count(const http_server *srv)
{
    return srv->n_conns;
}

void http_server_close(http_server *srv, void (*on_closed)(void *arg), void *arg)
{
    if (!srv || srv->closing) return;
    srv->closing = true;
    srv->on_closed = on_closed;
    srv->on_closed_arg = arg;
    /* http_server_drain may have closed the listener already: a handle is closed once. */
    if (!uv_is_closing((uv_handle_t *)&srv->listener)) uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    for (struct http_conn *c = srv->conns; c; c = c->next) http_conn_close(c);
    http_server_maybe_finish(srv); /* when nothing was left open, this is the end */
}

void http_server_drain(http_server *srv, bool stop_listening)
{
    if (!srv || srv->closing) return;
    srv->draining = true;
    if (stop_listening && !uv_is_closing((uv_handle_t *)&srv->listener))
        uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

size_t http_server_queued_bytes(const http_server *srv)
{
    size_t n = 0;
    for (const struct http_conn *c = srv->conns; c; c = c->next) n += http_conn_queued(c);
    return n;
}
