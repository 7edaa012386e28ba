#include "common/ratelimit.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/strmap.h"

/* --- buckets ------------------------------------------------------------------------------ */

static void refill(struct rl_bucket *b, double now)
{
    if (now <= b->t) return;
    if (b->limit > 0) {
        b->level += (now - b->t) * b->limit / 60.0;
        if (b->level > b->limit) b->level = b->limit;
    }
    b->t = now;
}

void rl_bucket_init(struct rl_bucket *b, double per_minute, double now)
{
    b->limit = per_minute > 0 ? per_minute : 0;
    b->level = b->limit;
    b->t = now;
}

void rl_bucket_set_limit(struct rl_bucket *b, double per_minute, double now)
{
    refill(b, now);
    double limit = per_minute > 0 ? per_minute : 0;
    if (b->limit == 0) b->level = limit; /* was unlimited: nothing counted yet */
    else b->level += limit - b->limit;
    if (b->level > limit) b->level = limit;
    b->limit = limit;
}

double rl_bucket_wait(struct rl_bucket *b, double n, double now)
{
    refill(b, now);
    if (b->limit == 0) return 0;
    double ask = n < b->limit ? n : b->limit;
    return b->level >= ask ? 0 : (ask - b->level) * 60.0 / b->limit;
}

void rl_bucket_take(struct rl_bucket *b, double n, double now)
{
    refill(b, now);
    if (b->limit == 0) return;
    b->level -= n;
    if (b->level > b->limit) b->level = b->limit;
}

double rl_bucket_remaining(struct rl_bucket *b, double now)
{
    refill(b, now);
    return b->level > 0 ? floor(b->level) : 0;
}

double rl_bucket_reset(struct rl_bucket *b, double now)
{
    refill(b, now);
    return b->limit > 0 ? (b->limit - b->level) * 60.0 / b->limit : 0;
}

/* --- one key ------------------------------------------------------------------------------ */

void rl_state_init(struct rl_state *s, const struct rl_limits *lim, double now)
{
    rl_bucket_init(&s->requests, lim->rpm, now);
    rl_bucket_init(&s->tokens, lim->tpm, now);
}

void rl_state_set_limits(struct rl_state *s, const struct rl_limits *lim, double now)
{
    rl_bucket_set_limit(&s->requests, lim->rpm, now);
    rl_bucket_set_limit(&s->tokens, lim->tpm, now);
}

void rl_admit(struct rl_state *s, double tokens, double now, struct rl_decision *d)
{
    memset(d, 0, sizeof *d);
    double wr = rl_bucket_wait(&s->requests, 1, now), wt = rl_bucket_wait(&s->tokens, tokens, now);
    d->allowed = wr == 0 && wt == 0;
    if (d->allowed) {
        rl_bucket_take(&s->requests, 1, now);
        rl_bucket_take(&s->tokens, tokens, now);
    } else {
        d->by_tokens = wt > wr;
        d->retry_after = wt > wr ? wt : wr;
    }
    d->limit_requests = s->requests.limit;
    d->remaining_requests = rl_bucket_remaining(&s->requests, now);
    d->reset_requests = rl_bucket_reset(&s->requests, now);
    d->limit_tokens = s->tokens.limit;
    d->remaining_tokens = rl_bucket_remaining(&s->tokens, now);
    d->reset_tokens = rl_bucket_reset(&s->tokens, now);
}

void rl_settle(struct rl_state *s, double reserved, double actual, double now)
{
    rl_bucket_take(&s->tokens, actual - reserved, now);
}

/* Both maps below own their values, one malloc'd struct each. */
static void free_value(const char *key, void *value, void *arg)
{
    (void)key;
    (void)arg;
    free(value);
}

static void map_free(strmap *m)
{
    if (!m) return;
    strmap_each(m, free_value, NULL);
    strmap_free(m);
}

/* --- configuration ------------------------------------------------------------------------ */

struct rl_config {
    struct rl_limits def;
    strmap *keys; /* key -> struct rl_limits */
};

static int fail(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static int put_limits(rl_config *c, const char *key, const struct rl_limits *lim, char *err, size_t cap)
{
    if (strmap_get(c->keys, key)) return fail(err, cap, "the key '%.40s...' is listed twice", key);
    struct rl_limits *v = malloc(sizeof *v);
    if (!v) return fail(err, cap, "out of memory");
    *v = *lim;
    if (strmap_put(c->keys, key, v) != 0) {
        free(v);
        return fail(err, cap, "out of memory");
    }
    return 0;
}

/* {"rpm": N, "tpm": N}: each a number >= 0, or absent (0: unlimited). */
static int limits_json(const json_t *obj, const char *where, struct rl_limits *out, char *err, size_t cap)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj)) return fail(err, cap, "%s must be an object {\"rpm\": N, \"tpm\": N}", where);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        double *dst = !strcmp(k, "rpm") ? &out->rpm : !strcmp(k, "tpm") ? &out->tpm : NULL;
        if (!dst) return fail(err, cap, "%s: unknown field '%.40s' (rpm, tpm)", where, k);
        if (!json_is_number(v) || json_number_value(v) < 0 || !isfinite(json_number_value(v)))
            return fail(err, cap, "%s.%s must be a number >= 0", where, k);
        *dst = json_number_value(v);
    }
    return 0;
}

static int parse_json(rl_config *c, const char *text, size_t len, char *err, size_t cap)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    int rc = -1;
    if (!json_is_object(root)) {
        rc = root ? fail(err, cap, "the file must hold one JSON object")
                  : fail(err, cap, "not valid JSON: %s (line %d)", je.text, je.line);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "default") && strcmp(k, "keys")) {
            fail(err, cap, "unknown field '%.40s' (default, keys)", k);
            goto out;
        }
    }
    json_t *def = json_object_get(root, "default");
    if (def && limits_json(def, "default", &c->def, err, cap) != 0) goto out;
    json_t *keys = json_object_get(root, "keys");
    if (keys && !json_is_object(keys)) {
        fail(err, cap, "keys must be an object of key -> {\"rpm\": N, \"tpm\": N}");
        goto out;
    }
    json_object_foreach(keys, k, v) {
        struct rl_limits lim;
        if (!*k) {
            fail(err, cap, "keys: an empty key");
            goto out;
        }
        if (limits_json(v, "keys entry", &lim, err, cap) != 0 || put_limits(c, k, &lim, err, cap) != 0) goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static int parse_number(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0) || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int parse_lines(rl_config *c, const char *text, size_t len, char *err, size_t cap)
{
    bool have_default = false;
    int line_no = 0;
    for (size_t pos = 0; pos < len;) {
        line_no++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        char line[1024];
        if (n >= sizeof line) return fail(err, cap, "line %d is too long", line_no);
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos += n + 1;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *fields[4];
        int nf = 0;
        for (char *save = NULL, *tok = strtok_r(line, " \t\r,", &save); tok; tok = strtok_r(NULL, " \t\r,", &save)) {
            if (nf == 4) break;
            fields[nf++] = tok;
        }
        if (nf == 0) continue;
        struct rl_limits lim;
        if (nf != 3 || parse_number(fields[1], &lim.rpm) != 0 || parse_number(fields[2], &lim.tpm) != 0)
            return fail(err, cap, "line %d: expected 'KEY RPM TPM' with numbers >= 0 (0: unlimited)", line_no);
        if (!strcmp(fields[0], "default")) {
            if (have_default) return fail(err, cap, "line %d: a second default", line_no);
            have_default = true;
            c->def = lim;
        } else if (put_limits(c, fields[0], &lim, err, cap) != 0) {
            char why[200];
            snprintf(why, sizeof why, "%s", err);
            return fail(err, cap, "line %d: %s", line_no, why);
        }
    }
    return 0;
}

int rl_config_parse(const char *text, size_t len, rl_config **out, char *err, size_t err_cap)
{
    *out = NULL;
    rl_config *c = calloc(1, sizeof *c);
    if (!c || strmap_init(&c->keys) != 0) {
        free(c);
        return fail(err, err_cap, "out of memory");
    }
    size_t i = 0;
    while (i < len && isspace((unsigned char)text[i])) i++;
    int rc = i < len && text[i] == '{' ? parse_json(c, text, len, err, err_cap) : parse_lines(c, text, len, err, err_cap);
    if (rc != 0) {
        rl_config_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void rl_config_free(rl_config *c)
{
    if (!c) return;
    map_free(c->keys);
    free(c);
}

void rl_config_limits(const rl_config *c, const char *key, struct rl_limits *out)
{
    const struct rl_limits *lim = key && *key ? strmap_get(c->keys, key) : NULL;
    *out = lim ? *lim : c->def;
}

size_t rl_config_key_count(const rl_config *c)
{
    return strmap_count(c->keys);
}

/* --- every key's state -------------------------------------------------------------------- */

struct rl_table {
    const rl_config *config;
    strmap *states; /* key ("" for none) -> struct rl_state */
};

rl_table *rl_table_new(const rl_config *config)
{
    rl_table *t = calloc(1, sizeof *t);
    if (!t || strmap_init(&t->states) != 0) {
        free(t);
        return NULL;
    }
    t->config = config;
    return t;
}

void rl_table_free(rl_table *t)
{
    if (!t) return;
    map_free(t->states);
    free(t);
}

struct reconfigure {
    const rl_config *config;
    double now;
};

static void reconfigure_state(const char *key, void *value, void *arg)
{
    const struct reconfigure *r = arg;
    struct rl_limits lim;
    rl_config_limits(r->config, key, &lim);
    rl_state_set_limits(value, &lim, r->now);
}

void rl_table_configure(rl_table *t, const rl_config *config, double now)
{
    t->config = config;
    struct reconfigure r = {config, now};
    strmap_each(t->states, reconfigure_state, &r);
}

struct rl_state *rl_table_get(rl_table *t, const char *key, double now)
{
    if (!key) key = "";
    struct rl_state *s = strmap_get(t->states, key);
    if (s) return s;
    s = malloc(sizeof *s);
    if (!s) return NULL;
    struct rl_limits lim;
    rl_config_limits(t->config, key, &lim);
    rl_state_init(s, &lim, now);
    if (strmap_put(t->states, key, s) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

size_t rl_table_count(const rl_table *t)
{
    return strmap_count(t->states);
}

void rl_format_duration(double s, char *out, size_t cap)
{
    /* In whole milliseconds, rounded up: a client that waits this long is admitted. */
    long long ms = s > 0 ? (long long)ceil(s * 1000 - 1e-9) : 0;
    if (ms < 1000) {
        snprintf(out, cap, "%lldms", ms);
        return;
    }
    long long minutes = ms / 60000, sec = ms % 60000 / 1000, frac = ms % 1000;
    char fr[8] = "";
    if (frac) {
        snprintf(fr, sizeof fr, ".%03lld", frac);
        for (size_t n = strlen(fr); fr[n - 1] == '0'; n--) fr[n - 1] = '\0';
    }
    if (minutes > 0) snprintf(out, cap, "%lldm%lld%ss", minutes, sec, fr);
    else snprintf(out, cap, "%lld%ss", sec, fr);
}
