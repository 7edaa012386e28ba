/* Rate limits per API key (common/ratelimit.h): token buckets driven by a clock the test
 * holds, admission and settlement, the limits file in both formats, and the header values. */
#include <criterion/criterion.h>
#include <string.h>

#include "common/ratelimit.h"

Test(ratelimit, a_bucket_bursts_its_minute_then_refills_at_the_rate)
{
    struct rl_bucket b;
    double now = 1000;
    rl_bucket_init(&b, 60, now); /* one a second */
    for (int i = 0; i < 60; i++) {
        cr_assert_eq(rl_bucket_wait(&b, 1, now), 0, "request %d of the burst", i);
        rl_bucket_take(&b, 1, now);
    }
    cr_assert_float_eq(rl_bucket_wait(&b, 1, now), 1.0, 1e-9, "the 61st waits a second");
    cr_assert_eq(rl_bucket_remaining(&b, now), 0);
    cr_assert_float_eq(rl_bucket_reset(&b, now), 60.0, 1e-9);
    now += 0.5;
    cr_assert_float_eq(rl_bucket_wait(&b, 1, now), 0.5, 1e-9);
    now += 0.5;
    cr_assert_eq(rl_bucket_wait(&b, 1, now), 0);
    now += 3600;
    cr_assert_eq(rl_bucket_remaining(&b, now), 60, "never more than a minute's worth");
}

Test(ratelimit, an_ask_larger_than_the_bucket_waits_for_a_full_one_and_goes_into_debt)
{
    struct rl_bucket b;
    rl_bucket_init(&b, 100, 0);
    rl_bucket_take(&b, 50, 0);
    cr_assert_float_eq(rl_bucket_wait(&b, 500, 0), 30.0, 1e-9, "until full: 50 tokens at 100/min");
    cr_assert_eq(rl_bucket_wait(&b, 500, 30), 0);
    rl_bucket_take(&b, 500, 30);
    cr_assert_eq(rl_bucket_remaining(&b, 30), 0);
    cr_assert_float_eq(rl_bucket_wait(&b, 1, 30), 401 * 0.6, 1e-9, "the debt of 400 is repaid first");
}

Test(ratelimit, unlimited_is_zero)
{
    struct rl_bucket b;
    rl_bucket_init(&b, 0, 0);
    rl_bucket_take(&b, 1e9, 0);
    cr_assert_eq(rl_bucket_wait(&b, 1e9, 0), 0);
}

Test(ratelimit, admission_takes_both_and_refuses_by_the_longer_wait)
{
    struct rl_state s;
    struct rl_limits lim = {.rpm = 2, .tpm = 1000};
    rl_state_init(&s, &lim, 0);
    struct rl_decision d;
    rl_admit(&s, 600, 0, &d);
    cr_assert(d.allowed);
    cr_assert_eq(d.remaining_requests, 1);
    cr_assert_eq(d.remaining_tokens, 400);
    cr_assert_float_eq(d.reset_tokens, 36.0, 1e-9);
    rl_admit(&s, 600, 0, &d);
    cr_assert_not(d.allowed);
    cr_assert(d.by_tokens, "one request is left but not 600 tokens");
    cr_assert_float_eq(d.retry_after, 12.0, 1e-9, "200 tokens at 1000/min");
    cr_assert_eq(d.remaining_requests, 1, "a refused request takes nothing");
    rl_admit(&s, 10, 0, &d);
    cr_assert(d.allowed);
    rl_admit(&s, 10, 0, &d);
    cr_assert_not(d.allowed);
    cr_assert_not(d.by_tokens);
    cr_assert_float_eq(d.retry_after, 30.0, 1e-9, "a request at 2/min");
}

Test(ratelimit, settlement_returns_what_was_not_used_and_takes_what_was_over)
{
    struct rl_state s;
    struct rl_limits lim = {.rpm = 0, .tpm = 1000};
    rl_state_init(&s, &lim, 0);
    struct rl_decision d;
    rl_admit(&s, 900, 0, &d);
    cr_assert(d.allowed);
    rl_settle(&s, 900, 100, 0);
    cr_assert_eq(rl_bucket_remaining(&s.tokens, 0), 900, "prompt + max_tokens reserved, 100 used");
    rl_settle(&s, 0, 1200, 0);
    cr_assert_eq(rl_bucket_remaining(&s.tokens, 0), 0);
    cr_assert_float_eq(rl_bucket_wait(&s.tokens, 1, 0), 301 * 0.06, 1e-9, "in debt by 300");
}

Test(ratelimit, a_new_limit_keeps_what_was_used)
{
    struct rl_state s;
    struct rl_limits lim = {.rpm = 10, .tpm = 0};
    rl_state_init(&s, &lim, 0);
    struct rl_decision d;
    for (int i = 0; i < 4; i++) rl_admit(&s, 0, 0, &d);
    struct rl_limits more = {.rpm = 20, .tpm = 100};
    rl_state_set_limits(&s, &more, 0);
    cr_assert_eq(rl_bucket_remaining(&s.requests, 0), 16);
    cr_assert_eq(rl_bucket_remaining(&s.tokens, 0), 100, "newly limited: starts full");
    struct rl_limits fewer = {.rpm = 5, .tpm = 100};
    rl_state_set_limits(&s, &fewer, 0);
    cr_assert_eq(rl_bucket_remaining(&s.requests, 0), 1);
}

static rl_config *parse(const char *text)
{
    rl_config *c = NULL;
    char err[256] = "";
    cr_assert_eq(rl_config_parse(text, strlen(text), &c, err, sizeof err), 0, "%s: %s", text, err);
    return c;
}

static void parse_fails(const char *text, const char *want)
{
    rl_config *c = NULL;
    char err[256] = "";
    cr_assert_eq(rl_config_parse(text, strlen(text), &c, err, sizeof err), -1, "%s", text);
    cr_assert_null(c);
    cr_assert(strstr(err, want), "'%s' for %s", err, text);
}

Test(ratelimit, the_file_in_lines_and_in_json)
{
    struct rl_limits l;
    rl_config *c = parse("# key rpm tpm\ndefault 10 1000\nsk-a 60 50000  # a big one\n\nsk-b 0 100\n");
    cr_assert_eq(rl_config_key_count(c), 2);
    rl_config_limits(c, "sk-a", &l);
    cr_assert(l.rpm == 60 && l.tpm == 50000);
    rl_config_limits(c, "sk-b", &l);
    cr_assert(l.rpm == 0 && l.tpm == 100);
    rl_config_limits(c, "sk-other", &l);
    cr_assert(l.rpm == 10 && l.tpm == 1000);
    rl_config_limits(c, NULL, &l);
    cr_assert(l.rpm == 10 && l.tpm == 1000);
    rl_config_free(c);

    c = parse(" {\"default\": {\"rpm\": 5}, \"keys\": {\"sk-a\": {\"rpm\": 1, \"tpm\": 2}}}");
    rl_config_limits(c, "sk-a", &l);
    cr_assert(l.rpm == 1 && l.tpm == 2);
    rl_config_limits(c, "x", &l);
    cr_assert(l.rpm == 5 && l.tpm == 0);
    rl_config_free(c);

    c = parse("");
    rl_config_limits(c, "x", &l);
    cr_assert(l.rpm == 0 && l.tpm == 0, "no default: unlimited");
    rl_config_free(c);
}

Test(ratelimit, bad_files_name_the_line_or_field)
{
    parse_fails("sk-a 10\n", "line 1");
    parse_fails("sk-a 10 20\nsk-b ten 20\n", "line 2");
    parse_fails("sk-a 10 -1\n", "line 1");
    parse_fails("sk-a 1 1\nsk-a 2 2\n", "twice");
    parse_fails("default 1 1\ndefault 2 2\n", "second default");
    parse_fails("{\"default\": {\"rpm\": \"5\"}}", "default.rpm");
    parse_fails("{\"keys\": {\"k\": {\"rpn\": 5}}}", "rpn");
    parse_fails("{\"limits\": {}}", "limits");
    parse_fails("{\"default\": ", "not valid JSON");
}

Test(ratelimit, the_table_keeps_a_state_per_key_and_takes_new_limits)
{
    rl_config *c = parse("default 1 0\nsk-a 2 0\n");
    rl_table *t = rl_table_new(c);
    struct rl_decision d;
    rl_admit(rl_table_get(t, "sk-a", 0), 0, 0, &d);
    cr_assert(d.allowed);
    rl_admit(rl_table_get(t, "sk-a", 0), 0, 0, &d);
    cr_assert(d.allowed);
    rl_admit(rl_table_get(t, "sk-a", 0), 0, 0, &d);
    cr_assert_not(d.allowed);
    rl_admit(rl_table_get(t, "", 0), 0, 0, &d);
    cr_assert(d.allowed, "another key has its own buckets");
    for (int i = 0; i < 100; i++) cr_assert_not_null(rl_table_get(t, i % 2 ? "x" : "y", 0));
    cr_assert_eq(rl_table_count(t), 4);

    rl_config *c2 = parse("default 1 0\nsk-a 5 0\n");
    rl_table_configure(t, c2, 0);
    rl_config_free(c);
    rl_admit(rl_table_get(t, "sk-a", 0), 0, 0, &d);
    cr_assert(d.allowed, "5 a minute now, 2 used");
    cr_assert_eq(d.remaining_requests, 2);
    rl_table_free(t);
    rl_config_free(c2);
}

Test(ratelimit, durations_read_as_openai_writes_them)
{
    char buf[32];
    struct { double s; const char *want; } cases[] = {
        {0, "0ms"}, {0.0201, "21ms"}, {1, "1s"}, {1.5, "1.5s"}, {360, "6m0s"}, {90.25, "1m30.25s"}, {59.9999, "1m0s"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rl_format_duration(cases[i].s, buf, sizeof buf);
        cr_assert_str_eq(buf, cases[i].want, "%g s", cases[i].s);
    }
}
