/* Request identity across the three programs: request ids (the X-Request-Id header and the
 * worker's "request_id") and W3C trace context (the traceparent header,
 * https://www.w3.org/TR/trace-context/), with one JSON log line per span (common/jsonlog.h).
 *
 * A hop that receives a request continues the caller's trace when its traceparent is valid:
 * same trace id, the caller's span as parent, a span id of its own. Each outgoing call gets a
 * child span of that, whose id goes out in the call's traceparent, so the next hop's span
 * names it as parent. The gateway starts a trace when the client sent none (or a bad one);
 * the controller and worker log spans only for traces that a caller started and sampled, so
 * that calls without tracing (FastChat's programs, benchmarks) cost nothing. */
#ifndef SLUICE_COMMON_TRACE_H
#define SLUICE_COMMON_TRACE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A request id is 1 to TRACE_REQUEST_ID_MAX printable ASCII characters without spaces
 * (0x21-0x7e): what goes into a header and a log line unescaped. */
#define TRACE_REQUEST_ID_MAX 128
#define TRACE_REQUEST_ID_SIZE (TRACE_REQUEST_ID_MAX + 1)
#define TRACE_TRACEPARENT_SIZE 56 /* "00-" 32 hex "-" 16 hex "-" 2 hex, and the NUL */
#define TRACE_FLAG_SAMPLED 0x01

bool trace_request_id_valid(const char *s);
/* A new id: "req_" and 32 random hex digits. */
void trace_request_id_new(char out[TRACE_REQUEST_ID_SIZE]);
/* The client's id when valid, else a new one; returns out. */
const char *trace_request_id_take(const char *given, char out[TRACE_REQUEST_ID_SIZE]);

struct trace_span {
    char trace_id[33];  /* 32 lowercase hex digits */
    char span_id[17];   /* 16 lowercase hex digits */
    char parent_id[17]; /* "" for a trace's root */
    uint8_t flags;
    int64_t start_unix_nano; /* wall clock */
    uint64_t start_ns;  /* CLOCK_MONOTONIC, as uv_hrtime */
};

/* Parses a traceparent header value. Version 00 is exactly 55 characters; a later version
 * (not ff) is read by its first 55 when the next character, if any, is '-', as the standard
 * asks. Trace and parent ids are lowercase hex and not all zero. Returns 0, or -1 when invalid
 * (out untouched). */
int trace_parse(const char *header, char trace_id[33], char parent_id[17], uint8_t *flags);

/* A span continuing the caller's trace. Returns true when header was a valid traceparent;
 * false leaves s all zero (no trace). */
bool trace_span_continue(struct trace_span *s, const char *header);
/* A new trace's root span, sampled. */
void trace_span_root(struct trace_span *s);
/* A child of parent: same trace and flags, parent's span as its parent, a new span id. A
 * child of an empty span (no trace) is empty too. */
void trace_span_child(struct trace_span *s, const struct trace_span *parent);
/* Whether s belongs to a trace; whether that trace is sampled (its spans are logged). */
bool trace_span_active(const struct trace_span *s);
bool trace_span_sampled(const struct trace_span *s);
/* The traceparent naming s as the parent of the next hop: "00-<trace>-<span>-<flags>". */
void trace_span_header(const struct trace_span *s, char out[TRACE_TRACEPARENT_SIZE]);
/* Milliseconds since the span started. */
double trace_span_elapsed_ms(const struct trace_span *s);

/* Writes the span's line when it is sampled: {"type":"span","name",trace_id,span_id,
 * parent_span_id,start_unix_nano,duration_ms, ...attrs} through jsonlog. attrs (may be NULL)
 * is stolen. */
void trace_span_log(const struct trace_span *s, const char *name, json_t *attrs);

/* n random lowercase hex digits and a NUL (out has n + 1 bytes), never all zero. */
void trace_random_hex(char *out, size_t n);

#endif
