#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "worker/engine/stop.h"

/* Pushes text and checks what comes out and whether it matched. */
static void push(struct stop_state *st, const char *in, const char *want, int want_rc)
{
    char *out = NULL;
    size_t len = 0;
    int rc = stop_push_text(st, in, strlen(in), &out, &len);
    cr_assert_eq(rc, want_rc, "push \"%s\": rc %d, expected %d", in, rc, want_rc);
    cr_assert_eq(len, strlen(out));
    cr_assert_str_eq(out, want, "push \"%s\"", in);
    free(out);
}

static void flush(struct stop_state *st, const char *want)
{
    char *out = NULL;
    size_t len = 0;
    cr_assert_eq(stop_flush_text(st, &out, &len), 0);
    cr_assert_str_eq(out, want);
    free(out);
}

Test(stop, no_stop_strings_pass_through)
{
    struct stop_state st;
    stop_init(&st, NULL, 0, NULL, 0, NULL, 0, 0, 0);
    push(&st, "hello", "hello", 0);
    push(&st, "", "", 0);
    flush(&st, "");
    stop_free(&st);
}

Test(stop, held_back_then_released)
{
    char *stops[] = {"###"};
    struct stop_state st;
    stop_init(&st, NULL, 0, NULL, 0, stops, 1, 0, 0);
    push(&st, "ab#", "ab", 0);
    push(&st, "#", "", 0);
    push(&st, "x", "##x", 0);
    push(&st, "y#", "y", 0);
    flush(&st, "#");
    stop_free(&st);
}

Test(stop, match_across_tokens)
{
    char *stops[] = {"world", "\n\n"};
    struct stop_state st;
    stop_init(&st, NULL, 0, NULL, 0, stops, 2, 0, 0);
    push(&st, "Hello wo", "Hello ", 0);
    push(&st, "r", "", 0);
    push(&st, "ld! more", "", 1);
    push(&st, "after", "", 1);
    flush(&st, "");
    stop_free(&st);

    stop_init(&st, NULL, 0, NULL, 0, stops, 2, 0, 0);
    push(&st, "line\n", "line", 0);
    push(&st, "\nnext", "", 1);
    stop_free(&st);
}

Test(stop, partial_match_that_fails_is_released)
{
    char *stops[] = {"abc"};
    struct stop_state st;
    stop_init(&st, NULL, 0, NULL, 0, stops, 1, 0, 0);
    push(&st, "xab", "x", 0);
    push(&st, "d", "abd", 0);
    push(&st, "aab", "a", 0);   /* "a" can't start "abc" followed by "ab"; "ab" can */
    push(&st, "ab", "ab", 0);   /* "abab": the first "ab" is released, the second held */
    push(&st, "c tail", "", 1); /* matched: nothing after */
    stop_free(&st);
}

Test(stop, earliest_stop_wins_and_text_before_is_kept)
{
    char *stops[] = {"cd", "bcdx"};
    struct stop_state st;
    stop_init(&st, NULL, 0, NULL, 0, stops, 2, 0, 0);
    push(&st, "abcd", "ab", 1);
    stop_free(&st);

    char *utf[] = {"é!"};
    stop_init(&st, NULL, 0, NULL, 0, utf, 1, 0, 0);
    push(&st, "café", "caf", 0);
    push(&st, "?", "é?", 0);
    push(&st, "é", "", 0);
    push(&st, "!", "", 1);
    stop_free(&st);
}

Test(stop, token_conditions)
{
    int eos[2] = {2, 7};
    int32_t ids[1] = {5};
    struct stop_state st;
    bool emit;
    stop_init(&st, eos, 2, ids, 1, NULL, 0, 10, 100);
    cr_assert_eq(stop_check_token(&st, 3, 1, 50, &emit), FINISH_NONE);
    cr_assert(emit);
    cr_assert_eq(stop_check_token(&st, 7, 1, 50, &emit), FINISH_STOP);
    cr_assert_not(emit);
    cr_assert_eq(stop_check_token(&st, 5, 1, 50, &emit), FINISH_STOP);
    cr_assert_not(emit);
    cr_assert_eq(stop_check_token(&st, 3, 10, 50, &emit), FINISH_LENGTH);
    cr_assert(emit, "the last token's text still counts");
    cr_assert_eq(stop_check_token(&st, 3, 5, 100, &emit), FINISH_LENGTH);
    cr_assert_eq(stop_check_token(&st, 2, 10, 100, &emit), FINISH_STOP, "EOS wins over length");
    stop_free(&st);
    /* ignore_eos: the engine passes no EOS ids. */
    stop_init(&st, NULL, 0, NULL, 0, NULL, 0, 0, 0);
    cr_assert_eq(stop_check_token(&st, 2, 1000, 1000, &emit), FINISH_NONE);
    stop_free(&st);
}

Test(stop, include_stop_keeps_the_stop_string_and_token_text)
{
    char *stops[] = {"lo w", "xyz"};
    int32_t ids[1] = {7};
    int eos[1] = {2};
    struct stop_state st;
    stop_init(&st, eos, 1, ids, 1, stops, 2, 0, 0);
    st.include_stop = true;
    push(&st, "Hel", "He", 0);
    push(&st, "lo wo", "llo w", 1);
    bool emit = false;
    cr_assert_eq(stop_check_token(&st, 7, 1, 10, &emit), FINISH_STOP);
    cr_assert(emit, "a stop token's text stays with include_stop");
    cr_assert_eq(stop_check_token(&st, 2, 1, 10, &emit), FINISH_STOP);
    cr_assert(emit);
    st.include_stop = false;
    cr_assert_eq(stop_check_token(&st, 7, 1, 10, &emit), FINISH_STOP);
    cr_assert_not(emit);
    stop_free(&st);
}

Test(stop, min_tokens_defers_eos_and_stop_tokens)
{
    int32_t ids[1] = {7};
    int eos[1] = {2};
    struct stop_state st;
    stop_init(&st, eos, 1, ids, 1, NULL, 0, 10, 0);
    st.min_tokens = 3;
    bool emit = false;
    for (int32_t n = 1; n <= 3; n++) {
        cr_assert_eq(stop_check_token(&st, 2, n, 20 + n, &emit), FINISH_NONE, "EOS as token %d", n);
        cr_assert_eq(stop_check_token(&st, 7, n, 20 + n, &emit), FINISH_NONE, "stop token as token %d", n);
    }
    cr_assert_eq(stop_check_token(&st, 2, 4, 24, &emit), FINISH_STOP);
    cr_assert_eq(stop_check_token(&st, 7, 4, 24, &emit), FINISH_STOP);
    cr_assert_eq(stop_check_token(&st, 5, 10, 30, &emit), FINISH_LENGTH, "max_tokens still ends it");
    stop_free(&st);
}
