/* HTTP client on libcurl's multi interface, driven by the caller's libuv loop
 * (curl_multi_socket_action with uv_poll_t per socket and one uv_timer_t), so outgoing calls
 * never block the loop and need no thread.
 *
 * A call either buffers the whole response body (on_data NULL) and hands it to on_done, or
 * streams it through on_data as bytes arrive. Every call has bounded connect and total
 * timeouts. All functions run on the loop thread only. */
#ifndef SLUICE_COMMON_HTTP_CLIENT_H
#define SLUICE_COMMON_HTTP_CLIENT_H

#include <jansson.h>
#include <stddef.h>
#include <uv.h>

typedef struct http_client http_client;
typedef struct http_call http_call;

enum http_call_error {
    HTTP_CALL_OK = 0,
    HTTP_CALL_CONNECT = -1,  /* refused, unreachable, DNS: nothing was sent */
    HTTP_CALL_TIMEOUT = -2,  /* connect or total timeout */
    HTTP_CALL_IO = -3,       /* connection broke after sending (peer died mid-response) */
    HTTP_CALL_ABORTED = -4,  /* on_data asked to stop */
    HTTP_CALL_INTERNAL = -5,
};

struct http_call_result {
    int error;              /* enum http_call_error */
    const char *error_text; /* curl's message, "" when ok: for logs, not for clients */
    long status;            /* HTTP status, 0 when none was received */
    const char *body;       /* buffered body (NUL-terminated) when on_data was NULL */
    size_t body_len;
};

struct http_call_opts {
    const char *method;          /* "GET" (default when body NULL) or "POST" */
    const char *url;
    const char *path;            /* when set, appended to url (http_url_join) */
    const char *body;            /* copied; may be NULL */
    size_t body_len;
    const json_t *json;          /* when set and body is NULL: the body, serialized compactly */
    const char *content_type;    /* default "application/json" when body is set */
    const char *const *headers;  /* NULL-terminated "Name: value" strings, copied */
    long connect_timeout_ms;     /* default 2000 */
    long timeout_ms;             /* whole call; 0 = no total limit (streams); default 10000 */
    /* Ends the call with HTTP_CALL_TIMEOUT when no byte arrives for this long (0: never);
     * for streams, which have no total limit, so a peer that hangs cannot hold a call open
     * for ever. curl averages the rate over 5 s, so a stream that goes silent after sending
     * ends up to 5 s later than this. */
    long idle_timeout_ms;
    /* Streaming: called with each piece of the body as it arrives; http_call_status() tells
     * the status inside it. Return non-zero to abort the call (on_done then gets
     * HTTP_CALL_ABORTED). */
    int (*on_data)(http_call *call, const char *data, size_t len, void *user);
    /* Called exactly once when the call ends, unless it was cancelled. */
    void (*on_done)(http_call *call, const struct http_call_result *result, void *user);
    void *user;
};

/* What went wrong, in words fit for a client's error message (error_text is curl's, for logs:
 * "transfer closed with outstanding read data remaining" tells a user nothing). */
const char *http_call_error_describe(int error);

int http_client_init(http_client **out, uv_loop_t *loop);
/* Cancels every call in flight (no callbacks) and frees the client once its handles close. */
void http_client_free(http_client *client);

/* A header line ("Authorization: Bearer T") sent with every later call of this client, unless
 * the call names the same header itself: the programs' clients call only internal endpoints,
 * which all need the internal token. Copied; NULL removes it. Returns 0 or -1 (out of memory). */
int http_client_set_default_header(http_client *client, const char *line);

/* base followed by path ("http://host:port" + "/generate"), malloc'd; NULL when out of memory. */
char *http_url_join(const char *base, const char *path);

/* Starts a call. Returns 0 and sets *out (may be NULL) or a negative error. */
int http_client_request(http_client *client, const struct http_call_opts *opts, http_call **out);
/* Stops a call in flight; none of its callbacks run afterwards. Safe inside its callbacks. */
void http_call_cancel(http_call *call);
long http_call_status(const http_call *call);
unsigned http_client_active(const http_client *client);

#endif
