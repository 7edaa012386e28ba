/* Rate limits per API key at the gateway (--rate-limit-file, reloaded on SIGHUP): the
 * limits file, every key's buckets (common/ratelimit.h), OpenAI's x-ratelimit-* headers and
 * the 429 with Retry-After.
 *
 * A key is the API key a client authenticated with; without --api-keys every client is the
 * same anonymous key, which gets the file's default. Generation requests are admitted with
 * 1 request and an estimate of their tokens (prompt + max_tokens, below) and settled with the
 * usage the workers reported once they end. */
#ifndef SLUICE_GATEWAY_RATELIMIT_GW_H
#define SLUICE_GATEWAY_RATELIMIT_GW_H

#include <stdbool.h>

#include "common/http_server.h"
#include "common/ratelimit.h"
#include "gateway/validate.h"

typedef struct gw_rl gw_rl;

/* path NULL or "": no limits (gw_rl_admit admits everything and adds no headers). Returns 0,
 * or -1 (logged) when the file cannot be read or parsed. */
int gw_rl_init(gw_rl **out, const char *path);
void gw_rl_free(gw_rl *rl);
/* Reads the file again; a file that cannot be read or parsed leaves the limits as they were
 * (-1, logged). */
int gw_rl_reload(gw_rl *rl);
bool gw_rl_enabled(const gw_rl *rl);

/* The tokens a request may use, before it runs: its prompt estimated at 4 bytes a token
 * (chat: the messages as JSON; completions: each prompt's text, or its token ids), plus
 * max_tokens for every choice (nothing when it has none: the answer is charged at the end). */
double gw_rl_estimate(const struct gw_params *p);

/* What an admitted request holds until it is settled: its key's buckets, which the limits
 * keep for their whole life (a reload changes their limits in place). */
struct gw_rl_ticket {
    struct rl_state *state; /* NULL when nothing was taken */
    double reserved;
    bool by_tokens;         /* refused: by the token limit (else the request limit) */
};

/* Admits request p of key (key_len bytes; NULL: anonymous) for its estimated tokens, adding
 * the x-ratelimit-* headers to req either way; without limits, admits at once and computes
 * nothing. Returns true when admitted (ticket filled); false when over a limit: Retry-After is
 * added too, why says which limit, and the caller answers 429. */
bool gw_rl_admit(gw_rl *rl, const char *key, size_t key_len, const struct gw_params *p, http_request *req,
                 struct gw_rl_ticket *ticket, char *why, size_t why_cap);
/* The request ended having used actual tokens: the difference from its reservation is
 * settled. */
void gw_rl_settle(gw_rl *rl, struct gw_rl_ticket *ticket, double actual);

#endif
