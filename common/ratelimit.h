/* Rate limits per API key: requests per minute and tokens per minute, each a token bucket,
 * and the configuration that says which key gets which limits. Pure logic: every call takes
 * the time ("now", seconds on any clock that does not go backwards), so the tests drive a
 * clock of their own.
 *
 * A bucket holds up to one minute's allowance and refills continuously (limit / 60 per
 * second), so a key may burst its whole minute at once and then goes at the steady rate.
 * A request is admitted when each bucket holds what it asks for (1 request; its token
 * estimate), or when the bucket is full and the ask is bigger than the bucket, so that a
 * request larger than a minute's tokens still runs once the key has been idle; either way the
 * ask is taken, which may leave the token bucket in debt. Token limits count prompt +
 * max_tokens at admission and settle with the real usage at the end (as OpenAI's do): the
 * difference goes back into the bucket, or is taken too when the answer was longer than
 * reserved. A limit of 0 is no limit. */
#ifndef SLUICE_COMMON_RATELIMIT_H
#define SLUICE_COMMON_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

struct rl_bucket {
    double limit;  /* per minute; 0: unlimited */
    double level;  /* what is left now; negative while in debt */
    double t;      /* when level was last brought up to date */
};

void rl_bucket_init(struct rl_bucket *b, double per_minute, double now);
/* A new limit keeps what was used: the level moves by the change in capacity. */
void rl_bucket_set_limit(struct rl_bucket *b, double per_minute, double now);
/* Seconds until an ask of n can be admitted (0: now). */
double rl_bucket_wait(struct rl_bucket *b, double n, double now);
/* Takes n (negative n gives back), the level staying at most the limit. */
void rl_bucket_take(struct rl_bucket *b, double n, double now);
/* Whole units left (0 while in debt) and seconds until the bucket is full again. */
double rl_bucket_remaining(struct rl_bucket *b, double now);
double rl_bucket_reset(struct rl_bucket *b, double now);

struct rl_limits {
    double rpm, tpm; /* 0: unlimited */
};

/* One key's two buckets. */
struct rl_state {
    struct rl_bucket requests, tokens;
};

/* What an admission decided, with what the x-ratelimit-* headers report after it. */
struct rl_decision {
    bool allowed;
    bool by_tokens;       /* refused for tokens (else for requests), when not allowed */
    double retry_after;   /* seconds, when not allowed */
    double limit_requests, remaining_requests, reset_requests;
    double limit_tokens, remaining_tokens, reset_tokens;
};

void rl_state_init(struct rl_state *s, const struct rl_limits *lim, double now);
void rl_state_set_limits(struct rl_state *s, const struct rl_limits *lim, double now);
/* Admits one request that may use up to tokens, taking them when allowed. */
void rl_admit(struct rl_state *s, double tokens, double now, struct rl_decision *d);
/* The request admitted with reserved tokens used actual: the difference is settled. */
void rl_settle(struct rl_state *s, double reserved, double actual, double now);

/* Which key gets which limits: a default and per-key entries. */
typedef struct rl_config rl_config;

/* Parses a limits file: JSON, {"default": {"rpm": N, "tpm": N}, "keys": {"KEY": {"rpm": N,
 * "tpm": N}, ..}} (either number may be left out: unlimited), or lines "KEY RPM TPM" with '#'
 * comments, where the key "default" sets the default. Without a default, keys not listed are
 * unlimited. Returns 0, or -1 with a message naming the line or field in err. */
int rl_config_parse(const char *text, size_t len, rl_config **out, char *err, size_t err_cap);
void rl_config_free(rl_config *c);
/* The limits for key (NULL or "" for a client that sent none: the default). */
void rl_config_limits(const rl_config *c, const char *key, struct rl_limits *out);
size_t rl_config_key_count(const rl_config *c);

/* Every key's state, created on first use with its configured limits. */
typedef struct rl_table rl_table;

rl_table *rl_table_new(const rl_config *config);
void rl_table_free(rl_table *t);
/* Installs a new configuration (the table does not own it): each known key's buckets take
 * their new limits, keeping what was used. */
void rl_table_configure(rl_table *t, const rl_config *config, double now);
/* The key's state, created when new; NULL when out of memory. A state stays where it is
 * until rl_table_free, so a caller may hold it across reconfigurations. */
struct rl_state *rl_table_get(rl_table *t, const char *key, double now);
size_t rl_table_count(const rl_table *t);

/* Formats seconds as OpenAI's x-ratelimit-reset-* values: "20ms", "1s", "6m0s", "1.5s". */
void rl_format_duration(double seconds, char *out, size_t cap);

#endif
