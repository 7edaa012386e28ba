#include "common/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/net_addr.h"

bool auth_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
    /* Walk the whole candidate whatever the lengths; a length mismatch only sets a bit. */
    volatile unsigned char diff = (unsigned char)(a_len != b_len);
    for (size_t i = 0; i < a_len; i++) {
        unsigned char cb = b_len ? (unsigned char)b[i % b_len] : 0;
        diff |= (unsigned char)a[i] ^ cb;
    }
    return diff == 0;
}

const char *auth_bearer_credential(const char *header, size_t *len)
{
    if (!header || strncasecmp(header, "Bearer ", 7) != 0) return NULL;
    const char *cred = header + 7;
    while (*cred == ' ') cred++;
    size_t n = strlen(cred);
    while (n && cred[n - 1] == ' ') n--;
    *len = n;
    return cred;
}

bool auth_bearer_ok(const char *header, const char *token)
{
    if (!token || !*token) return true;
    size_t len = 0;
    const char *cred = auth_bearer_credential(header, &len);
    return cred && auth_equal(cred, len, token, strlen(token));
}

int auth_internal_check(http_request *req, const struct auth_internal *a)
{
    const char *path = http_request_path(req);
    if (a->token && *a->token) {
        if (auth_bearer_ok(http_request_header(req, "Authorization"), a->token)) return AUTH_OK;
        log_warn("%s from %s without a valid internal token", path, http_request_peer(req));
        http_response_header(req, "WWW-Authenticate", "Bearer");
        http_respond_error(req, 401, NULL, "%s needs 'Authorization: Bearer <internal token>', the --internal-token "
                           "this %s was started with", path, a->program);
        return AUTH_NO_TOKEN;
    }
    if (a->allow_unauthenticated || http_request_from_loopback(req)) return AUTH_OK;
    log_warn("%s from %s refused: without an internal token only loopback callers are served", path,
             http_request_peer(req));
    http_respond_error(req, 403, NULL,
                       "%s is served only to callers on this machine because %s has no internal token: start it "
                       "with --internal-token TOKEN (env SLUICE_INTERNAL_TOKEN) and give the same token to "
                       "workers and gateways, or with --allow-unauthenticated-workers to serve anyone who can "
                       "reach it", path, a->program);
    return AUTH_NOT_LOOPBACK;
}

int auth_listen_check(const struct auth_internal *a, const char *host)
{
    if ((a->token && *a->token) || net_ip_is_loopback(host)) return 0;
    if (!a->allow_unauthenticated) {
        fprintf(stderr,
                "%s: refusing to listen on %s without an internal token: anyone who can reach it could call its "
                "internal endpoints (register a worker and receive user traffic, or generate). Either set "
                "--internal-token TOKEN (env SLUICE_INTERNAL_TOKEN) on the controller, workers and gateways, or "
                "pass --allow-unauthenticated-workers (env SLUICE_ALLOW_UNAUTHENTICATED_WORKERS) to accept that, "
                "as FastChat does.\n",
                a->program, host);
        return -1;
    }
    log_warn("WARNING: listening on %s with no internal token (--allow-unauthenticated-workers): anyone who can "
             "reach this %s can call its internal endpoints. Set --internal-token to close them.", host, a->program);
    return 0;
}

int auth_client_token(http_client *client, const char *token)
{
    if (!token || !*token) return 0;
    /* It becomes a header line: a space, CR or LF in it would break or forge headers. */
    for (const unsigned char *p = (const unsigned char *)token; *p; p++) {
        if (*p <= ' ' || *p >= 0x7f) {
            log_error("the internal token must be printable ASCII without spaces");
            return -1;
        }
    }
    char *line = NULL;
    int rc = asprintf(&line, "Authorization: Bearer %s", token) < 0 ? -1 : http_client_set_default_header(client, line);
    free(line);
    if (rc != 0) log_error("out of memory");
    return rc;
}
