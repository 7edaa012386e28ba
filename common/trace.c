#include "common/trace.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/hash.h"
#include "common/jsonlog.h"

/* splitmix64 per thread, seeded from the kernel: ids need to be unique, not secret, and a
 * getrandom call per id would cost a system call on every request. */
static __thread uint64_t rng_state;
static __thread int rng_seeded;

static uint64_t rng_next(void)
{
    if (!rng_seeded) {
        if (getrandom(&rng_state, sizeof rng_state, 0) != (ssize_t)sizeof rng_state) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            rng_state = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&ts;
        }
        rng_seeded = 1;
    }
    return hash_splitmix64(&rng_state);
}

static bool all_zero(const char *hex, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hex[i] != '0') return false;
    return true;
}

void trace_random_hex(char *out, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    do {
        uint64_t r = 0;
        for (size_t i = 0; i < n; i++) {
            if (i % 16 == 0) r = rng_next();
            out[i] = digits[r & 15];
            r >>= 4;
        }
    } while (all_zero(out, n));
    out[n] = '\0';
}

bool trace_request_id_valid(const char *s)
{
    if (!s || !*s) return false;
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= TRACE_REQUEST_ID_MAX || (unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e) return false;
    return true;
}

void trace_request_id_new(char out[TRACE_REQUEST_ID_SIZE])
{
    memcpy(out, "req_", 4);
    trace_random_hex(out + 4, 32);
}

const char *trace_request_id_take(const char *given, char out[TRACE_REQUEST_ID_SIZE])
{
    if (trace_request_id_valid(given)) snprintf(out, TRACE_REQUEST_ID_SIZE, "%s", given);
    else trace_request_id_new(out);
    return out;
}

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

static int hex_byte(const char *s)
{
    int v = 0;
    for (int i = 0; i < 2; i++) v = v * 16 + (s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10);
    return v;
}

int trace_parse(const char *h, char trace_id[33], char parent_id[17], uint8_t *flags)
{
    if (!h) return -1;
    size_t len = strnlen(h, 56);
    if (len < 55 || !lower_hex(h, 2) || h[2] != '-' || h[35] != '-' || h[52] != '-') return -1;
    if (!strncmp(h, "ff", 2)) return -1;
    /* Version 00 is exactly 55 characters; a later one may carry more after a '-'. */
    if (!strncmp(h, "00", 2) ? len != 55 : (len > 55 && h[55] != '-')) return -1;
    if (!lower_hex(h + 3, 32) || !lower_hex(h + 36, 16) || !lower_hex(h + 53, 2)) return -1;
    if (all_zero(h + 3, 32) || all_zero(h + 36, 16)) return -1;
    memcpy(trace_id, h + 3, 32);
    trace_id[32] = '\0';
    memcpy(parent_id, h + 36, 16);
    parent_id[16] = '\0';
    *flags = (uint8_t)hex_byte(h + 53);
    return 0;
}

static void span_clock(struct trace_span *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->start_unix_nano = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s->start_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool trace_span_continue(struct trace_span *s, const char *header)
{
    memset(s, 0, sizeof *s);
    uint8_t flags;
    if (trace_parse(header, s->trace_id, s->parent_id, &flags) != 0) {
        memset(s, 0, sizeof *s);
        return false;
    }
    /* Only the sampled bit is defined; the others are not passed on (the standard's rule for
     * flags a hop does not know). */
    s->flags = flags & TRACE_FLAG_SAMPLED;
    trace_random_hex(s->span_id, 16);
    span_clock(s);
    return true;
}

void trace_span_root(struct trace_span *s)
{
    memset(s, 0, sizeof *s);
    trace_random_hex(s->trace_id, 32);
    trace_random_hex(s->span_id, 16);
    s->flags = TRACE_FLAG_SAMPLED;
    span_clock(s);
}

void trace_span_child(struct trace_span *s, const struct trace_span *parent)
{
    memset(s, 0, sizeof *s);
    if (!trace_span_active(parent)) return;
    memcpy(s->trace_id, parent->trace_id, sizeof s->trace_id);
    memcpy(s->parent_id, parent->span_id, sizeof s->parent_id);
    s->flags = parent->flags;
    trace_random_hex(s->span_id, 16);
    span_clock(s);
}

bool trace_span_active(const struct trace_span *s)
{
    return s->trace_id[0] != '\0';
}

bool trace_span_sampled(const struct trace_span *s)
{
    return trace_span_active(s) && (s->flags & TRACE_FLAG_SAMPLED);
}

void trace_span_header(const struct trace_span *s, char out[TRACE_TRACEPARENT_SIZE])
{
    snprintf(out, TRACE_TRACEPARENT_SIZE, "00-%s-%s-%02x", s->trace_id, s->span_id, s->flags);
}

double trace_span_elapsed_ms(const struct trace_span *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    return (double)(now - s->start_ns) / 1e6;
}

void trace_span_log(const struct trace_span *s, const char *name, json_t *attrs)
{
    if (!trace_span_sampled(s) || !jsonlog_enabled()) {
        json_decref(attrs);
        return;
    }
    json_t *line = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:I, s:f}", "type", "span", "name", name, "trace_id",
                             s->trace_id, "span_id", s->span_id, "parent_span_id",
                             s->parent_id[0] ? s->parent_id : NULL, "start_unix_nano", (json_int_t)s->start_unix_nano,
                             "duration_ms", trace_span_elapsed_ms(s));
    if (line && attrs) json_object_update(line, attrs);
    json_decref(attrs);
    jsonlog_write(line);
}
