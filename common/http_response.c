/* The request as the handler sees it, and the ways to answer it: a whole response at once or
 * a chunked stream (SSE included). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/http_internal.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/utf8.h"

/* --- the request ----------------------------------------------------------------------- */

const char *http_request_method(const http_request *req)
{
    return llhttp_method_name((llhttp_method_t)req->conn->parser.method);
}

const char *http_request_path(const http_request *req)
{
    const struct http_conn *c = req->conn;
    return c->hbuf ? c->hbuf + req->path : "";
}

const char *http_request_query(const http_request *req)
{
    return req->query == UINT32_MAX ? "" : req->conn->hbuf + req->query;
}

const char *http_request_header(const http_request *req, const char *name)
{
    const char *h = req->conn->hbuf;
    for (size_t i = 0; i < req->n_headers; i++)
        if (!strcasecmp(h + req->headers[i].name, name)) return h + req->headers[i].value;
    return NULL;
}

const char *http_request_body(const http_request *req, size_t *len)
{
    if (len) *len = req->body_len;
    return req->body ? req->body : "";
}

void http_request_set_data(http_request *req, void *data)
{
    req->data = data;
}

void *http_request_get_data(const http_request *req)
{
    return req->data;
}

void http_request_on_close(http_request *req, void (*cb)(http_request *req, void *arg), void *arg)
{
    req->on_close = cb;
    req->on_close_arg = arg;
}

void http_request_reset(http_request *req)
{
    req->state = HTTP_REQ_NONE;
    req->on_close = NULL;
    req->on_close_arg = NULL;
    req->data = NULL;
    req->n_headers = 0;
    req->body_len = 0;
    req->extra_len = 0;
    req->query = UINT32_MAX;
    /* A keep-alive connection should not hold a large body's buffer while it waits. */
    if (req->body_cap > 64 * 1024) {
        free(req->body);
        req->body = NULL;
        req->body_cap = 0;
    }
}

/* --- response heads -------------------------------------------------------------------- */

struct head_writer {
    char *buf;
    size_t cap, len;
};

static void put(struct head_writer *w, const char *s, size_t n)
{
    if (w->len + n <= w->cap) memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void puts_(struct head_writer *w, const char *s)
{
    put(w, s, strlen(s));
}

size_t http_head_format(char *buf, size_t cap, int status, const char *content_type,
                        const char *framing, bool keep_alive, const char *extra, size_t extra_len)
{
    struct head_writer w = {buf, cap, 0};
    char line[64];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
    put(&w, line, (size_t)n);
    puts_(&w, http_status_text(status));
    put(&w, "\r\n", 2);
    if (content_type) {
        put(&w, "Content-Type: ", 14);
        puts_(&w, content_type);
        put(&w, "\r\n", 2);
    }
    if (framing) puts_(&w, framing);
    puts_(&w, keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    if (extra_len) put(&w, extra, extra_len);
    put(&w, "\r\n", 2);
    return w.len;
}

static bool header_token_ok(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (*s <= ' ' || *s == ':' || *s == 0x7f) return false;
    return true;
}

void http_response_header(http_request *req, const char *name, const char *value)
{
    if (!req || req->state != HTTP_REQ_PENDING) return;
    if (!header_token_ok(name) || strpbrk(value, "\r\n")) {
        log_warn("http: dropping invalid response header '%s'", name);
        return;
    }
    size_t nl = strlen(name), vl = strlen(value), need = req->extra_len + nl + vl + 4;
    if (need > req->extra_cap) {
        size_t cap = req->extra_cap ? req->extra_cap : 256;
        while (cap < need) cap *= 2;
        char *p = realloc(req->extra, cap);
        if (!p) return;
        req->extra = p;
        req->extra_cap = cap;
    }
    char *p = req->extra + req->extra_len;
    memcpy(p, name, nl);
    memcpy(p + nl, ": ", 2);
    memcpy(p + nl + 2, value, vl);
    memcpy(p + nl + 2 + vl, "\r\n", 2);
    req->extra_len = need;
}

/* Sends head and body in one write; the head goes on the stack unless extra headers are big. */
static int send_head(struct http_conn *c, int status, const char *content_type,
                     const char *framing, bool keep_alive, const char *body, size_t len)
{
    http_request *req = &c->req;
    char stack[1024];
    char *head = stack;
    size_t hlen = http_head_format(stack, sizeof stack, status, content_type, framing, keep_alive,
                                   req->extra, req->extra_len);
    if (hlen > sizeof stack) {
        head = malloc(hlen);
        if (!head) return -1;
        http_head_format(head, hlen, status, content_type, framing, keep_alive, req->extra,
                         req->extra_len);
    }
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init((char *)body, (unsigned)len)};
    int rc = http_conn_send(c, bufs, len ? 2 : 1);
    if (head != stack) free(head);
    return rc;
}

static bool keep_alive_for(const http_request *req)
{
    return req->keep_alive && !req->conn->srv->draining && http_conn_may_keep_alive(req->conn);
}

/* --- answering at once ----------------------------------------------------------------- */

int http_respond(http_request *req, int status, const char *content_type, const char *body,
                 size_t len)
{
    if (!req || req->state == HTTP_REQ_NONE) {
        log_warn("http: http_respond on a request that is not waiting for an answer");
        return -1;
    }
    if (req->state == HTTP_REQ_STREAMING) {
        log_warn("http: http_respond on a stream; ending the stream instead");
        http_stream_end(req);
        return -1;
    }
    struct http_conn *c = req->conn;
    bool keep = keep_alive_for(req);
    int rc = -1;
    if (!c->closing) {
        char framing[48];
        bool bodiless = status == 204 || status == 304 || (status >= 100 && status < 200);
        if (bodiless)
            framing[0] = '\0';
        else
            snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", len);
        if (bodiless || req->no_body) len = 0;
        rc = send_head(c, status, content_type, framing, keep, body, len);
    }
    /* Answered, delivered or not: the caller is done with req, so on_close must not follow. */
    http_conn_request_done(c, keep);
    return rc;
}

int http_respond_json(http_request *req, int status, json_t *body)
{
    char *text = body ? json_dump_compact(body) : NULL;
    json_decref(body);
    if (!text) return http_respond_error(req, 500, NULL, "could not serialize the response");
    int rc = http_respond(req, status, "application/json", text, strlen(text));
    free(text);
    return rc;
}

int http_respond_error(http_request *req, int status, const char *param, const char *fmt, ...)
{
    char small[512];
    char *message = small;
    va_list ap;
    va_start(ap, fmt);
    int n = utf8_vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof small) {
        message = malloc((size_t)n + 1);
        if (message) {
            va_start(ap, fmt);
            vsnprintf(message, (size_t)n + 1, fmt, ap);
            va_end(ap);
        } else {
            message = small;
        }
    }
    char *body = openai_error_body(message, openai_error_type_for_status(status), param, NULL);
    if (message != small) free(message);
    if (!body) return http_respond(req, 500, "application/json", openai_error_body_oom,
                                   strlen(openai_error_body_oom));
    int rc = http_respond(req, status, "application/json", body, strlen(body));
    free(body);
    return rc;
}

/* --- streaming ------------------------------------------------------------------------- */

int http_stream_begin(http_request *req, int status, const char *content_type)
{
    if (!req || req->state != HTTP_REQ_PENDING) {
        log_warn("http: http_stream_begin on a request that is not waiting for an answer");
        return HTTP_STREAM_CLOSED;
    }
    struct http_conn *c = req->conn;
    if (c->closing) return HTTP_STREAM_CLOSED;
    /* An HTTP/1.0 client cannot read chunks: its stream ends when the connection closes. */
    if (!req->chunked) req->keep_alive = false;
    /* Decided now, since the head says it: the stream's end keeps to it (see http_stream_end). */
    req->keep_alive = keep_alive_for(req);
    const char *framing = req->chunked ? "Transfer-Encoding: chunked\r\n" : NULL;
    req->state = HTTP_REQ_STREAMING;
    if (send_head(c, status, content_type, framing, req->keep_alive, NULL, 0) < 0)
        return HTTP_STREAM_CLOSED;
    return HTTP_STREAM_OK;
}

/* Queues one chunk made of up to three pieces and drops a client that does not keep up. */
static int stream_send(http_request *req, uv_buf_t *parts, unsigned nparts)
{
    if (!req || req->state != HTTP_REQ_STREAMING) {
        if (req && req->state == HTTP_REQ_PENDING)
            log_warn("http: stream write before http_stream_begin");
        return HTTP_STREAM_CLOSED;
    }
    struct http_conn *c = req->conn;
    if (c->closing) return HTTP_STREAM_CLOSED;
    if (req->no_body) return HTTP_STREAM_OK;
    size_t len = 0;
    for (unsigned i = 0; i < nparts; i++) len += parts[i].len;
    if (len == 0) return HTTP_STREAM_OK; /* an empty chunk would end the stream */
    char size_line[24];
    uv_buf_t bufs[5];
    unsigned n = 0;
    if (req->chunked) {
        int sl = snprintf(size_line, sizeof size_line, "%zx\r\n", len);
        bufs[n++] = uv_buf_init(size_line, (unsigned)sl);
    }
    for (unsigned i = 0; i < nparts; i++)
        if (parts[i].len) bufs[n++] = parts[i];
    if (req->chunked) bufs[n++] = uv_buf_init((char *)"\r\n", 2);
    if (http_conn_send(c, bufs, n) < 0) return HTTP_STREAM_CLOSED;
    if (http_conn_queued(c) > c->srv->cfg.max_stream_buffer) {
        log_info("http: client %s is not reading its stream, dropping it", http_request_peer(req));
        http_conn_close(c);
        return HTTP_STREAM_SLOW;
    }
    return HTTP_STREAM_OK;
}

int http_stream_write(http_request *req, const void *data, size_t len)
{
    uv_buf_t part = uv_buf_init((char *)data, (unsigned)len);
    return stream_send(req, &part, 1);
}

int http_stream_sse(http_request *req, const char *data, size_t len)
{
    /* Each line of a multi-line payload needs its own "data: " prefix to survive SSE. */
    size_t newlines = 0;
    if (len == 0) data = "";
    for (const char *p = data; (p = memchr(p, '\n', len - (size_t)(p - data))); p++) newlines++;
    if (newlines == 0) {
        uv_buf_t parts[3] = {uv_buf_init((char *)"data: ", 6), uv_buf_init((char *)data, (unsigned)len),
                             uv_buf_init((char *)"\n\n", 2)};
        return stream_send(req, parts, 3);
    }
    size_t cap = len + newlines * 6 + 8;
    char *buf = malloc(cap), *o = buf;
    if (!buf) return HTTP_STREAM_CLOSED;
    memcpy(o, "data: ", 6);
    o += 6;
    for (size_t i = 0; i < len; i++) {
        *o++ = data[i];
        if (data[i] == '\n') {
            memcpy(o, "data: ", 6);
            o += 6;
        }
    }
    *o++ = '\n';
    *o++ = '\n';
    uv_buf_t part = uv_buf_init(buf, (unsigned)(o - buf));
    int rc = stream_send(req, &part, 1);
    free(buf);
    return rc;
}

size_t http_stream_buffered(const http_request *req)
{
    return req && req->state != HTTP_REQ_NONE ? http_conn_queued(req->conn) : 0;
}

int http_stream_end(http_request *req)
{
    if (!req || req->state == HTTP_REQ_NONE) {
        log_warn("http: http_stream_end on a request that is not waiting for an answer");
        return HTTP_STREAM_CLOSED;
    }
    struct http_conn *c = req->conn;
    /* Ending a stream never begun still answers the request (with an empty body). */
    if (req->state == HTTP_REQ_PENDING && !c->closing) http_stream_begin(req, 200, NULL);
    /* What the head promised, unless the server is closing: a connection closed right after a
     * stream its head called keep-alive races with the client's next request. */
    bool keep = req->keep_alive && !c->srv->closing;
    int rc = HTTP_STREAM_CLOSED;
    if (!c->closing) {
        rc = HTTP_STREAM_OK;
        if (req->chunked && !req->no_body) {
            uv_buf_t last = uv_buf_init((char *)"0\r\n\r\n", 5);
            if (http_conn_send(c, &last, 1) < 0) rc = HTTP_STREAM_CLOSED;
        }
    }
    http_conn_request_done(c, keep);
    return rc;
}
