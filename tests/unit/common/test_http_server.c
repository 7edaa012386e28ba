/* The HTTP server on a real loop in a background thread, driven by raw blocking sockets so
 * that every byte on the wire is under the test's control. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/http_server.h"

/* --- the server under test ------------------------------------------------------------- */

static struct {
    uv_loop_t loop;
    uv_async_t stop;
    http_server *srv;
    pthread_t thread;
    int port;
    atomic_int closed_calls;   /* on_close callbacks */
    atomic_int slow_rc;        /* what /flood saw from http_stream_write */
    atomic_int server_closed;  /* http_server_close finished */
    atomic_int requests;       /* handler calls */
} T;

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static bool wait_for(atomic_int *v, int at_least, int ms)
{
    long end = now_ms() + ms;
    while (atomic_load(v) < at_least) {
        if (now_ms() > end) return false;
        usleep(2000);
    }
    return true;
}

static void free_handle(uv_handle_t *h)
{
    free(h->data);
}

/* A response given later from a timer, as a proxy would. */
struct delayed {
    uv_timer_t timer;
    http_request *req;
    char tag[64];
};

static void delayed_fire(uv_timer_t *t)
{
    struct delayed *d = t->data;
    char body[64];
    int n = snprintf(body, sizeof body, "delayed %s", d->tag);
    http_respond(d->req, 200, "text/plain", body, (size_t)n);
    uv_close((uv_handle_t *)t, free_handle);
}

static void delayed_gone(http_request *req, void *arg)
{
    (void)req;
    struct delayed *d = arg;
    atomic_fetch_add(&T.closed_calls, 1);
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, free_handle);
}

/* A stream that never ends by itself: one chunk every 5 ms. */
struct ticker {
    uv_timer_t timer;
    http_request *req;
};

static void ticker_fire(uv_timer_t *t)
{
    struct ticker *k = t->data;
    if (http_stream_write(k->req, "tick\n", 5) != HTTP_STREAM_OK) uv_timer_stop(t);
}

static void ticker_gone(http_request *req, void *arg)
{
    (void)req;
    struct ticker *k = arg;
    atomic_fetch_add(&T.closed_calls, 1);
    uv_timer_stop(&k->timer);
    uv_close((uv_handle_t *)&k->timer, free_handle);
}

static void count_gone(http_request *req, void *arg)
{
    (void)req;
    (void)arg;
    atomic_fetch_add(&T.closed_calls, 1);
}

static const char *query_value(const char *query, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (!strncmp(p, key, kl) && p[kl] == '=') {
            size_t n = strcspn(p + kl + 1, "&");
            if (n >= cap) n = cap - 1;
            memcpy(out, p + kl + 1, n);
            out[n] = '\0';
            return out;
        }
    }
    return NULL;
}

static void handler(http_request *req, void *user)
{
    (void)user;
    atomic_fetch_add(&T.requests, 1);
    const char *path = http_request_path(req);
    char v[32];
    if (!strcmp(path, "/echo")) {
        size_t len;
        const char *body = http_request_body(req, &len);
        const char *xt = http_request_header(req, "x-TEST");
        json_t *o = json_pack("{s:s, s:s, s:s, s:s#, s:I, s:s?}", "method", http_request_method(req),
                              "path", path, "query", http_request_query(req), "body", body, len,
                              "len", (json_int_t)len, "x_test", xt);
        http_respond_json(req, 200, o);
    } else if (!strcmp(path, "/delay")) {
        struct delayed *d = calloc(1, sizeof *d);
        d->req = req;
        snprintf(d->tag, sizeof d->tag, "%s", query_value(http_request_query(req), "tag", v, sizeof v) ? v : "");
        uv_timer_init(&T.loop, &d->timer);
        d->timer.data = d;
        http_request_on_close(req, delayed_gone, d);
        int ms = query_value(http_request_query(req), "ms", v, sizeof v) ? atoi(v) : 50;
        uv_timer_start(&d->timer, delayed_fire, (uint64_t)ms, 0);
    } else if (!strcmp(path, "/stream")) {
        http_stream_begin(req, 200, "text/plain");
        http_stream_write(req, "hello ", 6);
        http_stream_write(req, "", 0);
        http_stream_write(req, "world", 5);
        http_stream_end(req);
    } else if (!strcmp(path, "/sse")) {
        http_response_header(req, "Cache-Control", "no-cache");
        http_stream_begin(req, 200, "text/event-stream");
        http_stream_sse(req, "{\"a\":1}", 7);
        http_stream_sse(req, "line1\nline2", 11);
        http_stream_sse(req, "[DONE]", 6);
        http_stream_end(req);
    } else if (!strcmp(path, "/forever")) {
        struct ticker *k = calloc(1, sizeof *k);
        k->req = req;
        uv_timer_init(&T.loop, &k->timer);
        k->timer.data = k;
        http_request_on_close(req, ticker_gone, k);
        http_stream_begin(req, 200, "text/plain");
        http_stream_write(req, "first\n", 6);
        uv_timer_start(&k->timer, ticker_fire, 5, 5);
    } else if (!strcmp(path, "/flood")) {
        static char block[64 * 1024];
        memset(block, 'x', sizeof block);
        http_request_on_close(req, count_gone, NULL);
        http_stream_begin(req, 200, "application/octet-stream");
        int rc = HTTP_STREAM_OK;
        for (int i = 0; i < 4096 && rc == HTTP_STREAM_OK; i++)
            rc = http_stream_write(req, block, sizeof block);
        atomic_store(&T.slow_rc, rc == HTTP_STREAM_SLOW ? 1 : -1);
        if (rc == HTTP_STREAM_OK) http_stream_end(req);
    } else if (!strcmp(path, "/error")) {
        http_response_header(req, "Retry-After", "1");
        http_response_header(req, "Bad\r\nHeader", "x");
        http_respond_error(req, 429, "model", "slow down %d", 5);
    } else if (!strcmp(path, "/drain")) {
        http_server_drain(T.srv, true);
        size_t queued = http_server_queued_bytes(T.srv);
        char body[32];
        int n = snprintf(body, sizeof body, "queued %zu", queued);
        http_respond(req, 200, "text/plain", body, (size_t)n);
    } else if (!strcmp(path, "/peer")) {
        const char *peer = http_request_peer(req);
        http_respond(req, 200, "text/plain", peer, strlen(peer));
    } else if (!strcmp(path, "/loopback")) {
        bool yes = http_request_from_loopback(req);
        http_respond(req, 200, "text/plain", yes ? "yes" : "no", yes ? 3 : 2);
    } else {
        http_respond_error(req, 404, NULL, "no route %s", path);
    }
}

static void *run_loop(void *arg)
{
    (void)arg;
    uv_run(&T.loop, UV_RUN_DEFAULT);
    return NULL;
}

static void on_server_closed(void *arg)
{
    (void)arg;
    atomic_store(&T.server_closed, 1);
}

static void on_stop(uv_async_t *a)
{
    http_server_close(T.srv, on_server_closed, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void start_server(const struct http_server_config *cfg)
{
    cr_assert_eq(uv_loop_init(&T.loop), 0);
    struct http_server_config c = cfg ? *cfg : (struct http_server_config){0};
    c.host = "127.0.0.1";
    c.port = 0;
    cr_assert_eq(http_server_init(&T.srv, &T.loop, &c, handler, NULL), 0);
    T.port = http_server_port(T.srv);
    cr_assert_gt(T.port, 0);
    uv_async_init(&T.loop, &T.stop, on_stop);
    cr_assert_eq(pthread_create(&T.thread, NULL, run_loop, NULL), 0);
}

static void stop_server(void)
{
    uv_async_send(&T.stop);
    pthread_join(T.thread, NULL);
    cr_assert_eq(atomic_load(&T.server_closed), 1, "on_closed did not run");
    cr_assert_eq(uv_loop_close(&T.loop), 0, "handles left open on the loop");
}

/* --- a raw client ---------------------------------------------------------------------- */

struct client {
    int fd;
    char *buf;
    size_t len, cap;
};

struct resp {
    int status;
    char head[16384];
    char hv[1024];
    char *body;
    size_t body_len;
    int chunks;
    char *raw; /* the body as framed on the wire */
    size_t raw_len;
};

static struct client *client_open_fd(int rcvbuf)
{
    struct client *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(c->fd, 0);
    struct timeval tv = {.tv_sec = 3};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf) setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)T.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s", strerror(errno));
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
    return c;
}

static struct client *client_open(void)
{
    return client_open_fd(0);
}

static void client_close(struct client *c)
{
    close(c->fd);
    free(c->buf);
    free(c);
}

static void client_send(struct client *c, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        cr_assert_gt(n, 0, "send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static void client_sends(struct client *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* Reads more bytes: > 0 read, 0 EOF, < 0 error or timeout. */
static ssize_t client_fill(struct client *c)
{
    if (c->cap - c->len < 4096) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n > 0) c->len += (size_t)n;
    return n;
}

static void client_consume(struct client *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* True when the server closed the connection (EOF or reset) with nothing more to read. */
static bool client_sees_close(struct client *c)
{
    if (c->len) return false;
    ssize_t n = client_fill(c);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

static const char *hdr(struct resp *r, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (!strncasecmp(line, name, nl) && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ') v++;
            size_t n = strcspn(v, "\r");
            if (n >= sizeof r->hv) n = sizeof r->hv - 1;
            memcpy(r->hv, v, n);
            r->hv[n] = '\0';
            return r->hv;
        }
    }
    return NULL;
}

static void resp_free(struct resp *r)
{
    free(r->body);
    free(r->raw);
    free(r);
}

static void body_append(char **dst, size_t *len, const char *src, size_t n)
{
    *dst = realloc(*dst, *len + n + 1);
    memcpy(*dst + *len, src, n);
    *len += n;
    (*dst)[*len] = '\0';
}

/* Reads one response (Content-Length, chunked or until EOF); NULL on EOF or timeout first. */
static struct resp *read_resp(struct client *c)
{
    struct resp *r = calloc(1, sizeof *r);
    char *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (client_fill(c) <= 0) goto fail;
    size_t hlen = (size_t)(end + 4 - c->buf);
    cr_assert_lt(hlen, sizeof r->head);
    memcpy(r->head, c->buf, hlen);
    r->head[hlen] = '\0';
    client_consume(c, hlen);
    cr_assert_eq(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1, "bad status line: %s", r->head);
    body_append(&r->body, &r->body_len, "", 0);
    body_append(&r->raw, &r->raw_len, "", 0);
    if (r->status / 100 == 1) return r;
    const char *te = hdr(r, "Transfer-Encoding");
    if (te && !strcmp(te, "chunked")) {
        for (;;) {
            char *eol;
            while (!(eol = memmem(c->buf, c->len, "\r\n", 2)))
                if (client_fill(c) <= 0) goto fail;
            size_t size = strtoul(c->buf, NULL, 16);
            size_t need = (size_t)(eol + 2 - c->buf) + size + 2;
            while (c->len < need)
                if (client_fill(c) <= 0) goto fail;
            cr_assert(!memcmp(c->buf + need - 2, "\r\n", 2), "chunk not followed by CRLF");
            body_append(&r->raw, &r->raw_len, c->buf, need);
            body_append(&r->body, &r->body_len, eol + 2, size);
            client_consume(c, need);
            if (size == 0) break;
            r->chunks++;
        }
    } else if (hdr(r, "Content-Length")) {
        size_t n = strtoul(hdr(r, "Content-Length"), NULL, 10);
        while (c->len < n)
            if (client_fill(c) <= 0) goto fail;
        body_append(&r->body, &r->body_len, c->buf, n);
        client_consume(c, n);
    } else {
        while (client_fill(c) > 0) {}
        body_append(&r->body, &r->body_len, c->buf, c->len);
        client_consume(c, c->len);
    }
    return r;
fail:
    resp_free(r);
    return NULL;
}

static struct resp *roundtrip(struct client *c, const char *request)
{
    client_sends(c, request);
    struct resp *r = read_resp(c);
    cr_assert_not_null(r, "no response to %s", request);
    return r;
}

static json_t *body_json(struct resp *r)
{
    json_error_t e;
    json_t *v = json_loadb(r->body, r->body_len, 0, &e);
    cr_assert_not_null(v, "body is not JSON: %s", r->body);
    return v;
}

static void assert_json_str(json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_string(v), "'%s' missing", key);
    cr_assert_str_eq(json_string_value(v), want, "'%s'", key);
}

/* An OpenAI-shaped error with the status, then the connection closed by the server. */
static void assert_error_and_close_at(struct client *c, int status, int line)
{
    struct resp *r = read_resp(c);
    cr_assert_not_null(r, "line %d: no %d response", line, status);
    cr_assert_eq(r->status, status, "line %d: status %d, wanted %d: %s", line, r->status, status,
                 r->body);
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    cr_assert_str_eq(hdr(r, "Content-Type"), "application/json");
    json_t *o = body_json(r);
    json_t *err = json_object_get(o, "error");
    cr_assert(json_is_object(err));
    cr_assert(json_is_string(json_object_get(err, "message")));
    assert_json_str(err, "type", "invalid_request_error");
    cr_assert(json_object_get(err, "param") && json_object_get(err, "code"));
    json_decref(o);
    resp_free(r);
    cr_assert(client_sees_close(c), "line %d: connection still open after %d", line, status);
}
#define assert_error_and_close(c, status) assert_error_and_close_at((c), (status), __LINE__)

/* --- tests ----------------------------------------------------------------------------- */

TestSuite(http_server, .timeout = 10);

Test(http_server, get_with_query_and_headers)
{
    start_server(NULL);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /echo?x=1&y=2 HTTP/1.1\r\nHost: t\r\nX-Test:  abc  \r\n\r\n");
    cr_assert_eq(r->status, 200);
    cr_assert_str_eq(hdr(r, "Content-Type"), "application/json");
    cr_assert_str_eq(hdr(r, "Connection"), "keep-alive");
    json_t *o = body_json(r);
    assert_json_str(o, "method", "GET");
    assert_json_str(o, "path", "/echo");
    assert_json_str(o, "query", "x=1&y=2");
    assert_json_str(o, "body", "");
    assert_json_str(o, "x_test", "abc");
    json_decref(o);
    resp_free(r);
    r = roundtrip(c, "GET /peer HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert(!strncmp(r->body, "127.0.0.1:", 10), "peer %s", r->body);
    resp_free(r);
    r = roundtrip(c, "GET /loopback HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_str_eq(r->body, "yes", "a client on 127.0.0.1 is loopback");
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, post_content_length_body)
{
    start_server(NULL);
    struct client *c = client_open();
    /* The body arrives in a separate write, after the headers. */
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello");
    usleep(20000);
    client_sends(c, " world");
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert_eq(r->status, 200);
    json_t *o = body_json(r);
    assert_json_str(o, "method", "POST");
    assert_json_str(o, "body", "hello world");
    json_decref(o);
    resp_free(r);

    /* A body larger than what is reserved up front, on the same connection. */
    size_t big = 700 * 1024;
    char *body = malloc(big);
    for (size_t i = 0; i < big; i++) body[i] = (char)('a' + i % 26);
    char head[128];
    snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", big);
    client_sends(c, head);
    client_send(c, body, big);
    r = read_resp(c);
    cr_assert_not_null(r);
    o = body_json(r);
    cr_assert_eq(json_integer_value(json_object_get(o, "len")), (json_int_t)big);
    cr_assert(!memcmp(json_string_value(json_object_get(o, "body")), body, big));
    json_decref(o);
    resp_free(r);
    free(body);
    client_close(c);
    stop_server();
}

Test(http_server, post_chunked_body)
{
    start_server(NULL);
    struct client *c = client_open();
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    usleep(20000);
    client_sends(c, "lo\r\n6;ext=1\r\n world\r\n0\r\n\r\n");
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert_eq(r->status, 200);
    json_t *o = body_json(r);
    assert_json_str(o, "body", "hello world");
    cr_assert_eq(json_integer_value(json_object_get(o, "len")), 11);
    json_decref(o);
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, keep_alive_two_requests)
{
    start_server(NULL);
    struct client *c = client_open();
    for (int i = 0; i < 2; i++) {
        struct resp *r = roundtrip(c, "POST /echo?n=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab");
        cr_assert_eq(r->status, 200);
        cr_assert_str_eq(hdr(r, "Connection"), "keep-alive");
        resp_free(r);
    }
    cr_assert_eq(atomic_load(&T.requests), 2);
    client_close(c);
    stop_server();
}

Test(http_server, pipelined_answered_in_order)
{
    start_server(NULL);
    struct client *c = client_open();
    /* The first answer comes late from a timer; the others must wait for it. */
    client_sends(c, "GET /delay?ms=60&tag=one HTTP/1.1\r\nHost: t\r\n\r\n"
                    "POST /echo?tag=two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\ntwo"
                    "GET /delay?ms=1&tag=three HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->body, "delayed one");
    resp_free(r);
    r = read_resp(c);
    cr_assert_not_null(r);
    json_t *o = body_json(r);
    assert_json_str(o, "query", "tag=two");
    assert_json_str(o, "body", "two");
    json_decref(o);
    resp_free(r);
    r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->body, "delayed three");
    resp_free(r);
    cr_assert_eq(atomic_load(&T.closed_calls), 0, "on_close ran for answered requests");
    client_close(c);
    stop_server();
}

Test(http_server, http10_and_connection_close_honoured)
{
    start_server(NULL);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /echo HTTP/1.0\r\n\r\n");
    cr_assert_eq(r->status, 200);
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    resp_free(r);
    cr_assert(client_sees_close(c));
    client_close(c);

    c = client_open();
    r = roundtrip(c, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    cr_assert_str_eq(hdr(r, "Connection"), "keep-alive");
    resp_free(r);
    r = roundtrip(c, "GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    cr_assert_eq(r->status, 200);
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    resp_free(r);
    cr_assert(client_sees_close(c));
    client_close(c);

    /* An HTTP/1.0 client cannot read chunks: the stream ends with the connection. */
    c = client_open();
    r = roundtrip(c, "GET /stream HTTP/1.0\r\n\r\n");
    cr_assert_null(hdr(r, "Transfer-Encoding"));
    cr_assert_str_eq(r->body, "hello world");
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, head_has_no_body)
{
    start_server(NULL);
    struct client *c = client_open();
    client_sends(c, "HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\nGET /peer HTTP/1.1\r\nHost: t\r\n\r\n");
    char *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4))) cr_assert_gt(client_fill(c), 0);
    cr_assert(!strncmp(c->buf, "HTTP/1.1 200", 12));
    client_consume(c, (size_t)(end + 4 - c->buf));
    /* The next bytes are the second response, not a body. */
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert(!strncmp(r->body, "127.0.0.1:", 10));
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, expect_100_continue)
{
    start_server(NULL);
    struct client *c = client_open();
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert_eq(r->status, 100);
    resp_free(r);
    client_sends(c, "data");
    r = read_resp(c);
    cr_assert_eq(r->status, 200);
    json_t *o = body_json(r);
    assert_json_str(o, "body", "data");
    json_decref(o);
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, headers_too_large_431)
{
    struct http_server_config cfg = {.max_header_bytes = 4096};
    start_server(&cfg);
    struct client *c = client_open();
    char big[6000];
    memset(big, 'a', sizeof big);
    big[sizeof big - 1] = '\0';
    char *req = NULL;
    cr_assert_gt(asprintf(&req, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", big), 0);
    client_sends(c, req);
    free(req);
    assert_error_and_close(c, 431);
    client_close(c);

    /* A long request line counts too, and is refused before its end arrives. */
    c = client_open();
    client_sends(c, "GET /");
    client_sends(c, big);
    assert_error_and_close(c, 431);
    client_close(c);

    /* Many small headers add up. */
    c = client_open();
    char many[600 * 8 + 1];
    for (int i = 0; i < 600; i++) memcpy(many + i * 8, "X-A: b\r\n", 8);
    many[600 * 8] = '\0';
    client_sends(c, "GET /echo HTTP/1.1\r\n");
    client_sends(c, many);
    assert_error_and_close(c, 431);
    client_close(c);

    /* Just under the limit is fine. */
    c = client_open();
    big[3000] = '\0';
    cr_assert_gt(asprintf(&req, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Test: %s\r\n\r\n", big), 0);
    struct resp *r = roundtrip(c, req);
    free(req);
    cr_assert_eq(r->status, 200);
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, body_too_large_413_from_content_length)
{
    struct http_server_config cfg = {.max_body_bytes = 1024};
    start_server(&cfg);
    struct client *c = client_open();
    /* No body is sent: the answer must come from the headers alone. */
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    assert_error_and_close(c, 413);
    client_close(c);
    cr_assert_eq(atomic_load(&T.requests), 0);

    c = client_open();
    char body[1024];
    memset(body, 'b', sizeof body);
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
    client_send(c, body, sizeof body);
    struct resp *r = read_resp(c);
    cr_assert_eq(r->status, 200, "a body of exactly the limit is accepted");
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, body_too_large_413_chunked)
{
    struct http_server_config cfg = {.max_body_bytes = 1024};
    start_server(&cfg);
    /* One chunk announced over the limit. */
    struct client *c = client_open();
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n801\r\n");
    assert_error_and_close(c, 413);
    client_close(c);

    /* Small chunks whose running total goes over. */
    c = client_open();
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[300 + 16];
    memset(chunk, 'z', sizeof chunk);
    memcpy(chunk, "12c\r\n", 5); /* 300 bytes */
    memcpy(chunk + 305, "\r\n", 2);
    for (int i = 0; i < 3; i++) client_send(c, chunk, 307);
    client_sends(c, "12c\r\n");
    assert_error_and_close(c, 413);
    client_close(c);
    cr_assert_eq(atomic_load(&T.requests), 0);
    stop_server();
}

Test(http_server, header_and_body_timeouts_408)
{
    struct http_server_config cfg = {.header_timeout_ms = 150, .body_timeout_ms = 150};
    start_server(&cfg);
    struct client *c = client_open();
    long t0 = now_ms();
    client_sends(c, "GET /echo HTTP/1.1\r\nHost: t\r\n");
    assert_error_and_close(c, 408);
    long took = now_ms() - t0;
    cr_assert(took >= 100 && took < 2000, "408 after %ld ms", took);
    client_close(c);

    c = client_open();
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    assert_error_and_close(c, 408);
    client_close(c);
    cr_assert_eq(atomic_load(&T.requests), 0);
    stop_server();
}

Test(http_server, idle_keep_alive_closes_quietly)
{
    struct http_server_config cfg = {.idle_timeout_ms = 100};
    start_server(&cfg);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    resp_free(r);
    long t0 = now_ms();
    cr_assert(client_sees_close(c), "idle connection not closed");
    cr_assert_lt(now_ms() - t0, 2000);
    client_close(c);
    stop_server();
}

Test(http_server, malformed_requests_400_and_close)
{
    start_server(NULL);
    static const char *bad[] = {
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\nabc",
        "HELLO\r\n\r\n",
        "GET /echo HTTP/9.9\r\n\r\n",
        "GET /echo HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct client *c = client_open();
        client_sends(c, bad[i]);
        assert_error_and_close_at(c, 400, (int)i);
        client_close(c);
    }
    cr_assert_eq(atomic_load(&T.requests), 0, "a malformed request reached the handler");
    stop_server();
}

Test(http_server, error_bodies_and_extra_headers)
{
    start_server(NULL);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /error HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 429);
    cr_assert_str_eq(hdr(r, "Retry-After"), "1");
    cr_assert_null(hdr(r, "Bad"), "a header with CR/LF was not dropped");
    cr_assert_str_eq(hdr(r, "Connection"), "keep-alive");
    cr_assert_str_eq(r->body, "{\"error\":{\"message\":\"slow down 5\",\"type\":\"rate_limit_exceeded\","
                              "\"param\":\"model\",\"code\":null}}");
    resp_free(r);
    /* Extra headers do not leak into the next response. */
    r = roundtrip(c, "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 404);
    cr_assert_null(hdr(r, "Retry-After"));
    cr_assert(strstr(r->head, "HTTP/1.1 404 Not Found\r\n") == r->head);
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, chunked_stream_framing)
{
    start_server(NULL);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 200);
    cr_assert_str_eq(hdr(r, "Transfer-Encoding"), "chunked");
    cr_assert_null(hdr(r, "Content-Length"));
    cr_assert_str_eq(hdr(r, "Content-Type"), "text/plain");
    cr_assert_str_eq(r->raw, "6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
    resp_free(r);
    /* The connection stays usable after a stream. */
    r = roundtrip(c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 200);
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, sse_framing)
{
    start_server(NULL);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /sse HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_str_eq(hdr(r, "Content-Type"), "text/event-stream");
    cr_assert_str_eq(hdr(r, "Cache-Control"), "no-cache");
    cr_assert_eq(r->chunks, 3, "each event is one chunk");
    cr_assert_str_eq(r->body, "data: {\"a\":1}\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n");
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, on_close_when_client_leaves_mid_stream)
{
    start_server(NULL);
    struct client *c = client_open();
    client_sends(c, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    while (!memmem(c->buf, c->len, "first\n", 6)) cr_assert_gt(client_fill(c), 0);
    client_close(c);
    cr_assert(wait_for(&T.closed_calls, 1, 3000), "on_close did not fire");
    usleep(30000);
    cr_assert_eq(atomic_load(&T.closed_calls), 1, "on_close fired more than once");

    /* Also while a plain answer is pending. */
    c = client_open();
    client_sends(c, "GET /delay?ms=5000 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(50000);
    client_close(c);
    cr_assert(wait_for(&T.closed_calls, 2, 3000), "on_close did not fire for a pending answer");
    stop_server();
}

Test(http_server, server_close_ends_streams)
{
    start_server(NULL);
    struct client *c = client_open();
    client_sends(c, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    while (!memmem(c->buf, c->len, "first\n", 6)) cr_assert_gt(client_fill(c), 0);
    struct client *idle = client_open();
    stop_server();
    cr_assert_eq(atomic_load(&T.closed_calls), 1);
    c->len = 0;
    while (client_fill(c) > 0) c->len = 0;
    cr_assert(client_sees_close(idle));
    client_close(c);
    client_close(idle);
}

/* A graceful stop: after http_server_drain new connections are refused, answers in progress
 * still come (saying Connection: close), and http_server_close afterwards closes the listener
 * only once and still reports the end. */
Test(http_server, drain_then_close)
{
    start_server(NULL);
    struct client *waiting = client_open();
    client_sends(waiting, "GET /delay?ms=150&tag=late HTTP/1.1\r\nHost: t\r\n\r\n");
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /drain HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 200);
    cr_assert_str_eq(r->body, "queued 0");
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    resp_free(r);
    cr_assert(client_sees_close(c));
    client_close(c);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)T.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_neq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "a draining server accepted a connection");
    close(fd);

    r = read_resp(waiting);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->body, "delayed late");
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    resp_free(r);
    cr_assert(client_sees_close(waiting));
    client_close(waiting);
    stop_server();
}

Test(http_server, slow_client_dropped)
{
    struct http_server_config cfg = {.max_stream_buffer = 256 * 1024};
    start_server(&cfg);
    struct client *c = client_open_fd(4096);
    client_sends(c, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    /* Never read: the server must give up rather than queue without bound. */
    cr_assert(wait_for(&T.slow_rc, 1, 5000), "http_stream_write never returned SLOW");
    cr_assert_eq(atomic_load(&T.slow_rc), 1);
    cr_assert(wait_for(&T.closed_calls, 1, 3000), "on_close did not follow SLOW");
    client_close(c);
    stop_server();
}

Test(http_server, max_connections)
{
    struct http_server_config cfg = {.max_connections = 2};
    start_server(&cfg);
    struct client *a = client_open(), *b = client_open();
    resp_free(roundtrip(a, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    resp_free(roundtrip(b, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    struct client *x = client_open();
    struct resp *r = read_resp(x);
    cr_assert_not_null(r, "the third connection got no 503");
    cr_assert_eq(r->status, 503);
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    resp_free(r);
    cr_assert(client_sees_close(x));
    client_close(x);

    /* A slot frees when a client leaves. */
    client_close(a);
    bool served = false;
    for (long end = now_ms() + 3000; !served && now_ms() < end;) {
        struct client *y = client_open();
        client_sends(y, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
        r = read_resp(y);
        served = r && r->status == 200;
        if (r) resp_free(r);
        client_close(y);
        if (!served) usleep(10000);
    }
    cr_assert(served, "no connection accepted after one closed");
    client_close(b);
    stop_server();
}

Test(http_server, requests_split_into_single_bytes)
{
    start_server(NULL);
    struct client *c = client_open();
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const char *req = "POST /echo?q=1 HTTP/1.1\r\nHost: t\r\nX-Test: split\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                      "GET /echo?second HTTP/1.1\r\nHost: t\r\n\r\n";
    for (const char *p = req; *p; p++) {
        client_send(c, p, 1);
        usleep(100);
    }
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    json_t *o = body_json(r);
    assert_json_str(o, "query", "q=1");
    assert_json_str(o, "x_test", "split");
    assert_json_str(o, "body", "abcde");
    json_decref(o);
    resp_free(r);
    r = read_resp(c);
    cr_assert_not_null(r);
    o = body_json(r);
    assert_json_str(o, "query", "second");
    assert_json_str(o, "body", "");
    json_decref(o);
    resp_free(r);
    client_close(c);
    stop_server();
}

Test(http_server, garbage_after_pipelined_request_answered_after_it)
{
    start_server(NULL);
    struct client *c = client_open();
    client_sends(c, "GET /delay?ms=30&tag=ok HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n");
    struct resp *r = read_resp(c);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->body, "delayed ok");
    cr_assert_str_eq(hdr(r, "Connection"), "keep-alive");
    resp_free(r);
    assert_error_and_close(c, 400);
    client_close(c);
    stop_server();
}

Test(http_server, init_fails_cleanly_on_bad_address_and_busy_port)
{
    start_server(NULL);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    http_server *srv = (http_server *)&loop; /* must be overwritten */
    struct http_server_config cfg = {.host = "not-an-address", .port = 0};
    cr_assert_lt(http_server_init(&srv, &loop, &cfg, handler, NULL), 0);
    cr_assert_null(srv);
    cfg.host = "127.0.0.1";
    cfg.port = T.port;
    cr_assert_lt(http_server_init(&srv, &loop, &cfg, handler, NULL), 0, "bound a port in use");
    cr_assert_null(srv);
    uv_run(&loop, UV_RUN_DEFAULT); /* lets the failed listener close and free */
    cr_assert_eq(uv_loop_close(&loop), 0);
    stop_server();
}

/* --- hostile clients ------------------------------------------------------------------- */

/* True once the server has closed fd (EOF or reset); never blocks. */
static bool closed_now(int fd)
{
    char b[4096];
    for (;;) {
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (n == 0) return true;
        if (n < 0) return errno == ECONNRESET;
    }
}

/* Empty lines before a request line are allowed, but they are not a request: connections
 * sending only those are closed when the first request's headers are due, and a normal
 * client is served meanwhile. */
Test(http_server, empty_lines_do_not_hold_a_connection_open)
{
    struct http_server_config cfg = {.header_timeout_ms = 400, .idle_timeout_ms = 10000};
    start_server(&cfg);
    enum { N = 20 };
    struct client *c[N];
    long closed_at[N];
    long t0 = now_ms();
    for (int i = 0; i < N; i++) {
        c[i] = client_open();
        closed_at[i] = -1;
    }
    struct client *ok = client_open();
    struct resp *r = roundtrip(ok, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 200);
    resp_free(r);
    client_close(ok);
    int open = N;
    while (open && now_ms() - t0 < 2500) {
        for (int i = 0; i < N; i++) {
            if (closed_at[i] >= 0) continue;
            if (closed_now(c[i]->fd) || send(c[i]->fd, "\r\n", 2, MSG_NOSIGNAL) < 0) {
                closed_at[i] = now_ms() - t0;
                open--;
            }
        }
        usleep(30000);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_geq(closed_at[i], 0, "connection %d still open after 2.5 s of empty lines", i);
        cr_assert(closed_at[i] >= 350 && closed_at[i] < 1000, "connection %d closed after %ld ms", i,
                  closed_at[i]);
        client_close(c[i]);
    }
    cr_assert_eq(atomic_load(&T.requests), 1);
    stop_server();
}

/* The first request's headers are due header_timeout_ms after the connection, however late
 * they start and however slowly they trickle. */
Test(http_server, header_deadline_counts_from_the_connection)
{
    struct http_server_config cfg = {.header_timeout_ms = 600};
    start_server(&cfg);
    struct client *c = client_open();
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    long t0 = now_ms();
    usleep(400000);
    const char *req = "GET /echo HTTP/1.1\r\nHost: t\r\nX-Test: slowly\r\n\r\n";
    long took = -1;
    for (const char *p = req; *p; p++) {
        if (send(c->fd, p, 1, MSG_NOSIGNAL) < 0) break;
        usleep(50000);
        char b;
        if (recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
            took = now_ms() - t0;
            break;
        }
    }
    cr_assert_geq(took, 0, "the trickled request was never cut off");
    cr_assert(took >= 550 && took < 900, "408 after %ld ms, for a 600 ms deadline", took);
    assert_error_and_close(c, 408);
    client_close(c);
    cr_assert_eq(atomic_load(&T.requests), 0);
    stop_server();
}

/* After an answer, the keep-alive idle timeout runs from the answer: empty lines do not
 * restart it. */
Test(http_server, idle_deadline_not_moved_by_empty_lines)
{
    struct http_server_config cfg = {.idle_timeout_ms = 400, .header_timeout_ms = 10000};
    start_server(&cfg);
    struct client *c = client_open();
    resp_free(roundtrip(c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"));
    long t0 = now_ms(), took = -1;
    while (now_ms() - t0 < 2500) {
        if (closed_now(c->fd) || send(c->fd, "\r\n", 2, MSG_NOSIGNAL) < 0) {
            took = now_ms() - t0;
            break;
        }
        usleep(30000);
    }
    cr_assert_geq(took, 0, "empty lines kept an idle connection open");
    cr_assert(took >= 350 && took < 900, "closed after %ld ms for a 400 ms idle timeout", took);
    client_close(c);
    stop_server();
}

/* Connections with no request in flight are capped per address: the next one gets 429 in
 * JSON; a connection whose request is being answered does not count; an answer that would
 * leave its connection idle over the cap closes it. */
Test(http_server, per_address_cap)
{
    struct http_server_config cfg = {.max_connections_per_ip = 2, .max_connections_per_loopback = 2};
    start_server(&cfg);
    struct client *a = client_open(), *b = client_open();
    struct client *x = client_open();
    struct resp *r = read_resp(x);
    cr_assert_not_null(r, "the third idle connection was not refused");
    cr_assert_eq(r->status, 429);
    cr_assert_str_eq(hdr(r, "Content-Type"), "application/json");
    cr_assert_str_eq(hdr(r, "Retry-After"), "1");
    json_t *o = body_json(r);
    json_t *err = json_object_get(o, "error");
    assert_json_str(err, "type", "rate_limit_exceeded");
    cr_assert_not_null(strstr(json_string_value(json_object_get(err, "message")), "at most 2"));
    json_decref(o);
    resp_free(r);
    cr_assert(client_sees_close(x));
    client_close(x);

    /* a's request is in flight: a no longer counts, so d is let in. */
    client_sends(a, "GET /delay?ms=400&tag=a HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert(wait_for(&T.requests, 1, 2000));
    struct client *d = client_open();
    r = roundtrip(d, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 200);
    cr_assert_str_eq(hdr(r, "Connection"), "keep-alive");
    resp_free(r);
    /* b and d are idle now: a's answer would make three, so it closes a. */
    r = read_resp(a);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->body, "delayed a");
    cr_assert_str_eq(hdr(r, "Connection"), "close");
    resp_free(r);
    cr_assert(client_sees_close(a));
    client_close(a);

    /* A slot frees when a client leaves. */
    client_close(b);
    bool served = false;
    for (long end = now_ms() + 2000; !served && now_ms() < end;) {
        struct client *y = client_open();
        client_sends(y, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
        r = read_resp(y);
        served = r && r->status == 200;
        if (r) resp_free(r);
        client_close(y);
        if (!served) usleep(10000);
    }
    cr_assert(served, "no connection let in after one closed");
    client_close(d);
    stop_server();
}

/* What a malformed request is told names no parser internals. */
Test(http_server, malformed_request_messages_in_user_terms)
{
    start_server(NULL);
    static const struct {
        const char *request, *says;
    } cases[] = {
        {"GET /echo HTTP/1.1\r\nBad Header: x\r\n\r\n", "header name"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"},
        {"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\nabc", "Content-Length"},
        {"GET /echo HTTP/9.9\r\n\r\n", "version"},
        {"G@T /echo HTTP/1.1\r\n\r\n", "method"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct client *c = client_open();
        client_sends(c, cases[i].request);
        struct resp *r = read_resp(c);
        cr_assert_not_null(r);
        cr_assert_eq(r->status, 400);
        json_t *o = body_json(r);
        const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
        cr_assert_not_null(strstr(msg, cases[i].says), "case %zu: %s", i, msg);
        for (const char *bad = "callback\0HPE_\0Span\0llhttp\0"; *bad; bad += strlen(bad) + 1)
            cr_assert_null(strstr(msg, bad), "case %zu names '%s': %s", i, bad, msg);
        json_decref(o);
        resp_free(r);
        client_close(c);
    }
    stop_server();
}

/* Raw bytes 0x80-0xFF in a URL reach the handler; its error quoting the path is still JSON. */
Test(http_server, error_quoting_raw_url_bytes_is_json)
{
    start_server(NULL);
    struct client *c = client_open();
    struct resp *r = roundtrip(c, "GET /\x80\xff\xc3 HTTP/1.1\r\nHost: t\r\n\r\n");
    cr_assert_eq(r->status, 404);
    cr_assert_str_eq(hdr(r, "Content-Type"), "application/json");
    json_t *o = body_json(r);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "message")),
                     "no route /\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    json_decref(o);
    resp_free(r);
    client_close(c);
    stop_server();
}
