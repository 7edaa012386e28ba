/* Request validation: every bad input answers 400 naming the field; good input becomes the
 * right upstream bodies. */
#include <criterion/criterion.h>
#include <string.h>

#include "gateway/validate.h"

static int chat(const char *body, struct gw_params *p, struct json_field_error *err)
{
    json_t *root = json_loads(body, 0, NULL);
    cr_assert(root, "test body is not JSON: %s", body);
    int rc = gw_validate_chat(root, p, err);
    json_decref(root);
    return rc;
}

static int cmpl(const char *body, struct gw_params *p, struct json_field_error *err)
{
    json_t *root = json_loads(body, 0, NULL);
    cr_assert(root, "test body is not JSON: %s", body);
    int rc = gw_validate_completion(root, p, err);
    json_decref(root);
    return rc;
}

#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static void expect_field_int(const json_t *obj, const char *key, json_int_t want)
{
    const json_t *v = json_object_get(obj, key);
    cr_expect(json_is_integer(v) && json_integer_value(v) == want, "%s: want %lld", key, (long long)want);
}

struct bad_case {
    const char *body;
    const char *param;
};

static void expect_bad(int (*fn)(const char *, struct gw_params *, struct json_field_error *),
                       const struct bad_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct gw_params p;
        struct json_field_error err = {{0}, {0}};
        int rc = fn(cases[i].body, &p, &err);
        cr_expect_eq(rc, 400, "accepted: %s", cases[i].body);
        cr_expect_str_eq(err.param, cases[i].param, "param for %s: '%s' (%s)", cases[i].body,
                         err.param, err.message);
        cr_expect(strlen(err.message) > 0, "no message for %s", cases[i].body);
        if (rc == 0) gw_params_free(&p);
    }
}

Test(validate, chat_rejects_every_bad_field)
{
    static const struct bad_case cases[] = {
        {"{" MSGS "}", "model"},
        {"{\"model\":5," MSGS "}", "model"},
        {"{\"model\":\"\"," MSGS "}", "model"},
        {"{\"model\":\"m\"}", "messages"},
        {"{\"model\":\"m\",\"messages\":[]}", "messages"},
        {"{\"model\":\"m\",\"messages\":\"hi\"}", "messages"},
        {"{\"model\":\"m\",\"messages\":[5]}", "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":7}]}", "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", "messages"},
        {"{\"model\":\"m\"," MSGS ",\"temperature\":2.5}", "temperature"},
        {"{\"model\":\"m\"," MSGS ",\"temperature\":-0.1}", "temperature"},
        {"{\"model\":\"m\"," MSGS ",\"temperature\":\"hot\"}", "temperature"},
        {"{\"model\":\"m\"," MSGS ",\"top_p\":0}", "top_p"},
        {"{\"model\":\"m\"," MSGS ",\"top_p\":1.01}", "top_p"},
        {"{\"model\":\"m\"," MSGS ",\"n\":0}", "n"},
        {"{\"model\":\"m\"," MSGS ",\"n\":129}", "n"},
        {"{\"model\":\"m\"," MSGS ",\"n\":1.5}", "n"},
        {"{\"model\":\"m\"," MSGS ",\"max_tokens\":0}", "max_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"max_tokens\":\"10\"}", "max_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"max_completion_tokens\":-1}", "max_completion_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"presence_penalty\":2.1}", "presence_penalty"},
        {"{\"model\":\"m\"," MSGS ",\"frequency_penalty\":-3}", "frequency_penalty"},
        {"{\"model\":\"m\"," MSGS ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"},
        {"{\"model\":\"m\"," MSGS ",\"stop\":[1]}", "stop"},
        {"{\"model\":\"m\"," MSGS ",\"stop\":5}", "stop"},
        {"{\"model\":\"m\"," MSGS ",\"seed\":\"x\"}", "seed"},
        {"{\"model\":\"m\"," MSGS ",\"stream\":\"yes\"}", "stream"},
        {"{\"model\":\"m\"," MSGS ",\"stream_options\":{\"include_usage\":true}}", "stream_options"},
        {"{\"model\":\"m\"," MSGS ",\"stream\":true,\"stream_options\":{\"include_usage\":1}}",
         "stream_options.include_usage"},
        {"{\"model\":\"m\"," MSGS ",\"logprobs\":3}", "logprobs"},
        {"{\"model\":\"m\"," MSGS ",\"top_logprobs\":2}", "top_logprobs"},
        {"{\"model\":\"m\"," MSGS ",\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs"},
        {"{\"model\":\"m\"," MSGS ",\"top_k\":-2}", "top_k"},
        {"{\"model\":\"m\"," MSGS ",\"min_p\":1.5}", "min_p"},
        {"{\"model\":\"m\"," MSGS ",\"repetition_penalty\":0}", "repetition_penalty"},
        {"{\"model\":\"m\"," MSGS ",\"ignore_eos\":1}", "ignore_eos"},
        {"{\"model\":\"m\"," MSGS ",\"user\":5}", "user"},
        {"{\"model\":\"m\"," MSGS ",\"stop_token_ids\":[-1]}", "stop_token_ids"},
        {"{\"model\":\"m\"," MSGS ",\"stop_token_ids\":[1.5]}", "stop_token_ids"},
        {"{\"model\":\"m\"," MSGS ",\"stop_token_ids\":7}", "stop_token_ids"},
        {"{\"model\":\"m\"," MSGS ",\"stop_token_ids\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", "stop_token_ids"},
        {"{\"model\":\"m\"," MSGS ",\"logit_bias\":{\"abc\":5}}", "logit_bias"},
        {"{\"model\":\"m\"," MSGS ",\"logit_bias\":{\"-3\":5}}", "logit_bias"},
        {"{\"model\":\"m\"," MSGS ",\"logit_bias\":{\"5\":500}}", "logit_bias"},
        {"{\"model\":\"m\"," MSGS ",\"logit_bias\":{\"5\":-100.5}}", "logit_bias"},
        {"{\"model\":\"m\"," MSGS ",\"logit_bias\":{\"5\":\"1\"}}", "logit_bias"},
        {"{\"model\":\"m\"," MSGS ",\"logit_bias\":[1]}", "logit_bias"},
        {"{\"model\":\"m\"," MSGS ",\"top_p\":-0.5}", "top_p"},
        {"{\"model\":\"m\"," MSGS ",\"seed\":1.5}", "seed"},
    };
    expect_bad(chat, cases, sizeof cases / sizeof cases[0]);
}

Test(validate, completion_rejects_every_bad_prompt_and_field)
{
    static const struct bad_case cases[] = {
        {"{\"model\":\"m\"}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":5}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[1,\"a\"]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[1,-2]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[\"a\",[1]]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[[1],[]]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":[{}]}", "prompt"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":21}", "logprobs"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":-1}", "logprobs"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"echo\":\"y\"}", "echo"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"suffix\":\"tail\"}", "suffix"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"best_of\":3}", "best_of"},
        {"{\"model\":\"m\",\"prompt\":[\"a\",\"b\"],\"n\":100}", "n"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\"]}", "stop"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stop_token_ids\":[3,-7]}", "stop_token_ids"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"logit_bias\":{\"1\":101}}", "logit_bias"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":1.5}", "top_p"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":-1}", "temperature"},
    };
    expect_bad(cmpl, cases, sizeof cases / sizeof cases[0]);
}

Test(validate, chat_builds_upstream_body)
{
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_assert_eq(chat("{\"model\":\"m\"," MSGS ",\"max_tokens\":5,\"max_completion_tokens\":7,"
                      "\"temperature\":0,\"top_p\":0.5,\"stop\":\"x\",\"seed\":41,\"n\":3,"
                      "\"logprobs\":true,\"top_logprobs\":2,\"stream\":true,"
                      "\"stream_options\":{\"include_usage\":true},\"top_k\":4,\"ignore_eos\":true,"
                      "\"user\":\"u\",\"frequency_penalty\":0.5}",
                      &p, &err),
                 0, "%s", err.message);
    cr_expect_str_eq(p.model, "m");
    cr_expect(p.stream && p.include_usage);
    cr_expect_eq(p.n, 3);
    cr_expect_eq(gw_params_choice_count(&p), 3);
    cr_expect_eq(p.logprobs, 2);
    json_t *b = gw_params_upstream_body(&p, 2);
    cr_expect_eq(json_integer_value(json_object_get(b, "max_tokens")), 7);
    cr_expect_eq(json_integer_value(json_object_get(b, "seed")), 43, "seed + choice index");
    cr_expect_eq(json_integer_value(json_object_get(b, "logprobs")), 2);
    cr_expect_eq(json_integer_value(json_object_get(b, "top_k")), 4);
    cr_expect(json_is_true(json_object_get(b, "ignore_eos")));
    cr_expect_eq(json_real_value(json_object_get(b, "temperature")), 0.0);
    cr_expect_str_eq(json_string_value(json_object_get(b, "stop")), "x");
    cr_expect(json_is_array(json_object_get(b, "messages")));
    cr_expect_null(json_object_get(b, "model"), "the worker needs no model name");
    cr_expect_null(json_object_get(b, "user"));
    json_decref(b);
    gw_params_free(&p);

    /* Token-id fields pass through as given; the worker bounds them by its vocabulary. */
    cr_assert_eq(chat("{\"model\":\"m\"," MSGS ",\"stop_token_ids\":[2,99999],"
                      "\"logit_bias\":{\"5\":-100,\"7\":2.5}}", &p, &err),
                 0, "%s", err.message);
    b = gw_params_upstream_body(&p, 0);
    json_t *ids = json_object_get(b, "stop_token_ids");
    cr_expect_eq(json_array_size(ids), 2);
    cr_expect_eq(json_integer_value(json_array_get(ids, 1)), 99999);
    cr_expect_eq(json_number_value(json_object_get(json_object_get(b, "logit_bias"), "7")), 2.5);
    json_decref(b);
    gw_params_free(&p);
}

Test(validate, completion_prompt_shapes_make_choices)
{
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":[[1,2],[3]],\"n\":2,\"logprobs\":0,\"echo\":true}",
                      &p, &err), 0, "%s", err.message);
    cr_expect_eq(p.n_prompts, 2);
    cr_expect_eq(gw_params_choice_count(&p), 4);
    cr_expect_eq(p.logprobs, 0);
    cr_expect(p.echo);
    json_t *b = gw_params_upstream_body(&p, 3); /* prompt 1, second choice */
    json_t *ids = json_object_get(b, "prompt_token_ids");
    cr_expect_eq(json_array_size(ids), 1);
    cr_expect_eq(json_integer_value(json_array_get(ids, 0)), 3);
    cr_expect_null(json_object_get(b, "seed"), "no seed unless asked");
    cr_expect(json_is_true(json_object_get(b, "echo")));
    json_decref(b);
    gw_params_free(&p);

    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":[\"a\",\"b\",\"c\"],\"seed\":7}", &p, &err), 0);
    cr_expect_eq(gw_params_choice_count(&p), 3);
    b = gw_params_upstream_body(&p, 2);
    cr_expect_str_eq(json_string_value(json_object_get(b, "prompt")), "c");
    cr_expect_eq(json_integer_value(json_object_get(b, "seed")), 7, "each prompt's first choice keeps the seed");
    json_decref(b);
    gw_params_free(&p);

    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":[5,6,7],\"logprobs\":null}", &p, &err), 0);
    cr_expect_eq(p.n_prompts, 1);
    cr_expect_eq(p.logprobs, -1);
    b = gw_params_upstream_body(&p, 0);
    cr_expect_eq(json_array_size(json_object_get(b, "prompt_token_ids")), 3);
    cr_expect_null(json_object_get(b, "logprobs"));
    json_decref(b);
    gw_params_free(&p);

    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":\"once\",\"logprobs\":false,\"best_of\":1}", &p, &err), 0);
    cr_expect_eq(p.logprobs, -1);
    gw_params_free(&p);
}

Test(validate, chat_accepts_text_parts_and_assistant_null)
{
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_assert_eq(chat("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
                      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]},"
                      "{\"role\":\"assistant\",\"content\":null},{\"role\":\"user\",\"content\":\"b\"}],"
                      "\"stop\":[\"x\",\"y\",\"z\",\"w\"],\"logprobs\":false}",
                      &p, &err),
                 0, "%s", err.message);
    cr_expect_eq(p.logprobs, -1);
    cr_expect(!p.stream);
    gw_params_free(&p);
}

Test(validate, boundaries_are_accepted)
{
    static const char *const ok[] = {
        "{\"model\":\"m\"," MSGS ",\"temperature\":0}",
        "{\"model\":\"m\"," MSGS ",\"temperature\":2}",
        "{\"model\":\"m\"," MSGS ",\"top_p\":1}",
        "{\"model\":\"m\"," MSGS ",\"top_p\":0.001}",
        "{\"model\":\"m\"," MSGS ",\"n\":128}",
        "{\"model\":\"m\"," MSGS ",\"n\":2.0}",
        "{\"model\":\"m\"," MSGS ",\"max_tokens\":1}",
        "{\"model\":\"m\"," MSGS ",\"presence_penalty\":-2,\"frequency_penalty\":2}",
        "{\"model\":\"m\"," MSGS ",\"stop\":[\"a\",\"b\",\"c\",\"d\"]}",
        "{\"model\":\"m\"," MSGS ",\"stop\":[]}",
        "{\"model\":\"m\"," MSGS ",\"stop\":null,\"max_tokens\":null,\"seed\":null}",
        "{\"model\":\"m\"," MSGS ",\"logprobs\":true,\"top_logprobs\":20}",
        "{\"model\":\"m\"," MSGS ",\"logprobs\":true,\"top_logprobs\":0}",
        "{\"model\":\"m\"," MSGS ",\"seed\":-1}",
        "{\"model\":\"m\"," MSGS ",\"top_k\":-1,\"min_p\":0,\"repetition_penalty\":2}",
        "{\"model\":\"m\"," MSGS ",\"stream\":false}",
        "{\"model\":\"m\"," MSGS ",\"stream\":true,\"stream_options\":{}}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct gw_params p;
        struct json_field_error err = {{0}, {0}};
        cr_expect_eq(chat(ok[i], &p, &err), 0, "rejected %s: %s", ok[i], err.message);
        gw_params_free(&p);
    }
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_expect_eq(cmpl("{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":20,\"n\":128}", &p, &err), 0, "%s", err.message);
    gw_params_free(&p);
    cr_expect_eq(cmpl("{\"model\":\"m\",\"prompt\":[\"a\",\"b\"],\"n\":64}", &p, &err), 0, "%s", err.message);
    gw_params_free(&p);
}

Test(validate, vllm_sampling_fields_pass_to_the_worker)
{
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":\"x\",\"min_tokens\":3,\"include_stop_str_in_output\":true,"
                      "\"skip_special_tokens\":false,\"spaces_between_special_tokens\":false,"
                      "\"truncate_prompt_tokens\":-1,\"prompt_logprobs\":2,\"cache_salt\":\"t\","
                      "\"add_special_tokens\":false,\"ignore_eos\":true}",
                      &p, &err),
                 0, "%s", err.message);
    cr_expect_eq(p.prompt_logprobs, 2);
    json_t *b = gw_params_upstream_body(&p, 0);
    expect_field_int(b, "min_tokens", 3);
    expect_field_int(b, "truncate_prompt_tokens", -1);
    expect_field_int(b, "prompt_logprobs", 2);
    cr_expect(json_is_true(json_object_get(b, "include_stop_str_in_output")));
    cr_expect(json_is_false(json_object_get(b, "skip_special_tokens")));
    cr_expect(json_is_false(json_object_get(b, "spaces_between_special_tokens")));
    cr_expect(json_is_false(json_object_get(b, "add_special_tokens")));
    cr_expect_str_eq(json_string_value(json_object_get(b, "cache_salt")), "t");
    json_decref(b);
    gw_params_free(&p);
    cr_assert_eq(chat("{\"model\":\"m\"," MSGS "}", &p, &err), 0);
    cr_expect_eq(p.prompt_logprobs, -1);
    b = gw_params_upstream_body(&p, 0);
    cr_expect_null(json_object_get(b, "min_tokens"));
    cr_expect_null(json_object_get(b, "prompt_logprobs"));
    json_decref(b);
    gw_params_free(&p);
}

Test(validate, fields_known_but_not_honoured_are_refused_by_name)
{
    static const struct bad_case chat_cases[] = {
        {"{\"model\":\"m\"," MSGS ",\"use_beam_search\":true}", "use_beam_search"},
        {"{\"model\":\"m\"," MSGS ",\"best_of\":2}", "best_of"},
        {"{\"model\":\"m\"," MSGS ",\"length_penalty\":0.5}", "length_penalty"},
        {"{\"model\":\"m\"," MSGS ",\"echo\":true}", "echo"},
        {"{\"model\":\"m\"," MSGS ",\"chat_template\":\"{{ x }}\"}", "chat_template"},
        {"{\"model\":\"m\"," MSGS ",\"continue_final_message\":true}", "continue_final_message"},
        {"{\"model\":\"m\"," MSGS ",\"modalities\":[\"text\",\"audio\"]}", "modalities"},
        {"{\"model\":\"m\"," MSGS ",\"audio\":{\"voice\":\"x\"}}", "audio"},
        {"{\"model\":\"m\"," MSGS ",\"allowed_token_ids\":[1,2]}", "allowed_token_ids"},
        {"{\"model\":\"m\"," MSGS ",\"priority\":3}", "priority"},
        {"{\"model\":\"m\"," MSGS ",\"logits_processors\":[\"x\"]}", "logits_processors"},
        {"{\"model\":\"m\"," MSGS ",\"prediction\":{\"type\":\"content\",\"content\":\"x\"}}", "prediction"},
        {"{\"model\":\"m\"," MSGS ",\"min_tokens\":-1}", "min_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"truncate_prompt_tokens\":0}", "truncate_prompt_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"prompt_logprobs\":21}", "prompt_logprobs"},
        {"{\"model\":\"m\"," MSGS ",\"include_stop_str_in_output\":1}", "include_stop_str_in_output"},
        {"{\"model\":\"m\"," MSGS ",\"skip_special_tokens\":\"no\"}", "skip_special_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"spaces_between_special_tokens\":0}", "spaces_between_special_tokens"},
        {"{\"model\":\"m\"," MSGS ",\"cache_salt\":5}", "cache_salt"},
        {"{\"model\":\"m\"," MSGS ",\"functions\":[{\"name\":\"f\"}]}", "functions"},
        {"{\"model\":\"m\"," MSGS ",\"function_call\":\"auto\"}", "function_call"},
    };
    expect_bad(chat, chat_cases, sizeof chat_cases / sizeof chat_cases[0]);
    static const struct bad_case cmpl_cases[] = {
        {"{\"model\":\"m\",\"prompt\":\"x\",\"use_beam_search\":true}", "use_beam_search"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"n\":2,\"best_of\":3}", "best_of"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"prompt_embeds\":\"AAAA\"}", "prompt_embeds"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"bad_words\":[\"no\"]}", "bad_words"},
    };
    expect_bad(cmpl, cmpl_cases, sizeof cmpl_cases / sizeof cmpl_cases[0]);
    /* Their defaults ask nothing, and bookkeeping fields change no output: accepted. */
    static const char *const ok[] = {
        "{\"model\":\"m\"," MSGS ",\"use_beam_search\":false,\"length_penalty\":1,\"priority\":0,\"best_of\":1,"
        "\"modalities\":[\"text\"],\"audio\":null,\"echo\":false,\"store\":true,\"metadata\":{\"a\":\"b\"},"
        "\"service_tier\":\"auto\",\"allowed_token_ids\":[],\"chat_template\":null}",
        "{\"model\":\"m\",\"prompt\":\"x\",\"suffix\":\"\",\"n\":3,\"best_of\":3,\"use_beam_search\":false}",
    };
    for (size_t i = 0; i < 2; i++) {
        struct gw_params p;
        struct json_field_error err = {{0}, {0}};
        cr_expect_eq((i ? cmpl : chat)(ok[i], &p, &err), 0, "rejected %s: %s", ok[i], err.message);
        gw_params_free(&p);
    }
}

Test(validate, unknown_fields_are_ignored_and_warned_once)
{
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_expect_not(gw_field_warned("tempreature"));
    cr_assert_eq(chat("{\"model\":\"m\"," MSGS ",\"tempreature\":0.5}", &p, &err), 0, "%s", err.message);
    cr_expect(gw_field_warned("tempreature"));
    json_t *b = gw_params_upstream_body(&p, 0);
    cr_expect_null(json_object_get(b, "tempreature"), "not passed on");
    cr_expect_null(json_object_get(b, "temperature"));
    json_decref(b);
    gw_params_free(&p);
    /* A chat-only field is unknown to completions. */
    cr_expect_not(gw_field_warned("max_completion_tokens"));
    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":\"x\",\"max_completion_tokens\":5}", &p, &err), 0);
    cr_expect(gw_field_warned("max_completion_tokens"));
    gw_params_free(&p);
}

static int embed(const char *body, json_t **up, struct json_field_error *err)
{
    json_t *root = json_loads(body, 0, NULL);
    cr_assert(root, "test body is not JSON: %s", body);
    char *model = NULL;
    int rc = gw_validate_embeddings(root, &model, up, err);
    json_decref(root);
    if (rc == 0) cr_expect_str_eq(model, "m");
    free(model);
    return rc;
}

Test(validate, embeddings)
{
    static const struct bad_case cases[] = {
        {"{\"input\":\"x\"}", "model"},
        {"{\"model\":\"m\"}", "input"},
        {"{\"model\":\"m\",\"input\":\"\"}", "input"},
        {"{\"model\":\"m\",\"input\":[]}", "input"},
        {"{\"model\":\"m\",\"input\":[\"a\",\"\"]}", "input"},
        {"{\"model\":\"m\",\"input\":[\"a\",[1]]}", "input"},
        {"{\"model\":\"m\",\"input\":[1,-2]}", "input"},
        {"{\"model\":\"m\",\"input\":[[1],[]]}", "input"},
        {"{\"model\":\"m\",\"input\":5}", "input"},
        {"{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":\"hex\"}", "encoding_format"},
        {"{\"model\":\"m\",\"input\":\"x\",\"dimensions\":0}", "dimensions"},
        {"{\"model\":\"m\",\"input\":\"x\",\"normalize\":false}", "normalize"},
        {"{\"model\":\"m\",\"input\":\"x\",\"priority\":1}", "priority"},
        {"{\"model\":\"m\",\"input\":\"x\",\"truncate_prompt_tokens\":0}", "truncate_prompt_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *up = NULL;
        struct json_field_error err = {{0}, {0}};
        cr_expect_eq(embed(cases[i].body, &up, &err), 400, "accepted: %s", cases[i].body);
        cr_expect_str_eq(err.param, cases[i].param, "param for %s: '%s' (%s)", cases[i].body, err.param, err.message);
        json_decref(up);
    }
    json_t *up = NULL;
    struct json_field_error err = {{0}, {0}};
    cr_assert_eq(embed("{\"model\":\"m\",\"input\":[[1,2],[3]],\"encoding_format\":\"base64\",\"dimensions\":8,"
                       "\"user\":\"u\",\"truncate_prompt_tokens\":5}",
                       &up, &err),
                 0, "%s", err.message);
    expect_field_int(up, "dimensions", 8);
    expect_field_int(up, "truncate_prompt_tokens", 5);
    cr_expect_str_eq(json_string_value(json_object_get(up, "encoding_format")), "base64");
    cr_expect_eq(json_array_size(json_object_get(up, "input")), 2);
    cr_expect_null(json_object_get(up, "user"));
    json_decref(up);
    cr_assert_eq(embed("{\"model\":\"m\",\"input\":\"hello\"}", &up, &err), 0, "%s", err.message);
    cr_expect_str_eq(json_string_value(json_object_get(up, "encoding_format")), "float");
    json_decref(up);
}

#define TOOLS "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"}}}]"

Test(validate, structured_output_and_tools_shapes)
{
    static const struct bad_case chat_cases[] = {
        {"{\"model\":\"m\"," MSGS ",\"tools\":{}}", "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tools\":[5]}", "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tools\":[{\"type\":\"retrieval\"}]}", "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]}", "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{}}]}", "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":[]}}]}",
         "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"strict\":1}}]}", "tools"},
        {"{\"model\":\"m\"," MSGS ",\"tool_choice\":\"required\"}", "tool_choice"},
        {"{\"model\":\"m\"," MSGS "," TOOLS ",\"tool_choice\":\"always\"}", "tool_choice"},
        {"{\"model\":\"m\"," MSGS "," TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"x\"}}}",
         "tool_choice"},
        {"{\"model\":\"m\"," MSGS "," TOOLS ",\"tool_choice\":{\"type\":\"function\"}}", "tool_choice"},
        {"{\"model\":\"m\"," MSGS "," TOOLS ",\"parallel_tool_calls\":\"yes\"}", "parallel_tool_calls"},
        {"{\"model\":\"m\"," MSGS ",\"response_format\":\"json\"}", "response_format"},
        {"{\"model\":\"m\"," MSGS ",\"response_format\":{\"type\":\"yaml\"}}", "response_format"},
        {"{\"model\":\"m\"," MSGS ",\"response_format\":{\"type\":\"json_schema\"}}", "response_format"},
        {"{\"model\":\"m\"," MSGS ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":5}}}",
         "response_format"},
        {"{\"model\":\"m\"," MSGS ",\"guided_json\":5}", "guided_json"},
        {"{\"model\":\"m\"," MSGS ",\"guided_regex\":[\"a\"]}", "guided_regex"},
        {"{\"model\":\"m\"," MSGS ",\"guided_choice\":[]}", "guided_choice"},
        {"{\"model\":\"m\"," MSGS ",\"guided_choice\":[1]}", "guided_choice"},
        {"{\"model\":\"m\"," MSGS ",\"guided_grammar\":{}}", "guided_grammar"},
        {"{\"model\":\"m\"," MSGS ",\"structured_outputs\":\"json\"}", "structured_outputs"},
        {"{\"model\":\"m\"," MSGS ",\"response_format\":{\"type\":\"json_object\"},\"guided_regex\":\"a\"}",
         "guided_regex"},
    };
    expect_bad(chat, chat_cases, sizeof chat_cases / sizeof chat_cases[0]);
    static const struct bad_case cmpl_cases[] = {
        {"{\"model\":\"m\",\"prompt\":\"x\",\"guided_choice\":\"a\"}", "guided_choice"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"guided_json\":{},\"guided_grammar\":\"root ::= \\\"a\\\"\"}",
         "guided_grammar"},
    };
    expect_bad(cmpl, cmpl_cases, sizeof cmpl_cases / sizeof cmpl_cases[0]);

    /* Good ones reach the worker as they are: it compiles them (and answers 400 if it cannot). */
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    cr_assert_eq(chat("{\"model\":\"m\"," MSGS "," TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":"
                      "{\"name\":\"get_weather\"}},\"parallel_tool_calls\":false,\"response_format\":{\"type\":\"text\"}}",
                      &p, &err),
                 0, "%s", err.message);
    json_t *b = gw_params_upstream_body(&p, 0);
    cr_expect_eq(json_array_size(json_object_get(b, "tools")), 1);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(b, "tool_choice"), "function"),
                                                       "name")),
                     "get_weather");
    cr_expect(json_is_false(json_object_get(b, "parallel_tool_calls")));
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(b, "response_format"), "type")), "text");
    json_decref(b);
    gw_params_free(&p);
    cr_assert_eq(chat("{\"model\":\"m\"," MSGS ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":"
                      "\"n\",\"schema\":{\"type\":\"integer\"},\"strict\":true}}}",
                      &p, &err),
                 0, "%s", err.message);
    b = gw_params_upstream_body(&p, 0);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(json_object_get(b,
                                                       "response_format"), "json_schema"), "schema"), "type")),
                     "integer");
    json_decref(b);
    gw_params_free(&p);
    cr_assert_eq(cmpl("{\"model\":\"m\",\"prompt\":\"x\",\"guided_choice\":[\"a\",\"b\"]}", &p, &err), 0, "%s",
                 err.message);
    b = gw_params_upstream_body(&p, 0);
    cr_expect_eq(json_array_size(json_object_get(b, "guided_choice")), 2);
    json_decref(b);
    gw_params_free(&p);
}
