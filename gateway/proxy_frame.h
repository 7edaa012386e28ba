/* Checking what a worker sends before the gateway uses it. A worker is trusted to generate,
 * not to be well-formed: a broken or hostile one must turn into an error for that request,
 * never into arithmetic overflow, a pass-through of nonsense to clients, or a crash. */
#ifndef SLUICE_GATEWAY_PROXY_FRAME_H
#define SLUICE_GATEWAY_PROXY_FRAME_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Token counts and ids above this are not a real worker's. Sums of counts are held to it too,
 * so that clients that read usage as 32-bit ints never see one wrap. */
#define GW_FRAME_MAX_COUNT INT32_MAX
/* Tool calls one answer may make: more is no real model's, and each costs the gateway a lookup. */
#define GW_FRAME_MAX_TOOL_CALLS 1024

/* Checks every number an ndjson frame (docs/PROTOCOL.md) carries: usage.prompt_tokens and
 * usage.completion_tokens (integers, 0..GW_FRAME_MAX_COUNT, their sum too), token_ids and
 * each logprobs entry's token_id (integers, 0..GW_FRAME_MAX_COUNT), logprob values (numbers
 * <= 0), bytes (integers 0..255), and the shapes holding them; prompt_logprobs alike (its first
 * entry's logprob null, ranks integers >= 1); reasoning_content (a string)
 * and tool_calls (an array of {"index": 0..GW_FRAME_MAX_TOOL_CALLS-1, "id"?, "type"?,
 * "function"?: {"name"?, "arguments"?}} with strings where strings go). Absent optional fields
 * are fine. Returns 0, or -1 with why set to a sentence naming the field. */
int gw_frame_check(const json_t *frame, char *why, size_t cap);

/* The HTTP status a worker's non-200 answer is passed on with: 4xx and 5xx as they are,
 * anything else (1xx, 2xx, 3xx, > 599: not an error a client can act on) as 502. */
int gw_frame_error_status(long worker_status);

#endif
