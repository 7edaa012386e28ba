#include "gateway/proxy_frame.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

static int bad(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* A JSON integer (not a real such as 5.0) within [lo, hi]. */
static bool int_in(const json_t *v, json_int_t lo, json_int_t hi)
{
    return json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi;
}

static int check_usage(const json_t *usage, char *why, size_t cap)
{
    if (!usage || json_is_null(usage)) return 0;
    if (!json_is_object(usage)) return bad(why, cap, "'usage' must be an object");
    static const char *const keys[] = {"prompt_tokens", "completion_tokens"};
    json_int_t sum = 0;
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(usage, keys[i]);
        if (!v) continue;
        if (!int_in(v, 0, GW_FRAME_MAX_COUNT))
            return bad(why, cap, "'usage.%s' must be an integer from 0 to %d", keys[i], GW_FRAME_MAX_COUNT);
        sum += json_integer_value(v);
    }
    if (sum > GW_FRAME_MAX_COUNT)
        return bad(why, cap, "'usage' counts more than %d tokens in all", GW_FRAME_MAX_COUNT);
    return 0;
}

static int check_token_ids(const json_t *ids, char *why, size_t cap)
{
    if (!ids || json_is_null(ids)) return 0;
    if (!json_is_array(ids)) return bad(why, cap, "'token_ids' must be an array");
    size_t i;
    const json_t *v;
    json_array_foreach(ids, i, v) {
        if (!int_in(v, 0, GW_FRAME_MAX_COUNT))
            return bad(why, cap, "'token_ids[%zu]' must be an integer from 0 to %d", i, GW_FRAME_MAX_COUNT);
    }
    return 0;
}

/* One token's entry ({"token_id","token","bytes","logprob"}, "rank" in prompt logprobs);
 * path names it in messages; null_logprob: the logprob may be null (the prompt's first token). */
static int check_token(const json_t *item, const char *path, bool null_logprob, char *why, size_t cap)
{
    if (!json_is_object(item)) return bad(why, cap, "'%s' must be an object", path);
    const json_t *id = json_object_get(item, "token_id");
    if (id && !int_in(id, 0, GW_FRAME_MAX_COUNT))
        return bad(why, cap, "'%s.token_id' must be an integer from 0 to %d", path, GW_FRAME_MAX_COUNT);
    /* A log-probability is at most 0; the JSON parser has already refused non-finite numbers. */
    const json_t *lp = json_object_get(item, "logprob");
    if (!(null_logprob && json_is_null(lp)) && (!json_is_number(lp) || json_number_value(lp) > 0))
        return bad(why, cap, "'%s.logprob' must be a number <= 0", path);
    const json_t *rank = json_object_get(item, "rank");
    if (rank && !int_in(rank, 1, GW_FRAME_MAX_COUNT))
        return bad(why, cap, "'%s.rank' must be an integer from 1 to %d", path, GW_FRAME_MAX_COUNT);
    const json_t *t = json_object_get(item, "token");
    if (t && !json_is_string(t)) return bad(why, cap, "'%s.token' must be a string", path);
    const json_t *bytes = json_object_get(item, "bytes");
    if (!bytes || json_is_null(bytes)) return 0;
    if (!json_is_array(bytes)) return bad(why, cap, "'%s.bytes' must be an array", path);
    size_t i;
    const json_t *b;
    json_array_foreach(bytes, i, b) {
        if (!int_in(b, 0, 255)) return bad(why, cap, "'%s.bytes[%zu]' must be an integer from 0 to 255", path, i);
    }
    return 0;
}

/* "logprobs", or "prompt_logprobs", whose first entry (the prompt's first token) has a null
 * logprob. */
static int check_logprobs(const json_t *lps, const char *key, char *why, size_t cap)
{
    if (!lps || json_is_null(lps)) return 0;
    if (!json_is_array(lps)) return bad(why, cap, "'%s' must be an array", key);
    const bool prompt = key[0] == 'p';
    size_t i, k;
    const json_t *item, *alt;
    char path[96];
    json_array_foreach(lps, i, item) {
        snprintf(path, sizeof path, "%s[%zu]", key, i);
        if (check_token(item, path, prompt && i == 0, why, cap) != 0) return -1;
        const json_t *top = json_object_get(item, "top_logprobs");
        if (!top || json_is_null(top)) continue;
        if (!json_is_array(top)) return bad(why, cap, "'%s.top_logprobs' must be an array", path);
        json_array_foreach(top, k, alt) {
            snprintf(path, sizeof path, "%s[%zu].top_logprobs[%zu]", key, i, k);
            if (check_token(alt, path, false, why, cap) != 0) return -1;
        }
    }
    return 0;
}

/* A key of obj that must be a string when present. */
static bool string_or_absent(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return !v || json_is_string(v);
}

static int check_tool_calls(const json_t *calls, char *why, size_t cap)
{
    if (!calls || json_is_null(calls)) return 0;
    if (!json_is_array(calls)) return bad(why, cap, "'tool_calls' must be an array");
    size_t i;
    const json_t *d;
    json_array_foreach(calls, i, d) {
        if (!json_is_object(d)) return bad(why, cap, "'tool_calls[%zu]' must be an object", i);
        if (!int_in(json_object_get(d, "index"), 0, GW_FRAME_MAX_TOOL_CALLS - 1))
            return bad(why, cap, "'tool_calls[%zu].index' must be an integer from 0 to %d", i, GW_FRAME_MAX_TOOL_CALLS - 1);
        if (!string_or_absent(d, "id") || !string_or_absent(d, "type"))
            return bad(why, cap, "'tool_calls[%zu]' must hold 'id' and 'type' as strings", i);
        const json_t *fn = json_object_get(d, "function");
        if (fn && (!json_is_object(fn) || !string_or_absent(fn, "name") || !string_or_absent(fn, "arguments")))
            return bad(why, cap, "'tool_calls[%zu].function' must be an object with 'name' and 'arguments' strings", i);
    }
    return 0;
}

int gw_frame_check(const json_t *frame, char *why, size_t cap)
{
    if (!json_is_object(frame)) return bad(why, cap, "a frame must be a JSON object");
    if (check_usage(json_object_get(frame, "usage"), why, cap) != 0) return -1;
    if (check_token_ids(json_object_get(frame, "token_ids"), why, cap) != 0) return -1;
    if (!string_or_absent(frame, "reasoning_content")) return bad(why, cap, "'reasoning_content' must be a string");
    if (check_tool_calls(json_object_get(frame, "tool_calls"), why, cap) != 0) return -1;
    if (check_logprobs(json_object_get(frame, "logprobs"), "logprobs", why, cap) != 0) return -1;
    return check_logprobs(json_object_get(frame, "prompt_logprobs"), "prompt_logprobs", why, cap);
}

int gw_frame_error_status(long worker_status)
{
    return worker_status >= 400 && worker_status <= 599 ? (int)worker_status : 502;
}
