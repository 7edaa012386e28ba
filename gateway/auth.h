/* API keys: --api-keys k1,k2 and/or --api-key-file (one key per line). With none set, every
 * request is allowed. Keys are compared in constant time so that response timing does not
 * reveal how much of a guessed key was right (common/auth.h). */
#ifndef SLUICE_GATEWAY_AUTH_H
#define SLUICE_GATEWAY_AUTH_H

#include <stdbool.h>
#include <stddef.h>

typedef struct gw_auth gw_auth;

/* keys_csv and key_file may be NULL. Fails (negative) when the file cannot be read. */
int gw_auth_init(gw_auth **out, const char *keys_csv, const char *key_file);
void gw_auth_free(gw_auth *auth);
size_t gw_auth_key_count(const gw_auth *auth);
/* The Authorization header's value (may be NULL): true when allowed. */
bool gw_auth_check(const gw_auth *auth, const char *authorization);
/* The API key an allowed request authenticated with (*len bytes, not NUL-terminated), for its
 * rate limits; NULL when no keys are configured (every client is then one anonymous key). */
const char *gw_auth_key_of(const gw_auth *auth, const char *authorization, size_t *len);

#endif
