/* OpenAI shapes: ids, stream chunks, responses, usage and both logprobs formats. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <string.h>

#include "common/json_util.h"
#include "gateway/format_openai.h"

static void expect_json(json_t *v, const char *want)
{
    char *got = json_dump_compact(v);
    json_t *w = json_loads(want, 0, NULL);
    cr_assert(w, "bad expectation %s", want);
    cr_expect(json_equal(v, w), "got  %s\nwant %s", got, want);
    free(got);
    json_decref(w);
    json_decref(v);
}

Test(format, ids_have_prefix_and_random_tail)
{
    char a[48], b[48];
    gw_format_id(GW_API_CHAT, a, sizeof a);
    gw_format_id(GW_API_CHAT, b, sizeof b);
    cr_expect_eq(strncmp(a, "chatcmpl-", 9), 0);
    cr_expect_eq(strlen(a), 9 + 24);
    for (const char *p = a + 9; *p; p++) cr_expect(isalnum((unsigned char)*p));
    cr_expect_str_neq(a, b);
    gw_format_id(GW_API_COMPLETION, a, sizeof a);
    cr_expect_eq(strncmp(a, "cmpl-", 5), 0);
    cr_expect_eq(strlen(a), 5 + 24);
}

Test(format, chat_chunks)
{
    json_t *c = gw_chunk_new(GW_API_CHAT, "chatcmpl-x", 7, "m", 0);
    json_array_append_new(json_object_get(c, "choices"),
                          gw_chunk_choice(GW_API_CHAT, 0, "assistant", "", 0, NULL, NULL));
    expect_json(c, "{\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":7,"
                   "\"model\":\"m\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,"
                   "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                   "\"finish_reason\":null}]}");
    expect_json(gw_chunk_choice(GW_API_CHAT, 2, NULL, "hey", 3, NULL, NULL),
                "{\"index\":2,\"delta\":{\"content\":\"hey\"},\"logprobs\":null,\"finish_reason\":null}");
    expect_json(gw_chunk_choice(GW_API_CHAT, 1, NULL, NULL, 0, NULL, "length"),
                "{\"index\":1,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}");
    c = gw_chunk_new(GW_API_CHAT, "chatcmpl-x", 7, "m", 1);
    cr_expect(json_is_null(json_object_get(c, "usage")) && json_object_get(c, "usage"),
              "include_usage puts usage: null on every chunk");
    json_decref(c);
}

Test(format, completion_chunks_and_responses)
{
    json_t *c = gw_chunk_new(GW_API_COMPLETION, "cmpl-x", 9, "m", 0);
    json_array_append_new(json_object_get(c, "choices"),
                          gw_chunk_choice(GW_API_COMPLETION, 0, NULL, "ab", 2, NULL, NULL));
    expect_json(c, "{\"id\":\"cmpl-x\",\"object\":\"text_completion\",\"created\":9,\"model\":\"m\","
                   "\"choices\":[{\"index\":0,\"text\":\"ab\",\"logprobs\":null,\"finish_reason\":null}]}");
    expect_json(gw_chunk_choice(GW_API_COMPLETION, 0, NULL, NULL, 0, NULL, "stop"),
                "{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"stop\"}");
    json_t *r = gw_response_new(GW_API_COMPLETION, "cmpl-x", 9, "m");
    json_array_append_new(json_object_get(r, "choices"),
                          gw_response_choice(GW_API_COMPLETION, 0, "hello", 5, NULL, "length"));
    json_object_set_new(r, "usage", gw_usage_json(3, 5));
    expect_json(r, "{\"id\":\"cmpl-x\",\"object\":\"text_completion\",\"created\":9,\"model\":\"m\","
                   "\"choices\":[{\"index\":0,\"text\":\"hello\",\"logprobs\":null,\"finish_reason\":\"length\"}],"
                   "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}");
}

Test(format, chat_response)
{
    json_t *r = gw_response_new(GW_API_CHAT, "chatcmpl-y", 1, "m");
    json_array_append_new(json_object_get(r, "choices"),
                          gw_response_choice(GW_API_CHAT, 0, "hi", 2, NULL, "stop"));
    json_object_set_new(r, "usage", gw_usage_json(4, 1));
    expect_json(r, "{\"id\":\"chatcmpl-y\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
                   "\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                   "\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
                   "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}");
}

static json_t *frame_logprobs(void)
{
    return json_loads("[{\"token_id\":5,\"token\":\"Hi\",\"logprob\":-0.5,\"top_logprobs\":"
                      "[{\"token_id\":5,\"token\":\"Hi\",\"logprob\":-0.5},"
                      "{\"token_id\":6,\"token\":\"Ho\",\"logprob\":-1.5}]},"
                      "{\"token_id\":7,\"token\":\" \xc3\xa9\",\"logprob\":-0.25,\"top_logprobs\":[]}]",
                      0, NULL);
}

Test(format, chat_logprobs_shape)
{
    json_t *lps = frame_logprobs();
    expect_json(gw_chat_logprobs(lps),
                "{\"content\":[{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105],\"top_logprobs\":["
                "{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105]},"
                "{\"token\":\"Ho\",\"logprob\":-1.5,\"bytes\":[72,111]}]},"
                "{\"token\":\" \xc3\xa9\",\"logprob\":-0.25,\"bytes\":[32,195,169],\"top_logprobs\":[]}],"
                "\"refusal\":null}");
    json_decref(lps);
}

Test(format, completion_logprobs_shape_and_offsets)
{
    json_t *lps = frame_logprobs();
    json_t *acc = gw_completion_logprobs_new();
    int64_t offset = 10;
    gw_completion_logprobs_append(acc, lps, &offset);
    cr_expect_eq(offset, 10 + 2 + 2, "offsets count characters, not bytes");
    expect_json(acc, "{\"tokens\":[\"Hi\",\" \xc3\xa9\"],\"token_logprobs\":[-0.5,-0.25],"
                     "\"top_logprobs\":[{\"Hi\":-0.5,\"Ho\":-1.5},{\" \xc3\xa9\":-0.25}],"
                     "\"text_offset\":[10,12]}");
    json_decref(lps);
}

Test(format, utf8_length)
{
    cr_expect_eq(gw_utf8_length("abc", 3), 3);
    cr_expect_eq(gw_utf8_length("\xc3\xa9\xe2\x82\xac", 5), 2);
    cr_expect_eq(gw_utf8_length("", 0), 0);
}

/* Echo with logprobs: the prompt's first token has no logprob, and no top either. */
Test(format, completion_logprobs_of_an_echoed_prompt)
{
    json_t *lps = json_loads("[{\"token_id\":1,\"token\":\"<s>\",\"logprob\":null,\"top_logprobs\":[]},"
                             "{\"token_id\":5,\"token\":\" a\",\"logprob\":-2.5,\"rank\":3,"
                             "\"top_logprobs\":[{\"token_id\":9,\"token\":\" b\",\"logprob\":-0.5}]}]",
                             0, NULL);
    cr_assert(lps);
    json_t *acc = gw_completion_logprobs_new();
    int64_t offset = 0;
    gw_completion_logprobs_append(acc, lps, &offset);
    cr_expect_eq(offset, 5);
    expect_json(acc, "{\"tokens\":[\"<s>\",\" a\"],\"token_logprobs\":[null,-2.5],"
                     "\"top_logprobs\":[null,{\" b\":-0.5}],\"text_offset\":[0,3]}");
    /* vLLM's prompt_logprobs: null, then the token (its own rank) and its alternatives. */
    expect_json(gw_prompt_logprobs(lps),
                "[null,{\"9\":{\"logprob\":-0.5,\"rank\":1,\"decoded_token\":\" b\"},"
                "\"5\":{\"logprob\":-2.5,\"rank\":3,\"decoded_token\":\" a\"}}]");
    json_decref(lps);
}

Test(format, tool_calls_and_reasoning_in_chunks_and_answers)
{
    json_t *deltas = json_loads("[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                                "\"arguments\":\"\"},\"extra\":1},{\"index\":0,\"function\":{\"arguments\":\"{\\\"x\\\"\"}}]",
                                0, NULL);
    json_t *choice = gw_chunk_choice(GW_API_CHAT, 0, NULL, NULL, 0, NULL, NULL);
    gw_chat_delta_extras(choice, "hmm", 3, deltas);
    expect_json(choice, "{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\",\"tool_calls\":[{\"index\":0,\"id\":"
                        "\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}},{\"index\":0,"
                        "\"function\":{\"arguments\":\"{\\\"x\\\"\"}}]},\"logprobs\":null,\"finish_reason\":null}");

    /* Non-streamed: deltas merged per call, in order, arguments joined. */
    json_t *acc = json_array();
    gw_tool_calls_merge(acc, deltas);
    json_t *more = json_loads("[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"g\","
                              "\"arguments\":\"{}\"}},{\"index\":0,\"function\":{\"arguments\":\": 1}\"}}]",
                              0, NULL);
    gw_tool_calls_merge(acc, more);
    json_t *r = gw_chat_response_choice(0, "", 0, "", 0, gw_tool_calls_final(acc), NULL, "tool_calls");
    expect_json(r, "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null,\"tool_calls\":["
                   "{\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1}\"}},"
                   "{\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},"
                   "\"logprobs\":null,\"finish_reason\":\"tool_calls\"}");
    /* Content stays beside calls; reasoning has its own field; no calls, no tool_calls key. */
    r = gw_chat_response_choice(1, "ok", 2, "why", 3, gw_tool_calls_final(acc), NULL, "tool_calls");
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(r, "message"), "content")), "ok");
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(r, "message"), "reasoning_content")), "why");
    json_decref(r);
    json_t *none = json_array();
    expect_json(gw_chat_response_choice(0, "hi", 2, NULL, 0, gw_tool_calls_final(none), NULL, "stop"),
                "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null},\"logprobs\":null,"
                "\"finish_reason\":\"stop\"}");
    json_decref(none);
    json_decref(acc);
    json_decref(more);
    json_decref(deltas);
}
