/* Private to the HTTP server (http_server.c, http_conn.c, http_response.c): the structures
 * behind the opaque types of http_server.h and the calls between those files.
 *
 * One connection holds at most one request at a time (pipelined requests wait, unparsed, in
 * the connection's input buffer), so the request lives inside the connection and its buffers
 * are reused from one request to the next. */
#ifndef SLUICE_COMMON_HTTP_INTERNAL_H
#define SLUICE_COMMON_HTTP_INTERNAL_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/http_peers.h"
#include "common/http_server.h"

enum http_req_state {
    HTTP_REQ_NONE,      /* no request handed to the user */
    HTTP_REQ_PENDING,   /* handler called, not answered yet */
    HTTP_REQ_STREAMING, /* http_stream_begin sent the headers */
};

struct http_header_ref {
    uint32_t name, value; /* offsets of NUL-terminated strings in conn->hbuf */
};

struct http_request {
    struct http_conn *conn;
    enum http_req_state state;
    bool keep_alive; /* the client allows another request on this connection */
    bool no_body;    /* HEAD: headers only */
    bool chunked;    /* the stream is framed in chunks (HTTP/1.1); else ends with the close */
    uint32_t path, query; /* offsets in conn->hbuf; query == UINT32_MAX when absent */
    struct http_header_ref *headers;
    size_t n_headers, cap_headers;
    char *body;
    size_t body_len, body_cap;
    char *extra; /* "Name: value\r\n"... from http_response_header */
    size_t extra_len, extra_cap;
    void (*on_close)(http_request *req, void *arg);
    void *on_close_arg;
    void *data;
};

enum http_conn_phase {
    HTTP_PHASE_IDLE,    /* between requests */
    HTTP_PHASE_HEADERS, /* request line and headers arriving */
    HTTP_PHASE_BODY,    /* body arriving */
    HTTP_PHASE_BUSY,    /* the request is with the handler */
    HTTP_PHASE_LINGER,  /* answered and closing: output flushed, input discarded until EOF */
};

enum http_timer_kind { HTTP_TIMER_IDLE, HTTP_TIMER_HEADERS, HTTP_TIMER_BODY, HTTP_TIMER_LINGER,
                       HTTP_TIMER_RESUME };

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    http_server *srv;
    struct http_conn *prev, *next;
    llhttp_t parser;
    int refs;         /* held across calls into user code; freed at 0 once closed */
    int handles_open; /* tcp and timer */
    enum http_conn_phase phase;
    enum http_timer_kind timer_kind;
    bool closing, reading, processing, in_field;
    bool has_addr;        /* addr is known (the peer's address could be read at accept) */
    bool counted;         /* in srv->peers: no request in flight (see the per-address cap) */
    unsigned long served; /* requests answered on this connection */
    uint64_t idle_deadline; /* loop time at which an IDLE connection is closed */
    int err_status; /* set by a parser callback that fails the request (413, 431) */
    const char *err_message; /* what to tell the client with err_status, when set */
    /* Received bytes not parsed yet: in[in_off..in_len). */
    char *in;
    size_t in_off, in_len, in_cap;
    /* URL and header names and values of the current request, NUL-terminated. */
    char *hbuf;
    size_t hbuf_len, hbuf_cap;
    size_t hdr_bytes;     /* request line and header bytes in earlier reads */
    const char *hdr_mark; /* where counting resumes in the buffer being parsed */
    size_t trailer_bytes;
    size_t body_expected; /* Content-Length of the current request, 0 when chunked */
    uint32_t field_start, value_start;
    char peer[64];        /* as http_request_peer shows it, read at accept */
    struct http_peer_addr addr;
    http_request req;
};

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct http_server_config cfg;
    http_handler_fn handler;
    void *user;
    struct http_conn *conns; /* doubly linked */
    unsigned n_conns;
    unsigned n_rejects; /* handles of refused connections still closing */
    http_peers *peers;  /* connections with no request in flight, per client address */
    struct http_log_gate full_log, peer_log; /* refusals are logged at most every few seconds */
    int port;
    bool closing, listener_closed;
    bool draining; /* http_server_drain: answers close their connections */
    void (*on_closed)(void *arg);
    void *on_closed_arg;
};

/* http_conn.c */
void http_conn_accept(http_server *srv);
void http_conn_close(struct http_conn *c);
/* Writes bufs in order after whatever is queued; copies only what the socket did not take. */
int http_conn_send(struct http_conn *c, const uv_buf_t *bufs, unsigned nbufs);
/* The current request was answered: go on with the next one, or close when !keep_alive. */
void http_conn_request_done(struct http_conn *c, bool keep_alive);
/* Whether the connection may stay open after its answer: false when the server is closing,
 * or when its address already has as many idle connections as the cap allows. */
bool http_conn_may_keep_alive(const struct http_conn *c);
size_t http_conn_queued(const struct http_conn *c);
/* http_server.c: frees the server once it is closing and its last handle has closed. */
void http_server_maybe_finish(http_server *srv);

/* http_response.c */
void http_request_reset(http_request *req);
/* Formats the status line and headers, ending with the empty line, into buf like snprintf:
 * returns the length it needs (write nothing when that exceeds cap). framing is a complete
 * header line ("Content-Length: 12\r\n") or NULL. */
size_t http_head_format(char *buf, size_t cap, int status, const char *content_type,
                        const char *framing, bool keep_alive, const char *extra, size_t extra_len);

#endif
