/* Who may call a server: bearer tokens compared in constant time (the gateway's API keys,
 * the internal token), and the rule for the internal endpoints that controller and workers
 * serve to each other and to gateways (docs/PROTOCOL.md, "Authentication"):
 *
 * - with an internal token, every internal endpoint needs "Authorization: Bearer <token>"
 *   (401 otherwise);
 * - without one, they answer loopback callers only (403 otherwise), unless the operator asked
 *   for FastChat's open behaviour with --allow-unauthenticated-workers;
 * - and a server without a token refuses to listen on a non-loopback address unless that flag
 *   is given, since "only loopback callers" would then refuse every caller it was moved there
 *   to serve. */
#ifndef SLUICE_COMMON_AUTH_H
#define SLUICE_COMMON_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "common/http_client.h"
#include "common/http_server.h"

/* Equality whose running time depends only on the lengths, not on where the bytes differ. */
bool auth_equal(const char *a, size_t a_len, const char *b, size_t b_len);

/* The credential of an Authorization header value "Bearer <credential>" (scheme in any case,
 * spaces around the credential dropped) and its length; NULL when header is NULL or not a
 * bearer credential. */
const char *auth_bearer_credential(const char *header, size_t *len);

/* True when token is NULL or "" (no token configured), or header carries exactly it. */
bool auth_bearer_ok(const char *header, const char *token);

struct auth_internal {
    const char *token;          /* NULL or "": none */
    bool allow_unauthenticated; /* no token: serve non-loopback callers too */
    const char *program;        /* "sluice-controller", for messages */
};

enum { AUTH_OK = 0, AUTH_NO_TOKEN = -1, AUTH_NOT_LOOPBACK = -2 };

/* AUTH_OK when req may be served. Otherwise req has been answered with an OpenAI-shaped
 * error (401 with WWW-Authenticate, or 403 saying how to allow it) and is no longer valid. */
int auth_internal_check(http_request *req, const struct auth_internal *a);

/* 0 when the server may listen on host. A non-loopback host without a token is refused
 * (-1, with a message on stderr naming both ways out) unless allow_unauthenticated, which
 * logs a warning instead. */
int auth_listen_check(const struct auth_internal *a, const char *host);

/* Makes every later call of client carry "Authorization: Bearer <token>": the programs' clients
 * call only internal endpoints. Nothing when token is NULL or "". Returns 0, or -1 (logged)
 * when the token is not printable ASCII without spaces, or out of memory. */
int auth_client_token(http_client *client, const char *token);

#endif
