#include "controller/auth.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

bool ctl_auth_bearer_ok(const char *header, const char *token)
{
    if (!token || !*token) return true;
    if (!header || strncasecmp(header, "Bearer ", 7) != 0) return false;
    const char *given = header + 7;
    while (*given == ' ') given++;
    size_t n_given = strlen(given), n_token = strlen(token);
    /* Every byte of the token is compared whatever the given length, so timing reveals
     * neither where the first mismatch is nor how long the token is beyond what was sent. */
    unsigned char diff = (unsigned char)(n_given != n_token);
    for (size_t i = 0; i < n_token; i++) {
        unsigned char g = i < n_given ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)token[i]);
    }
    return diff == 0;
}
