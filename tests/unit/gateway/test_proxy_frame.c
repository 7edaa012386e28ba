/* What the gateway accepts from a worker's ndjson frame before using any of its numbers. */
#include <criterion/criterion.h>
#include <string.h>

#include "gateway/proxy_frame.h"

static void expect_ok(const char *text)
{
    json_error_t e;
    json_t *f = json_loads(text, 0, &e);
    cr_assert_not_null(f, "bad test JSON: %s", text);
    char why[256] = "";
    cr_expect_eq(gw_frame_check(f, why, sizeof why), 0, "%s refused: %s", text, why);
    json_decref(f);
}

static void expect_bad(const char *text, const char *field)
{
    json_error_t e;
    json_t *f = json_loads(text, JSON_DECODE_ANY, &e);
    cr_assert_not_null(f, "bad test JSON: %s", text);
    char why[256] = "";
    cr_expect_eq(gw_frame_check(f, why, sizeof why), -1, "%s accepted", text);
    cr_expect_not_null(strstr(why, field), "%s: '%s' does not name %s", text, why, field);
    json_decref(f);
}

Test(frame, real_frames_pass)
{
    expect_ok("{\"text\":\"Hi\",\"token_ids\":[12,0],\"finish_reason\":null,"
              "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}");
    expect_ok("{\"text\":\"\",\"token_ids\":[],\"finish_reason\":\"error\",\"error\":{\"message\":\"x\",\"code\":500}}");
    expect_ok("{\"text\":\"a\"}");
    expect_ok("{\"usage\":null,\"token_ids\":null,\"logprobs\":null}");
    expect_ok("{\"usage\":{\"prompt_tokens\":2147483647,\"completion_tokens\":0}}");
    expect_ok("{\"usage\":{\"prompt_tokens\":2147483000,\"completion_tokens\":647}}");
    expect_ok("{\"token_ids\":[2147483647],\"logprobs\":[{\"token_id\":7,\"token\":\"a\",\"bytes\":[97,0,255],"
              "\"logprob\":-0.5,\"top_logprobs\":[{\"token_id\":8,\"token\":\"b\",\"logprob\":-1e300},"
              "{\"token_id\":9,\"token\":\"c\",\"logprob\":0}]}]}");
    expect_ok("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-3,\"top_logprobs\":[]}]}");
    expect_ok("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-0.0}]}");
}

Test(frame, usage_counts)
{
    expect_bad("{\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":2}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":-2}}", "usage.completion_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":5.5}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":5.0}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":1e3}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":\"5\"}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":true}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":2147483648}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"completion_tokens\":9223372036854775807}}", "usage.completion_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":-9223372036854775807}}", "usage.prompt_tokens");
    expect_bad("{\"usage\":{\"prompt_tokens\":2147483647,\"completion_tokens\":1}}", "usage");
    expect_bad("{\"usage\":[1,2]}", "usage");
    expect_bad("{\"usage\":7}", "usage");
}

Test(frame, token_ids)
{
    expect_bad("{\"token_ids\":[1,-1]}", "token_ids[1]");
    expect_bad("{\"token_ids\":[1.5]}", "token_ids[0]");
    expect_bad("{\"token_ids\":[\"3\"]}", "token_ids[0]");
    expect_bad("{\"token_ids\":[2147483648]}", "token_ids[0]");
    expect_bad("{\"token_ids\":5}", "token_ids");
}

Test(frame, logprobs)
{
    expect_bad("{\"logprobs\":{}}", "logprobs");
    expect_bad("{\"logprobs\":[5]}", "logprobs[0]");
    expect_bad("{\"logprobs\":[{\"token\":\"a\"}]}", "logprobs[0].logprob");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":\"-1\"}]}", "logprobs[0].logprob");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":0.25}]}", "logprobs[0].logprob");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":1e308}]}", "logprobs[0].logprob");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-1,\"token_id\":-5}]}", "logprobs[0].token_id");
    expect_bad("{\"logprobs\":[{\"token\":5,\"logprob\":-1}]}", "logprobs[0].token");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-1,\"bytes\":[256]}]}", "logprobs[0].bytes[0]");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-1,\"bytes\":[1,-1]}]}", "logprobs[0].bytes[1]");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-1,\"bytes\":\"a\"}]}", "logprobs[0].bytes");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-1,\"top_logprobs\":{}}]}", "logprobs[0].top_logprobs");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":-1},{\"token\":\"b\",\"logprob\":-1,"
               "\"top_logprobs\":[{\"token\":\"c\",\"logprob\":-1},{\"token\":\"d\",\"logprob\":3}]}]}",
               "logprobs[1].top_logprobs[1].logprob");
}

Test(frame, not_an_object)
{
    expect_bad("[]", "object");
    expect_bad("3", "object");
}

Test(frame, worker_status_passed_on)
{
    cr_expect_eq(gw_frame_error_status(400), 400);
    cr_expect_eq(gw_frame_error_status(404), 404);
    cr_expect_eq(gw_frame_error_status(429), 429);
    cr_expect_eq(gw_frame_error_status(503), 503);
    cr_expect_eq(gw_frame_error_status(599), 599);
    cr_expect_eq(gw_frame_error_status(101), 502);
    cr_expect_eq(gw_frame_error_status(204), 502);
    cr_expect_eq(gw_frame_error_status(302), 502);
    cr_expect_eq(gw_frame_error_status(304), 502);
    cr_expect_eq(gw_frame_error_status(600), 502);
    cr_expect_eq(gw_frame_error_status(99999), 502);
    cr_expect_eq(gw_frame_error_status(-1), 502);
}

Test(frame, prompt_logprobs)
{
    expect_ok("{\"prompt_logprobs\":[{\"token_id\":1,\"token\":\"<s>\",\"logprob\":null,\"top_logprobs\":[]},"
              "{\"token_id\":5,\"token\":\"a\",\"logprob\":-2,\"rank\":7,"
              "\"top_logprobs\":[{\"token_id\":6,\"token\":\"b\",\"logprob\":-1}]}]}");
    expect_bad("{\"prompt_logprobs\":{}}", "prompt_logprobs");
    expect_bad("{\"prompt_logprobs\":[{\"token\":\"a\",\"logprob\":null},{\"token\":\"b\",\"logprob\":null}]}",
               "prompt_logprobs[1].logprob");
    expect_bad("{\"prompt_logprobs\":[{\"token\":\"a\",\"logprob\":null},{\"token\":\"b\",\"logprob\":-1,\"rank\":0}]}",
               "prompt_logprobs[1].rank");
    expect_bad("{\"prompt_logprobs\":[{\"token\":\"a\",\"logprob\":null,\"top_logprobs\":[{\"logprob\":null}]}]}",
               "prompt_logprobs[0].top_logprobs[0].logprob");
    expect_bad("{\"logprobs\":[{\"token\":\"a\",\"logprob\":null}]}", "logprobs[0].logprob");
}

Test(frame, tool_calls_and_reasoning)
{
    expect_ok("{\"text\":\"\",\"reasoning_content\":\"hmm\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":"
              "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}},{\"index\":0,\"function\":{\"arguments\":"
              "\"{}\"}}],\"finish_reason\":\"tool_calls\"}");
    expect_ok("{\"tool_calls\":null,\"reasoning_content\":\"\"}");
    expect_ok("{\"tool_calls\":[{\"index\":1023}]}");
    expect_bad("{\"reasoning_content\":5}", "reasoning_content");
    expect_bad("{\"tool_calls\":{}}", "tool_calls");
    expect_bad("{\"tool_calls\":[5]}", "tool_calls[0]");
    expect_bad("{\"tool_calls\":[{\"id\":\"x\"}]}", "tool_calls[0].index");
    expect_bad("{\"tool_calls\":[{\"index\":1024}]}", "tool_calls[0].index");
    expect_bad("{\"tool_calls\":[{\"index\":-1}]}", "tool_calls[0].index");
    expect_bad("{\"tool_calls\":[{\"index\":0.5}]}", "tool_calls[0].index");
    expect_bad("{\"tool_calls\":[{\"index\":0,\"id\":7}]}", "tool_calls[0]");
    expect_bad("{\"tool_calls\":[{\"index\":0},{\"index\":0,\"function\":\"f\"}]}", "tool_calls[1].function");
    expect_bad("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":{}}}]}", "tool_calls[0].function");
    expect_bad("{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":null}}]}", "tool_calls[0].function");
}
