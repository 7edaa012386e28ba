#include "gateway/ratelimit_gw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/log.h"

struct gw_rl {
    char *path;
    rl_config *config;
    rl_table *table;
};

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

/* The file is small (a line per key): read it whole. */
static int load(const char *path, rl_config **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        log_error("cannot read --rate-limit-file %s: %m", path);
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    char buf[4096];
    size_t n;
    while (mem && (n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, mem);
    bool read_error = ferror(f);
    fclose(f);
    if (!mem || fclose(mem) != 0 || read_error) {
        free(text);
        log_error("cannot read --rate-limit-file %s", path);
        return -1;
    }
    char err[256];
    int rc = rl_config_parse(text, len, out, err, sizeof err);
    free(text);
    if (rc != 0) log_error("--rate-limit-file %s: %s", path, err);
    return rc;
}

int gw_rl_init(gw_rl **out, const char *path)
{
    *out = NULL;
    gw_rl *rl = calloc(1, sizeof *rl);
    if (!rl) return -1;
    if (path && *path) {
        rl->path = strdup(path);
        if (load(path, &rl->config) != 0 || !(rl->table = rl_table_new(rl->config))) {
            gw_rl_free(rl);
            return -1;
        }
        log_info("rate limits from %s: %zu key(s)", path, rl_config_key_count(rl->config));
    }
    *out = rl;
    return 0;
}

void gw_rl_free(gw_rl *rl)
{
    if (!rl) return;
    rl_table_free(rl->table);
    rl_config_free(rl->config);
    free(rl->path);
    free(rl);
}

int gw_rl_reload(gw_rl *rl)
{
    if (!rl || !rl->path) return 0;
    rl_config *c;
    if (load(rl->path, &c) != 0) {
        log_error("keeping the rate limits as they were");
        return -1;
    }
    rl_table_configure(rl->table, c, now_s());
    rl_config_free(rl->config);
    rl->config = c;
    log_info("rate limits reloaded from %s: %zu key(s)", rl->path, rl_config_key_count(c));
    return 0;
}

bool gw_rl_enabled(const gw_rl *rl)
{
    return rl && rl->table;
}

/* json_dump_callback's sink that only counts. */
static int count_bytes(const char *buf, size_t size, void *data)
{
    (void)buf;
    *(size_t *)data += size;
    return 0;
}

double gw_rl_estimate(const struct gw_params *p)
{
    double prompt = 0;
    if (p->api == GW_API_CHAT) {
        size_t bytes = 0;
        json_dump_callback(json_object_get(p->base, "messages"), count_bytes, &bytes, JSON_COMPACT);
        prompt = ceil((double)bytes / 4.0);
    } else {
        size_t i;
        json_t *v;
        json_array_foreach(p->prompts, i, v) {
            prompt += json_is_string(v) ? ceil((double)json_string_length(v) / 4.0) : (double)json_array_size(v);
        }
    }
    json_int_t max_tokens = json_integer_value(json_object_get(p->base, "max_tokens"));
    return prompt + (double)max_tokens * (double)gw_params_choice_count(p);
}

static void put_header(http_request *req, const char *name, double v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.0f", v);
    http_response_header(req, name, buf);
}

static void put_reset(http_request *req, const char *name, double s)
{
    char buf[32];
    rl_format_duration(s, buf, sizeof buf);
    http_response_header(req, name, buf);
}

bool gw_rl_admit(gw_rl *rl, const char *key, size_t key_len, const struct gw_params *p, http_request *req,
                 struct gw_rl_ticket *ticket, char *why, size_t why_cap)
{
    memset(ticket, 0, sizeof *ticket);
    if (!gw_rl_enabled(rl)) return true;
    double now = now_s(), tokens = gw_rl_estimate(p);
    char *k = key ? strndup(key, key_len) : NULL;
    struct rl_state *s = !key || k ? rl_table_get(rl->table, k ? k : "", now) : NULL;
    free(k);
    if (!s) return true; /* out of memory: a limit is not worth refusing service over */
    struct rl_decision d;
    rl_admit(s, tokens, now, &d);
    /* Only the limits that exist are reported, as OpenAI reports those of the model. */
    if (d.limit_requests > 0) {
        put_header(req, "x-ratelimit-limit-requests", d.limit_requests);
        put_header(req, "x-ratelimit-remaining-requests", d.remaining_requests);
        put_reset(req, "x-ratelimit-reset-requests", d.reset_requests);
    }
    if (d.limit_tokens > 0) {
        put_header(req, "x-ratelimit-limit-tokens", d.limit_tokens);
        put_header(req, "x-ratelimit-remaining-tokens", d.remaining_tokens);
        put_reset(req, "x-ratelimit-reset-tokens", d.reset_tokens);
    }
    if (!d.allowed) {
        double secs = ceil(d.retry_after) < 1 ? 1 : ceil(d.retry_after);
        char after[32], in[32];
        snprintf(after, sizeof after, "%.0f", secs);
        http_response_header(req, "Retry-After", after);
        rl_format_duration(d.retry_after, in, sizeof in);
        ticket->by_tokens = d.by_tokens;
        if (d.by_tokens)
            snprintf(why, why_cap, "Rate limit reached for tokens per minute: limit %.0f, remaining %.0f, this request "
                     "may use %.0f (prompt + max_tokens). Please try again in %s.", d.limit_tokens, d.remaining_tokens,
                     tokens, in);
        else
            snprintf(why, why_cap, "Rate limit reached for requests per minute: limit %.0f. Please try again in %s.",
                     d.limit_requests, in);
        return false;
    }
    ticket->state = s;
    ticket->reserved = tokens;
    return true;
}

void gw_rl_settle(gw_rl *rl, struct gw_rl_ticket *t, double actual)
{
    (void)rl;
    if (!t->state) return;
    rl_settle(t->state, t->reserved, actual, now_s());
    t->state = NULL;
}
