/* HTTP client: libcurl's multi interface driven by a libuv loop.
 *
 * curl tells us which sockets to watch (socket callback -> one uv_poll_t per socket) and when
 * to wake it up (timer callback -> one uv_timer_t); libuv events are handed back through
 * curl_multi_socket_action, and finished transfers are collected with curl_multi_info_read.
 *
 * Re-entrancy: user code runs inside curl (on_data is called from curl's write callback, deep
 * inside curl_multi_socket_action), where curl forbids curl_multi_add_handle and
 * curl_multi_remove_handle. So while `in_curl` is set, new calls wait on `pending` and
 * cancelled calls on `dead`; both lists are settled as soon as curl returns. on_done runs
 * outside curl, where calls can be added and removed directly.
 *
 * Timeouts: timeout_ms 0 means "no total limit" for a streaming call (on_data set) and "the
 * default" (10 s) for a buffered one, which always has a limit; a negative value means no
 * limit either way. */
#include "common/http_client.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/json_util.h"
#include "common/log.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_TIMEOUT_MS 10000
/* Idle connections kept for reuse (heartbeats, gateway -> worker calls). */
#define MAX_CACHED_CONNECTIONS 64

struct http_sock {
    uv_poll_t poll;
    http_client *client;
    curl_socket_t fd;
    int events; /* UV_READABLE | UV_WRITABLE as curl last asked */
    bool closing;
    struct http_sock *prev, *next;
};

struct http_call {
    http_client *client;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    char *buf;
    size_t len, cap;
    int (*on_data)(http_call *, const char *, size_t, void *);
    void (*on_done)(http_call *, const struct http_call_result *, void *);
    void *user;
    long status;
    bool in_live;    /* on client->live */
    bool in_multi;   /* added to the multi handle */
    bool cancelled;  /* no callbacks any more; freed at the next safe point */
    bool finishing;  /* on_done is running or has run */
    bool aborted;    /* on_data asked to stop */
    bool oom;        /* the buffered body could not grow */
    char errbuf[CURL_ERROR_SIZE];
    http_call *prev, *next; /* in client->live */
    http_call *link;        /* in client->pending or client->dead */
};

struct http_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    http_call *live;    /* every call not yet freed nor on `dead` */
    http_call *pending; /* created inside curl, to be added to the multi handle */
    http_call *dead;    /* cancelled inside curl, to be removed and freed */
    struct http_sock *socks;
    unsigned active;    /* calls that will still call back */
    unsigned in_curl;   /* inside curl_multi_socket_action */
    unsigned depth;     /* inside one of our libuv callbacks */
    unsigned open_handles;
    bool closing;       /* http_client_free was called */
    char *default_header; /* http_client_set_default_header's line, or NULL */
    char *default_name;   /* its name, before the ':' */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_global_rc;

static void curl_global_once(void)
{
    curl_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* --- call bookkeeping ---------------------------------------------------------------------- */

static void live_unlink(http_client *c, http_call *call)
{
    if (!call->in_live) return;
    call->in_live = false;
    if (call->prev) call->prev->next = call->next;
    else c->live = call->next;
    if (call->next) call->next->prev = call->prev;
    call->prev = call->next = NULL;
}

static void call_destroy(http_call *call)
{
    http_client *c = call->client;
    if (call->easy) {
        if (call->in_multi && c->multi) curl_multi_remove_handle(c->multi, call->easy);
        curl_easy_cleanup(call->easy);
    }
    curl_slist_free_all(call->headers);
    free(call->body);
    free(call->buf);
    free(call);
}

static void pending_remove(http_client *c, http_call *call)
{
    for (http_call **p = &c->pending; *p; p = &(*p)->link) {
        if (*p == call) {
            *p = call->link;
            call->link = NULL;
            return;
        }
    }
}

/* --- curl -> libuv ------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h);
static void client_run(http_client *c, curl_socket_t fd, int flags);

static void on_poll(uv_poll_t *poll, int status, int events)
{
    struct http_sock *s = poll->data;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    client_run(s->client, s->fd, flags);
    /* On an error libuv stops the poll by itself, yet curl, which owns the socket, may still
     * expect it watched: a stream without a total timeout must not hang on that. The handle
     * is only freed in its close callback, so s is still valid here. */
    if (status < 0 && !s->closing && !s->client->closing)
        uv_poll_start(&s->poll, s->events, on_poll);
}

static void sock_close(http_client *c, struct http_sock *s)
{
    if (s->closing) return;
    s->closing = true;
    if (s->prev) s->prev->next = s->next;
    else c->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    /* uv_close stops watching the fd right away, before curl closes it, so the number can
     * be reused by a new socket at once; the memory goes only in the close callback. */
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    http_client *c = userp;
    struct http_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            if (!c->closing) curl_multi_assign(c->multi, fd, NULL);
            sock_close(c, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return -1;
        int rc = uv_poll_init_socket(c->loop, &s->poll, fd);
        if (rc != 0) {
            log_error("http client: cannot watch socket %d: %s", (int)fd, uv_strerror(rc));
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->client = c;
        s->fd = fd;
        s->next = c->socks;
        if (c->socks) c->socks->prev = s;
        c->socks = s;
        c->open_handles++;
        curl_multi_assign(c->multi, fd, s);
    }
    int events = 0;
    if (what & CURL_POLL_IN) events |= UV_READABLE;
    if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
    s->events = events;
    int rc = uv_poll_start(&s->poll, events, on_poll);
    if (rc != 0) {
        log_error("http client: cannot poll socket %d: %s", (int)fd, uv_strerror(rc));
        return -1;
    }
    return 0;
}

static void on_timer(uv_timer_t *t)
{
    client_run(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    http_client *c = userp;
    /* Never call curl from here: even a 0 ms timeout goes through the loop. */
    if (timeout_ms < 0) uv_timer_stop(&c->timer);
    else uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* --- completing calls ---------------------------------------------------------------------- */

static int map_error(const http_call *call, CURLcode rc)
{
    if (call->aborted) return HTTP_CALL_ABORTED;
    if (call->oom) return HTTP_CALL_INTERNAL;
    switch (rc) {
    case CURLE_OK: return HTTP_CALL_OK;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return HTTP_CALL_CONNECT;
    case CURLE_OPERATION_TIMEDOUT: return HTTP_CALL_TIMEOUT;
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FAILED_INIT:
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT: return HTTP_CALL_INTERNAL;
    default: return HTTP_CALL_IO;
    }
}

const char *http_call_error_describe(int error)
{
    switch (error) {
    case HTTP_CALL_OK: return "no error";
    case HTTP_CALL_CONNECT: return "the connection could not be made";
    case HTTP_CALL_TIMEOUT: return "it timed out";
    case HTTP_CALL_IO: return "the connection broke";
    case HTTP_CALL_ABORTED: return "it was stopped";
    default: return "an internal error";
    }
}

static void call_complete(http_client *c, http_call *call, CURLcode rc)
{
    long status = 0;
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
    call->status = status;
    curl_multi_remove_handle(c->multi, call->easy);
    call->in_multi = false;
    live_unlink(c, call);
    if (!call->cancelled) {
        struct http_call_result res = {.error = map_error(call, rc), .status = status};
        if (res.error == HTTP_CALL_OK) res.error_text = "";
        else if (call->aborted) res.error_text = "aborted by the receiver";
        else if (call->oom) res.error_text = "out of memory buffering the body";
        else res.error_text = call->errbuf[0] ? call->errbuf : curl_easy_strerror(rc);
        if (!call->on_data) {
            res.body = call->buf ? call->buf : "";
            res.body_len = call->len;
        }
        call->finishing = true;
        c->active--;
        if (call->on_done) call->on_done(call, &res, call->user);
    }
    call_destroy(call);
}

static void call_fail_unstarted(http_client *c, http_call *call)
{
    live_unlink(c, call);
    if (!call->cancelled) {
        struct http_call_result res = {
            .error = HTTP_CALL_INTERNAL, .error_text = "cannot start the transfer", .body = "",
        };
        call->finishing = true;
        c->active--;
        if (call->on_done) call->on_done(call, &res, call->user);
    }
    call_destroy(call);
}

/* Runs outside curl: adds calls created inside it, frees calls cancelled inside it. */
static void client_settle(http_client *c)
{
    while (c->dead) {
        http_call *call = c->dead;
        c->dead = call->link;
        call_destroy(call);
    }
    while (c->pending && !c->closing) {
        http_call *call = c->pending;
        c->pending = call->link;
        call->link = NULL;
        if (curl_multi_add_handle(c->multi, call->easy) == CURLM_OK) call->in_multi = true;
        else call_fail_unstarted(c, call);
    }
}

static void client_drain(http_client *c)
{
    CURLMsg *msg;
    int left;
    while (!c->closing && (msg = curl_multi_info_read(c->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        if (priv) call_complete(c, (http_call *)priv, rc);
        if (c->closing) break;
        client_settle(c);
    }
}

static void client_teardown(http_client *c);

static void client_run(http_client *c, curl_socket_t fd, int flags)
{
    if (c->closing) return;
    int running = 0;
    c->depth++;
    c->in_curl++;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    c->in_curl--;
    if (!c->closing) {
        client_settle(c);
        client_drain(c);
    }
    c->depth--;
    if (c->depth == 0 && c->closing) client_teardown(c);
}

/* --- writing the body ---------------------------------------------------------------------- */

static size_t on_curl_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    http_call *call = userdata;
    size_t n = size * nmemb;
    if (call->cancelled) return CURL_WRITEFUNC_ERROR;
    if (call->on_data) {
        if (n == 0) return 0;
        int stop = call->on_data(call, ptr, n, call->user);
        if (call->cancelled) return CURL_WRITEFUNC_ERROR;
        if (stop) {
            call->aborted = true;
            return CURL_WRITEFUNC_ERROR;
        }
        return n;
    }
    if (call->len + n + 1 > call->cap) {
        size_t cap = call->cap ? call->cap : 1024;
        while (cap < call->len + n + 1) cap *= 2;
        char *buf = realloc(call->buf, cap);
        if (!buf) {
            call->oom = true;
            return CURL_WRITEFUNC_ERROR;
        }
        call->buf = buf;
        call->cap = cap;
    }
    memcpy(call->buf + call->len, ptr, n);
    call->len += n;
    call->buf[call->len] = '\0';
    return n;
}

/* --- public API ---------------------------------------------------------------------------- */

int http_client_init(http_client **out, uv_loop_t *loop)
{
    *out = NULL;
    pthread_once(&curl_once, curl_global_once);
    if (curl_global_rc != CURLE_OK) return -1;
    http_client *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->loop = loop;
    c->multi = curl_multi_init();
    if (!c->multi) goto fail;
    if (uv_timer_init(loop, &c->timer) != 0) goto fail;
    c->timer.data = c;
    c->open_handles = 1;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)MAX_CACHED_CONNECTIONS);
    *out = c;
    return 0;
fail:
    if (c->multi) curl_multi_cleanup(c->multi);
    free(c);
    return -1;
}

static void on_handle_closed(uv_handle_t *h)
{
    http_client *c;
    if (h->type == UV_POLL) {
        struct http_sock *s = h->data;
        c = s->client;
        free(s);
    } else {
        c = h->data;
    }
    if (--c->open_handles == 0 && c->closing) free(c);
}

static void client_teardown(http_client *c)
{
    while (c->dead) {
        http_call *call = c->dead;
        c->dead = call->link;
        call_destroy(call);
    }
    c->pending = NULL; /* every pending call is on `live` too */
    free(c->default_header);
    free(c->default_name);
    c->default_header = c->default_name = NULL;
    while (c->live) {
        http_call *call = c->live;
        live_unlink(c, call);
        call_destroy(call);
    }
    /* curl reports the sockets of its cached connections as removed while it closes them. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (c->socks) sock_close(c, c->socks);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

char *http_url_join(const char *base, const char *path)
{
    size_t nb = strlen(base), np = strlen(path);
    char *url = malloc(nb + np + 1);
    if (!url) return NULL;
    memcpy(url, base, nb);
    memcpy(url + nb, path, np + 1);
    return url;
}

int http_client_set_default_header(http_client *client, const char *line)
{
    char *copy = NULL, *name = NULL;
    if (line) {
        const char *colon = strchr(line, ':');
        copy = strdup(line);
        name = strndup(line, colon ? (size_t)(colon - line) : strlen(line));
        if (!copy || !name) {
            free(copy);
            free(name);
            return -1;
        }
    }
    free(client->default_header);
    free(client->default_name);
    client->default_header = copy;
    client->default_name = name;
    return 0;
}

void http_client_free(http_client *client)
{
    if (!client || client->closing) return;
    client->closing = true;
    for (http_call *call = client->live; call; call = call->next) call->cancelled = true;
    client->active = 0;
    if (client->depth == 0) client_teardown(client);
}

static bool has_header(const char *const *headers, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; headers && headers[i]; i++) {
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':') return true;
    }
    return false;
}

static int slist_add(struct curl_slist **list, const char *line)
{
    struct curl_slist *l = curl_slist_append(*list, line);
    if (!l) return -1;
    *list = l;
    return 0;
}

/* call->body, when already set, is the serialized opts->json that the call owns; otherwise
 * opts->body (if any) is copied into it. */
static int call_setup(http_call *call, const struct http_call_opts *o)
{
    CURL *e = call->easy;
    const char *body = call->body ? call->body : o->body;
    const size_t body_len = call->body ? strlen(call->body) : o->body_len;
    const char *method = o->method ? o->method : (body ? "POST" : "GET");
    bool sends_body = body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0;
    int rc = 0;

    /* curl copies the URL. */
    char *joined = o->path ? http_url_join(o->url, o->path) : NULL;
    if (o->path && !joined) return -1;
    rc |= curl_easy_setopt(e, CURLOPT_URL, joined ? joined : o->url);
    free(joined);
    rc |= curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)call);
    rc |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_curl_write);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    rc |= curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    rc |= curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Calls go between our own services: a proxy from the environment would only hurt. */
    rc |= curl_easy_setopt(e, CURLOPT_PROXY, "");
    rc |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");

    long connect_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    long total_ms = o->timeout_ms;
    if (total_ms == 0 && !o->on_data) total_ms = DEFAULT_TIMEOUT_MS;
    if (total_ms < 0) total_ms = 0;
    rc |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    rc |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, total_ms);
    if (o->idle_timeout_ms > 0) {
        /* curl's low-speed check: under 1 byte/s for the whole window is silence. */
        rc |= curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        rc |= curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (o->idle_timeout_ms + 999) / 1000);
    }

    if (strcmp(method, "GET") == 0 && !body) {
        rc |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        rc |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0) rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (sends_body) {
        size_t len = body ? body_len : 0;
        if (!call->body) {
            call->body = malloc(len + 1);
            if (!call->body) return -1;
            if (len) memcpy(call->body, body, len);
            call->body[len] = '\0';
        }
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
        if (!has_header(o->headers, "Content-Type")) {
            char line[256];
            snprintf(line, sizeof line, "Content-Type: %s",
                     o->content_type ? o->content_type : "application/json");
            if (slist_add(&call->headers, line) != 0) return -1;
        }
        /* Without this curl waits up to a second for "100 Continue" on larger bodies. */
        if (!has_header(o->headers, "Expect") && slist_add(&call->headers, "Expect:") != 0) return -1;
    }
    for (size_t i = 0; o->headers && o->headers[i]; i++) {
        if (slist_add(&call->headers, o->headers[i]) != 0) return -1;
    }
    http_client *c = call->client;
    if (c->default_header && !has_header(o->headers, c->default_name) &&
        slist_add(&call->headers, c->default_header) != 0)
        return -1;
    if (call->headers) rc |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);
    return rc == 0 ? 0 : -1;
}

int http_client_request(http_client *client, const struct http_call_opts *opts, http_call **out)
{
    if (out) *out = NULL;
    if (!client || client->closing || !opts || !opts->url) return -1;
    http_call *call = calloc(1, sizeof *call);
    if (!call) return -1;
    call->client = client;
    call->on_data = opts->on_data;
    call->on_done = opts->on_done;
    call->user = opts->user;
    /* A JSON body is serialized here, so that callers need not, straight into the call's own
     * copy of its body. */
    if (!opts->body && opts->json && !(call->body = json_dump_compact(opts->json))) goto fail;
    call->easy = curl_easy_init();
    if (!call->easy || call_setup(call, opts) != 0) goto fail;
    if (client->in_curl) {
        call->link = client->pending;
        client->pending = call;
    } else {
        if (curl_multi_add_handle(client->multi, call->easy) != CURLM_OK) goto fail;
        call->in_multi = true;
    }
    call->next = client->live;
    if (client->live) client->live->prev = call;
    client->live = call;
    call->in_live = true;
    client->active++;
    if (out) *out = call;
    return 0;
fail:
    call_destroy(call);
    return -1;
}

void http_call_cancel(http_call *call)
{
    if (!call || call->cancelled || call->finishing) return;
    http_client *c = call->client;
    call->cancelled = true;
    if (c->closing) return; /* teardown frees it */
    c->active--;
    live_unlink(c, call);
    if (c->in_curl) {
        pending_remove(c, call);
        call->link = c->dead;
        c->dead = call;
    } else {
        pending_remove(c, call);
        call_destroy(call);
    }
}

long http_call_status(const http_call *call)
{
    if (!call) return 0;
    if (call->easy && !call->finishing) {
        long status = 0;
        curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
        return status;
    }
    return call->status;
}

unsigned http_client_active(const http_client *client)
{
    return client ? client->active : 0;
}
