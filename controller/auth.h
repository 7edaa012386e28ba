/* The internal token that guards /register_worker and /receive_heart_beat. */
#ifndef SLUICE_CONTROLLER_AUTH_H
#define SLUICE_CONTROLLER_AUTH_H

#include <stdbool.h>

/* True when token is NULL or empty (no auth configured), or when header is
 * "Bearer <token>". The comparison takes the same time wherever the first difference is. */
bool ctl_auth_bearer_ok(const char *header, const char *token);

#endif
