/* One HTTP connection: reading, strict parsing with llhttp, limits and timeouts, handing
 * complete requests to the handler one at a time, writing, and closing. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "common/http_internal.h"
#include "common/json_util.h"
#include "common/log.h"

enum {
    HTTP_IN_INITIAL = 16 * 1024, /* input buffer of a new connection */
    HTTP_IN_MIN_FREE = 4 * 1024, /* room offered to each read */
    HTTP_LINGER_MS = 2000,       /* how long a closing connection waits for the client's EOF */
    HTTP_BODY_PREALLOC = 256 * 1024, /* a Content-Length body's buffer before bytes arrive */
    HTTP_REFUSAL_LOG_MS = 10 * 1000, /* refused connections are logged at most this often */
};

/* Bytes of a write the socket could not take at once, with their libuv request. */
struct http_write {
    uv_write_t req;
    size_t len;
    char data[];
};

static void conn_process(struct http_conn *c);
static void conn_fail(struct http_conn *c, int status, const char *message);

/* --- the per-address count ------------------------------------------------------------- */

static unsigned peer_cap(const http_server *srv, const struct http_peer_addr *a)
{
    return http_peer_addr_is_loopback(a) ? srv->cfg.max_connections_per_loopback
                                         : srv->cfg.max_connections_per_ip;
}

/* The connection has no request in flight (new, or idle after an answer). */
static void conn_count(struct http_conn *c)
{
    if (c->counted || !c->has_addr) return;
    /* Out of memory only loses this connection's share of the count. */
    c->counted = http_peers_add(c->srv->peers, &c->addr) == 0;
}

static void conn_uncount(struct http_conn *c)
{
    if (!c->counted) return;
    c->counted = false;
    http_peers_remove(c->srv->peers, &c->addr);
}

bool http_conn_may_keep_alive(const struct http_conn *c)
{
    const http_server *srv = c->srv;
    if (srv->closing) return false;
    if (!c->has_addr) return true;
    unsigned cap = peer_cap(srv, &c->addr);
    return cap == HTTP_NO_LIMIT || http_peers_count(srv->peers, &c->addr) < cap;
}

/* --- lifetime -------------------------------------------------------------------------- */

static void conn_free(struct http_conn *c)
{
    http_server *srv = c->srv;
    if (c->prev) c->prev->next = c->next;
    else srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->n_conns--;
    free(c->in);
    free(c->hbuf);
    free(c->req.headers);
    free(c->req.body);
    free(c->req.extra);
    free(c);
    http_server_maybe_finish(srv);
}

static void conn_ref(struct http_conn *c)
{
    c->refs++;
}

static void conn_unref(struct http_conn *c)
{
    if (--c->refs == 0 && c->handles_open == 0) conn_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    if (--c->handles_open > 0) return;
    /* The request was not answered: its owner learns now, and must not touch it after. */
    http_request *req = &c->req;
    conn_ref(c);
    if (req->state != HTTP_REQ_NONE) {
        void (*cb)(http_request *, void *) = req->on_close;
        void *arg = req->on_close_arg;
        req->on_close = NULL;
        if (cb) cb(req, arg);
        http_request_reset(req);
    }
    conn_unref(c);
}

void http_conn_close(struct http_conn *c)
{
    if (c->closing) return;
    c->closing = true;
    c->reading = false;
    conn_uncount(c);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* --- timers ---------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    switch (c->timer_kind) {
    case HTTP_TIMER_IDLE:
    case HTTP_TIMER_LINGER:
        http_conn_close(c);
        break;
    case HTTP_TIMER_HEADERS:
        conn_fail(c, 408, "the request headers were not received in time");
        break;
    case HTTP_TIMER_BODY:
        conn_fail(c, 408, "the request body was not received in time");
        break;
    case HTTP_TIMER_RESUME:
        conn_process(c);
        break;
    }
}

static void conn_timer(struct http_conn *c, enum http_timer_kind kind, uint64_t ms)
{
    if (c->closing) return;
    c->timer_kind = kind;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* Waits for a request until a fixed deadline: nothing that arrives before the request's
 * first byte (empty lines, which RFC 9112 lets a client send first) moves it. */
static void conn_idle_until(struct http_conn *c, uint64_t deadline)
{
    uint64_t now = uv_now(c->srv->loop);
    c->idle_deadline = deadline;
    conn_timer(c, HTTP_TIMER_IDLE, deadline > now ? deadline - now : 0);
}

/* --- writing --------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    struct http_write *w = (struct http_write *)req;
    struct http_conn *c = req->handle->data;
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        log_debug("http: write to a client failed: %s", uv_strerror(status));
        http_conn_close(c);
    }
}

size_t http_conn_queued(const struct http_conn *c)
{
    return c->closing ? 0 : uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

int http_conn_send(struct http_conn *c, const uv_buf_t *bufs, unsigned nbufs)
{
    if (c->closing) return -1;
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++) total += bufs[i].len;
    size_t skip = 0;
    /* Most answers fit the socket buffer: then nothing is copied or allocated. libuv refuses
     * the direct write while earlier writes are queued, which keeps the order. */
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n >= 0) {
        skip = (size_t)n;
        if (skip == total) return 0;
    } else if (n != UV_EAGAIN) {
        log_debug("http: write to a client failed: %s", uv_strerror(n));
        http_conn_close(c);
        return -1;
    }
    struct http_write *w = malloc(sizeof *w + (total - skip));
    if (!w) {
        http_conn_close(c);
        return -1;
    }
    w->len = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(w->data + w->len, bufs[i].base + skip, len - skip);
        w->len += len - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(w);
        http_conn_close(c);
        return -1;
    }
    return 0;
}

/* --- closing gracefully ---------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct http_conn *c = req->data;
    if (c->closing) return;
    if (status < 0) {
        http_conn_close(c);
        return;
    }
    conn_timer(c, HTTP_TIMER_LINGER, HTTP_LINGER_MS);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct http_conn *c)
{
    if (c->reading || c->closing) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = true;
}

/* Closing right after the last write would reset the connection if the client's unread bytes
 * are still in flight, and the client could lose the answer: so send FIN once the output is
 * flushed and read (discarding) until the client closes too, for a bounded time. */
static void conn_linger(struct http_conn *c)
{
    if (c->closing || c->phase == HTTP_PHASE_LINGER) return;
    c->phase = HTTP_PHASE_LINGER;
    conn_uncount(c);
    c->in_off = c->in_len = 0;
    /* Bounds the time the client may take to read what is still queued. */
    conn_timer(c, HTTP_TIMER_LINGER, c->srv->cfg.idle_timeout_ms);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        http_conn_close(c);
        return;
    }
    conn_read_start(c);
}

/* Answers an error the handler never saw (bad request, limits, timeouts) and closes. */
static void conn_fail(struct http_conn *c, int status, const char *message)
{
    if (c->closing || c->phase == HTTP_PHASE_LINGER) return;
    log_debug("http: answering %d to %s: %s", status, http_request_peer(&c->req), message);
    char *body = openai_error_body(message, openai_error_type_for_status(status), NULL, NULL);
    if (!body) status = 500;
    const char *text = body ? body : openai_error_body_oom;
    size_t blen = strlen(text);
    char framing[48], head[512];
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", blen);
    size_t hlen = http_head_format(head, sizeof head, status, "application/json", framing, false,
                                   NULL, 0);
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init((char *)text, (unsigned)blen)};
    if (hlen <= sizeof head) http_conn_send(c, bufs, 2);
    free(body);
    conn_linger(c);
}

/* --- reading --------------------------------------------------------------------------- */

/* Bytes buffered beyond which reading stops while a request is with the handler. */
static size_t conn_in_limit(const struct http_conn *c)
{
    return c->srv->cfg.max_header_bytes + c->srv->cfg.max_body_bytes;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct http_conn *c = h->data;
    if (c->in_off > 0 && c->in_cap - c->in_len < HTTP_IN_MIN_FREE) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_cap - c->in_len < HTTP_IN_MIN_FREE) {
        size_t cap = c->in_cap * 2;
        char *p = realloc(c->in, cap);
        if (!p) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct http_conn *c = s->data;
    if (nread == 0 || c->closing) return;
    if (nread < 0) {
        /* EOF or an error: the client is gone, and an unanswered request with it. */
        http_conn_close(c);
        return;
    }
    if (c->phase == HTTP_PHASE_LINGER) return; /* discarded: in_len stays */
    c->in_len += (size_t)nread;
    if (c->phase == HTTP_PHASE_BUSY) {
        /* Keep reading to notice a disconnect, but bound what waits for its turn. */
        if (c->in_len - c->in_off >= conn_in_limit(c)) {
            uv_read_stop(s);
            c->reading = false;
        }
        return;
    }
    conn_process(c);
}

/* --- parsing --------------------------------------------------------------------------- */

static struct http_conn *conn_of(llhttp_t *p)
{
    return p->data;
}

/* Counts request line and header bytes as they are parsed, so a client cannot make the
 * server read (or buffer) more than max_header_bytes before the headers end. */
static int count_head(struct http_conn *c, const char *at, size_t len)
{
    if (c->phase != HTTP_PHASE_HEADERS) {
        c->trailer_bytes += len;
        if (c->trailer_bytes > c->srv->cfg.max_header_bytes) {
            c->err_status = 431;
            return -1;
        }
        return 0;
    }
    if (!c->hdr_mark) c->hdr_mark = at;
    if (c->hdr_bytes + (size_t)(at + len - c->hdr_mark) > c->srv->cfg.max_header_bytes) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int hbuf_append(struct http_conn *c, const char *at, size_t len)
{
    if (c->hbuf_len + len + 1 > c->hbuf_cap) {
        size_t cap = c->hbuf_cap ? c->hbuf_cap : 1024;
        while (cap < c->hbuf_len + len + 1) cap *= 2;
        char *p = realloc(c->hbuf, cap);
        if (!p) {
            c->err_status = 503;
            return -1;
        }
        c->hbuf = p;
        c->hbuf_cap = cap;
    }
    memcpy(c->hbuf + c->hbuf_len, at, len);
    c->hbuf_len += len;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    c->phase = HTTP_PHASE_HEADERS;
    c->hbuf_len = 0;
    c->hdr_bytes = 0;
    c->hdr_mark = NULL;
    c->trailer_bytes = 0;
    c->in_field = false;
    c->req.n_headers = 0;
    c->req.body_len = 0;
    c->body_expected = 0;
    c->err_message = NULL;
    /* The first request's headers are due header_timeout_ms after the accept, already running;
     * a later one's after its own first byte (the idle timeout bounded the wait for it). */
    if (c->served == 0 && uv_is_active((uv_handle_t *)&c->timer))
        c->timer_kind = HTTP_TIMER_HEADERS;
    else
        conn_timer(c, HTTP_TIMER_HEADERS, c->srv->cfg.header_timeout_ms);
    return 0;
}

static int on_count(llhttp_t *p, const char *at, size_t len)
{
    return count_head(conn_of(p), at, len) ? HPE_USER : 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = conn_of(p);
    if (count_head(c, at, len) || hbuf_append(c, at, len)) return HPE_USER;
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    if (hbuf_append(c, "", 1)) return HPE_USER;
    char *q = memchr(c->hbuf, '?', c->hbuf_len);
    c->req.path = 0;
    c->req.query = UINT32_MAX;
    if (q) {
        *q = '\0';
        c->req.query = (uint32_t)(q + 1 - c->hbuf);
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = conn_of(p);
    if (count_head(c, at, len)) return HPE_USER;
    if (c->phase != HTTP_PHASE_HEADERS) return 0; /* trailers are counted, not kept */
    if (!c->in_field) {
        c->in_field = true;
        c->field_start = (uint32_t)c->hbuf_len;
    }
    return hbuf_append(c, at, len) ? HPE_USER : 0;
}

/* RFC 9110 token characters, for header names. */
static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    if (c->phase != HTTP_PHASE_HEADERS) return 0;
    if (!c->in_field) c->field_start = (uint32_t)c->hbuf_len;
    c->in_field = false;
    /* llhttp lets "Bad Header: x" through; a proxy in front could read it differently. */
    if (c->field_start == c->hbuf_len) goto bad;
    for (size_t i = c->field_start; i < c->hbuf_len; i++)
        if (!is_tchar((unsigned char)c->hbuf[i])) goto bad;
    if (hbuf_append(c, "", 1)) return HPE_USER;
    c->value_start = (uint32_t)c->hbuf_len;
    return 0;
bad:
    c->err_status = 400;
    c->err_message = "malformed HTTP request: a header name is empty or has a character not allowed in one";
    return HPE_USER;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = conn_of(p);
    if (count_head(c, at, len)) return HPE_USER;
    if (c->phase != HTTP_PHASE_HEADERS) return 0;
    return hbuf_append(c, at, len) ? HPE_USER : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    if (c->phase != HTTP_PHASE_HEADERS) return 0;
    while (c->hbuf_len > c->value_start &&
           (c->hbuf[c->hbuf_len - 1] == ' ' || c->hbuf[c->hbuf_len - 1] == '\t'))
        c->hbuf_len--;
    if (hbuf_append(c, "", 1)) return HPE_USER;
    http_request *r = &c->req;
    if (r->n_headers == r->cap_headers) {
        size_t cap = r->cap_headers ? r->cap_headers * 2 : 16;
        struct http_header_ref *h = realloc(r->headers, cap * sizeof *h);
        if (!h) {
            c->err_status = 503;
            return HPE_USER;
        }
        r->headers = h;
        r->cap_headers = cap;
    }
    r->headers[r->n_headers++] = (struct http_header_ref){c->field_start, c->value_start};
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    http_request *r = &c->req;
    bool chunked = p->flags & F_CHUNKED;
    if ((p->flags & F_CONTENT_LENGTH) && (p->flags & F_TRANSFER_ENCODING)) {
        c->err_status = 400;
        c->err_message = "malformed HTTP request: Content-Length may not be sent with Transfer-Encoding";
        return -1;
    }
    if (!chunked && p->content_length > c->srv->cfg.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    c->phase = HTTP_PHASE_BODY;
    if (!chunked && p->content_length == 0) return 0; /* complete: no timer needed */
    /* Room for the announced body, but only up to a point until the bytes really come. */
    c->body_expected = chunked ? 0 : p->content_length;
    size_t want = (c->body_expected < HTTP_BODY_PREALLOC ? c->body_expected : HTTP_BODY_PREALLOC) + 1;
    if (!chunked && want > r->body_cap) {
        char *b = realloc(r->body, want);
        if (!b) {
            c->err_status = 503;
            return -1;
        }
        r->body = b;
        r->body_cap = want;
    }
    const char *expect = http_request_header(r, "Expect");
    if (expect && !strcasecmp(expect, "100-continue") && p->http_major == 1 && p->http_minor >= 1) {
        static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init(cont, sizeof cont - 1);
        http_conn_send(c, &b, 1);
    }
    conn_timer(c, HTTP_TIMER_BODY, c->srv->cfg.body_timeout_ms);
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    if (p->content_length > c->srv->cfg.max_body_bytes - c->req.body_len) {
        c->err_status = 413;
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = conn_of(p);
    http_request *r = &c->req;
    if (len > c->srv->cfg.max_body_bytes - r->body_len) {
        c->err_status = 413;
        return HPE_USER;
    }
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < r->body_len + len + 1) cap *= 2;
        if (c->body_expected && cap > c->body_expected + 1) cap = c->body_expected + 1;
        char *b = realloc(r->body, cap);
        if (!b) {
            c->err_status = 503;
            return HPE_USER;
        }
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_conn *c = conn_of(p);
    http_request *r = &c->req;
    uv_timer_stop(&c->timer);
    conn_uncount(c);
    if (r->body) r->body[r->body_len] = '\0';
    r->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    r->no_body = p->method == HTTP_HEAD;
    r->chunked = p->http_major == 1 && p->http_minor >= 1;
    c->phase = HTTP_PHASE_BUSY;
    /* Stop here: the bytes after this request wait until it has been answered. */
    return HPE_PAUSED;
}

/* What llhttp found wrong, in the terms of someone writing a request: llhttp's own reasons
 * name its callbacks and states ("Span callback error in on_url"). */
static const char *parse_error_message(enum llhttp_errno err)
{
    switch (err) {
    case HPE_INVALID_METHOD: return "malformed HTTP request: the method is not valid";
    case HPE_INVALID_URL: return "malformed HTTP request: the request target (URL) is not valid";
    case HPE_INVALID_VERSION: return "malformed HTTP request: the HTTP version is not supported (use HTTP/1.1)";
    case HPE_INVALID_HEADER_TOKEN: return "malformed HTTP request: a header has a character not allowed there";
    case HPE_INVALID_CONTENT_LENGTH: return "malformed HTTP request: Content-Length is not a number";
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        return "malformed HTTP request: Content-Length may be sent once, and not with Transfer-Encoding";
    case HPE_INVALID_TRANSFER_ENCODING:
        return "malformed HTTP request: the only Transfer-Encoding accepted is chunked, last";
    case HPE_INVALID_CHUNK_SIZE: return "malformed HTTP request: a chunk size is not valid";
    case HPE_CR_EXPECTED:
    case HPE_LF_EXPECTED: return "malformed HTTP request: a line does not end in CRLF";
    case HPE_UNEXPECTED_SPACE: return "malformed HTTP request: a space where none is allowed";
    case HPE_CLOSED_CONNECTION: return "malformed HTTP request: data after a request that closed the connection";
    case HPE_PAUSED_UPGRADE:
    case HPE_PAUSED_H2_UPGRADE: return "protocol upgrades are not supported";
    default: return "malformed HTTP request: not valid HTTP/1.1";
    }
}

static const llhttp_settings_t http_settings = {
    .on_message_begin = on_message_begin,
    .on_method = on_count,
    .on_version = on_count,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_chunk_header = on_chunk_header,
    .on_chunk_extension_name = on_count,
    .on_chunk_extension_value = on_count,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses buffered bytes and hands each complete request to the handler, one at a time: the
 * loop stops while a request is unanswered and goes on when it is answered in the handler.
 * An answer given later resumes parsing from a timer, never from inside the caller. */
static void conn_process(struct http_conn *c)
{
    if (c->processing) return;
    c->processing = true;
    conn_ref(c);
    http_server *srv = c->srv;
    while (!c->closing && c->phase != HTTP_PHASE_BUSY && c->phase != HTTP_PHASE_LINGER &&
           c->in_off < c->in_len) {
        const char *data = c->in + c->in_off;
        size_t n = c->in_len - c->in_off;
        c->hdr_mark = c->phase == HTTP_PHASE_HEADERS ? data : NULL;
        enum llhttp_errno err = llhttp_execute(&c->parser, data, n);
        if (err == HPE_OK) {
            c->in_off = c->in_len;
            if (c->phase == HTTP_PHASE_HEADERS) {
                c->hdr_bytes += (size_t)(data + n - (c->hdr_mark ? c->hdr_mark : data));
                if (c->hdr_bytes > srv->cfg.max_header_bytes) {
                    conn_fail(c, 431, "the request line and headers are too large");
                    break;
                }
            }
            break;
        }
        if (err == HPE_PAUSED && c->phase == HTTP_PHASE_BUSY) {
            c->in_off += (size_t)(llhttp_get_error_pos(&c->parser) - data);
            llhttp_resume(&c->parser);
            c->req.state = HTTP_REQ_PENDING;
            srv->handler(&c->req, srv->user);
            continue;
        }
        int status = c->err_status ? c->err_status : 400;
        const char *message = c->err_message;
        if (!message) {
            switch (status) {
            case 413: message = "the request body is too large"; break;
            case 431: message = "the request line and headers are too large"; break;
            case 503: message = "out of memory reading the request"; break;
            default: message = parse_error_message(err);
            }
        }
        log_debug("http: bad request from %s: %s (%s)", http_request_peer(&c->req), message,
                  llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser)
                                                      : llhttp_errno_name(err));
        conn_fail(c, status, message);
        break;
    }
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    c->processing = false;
    /* Only a RESUME timer can have ended while idle: the deadline set when the connection went
     * idle still holds, whatever was read meanwhile. */
    if (!c->closing && c->phase == HTTP_PHASE_IDLE && !uv_is_active((uv_handle_t *)&c->timer))
        conn_idle_until(c, c->idle_deadline);
    if (!c->closing && c->phase != HTTP_PHASE_BUSY && c->in_len - c->in_off < conn_in_limit(c))
        conn_read_start(c);
    conn_unref(c);
}

void http_conn_request_done(struct http_conn *c, bool keep_alive)
{
    http_request_reset(&c->req);
    if (c->closing) return;
    c->served++;
    if (!keep_alive) {
        conn_linger(c);
        return;
    }
    c->phase = HTTP_PHASE_IDLE;
    conn_count(c);
    conn_idle_until(c, uv_now(c->srv->loop) + c->srv->cfg.idle_timeout_ms);
    if (c->processing) return; /* the parsing loop goes on by itself */
    if (c->in_off < c->in_len) conn_timer(c, HTTP_TIMER_RESUME, 0);
    conn_read_start(c);
}

/* --- accepting ------------------------------------------------------------------------- */

static void on_reject_closed(uv_handle_t *h)
{
    http_server *srv = h->data;
    free(h);
    srv->n_rejects--;
    http_server_maybe_finish(srv);
}

/* Writes a refusal to a connection just accepted, for the caller to close at once. Refusing
 * must cost the server nothing lasting (no buffer, no lingering slot), yet closing a socket
 * with unread input resets it, and the reset can destroy the answer before the client reads
 * it: so the input that already came (typically the request) is read and dropped first, after
 * the answer and a FIN have gone out. */
static void send_refusal(uv_tcp_t *t, int status, const char *extra, const char *body, size_t len)
{
    char framing[48], head[512];
    snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", len);
    size_t hlen = http_head_format(head, sizeof head, status, "application/json", framing, false,
                                   extra, extra ? strlen(extra) : 0);
    if (hlen > sizeof head) return;
    uv_buf_t b[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init((char *)body, (unsigned)len)};
    uv_try_write((uv_stream_t *)t, b, 2);
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)t, &fd) != 0) return;
    shutdown(fd, SHUT_WR);
    char sink[4096];
    for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {}
}

static void log_refusal(http_server *srv, struct http_log_gate *gate, const char *what)
{
    unsigned long held = 0;
    if (!http_log_gate_pass(gate, uv_now(srv->loop), HTTP_REFUSAL_LOG_MS, &held)) return;
    if (held)
        log_warn("http: %s (and %lu more refused since the last message)", what, held);
    else
        log_warn("http: %s", what);
}

/* Over max_connections: take the connection off the backlog, say so, and close it. */
static void conn_reject(http_server *srv)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t) return;
    uv_tcp_init(srv->loop, t);
    t->data = srv;
    srv->n_rejects++;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)t) == 0) {
        /* openai_error_body's output, spelled out: shedding load should not allocate. */
        static const char body[] = "{\"error\":{\"message\":\"too many connections\",\"type\":"
                                   "\"service_unavailable\",\"param\":null,\"code\":null}}";
        send_refusal(t, 503, "Retry-After: 1\r\n", body, sizeof body - 1);
        char what[96];
        snprintf(what, sizeof what, "refusing connections: %u open, the most allowed", srv->n_conns);
        log_refusal(srv, &srv->full_log, what);
    }
    uv_close((uv_handle_t *)t, on_reject_closed);
}

/* The peer as http_request_peer shows it: "127.0.0.1:53422", "[::1]:53422", "?" when unknown. */
static void peer_format(struct http_conn *c, const struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN] = "";
    snprintf(c->peer, sizeof c->peer, "?");
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "[%s]:%u", ip, ntohs(a->sin6_port));
    }
}

/* Reads the peer's address (once: what the logs show and what the cap and the loopback rule
 * count by) and counts the connection as waiting for a request; false when its address is
 * over the cap, after the refusal was sent. */
static bool conn_admit(struct http_conn *c)
{
    http_server *srv = c->srv;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) ss.ss_family = AF_UNSPEC;
    peer_format(c, &ss);
    if (http_peer_addr_from_sockaddr((struct sockaddr *)&ss, &c->addr) != 0)
        return true; /* unknown, or not an IP peer: nothing to count by */
    c->has_addr = true;
    unsigned cap = peer_cap(srv, &c->addr);
    if (cap == HTTP_NO_LIMIT || http_peers_count(srv->peers, &c->addr) < cap) {
        conn_count(c);
        return true;
    }
    char body[320], addr[64], what[160];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"message\":\"too many connections from your address: at most %u may "
                     "wait for a request at once; reuse or close idle connections, or retry later\","
                     "\"type\":\"rate_limit_exceeded\",\"param\":null,\"code\":null}}", cap);
    send_refusal(&c->tcp, 429, "Retry-After: 1\r\n", body, (size_t)n);
    http_peer_addr_format(&c->addr, addr, sizeof addr);
    snprintf(what, sizeof what, "refusing connections from %s: %u already wait for a request, its cap",
             addr, cap);
    log_refusal(srv, &srv->peer_log, what);
    return false;
}

void http_conn_accept(http_server *srv)
{
    if (srv->n_conns >= srv->cfg.max_connections) {
        conn_reject(srv);
        return;
    }
    struct http_conn *c = calloc(1, sizeof *c);
    char *in = malloc(HTTP_IN_INITIAL);
    if (!c || !in) {
        free(c);
        free(in);
        conn_reject(srv);
        return;
    }
    c->srv = srv;
    c->in = in;
    c->in_cap = HTTP_IN_INITIAL;
    c->req.conn = c;
    c->req.query = UINT32_MAX;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) != 0 || !conn_admit(c)) {
        http_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &http_settings);
    c->parser.data = c;
    c->phase = HTTP_PHASE_IDLE;
    /* The first request's headers must end header_timeout_ms after the accept. */
    conn_idle_until(c, uv_now(srv->loop) + srv->cfg.header_timeout_ms);
    conn_read_start(c);
    if (!c->reading) http_conn_close(c);
}

const char *http_request_peer(const http_request *req)
{
    return req->conn->peer;
}

bool http_request_from_loopback(const http_request *req)
{
    return req->conn->has_addr && http_peer_addr_is_loopback(&req->conn->addr);
}
