/* The HTTP client against a small scripted server on 127.0.0.1 (one thread per connection,
 * behaviour chosen by the request path), driven by a real libuv loop. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "common/http_client.h"

/* Criterion ignores LeakSanitizer's report at exit, so each test asks for one itself. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() \
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "leaked memory (LeakSanitizer report above)")
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

/* --- the test server --------------------------------------------------------------------- */

#define MAX_CONNS 256

struct srv;

struct conn {
    struct srv *srv;
    int fd;
    pthread_t thread;
};

struct srv {
    int fd;
    int port;
    pthread_t thread;
    pthread_mutex_t mu;
    struct conn conns[MAX_CONNS];
    int n_conns;
    atomic_int accepted;
    atomic_bool stop;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_str(int fd, const char *s)
{
    return send_all(fd, s, strlen(s));
}

/* Waits until the peer closes or the server stops; used by requests that never get an answer. */
static void wait_for_close(struct conn *c)
{
    while (!atomic_load(&c->srv->stop)) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 20) > 0) {
            char tmp[256];
            ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
            if (r <= 0) return;
        }
    }
}

static int send_chunk(int fd, const char *data)
{
    char head[32];
    snprintf(head, sizeof head, "%zx\r\n", strlen(data));
    if (send_str(fd, head) || send_str(fd, data) || send_str(fd, "\r\n")) return -1;
    return 0;
}

/* Answers one request; returns 0 to keep the connection, -1 to end it. */
static int handle(struct conn *c, const char *req, size_t req_len, const char *path)
{
    char head[256];
    if (strcmp(path, "/hello") == 0) {
        return send_str(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
    }
    if (strcmp(path, "/missing") == 0) {
        return send_str(c->fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope");
    }
    if (strcmp(path, "/echo") == 0) {
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", req_len);
        if (send_str(c->fd, head)) return -1;
        return send_all(c->fd, req, req_len);
    }
    if (strcmp(path, "/big") == 0) {
        size_t n = 1 << 20;
        char *body = malloc(n);
        for (size_t i = 0; i < n; i++) body[i] = (char)('a' + i % 26);
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
        int rc = send_str(c->fd, head) || send_all(c->fd, body, n) ? -1 : 0;
        free(body);
        return rc;
    }
    if (strcmp(path, "/stream") == 0) {
        if (send_str(c->fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) return -1;
        for (int i = 0; i < 5; i++) {
            char piece[32];
            snprintf(piece, sizeof piece, "piece-%d\n", i);
            if (send_chunk(c->fd, piece)) return -1;
            sleep_ms(30);
        }
        return send_str(c->fd, "0\r\n\r\n");
    }
    if (strcmp(path, "/forever") == 0) {
        if (send_str(c->fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) return -1;
        while (!atomic_load(&c->srv->stop) && send_chunk(c->fd, "tick\n") == 0) sleep_ms(10);
        return -1;
    }
    if (strcmp(path, "/hang") == 0) {
        wait_for_close(c);
        return -1;
    }
    if (strcmp(path, "/reset") == 0) {
        send_str(c->fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        send_chunk(c->fd, "first\n");
        sleep_ms(50);
        /* A crashed peer: close with a reset. dup2 closes the socket and keeps its number
         * taken (by /dev/null) until srv_stop, like every other connection's. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        int null_fd = open("/dev/null", O_RDONLY);
        dup2(null_fd, c->fd);
        close(null_fd);
        return -1;
    }
    if (strcmp(path, "/cut") == 0) {
        send_str(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b");
        sleep_ms(20);
        shutdown(c->fd, SHUT_RDWR);
        return -1;
    }
    send_str(c->fd, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
    return -1;
}

static size_t content_length(const char *head)
{
    const char *p = strcasestr(head, "\r\nContent-Length:");
    return p ? strtoul(p + 17, NULL, 10) : 0;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    const size_t max_cap = (size_t)8 << 20;
    for (;;) {
        /* Read one request: the head up to the blank line, then Content-Length bytes. */
        char *end;
        while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
            if (len == cap) goto out; /* a head of 64 KiB is not ours */
            ssize_t r = recv(c->fd, buf + len, cap - len, 0);
            if (r <= 0) goto out;
            len += (size_t)r;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        char saved = buf[head_len - 1];
        buf[head_len - 1] = '\0';
        size_t body_len = content_length(buf);
        char path[128] = "";
        sscanf(buf, "%*s %127s", path);
        buf[head_len - 1] = saved;
        if (head_len + body_len > max_cap) goto out;
        if (head_len + body_len > cap) {
            cap = head_len + body_len;
            buf = realloc(buf, cap);
        }
        while (len < head_len + body_len) {
            ssize_t r = recv(c->fd, buf + len, cap - len, 0);
            if (r <= 0) goto out;
            len += (size_t)r;
        }
        size_t req_len = head_len + body_len;
        if (handle(c, buf, req_len, path) != 0) break;
        memmove(buf, buf + req_len, len - req_len);
        len -= req_len;
    }
out:
    free(buf);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct srv *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0) continue;
        int fd = accept(s->fd, NULL, NULL);
        if (fd < 0) continue;
        atomic_fetch_add(&s->accepted, 1);
        pthread_mutex_lock(&s->mu);
        if (s->n_conns == MAX_CONNS) {
            close(fd);
        } else {
            struct conn *c = &s->conns[s->n_conns];
            c->srv = s;
            c->fd = fd;
            if (pthread_create(&c->thread, NULL, conn_main, c) == 0) s->n_conns++;
            else close(fd);
        }
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

static void srv_start(struct srv *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(s->fd >= 0);
    int one = 1;
    setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s->fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(s->fd, 256), 0);
    socklen_t alen = sizeof a;
    getsockname(s->fd, (struct sockaddr *)&a, &alen);
    s->port = ntohs(a.sin_port);
    cr_assert_eq(pthread_create(&s->thread, NULL, accept_main, s), 0);
}

static void srv_stop(struct srv *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    /* Connection threads close nothing themselves, so no fd number is reused under them. */
    for (int i = 0; i < s->n_conns; i++) shutdown(s->conns[i].fd, SHUT_RDWR);
    for (int i = 0; i < s->n_conns; i++) pthread_join(s->conns[i].thread, NULL);
    for (int i = 0; i < s->n_conns; i++) close(s->conns[i].fd);
    close(s->fd);
    pthread_mutex_destroy(&s->mu);
}


/* --- the client side --------------------------------------------------------------------- */

struct ctx {
    uv_loop_t loop;
    uv_timer_t tick;
    http_client *client;
    struct srv srv;
};

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void ctx_init(struct ctx *t)
{
    srv_start(&t->srv);
    cr_assert_eq(uv_loop_init(&t->loop), 0);
    /* A steady tick makes every UV_RUN_ONCE return within a few milliseconds. */
    uv_timer_init(&t->loop, &t->tick);
    uv_timer_start(&t->tick, on_tick, 5, 5);
    cr_assert_eq(http_client_init(&t->client, &t->loop), 0);
}

typedef bool (*cond_fn)(void *arg);

/* Runs the loop until cond holds or ms pass; returns whether cond holds. */
static bool run_until(struct ctx *t, cond_fn cond, void *arg, int ms)
{
    uint64_t deadline = now_ms() + (uint64_t)ms;
    while (!(cond && cond(arg)) && now_ms() < deadline) uv_run(&t->loop, UV_RUN_ONCE);
    return cond && cond(arg);
}

static void ctx_free(struct ctx *t)
{
    if (t->client) http_client_free(t->client);
    t->client = NULL;
    uv_close((uv_handle_t *)&t->tick, NULL);
    /* Every handle the client owns must close by itself: a leaked one would keep the loop. */
    uint64_t deadline = now_ms() + 3000;
    while (uv_loop_alive(&t->loop) && now_ms() < deadline) uv_run(&t->loop, UV_RUN_NOWAIT);
    cr_assert_eq(uv_loop_close(&t->loop), 0, "the client left handles open");
    srv_stop(&t->srv);
    ASSERT_NO_LEAKS();
}

static void url_of(struct ctx *t, char *out, size_t n, const char *path)
{
    snprintf(out, n, "http://127.0.0.1:%d%s", t->srv.port, path);
}

struct res {
    struct ctx *t;
    http_call *call;
    int done;
    int error;
    long status;
    char *body;
    size_t body_len;
    bool body_null;
    int pieces;
    char data[4096];
    size_t data_len;
    long status_in_data;
    int abort_after;    /* on_data returns 1 after this many pieces */
    int cancel_after;   /* on_data cancels its call after this many pieces */
    int free_after;     /* on_data frees the client after this many pieces */
    struct res *cancel_in_done;  /* on_done cancels this other call */
    bool free_in_done;           /* on_done frees the client */
    struct res *start_in_data;   /* on_data starts this call (once) */
    const char *start_url;
};

static void res_clear(struct res *r)
{
    free(r->body);
    r->body = NULL;
}

static void on_done(http_call *call, const struct http_call_result *res, void *user)
{
    struct res *r = user;
    cr_assert_eq(call, r->call);
    r->call = NULL; /* freed when on_done returns; also lets the leak check see a lost call */
    r->done++;
    r->error = res->error;
    r->status = res->status;
    r->body_null = res->body == NULL;
    cr_assert_not_null(res->error_text);
    if (res->body) {
        r->body = malloc(res->body_len + 1);
        memcpy(r->body, res->body, res->body_len + 1);
        r->body_len = res->body_len;
    }
    cr_assert_eq(http_call_status(call), res->status);
    /* Cancelling a call from its own on_done does nothing. */
    http_call_cancel(call);
    if (r->cancel_in_done) {
        http_call_cancel(r->cancel_in_done->call);
        r->cancel_in_done->call = NULL;
    }
    if (r->free_in_done) {
        http_client_free(r->t->client);
        r->t->client = NULL;
    }
}

static int start(struct ctx *t, struct res *r, const struct http_call_opts *opts);

static int on_data(http_call *call, const char *data, size_t len, void *user)
{
    struct res *r = user;
    cr_assert_eq(call, r->call);
    cr_assert_eq(r->done, 0);
    r->pieces++;
    r->status_in_data = http_call_status(call);
    size_t room = sizeof r->data - 1 - r->data_len;
    size_t n = len < room ? len : room;
    memcpy(r->data + r->data_len, data, n);
    r->data_len += n;
    r->data[r->data_len] = '\0';
    if (r->start_in_data) {
        struct res *other = r->start_in_data;
        r->start_in_data = NULL;
        struct http_call_opts o = {.url = r->start_url, .on_done = on_done, .user = other};
        cr_assert_eq(start(r->t, other, &o), 0);
    }
    if (r->cancel_after && r->pieces == r->cancel_after) {
        http_call_cancel(call);
        http_call_cancel(call); /* twice is harmless */
        r->call = NULL;
        return 0;
    }
    if (r->free_after && r->pieces == r->free_after) {
        http_client_free(r->t->client);
        r->t->client = NULL;
        return 0;
    }
    return r->abort_after && r->pieces >= r->abort_after ? 1 : 0;
}

static int start(struct ctx *t, struct res *r, const struct http_call_opts *opts)
{
    r->t = t;
    struct http_call_opts o = *opts;
    o.user = r;
    if (!o.on_done) o.on_done = on_done;
    return http_client_request(t->client, &o, &r->call);
}

static bool is_done(void *arg)
{
    return ((struct res *)arg)->done > 0;
}

static bool pieces_at_least_2(void *arg)
{
    return ((struct res *)arg)->pieces >= 2;
}

static void get(struct ctx *t, struct res *r, const char *path)
{
    char url[128];
    url_of(t, url, sizeof url, path);
    struct http_call_opts o = {.url = url};
    cr_assert_eq(start(t, r, &o), 0);
    cr_assert_eq(r->done, 0, "on_done must never run inside http_client_request");
    cr_assert(run_until(t, is_done, r, 5000), "call to %s did not finish", path);
}

/* --- tests ------------------------------------------------------------------------------- */

Test(http_client, get_buffers_the_body)
{
    struct ctx t;
    ctx_init(&t);
    struct res r = {0};
    get(&t, &r, "/hello");
    cr_assert_eq(r.done, 1);
    cr_assert_eq(r.error, HTTP_CALL_OK);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, 11);
    cr_assert_str_eq(r.body, "hello world");
    cr_assert_eq(http_client_active(t.client), 0);
    res_clear(&r);

    struct res nf = {0};
    get(&t, &nf, "/missing");
    cr_assert_eq(nf.error, HTTP_CALL_OK, "an HTTP error status is still a completed call");
    cr_assert_eq(nf.status, 404);
    cr_assert_str_eq(nf.body, "nope");
    res_clear(&nf);

    /* By name, with the address resolved by curl (::1 may be tried and refused first). */
    char url[128];
    snprintf(url, sizeof url, "http://localhost:%d/hello", t.srv.port);
    struct http_call_opts o = {.url = url};
    struct res byname = {0};
    cr_assert_eq(start(&t, &byname, &o), 0);
    cr_assert(run_until(&t, is_done, &byname, 5000));
    cr_assert_eq(byname.error, HTTP_CALL_OK, "error %d", byname.error);
    cr_assert_str_eq(byname.body, "hello world");
    res_clear(&byname);

    struct res big = {0};
    get(&t, &big, "/big");
    cr_assert_eq(big.error, HTTP_CALL_OK);
    cr_assert_eq(big.body_len, (size_t)1 << 20);
    cr_assert_eq(big.body[0], 'a');
    cr_assert_eq(big.body[(1 << 20) - 1], (char)('a' + ((1 << 20) - 1) % 26));
    cr_assert_eq(big.body[1 << 20], '\0');
    res_clear(&big);
    ctx_free(&t);
}

Test(http_client, post_sends_body_and_headers)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/echo");
    const char *headers[] = {"X-Test: yes", "Authorization: Bearer k", NULL};
    const char body[] = "{\"a\":1}";
    struct http_call_opts o = {
        .method = "POST", .url = url, .body = body, .body_len = sizeof body - 1, .headers = headers,
    };
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 5000));
    cr_assert_eq(r.error, HTTP_CALL_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(strncmp(r.body, "POST /echo HTTP/1.1\r\n", 21) == 0, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "\r\nX-Test: yes\r\n"), "%s", r.body);
    cr_assert_not_null(strstr(r.body, "\r\nAuthorization: Bearer k\r\n"), "%s", r.body);
    cr_assert_not_null(strstr(r.body, "\r\nContent-Type: application/json\r\n"), "%s", r.body);
    cr_assert_not_null(strstr(r.body, "\r\nContent-Length: 7\r\n"), "%s", r.body);
    cr_assert_null(strcasestr(r.body, "\r\nExpect:"), "%s", r.body);
    cr_assert(r.body_len > 7 && memcmp(r.body + r.body_len - 7, body, 7) == 0, "%s", r.body);
    res_clear(&r);

    /* A body with a NUL in it, a custom content type, and a body large enough (over 1 MiB)
     * that curl would send "Expect: 100-continue" and wait a second if the client let it. */
    size_t big_len = (size_t)3 << 19;
    char *big = malloc(big_len);
    memset(big, 'x', big_len);
    big[5] = '\0';
    struct http_call_opts o2 = {
        .method = "POST", .url = url, .body = big, .body_len = big_len, .content_type = "text/plain",
    };
    struct res r2 = {0};
    cr_assert_eq(start(&t, &r2, &o2), 0);
    free(big); /* the client copied it */
    cr_assert(run_until(&t, is_done, &r2, 5000));
    cr_assert_eq(r2.error, HTTP_CALL_OK);
    cr_assert_not_null(strstr(r2.body, "\r\nContent-Type: text/plain\r\n"));
    cr_assert_null(strcasestr(r2.body, "\r\nExpect:"));
    cr_assert(r2.body_len > big_len);
    const char *sent = r2.body + r2.body_len - big_len;
    cr_assert(sent[0] == 'x' && sent[5] == '\0' && sent[big_len - 1] == 'x');
    res_clear(&r2);
    ctx_free(&t);
}

Test(http_client, default_header_on_every_call_unless_the_call_sets_it)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/echo");
    cr_assert_eq(http_client_set_default_header(t.client, "Authorization: Bearer internal"), 0);
    struct http_call_opts o = {.method = "POST", .url = url, .body = "{}", .body_len = 2};
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 5000));
    cr_assert_not_null(strstr(r.body, "\r\nAuthorization: Bearer internal\r\n"), "%s", r.body);
    res_clear(&r);

    /* A call's own header of the same name wins, sent once. */
    const char *headers[] = {"authorization: Bearer mine", NULL};
    struct http_call_opts o2 = {.method = "POST", .url = url, .body = "{}", .body_len = 2, .headers = headers};
    struct res r2 = {0};
    cr_assert_eq(start(&t, &r2, &o2), 0);
    cr_assert(run_until(&t, is_done, &r2, 5000));
    cr_assert_not_null(strstr(r2.body, "\r\nauthorization: Bearer mine\r\n"), "%s", r2.body);
    cr_assert_null(strstr(r2.body, "internal"), "%s", r2.body);
    res_clear(&r2);

    cr_assert_eq(http_client_set_default_header(t.client, NULL), 0);
    struct res r3 = {0};
    cr_assert_eq(start(&t, &r3, &o), 0);
    cr_assert(run_until(&t, is_done, &r3, 5000));
    cr_assert_null(strcasestr(r3.body, "\r\nAuthorization:"), "%s", r3.body);
    res_clear(&r3);
    /* Freed by the client at teardown (the leak check in ctx_free sees it). */
    cr_assert_eq(http_client_set_default_header(t.client, "Authorization: Bearer again"), 0);
    ctx_free(&t);
}

Test(http_client, json_body_and_path_joined_by_the_client)
{
    struct ctx t;
    ctx_init(&t);
    char base[128];
    url_of(&t, base, sizeof base, "");
    json_t *body = json_pack("{s:i}", "a", 1);
    struct http_call_opts o = {.method = "POST", .url = base, .path = "/echo", .json = body};
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    json_decref(body); /* the client serialized it */
    cr_assert(run_until(&t, is_done, &r, 5000));
    cr_assert_eq(r.error, HTTP_CALL_OK);
    cr_assert(strncmp(r.body, "POST /echo HTTP/1.1\r\n", 21) == 0, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "\r\nContent-Type: application/json\r\n"), "%s", r.body);
    cr_assert(r.body_len > 7 && memcmp(r.body + r.body_len - 7, "{\"a\":1}", 7) == 0, "%s", r.body);
    res_clear(&r);
    ctx_free(&t);
}

Test(http_client, streams_in_pieces)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/stream");
    struct http_call_opts o = {.url = url, .on_data = on_data, .timeout_ms = 0};
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 5000));
    cr_assert_eq(r.error, HTTP_CALL_OK);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.status_in_data, 200);
    cr_assert(r.pieces >= 3, "only %d pieces", r.pieces);
    cr_assert_str_eq(r.data, "piece-0\npiece-1\npiece-2\npiece-3\npiece-4\n");
    cr_assert(r.body_null, "a streamed call has no buffered body");
    res_clear(&r);
    ctx_free(&t);
}

Test(http_client, refused_connection_fails_fast)
{
    struct ctx t;
    ctx_init(&t);
    /* A bound socket that does not listen: connections to it are refused, and nobody else
     * can take the port while the test runs. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", ntohs(a.sin_port));
    struct http_call_opts o = {.url = url, .connect_timeout_ms = 2000};
    struct res r = {0};
    uint64_t t0 = now_ms();
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 5000));
    cr_assert(now_ms() - t0 < 1000, "took %llu ms", (unsigned long long)(now_ms() - t0));
    cr_assert_eq(r.error, HTTP_CALL_CONNECT);
    cr_assert_eq(r.status, 0);
    close(fd);
    res_clear(&r);
    ctx_free(&t);
}

Test(http_client, silent_server_times_out)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/hang");
    struct http_call_opts o = {.url = url, .timeout_ms = 300};
    struct res r = {0};
    uint64_t t0 = now_ms();
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 5000));
    uint64_t took = now_ms() - t0;
    cr_assert_eq(r.error, HTTP_CALL_TIMEOUT);
    cr_assert(took >= 250 && took < 2000, "took %llu ms", (unsigned long long)took);
    res_clear(&r);

    /* A stream has no total limit when timeout_ms is 0: still running after 400 ms. */
    struct http_call_opts s = {.url = url, .on_data = on_data};
    struct res rs = {0};
    cr_assert_eq(start(&t, &rs, &s), 0);
    run_until(&t, is_done, &rs, 400);
    cr_assert_eq(rs.done, 0);
    cr_assert_eq(http_client_active(t.client), 1);
    http_call_cancel(rs.call);
    rs.call = NULL;
    cr_assert_eq(http_client_active(t.client), 0);
    ctx_free(&t);
}

Test(http_client, silent_stream_hits_the_idle_timeout)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/hang");
    struct http_call_opts o = {.url = url, .on_data = on_data, .idle_timeout_ms = 1000};
    struct res r = {0};
    uint64_t t0 = now_ms();
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 5000), "a silent stream must end at the idle timeout");
    uint64_t took = now_ms() - t0;
    cr_assert_eq(r.error, HTTP_CALL_TIMEOUT, "error %d", r.error);
    cr_assert(took >= 900 && took < 3500, "took %llu ms", (unsigned long long)took);
    res_clear(&r);
    ctx_free(&t);
}

Test(http_client, peer_closing_mid_body_is_io_error)
{
    struct ctx t;
    ctx_init(&t);
    struct res r = {0};
    get(&t, &r, "/cut");
    cr_assert_eq(r.error, HTTP_CALL_IO, "error %d", r.error);
    cr_assert_eq(r.status, 200);
    res_clear(&r);
    ctx_free(&t);
}

Test(http_client, peer_reset_ends_a_stream_without_timeout)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/reset");
    struct http_call_opts o = {.url = url, .on_data = on_data, .timeout_ms = 0};
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 3000), "a reset stream must end without any timeout");
    cr_assert_eq(r.error, HTTP_CALL_IO, "error %d", r.error);
    cr_assert_str_eq(r.data, "first\n");
    ctx_free(&t);
}

Test(http_client, cancel_inside_on_data_stops_callbacks)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/forever");
    struct http_call_opts o = {.url = url, .on_data = on_data};
    struct res r = {.cancel_after = 3};
    cr_assert_eq(start(&t, &r, &o), 0);
    uint64_t deadline = now_ms() + 3000;
    while (r.pieces < 3 && now_ms() < deadline) uv_run(&t.loop, UV_RUN_ONCE);
    cr_assert_eq(r.pieces, 3);
    run_until(&t, NULL, NULL, 200); /* the server keeps sending every 10 ms */
    cr_assert_eq(r.pieces, 3, "on_data ran after cancel");
    cr_assert_eq(r.done, 0, "on_done ran after cancel");
    cr_assert_eq(http_client_active(t.client), 0);

    /* The client still works afterwards. */
    struct res ok = {0};
    get(&t, &ok, "/hello");
    cr_assert_eq(ok.error, HTTP_CALL_OK);
    res_clear(&ok);
    ctx_free(&t);
}

Test(http_client, cancel_outside_callbacks_stops_callbacks)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/forever");
    struct http_call_opts o = {.url = url, .on_data = on_data};
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, pieces_at_least_2, &r, 3000));
    http_call_cancel(r.call);
    r.call = NULL;
    int seen = r.pieces;
    run_until(&t, NULL, NULL, 200);
    cr_assert_eq(r.pieces, seen);
    cr_assert_eq(r.done, 0);
    ctx_free(&t);
}

Test(http_client, on_data_nonzero_aborts)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/forever");
    struct http_call_opts o = {.url = url, .on_data = on_data};
    struct res r = {.abort_after = 2};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert(run_until(&t, is_done, &r, 3000));
    cr_assert_eq(r.error, HTTP_CALL_ABORTED);
    cr_assert_eq(r.pieces, 2);
    cr_assert_eq(r.status, 200);
    ctx_free(&t);
}

#define N_CONCURRENT 100

static bool all_done(void *arg)
{
    struct res *r = arg;
    for (int i = 0; i < N_CONCURRENT; i++) {
        if (!r[i].done) return false;
    }
    return true;
}

Test(http_client, hundred_concurrent_calls_complete)
{
    struct ctx t;
    ctx_init(&t);
    char url[128];
    url_of(&t, url, sizeof url, "/echo");
    static struct res r[N_CONCURRENT];
    memset(r, 0, sizeof r);
    for (int i = 0; i < N_CONCURRENT; i++) {
        char body[32];
        snprintf(body, sizeof body, "call-%03d", i);
        struct http_call_opts o = {.url = url, .body = body, .body_len = strlen(body)};
        cr_assert_eq(start(&t, &r[i], &o), 0);
    }
    cr_assert_eq(http_client_active(t.client), N_CONCURRENT);
    cr_assert(run_until(&t, all_done, r, 10000), "not every call finished");
    for (int i = 0; i < N_CONCURRENT; i++) {
        char body[32];
        snprintf(body, sizeof body, "call-%03d", i);
        cr_assert_eq(r[i].done, 1);
        cr_assert_eq(r[i].error, HTTP_CALL_OK, "call %d: %d", i, r[i].error);
        cr_assert_eq(r[i].status, 200);
        cr_assert(r[i].body_len >= 8 && strcmp(r[i].body + r[i].body_len - 8, body) == 0,
                  "call %d got someone else's answer", i);
        res_clear(&r[i]);
    }
    cr_assert_eq(http_client_active(t.client), 0);
    ctx_free(&t);
}

Test(http_client, sequential_calls_reuse_the_connection)
{
    struct ctx t;
    ctx_init(&t);
    for (int i = 0; i < 5; i++) {
        struct res r = {0};
        get(&t, &r, "/hello");
        cr_assert_eq(r.error, HTTP_CALL_OK);
        res_clear(&r);
        char url[128];
        url_of(&t, url, sizeof url, "/echo");
        struct http_call_opts o = {.url = url, .body = "{}", .body_len = 2};
        struct res p = {0};
        cr_assert_eq(start(&t, &p, &o), 0);
        cr_assert(run_until(&t, is_done, &p, 5000));
        cr_assert_eq(p.error, HTTP_CALL_OK);
        res_clear(&p);
    }
    cr_assert_eq(atomic_load(&t.srv.accepted), 1, "%d connections", atomic_load(&t.srv.accepted));
    ctx_free(&t);
}

static bool streams_started(void *arg)
{
    struct res *r = arg;
    for (int i = 0; i < 4; i++) {
        if (r[i].pieces < 1) return false;
    }
    return true;
}

Test(http_client, free_with_calls_in_flight)
{
    struct ctx t;
    ctx_init(&t);
    char forever[128], hang[128];
    url_of(&t, forever, sizeof forever, "/forever");
    url_of(&t, hang, sizeof hang, "/hang");
    struct res r[12];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 4; i++) {
        struct http_call_opts o = {.url = forever, .on_data = on_data};
        cr_assert_eq(start(&t, &r[i], &o), 0);
    }
    for (int i = 4; i < 8; i++) {
        struct http_call_opts o = {.url = hang, .method = "POST", .body = "{}", .body_len = 2};
        cr_assert_eq(start(&t, &r[i], &o), 0);
    }
    cr_assert(run_until(&t, streams_started, r, 3000));
    /* Some calls that have not even connected yet. */
    for (int i = 8; i < 12; i++) {
        struct http_call_opts o = {.url = hang};
        cr_assert_eq(start(&t, &r[i], &o), 0);
    }
    http_client_free(t.client);
    t.client = NULL;
    for (int i = 0; i < 12; i++) r[i].call = NULL;
    int pieces[4];
    for (int i = 0; i < 4; i++) pieces[i] = r[i].pieces;
    ctx_free(&t); /* runs the loop until every handle closed */
    for (int i = 0; i < 12; i++) cr_assert_eq(r[i].done, 0, "call %d called back after free", i);
    for (int i = 0; i < 4; i++) cr_assert_eq(r[i].pieces, pieces[i]);
}

Test(http_client, free_inside_callbacks)
{
    struct ctx t;
    ctx_init(&t);
    char hang[128], hello[128];
    url_of(&t, hang, sizeof hang, "/hang");
    url_of(&t, hello, sizeof hello, "/hello");
    struct res waiting = {0}, first = {.free_in_done = true};
    struct http_call_opts o = {.url = hang};
    cr_assert_eq(start(&t, &waiting, &o), 0);
    struct http_call_opts o2 = {.url = hello};
    cr_assert_eq(start(&t, &first, &o2), 0);
    cr_assert(run_until(&t, is_done, &first, 5000));
    cr_assert_null(t.client);
    res_clear(&first);
    waiting.call = NULL;
    ctx_free(&t);
    cr_assert_eq(waiting.done, 0);

    /* The same from on_data, in the middle of curl's own processing. */
    struct ctx t2;
    ctx_init(&t2);
    char forever[128];
    url_of(&t2, forever, sizeof forever, "/forever");
    struct res s = {.free_after = 2}, other = {0};
    struct http_call_opts o3 = {.url = forever, .on_data = on_data};
    cr_assert_eq(start(&t2, &s, &o3), 0);
    struct http_call_opts o4 = {.url = forever, .on_data = on_data};
    cr_assert_eq(start(&t2, &other, &o4), 0);
    cr_assert(run_until(&t2, pieces_at_least_2, &s, 3000));
    cr_assert_null(t2.client);
    int seen = other.pieces;
    s.call = other.call = NULL;
    ctx_free(&t2);
    cr_assert_eq(s.pieces, 2);
    cr_assert_eq(s.done + other.done, 0);
    cr_assert_eq(other.pieces, seen);
}

Test(http_client, calls_started_and_cancelled_inside_callbacks)
{
    struct ctx t;
    ctx_init(&t);
    char stream[128], hello[128], hang[128];
    url_of(&t, stream, sizeof stream, "/stream");
    url_of(&t, hello, sizeof hello, "/hello");
    url_of(&t, hang, sizeof hang, "/hang");

    /* on_data starts a new call: curl is busy then, so the client must defer adding it. */
    struct res inner = {0}, outer = {.start_in_data = &inner, .start_url = hello};
    struct http_call_opts o = {.url = stream, .on_data = on_data};
    cr_assert_eq(start(&t, &outer, &o), 0);
    cr_assert(run_until(&t, is_done, &outer, 5000));
    cr_assert(run_until(&t, is_done, &inner, 5000));
    cr_assert_eq(outer.error, HTTP_CALL_OK);
    cr_assert_eq(inner.error, HTTP_CALL_OK);
    cr_assert_str_eq(inner.body, "hello world");
    res_clear(&inner);

    /* on_done cancels another call that is still waiting. */
    struct res victim = {0}, killer = {0};
    struct http_call_opts ov = {.url = hang};
    cr_assert_eq(start(&t, &victim, &ov), 0);
    killer.cancel_in_done = &victim;
    struct http_call_opts ok = {.url = hello};
    cr_assert_eq(start(&t, &killer, &ok), 0);
    cr_assert(run_until(&t, is_done, &killer, 5000));
    run_until(&t, NULL, NULL, 100);
    cr_assert_eq(victim.done, 0);
    cr_assert_eq(http_client_active(t.client), 0);
    res_clear(&killer);
    ctx_free(&t);
}

Test(http_client, bad_url_fails_through_on_done)
{
    struct ctx t;
    ctx_init(&t);
    struct http_call_opts o = {.url = "http://"};
    struct res r = {0};
    cr_assert_eq(start(&t, &r, &o), 0);
    cr_assert_eq(r.done, 0);
    cr_assert(run_until(&t, is_done, &r, 3000));
    cr_assert_eq(r.error, HTTP_CALL_INTERNAL, "error %d", r.error);
    res_clear(&r);

    struct http_call_opts none = {.url = NULL};
    http_call *call = (http_call *)&r;
    cr_assert_lt(http_client_request(t.client, &none, &call), 0);
    cr_assert_null(call);
    ctx_free(&t);
}
