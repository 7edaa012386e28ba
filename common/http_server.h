/* HTTP/1.1 server on one libuv loop, parsed strictly by llhttp.
 *
 * One handler is called per complete request (headers and body read). The handler answers at
 * once (http_respond*) or later from any loop callback, or starts a chunked stream
 * (http_stream_*) and writes to it as data arrives. Pipelined requests are answered in order:
 * the connection reads no further request until the current one has been answered.
 *
 * Limits answer with the right status and close: a request line or headers over
 * max_header_bytes get 431, a body over max_body_bytes 413 (seen from Content-Length or while
 * reading chunks, never buffered first), a request not fully read within its timeouts 408;
 * connections over max_connections get 503 at accept, and those over the per-address cap 429.
 * Strict parsing: Content-Length with Transfer-Encoding, duplicate Content-Length, bad chunk
 * sizes and every other malformed request get 400 and a closed connection. Every error body
 * is JSON in OpenAI's shape.
 *
 * Timeouts (nginx's client_header_timeout, client_body_timeout and keepalive_timeout):
 * - a new connection has header_timeout_ms from its accept to the end of its first request's
 *   headers, however the bytes trickle in (a client that sent nothing is closed quietly;
 *   one that sent part of a request gets 408);
 * - a keep-alive connection has idle_timeout_ms from the end of a response to the first byte
 *   of the next request, then header_timeout_ms from that byte to the end of its headers;
 * - body_timeout_ms from the end of the headers to the end of the body.
 * Bytes that are not part of a request (the empty lines RFC 9112 lets a client send before a
 * request line) move none of these deadlines.
 *
 * The per-address cap counts, for each client address (IPv6: each /64), the connections
 * with no request in flight: new ones, idle keep-alive ones, and ones still sending their
 * request. Those are what a slow or idle client holds without doing work; a connection whose
 * request is being answered (a long stream from a gateway or a proxy) is bounded by the
 * program's own request limits and by max_connections instead, so that one gateway can hold
 * a thousand streams to a worker. A connection that would go over the cap is refused at accept
 * with 429; an answer that would leave its connection idle over the cap says
 * "Connection: close" and closes it.
 *
 * All functions run on the loop thread only. */
#ifndef SLUICE_COMMON_HTTP_SERVER_H
#define SLUICE_COMMON_HTTP_SERVER_H

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct http_server http_server;
typedef struct http_request http_request;

#define HTTP_NO_LIMIT UINT_MAX /* for a count limit of http_server_config: none */

/* What a 0 in http_server_config means, for the fields the programs' flags set too
 * (common/http_flags.h). */
enum {
    HTTP_DEFAULT_HEADER_TIMEOUT_MS = 10 * 1000,
    HTTP_DEFAULT_BODY_TIMEOUT_MS = 30 * 1000,
    HTTP_DEFAULT_IDLE_TIMEOUT_MS = 60 * 1000,
    HTTP_DEFAULT_MAX_CONNECTIONS_PER_IP = 256,
    HTTP_DEFAULT_MAX_CONNECTIONS_PER_LOOPBACK = 2048,
};

struct http_server_config {
    const char *host;           /* "127.0.0.1" (default), "0.0.0.0", "::" */
    int port;                   /* 0 picks a free port: see http_server_port() */
    size_t max_header_bytes;    /* request line + headers; default 16 KiB */
    size_t max_body_bytes;      /* default 1 MiB */
    unsigned header_timeout_ms; /* see above; default 10 s */
    unsigned body_timeout_ms;   /* from end of headers to end of body; default 30 s */
    unsigned idle_timeout_ms;   /* keep-alive connection with no request in flight; default 60 s */
    unsigned max_connections;   /* default 4096 */
    /* Connections with no request in flight from one client address; default 256.
     * Loopback addresses (127.0.0.0/8, ::1) have their own cap, default 2048: a reverse proxy
     * or sidecar on the same host brings every client from 127.0.0.1, and the benchmarks open
     * a thousand streams at once from there. HTTP_NO_LIMIT: no cap. */
    unsigned max_connections_per_ip;
    unsigned max_connections_per_loopback;
    size_t max_stream_buffer;   /* bytes queued on a slow client before the stream is dropped
                                   (http_stream_write returns HTTP_STREAM_SLOW); default 4 MiB */
};

/* Called once per complete request. The request stays valid until it has been answered
 * (http_respond* or http_stream_end) or its connection closed (see http_request_on_close). */
typedef void (*http_handler_fn)(http_request *req, void *user);

int http_server_init(http_server **out, uv_loop_t *loop, const struct http_server_config *cfg,
                     http_handler_fn handler, void *user);
/* The bound port (useful with port 0). */
int http_server_port(const http_server *srv);
/* Stops listening, closes every connection (their requests' on_close callbacks run), and
 * calls on_closed once all handles are closed; the server is freed then. */
void http_server_close(http_server *srv, void (*on_closed)(void *arg), void *arg);
/* The first step of a graceful stop: every answer from now on says "Connection: close", and
 * with stop_listening the listener closes too (new connections are refused). Requests in
 * progress go on; http_server_close still ends it all. */
void http_server_drain(http_server *srv, bool stop_listening);
/* Bytes answered but still waiting for the sockets, over every connection: a graceful stop
 * waits for 0 before http_server_close, which would drop them. */
size_t http_server_queued_bytes(const http_server *srv);
unsigned http_server_connection_count(const http_server *srv);

/* --- the request ------------------------------------------------------------------- */
const char *http_request_method(const http_request *req); /* "GET", "POST", ... */
const char *http_request_path(const http_request *req);   /* "/v1/models", query removed */
const char *http_request_query(const http_request *req);  /* after '?', or "" */
/* Case-insensitive lookup; the first value when repeated; NULL when absent. */
const char *http_request_header(const http_request *req, const char *name);
const char *http_request_body(const http_request *req, size_t *len); /* NUL-terminated */
const char *http_request_peer(const http_request *req);              /* "127.0.0.1:53422" */
/* Whether the client connected from 127.0.0.0/8 or ::1 (IPv4-mapped too), as read at accept. */
bool http_request_from_loopback(const http_request *req);
void http_request_set_data(http_request *req, void *data);
void *http_request_get_data(const http_request *req);
/* Called once if the connection closes before the request was answered (client gone,
 * server closing, slow client dropped). After it returns, req is invalid. */
void http_request_on_close(http_request *req, void (*cb)(http_request *req, void *arg), void *arg);

/* --- answering at once ------------------------------------------------------------ */
/* Adds a response header ("Retry-After", "1"); call before http_respond or http_stream_begin. */
void http_response_header(http_request *req, const char *name, const char *value);
/* Sends a complete response with Content-Length. After it returns req is invalid. */
int http_respond(http_request *req, int status, const char *content_type, const char *body,
                 size_t len);
/* Serializes and sends a JSON value (the reference is stolen). */
int http_respond_json(http_request *req, int status, json_t *body);
/* Sends {"error":{"message","type","param","code"}} with the type OpenAI uses for status. */
int http_respond_error(http_request *req, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* --- streaming -------------------------------------------------------------------- */
enum { HTTP_STREAM_OK = 0, HTTP_STREAM_CLOSED = -1, HTTP_STREAM_SLOW = -2 };
/* Sends the status line and headers with Transfer-Encoding: chunked. */
int http_stream_begin(http_request *req, int status, const char *content_type);
/* Queues one chunk. HTTP_STREAM_SLOW: more than max_stream_buffer bytes are waiting on the
 * client; the connection is being closed and on_close will follow. */
int http_stream_write(http_request *req, const void *data, size_t len);
/* "data: <json>\n\n" as one chunk. */
int http_stream_sse(http_request *req, const char *data, size_t len);
size_t http_stream_buffered(const http_request *req); /* bytes queued, not yet written */
/* Sends the last chunk; after it returns req is invalid. */
int http_stream_end(http_request *req);

const char *http_status_text(int status);

#endif
