/* The prefix key the gateway sends the controller (cache_aware dispatch): requests that start
 * alike share it, requests that do not, do not. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/route.h"

/* The key of a chat (messages) or completions request body. */
static void key_of(const char *body, char out[GW_PREFIX_KEY_SIZE])
{
    json_t *root = json_loads(body, 0, NULL);
    cr_assert(root, "test body is not JSON: %s", body);
    struct gw_params p;
    struct json_field_error err = {{0}, {0}};
    int rc = json_object_get(root, "messages") ? gw_validate_chat(root, &p, &err) : gw_validate_completion(root, &p, &err);
    cr_assert_eq(rc, 0, "%s: %s", body, err.message);
    json_decref(root);
    cr_assert_not_null(gw_route_prefix_key(&p, out));
    cr_assert_eq(strlen(out), 16);
    gw_params_free(&p);
}

static char *chat_body(const char *system, const char *user, const char *more)
{
    static char buf[8192];
    snprintf(buf, sizeof buf,
             "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
             "{\"role\":\"user\",\"content\":\"%s\"}%s]}",
             system, user, more);
    return buf;
}

Test(route, a_conversation_keeps_its_key_and_others_differ)
{
    char k1[GW_PREFIX_KEY_SIZE], k2[GW_PREFIX_KEY_SIZE], k3[GW_PREFIX_KEY_SIZE], k4[GW_PREFIX_KEY_SIZE];
    key_of(chat_body("You are helpful.", "What is 2+2?", ""), k1);
    key_of(chat_body("You are helpful.", "What is 2+2?",
                     ",{\"role\":\"assistant\",\"content\":\"4\"},{\"role\":\"user\",\"content\":\"And 3+3?\"}"),
           k2);
    cr_assert_str_eq(k1, k2, "the next turn resends the opening: same key");
    key_of(chat_body("You are helpful.", "What is 2+3?", ""), k3);
    cr_assert_str_neq(k1, k3, "another conversation with the same system prompt");
    key_of(chat_body("You are terse.", "What is 2+2?", ""), k4);
    cr_assert_str_neq(k1, k4);
    key_of("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", k3);
    key_of("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
           "{\"role\":\"assistant\",\"content\":\"ho\"}]}", k4);
    cr_assert_str_eq(k3, k4);
}

Test(route, a_long_opening_is_keyed_by_its_start)
{
    char k1[GW_PREFIX_KEY_SIZE], k2[GW_PREFIX_KEY_SIZE], k3[GW_PREFIX_KEY_SIZE];
    char sys[1500];
    memset(sys, 'x', sizeof sys - 1);
    sys[sizeof sys - 1] = '\0';
    key_of(chat_body(sys, "What is 2+2?", ""), k1);
    key_of(chat_body(sys, "What is 2+3?", ""), k2);
    cr_assert_str_eq(k1, k2, "past %d bytes nothing counts", GW_PREFIX_KEY_CHAT_BYTES);
    sys[900] = 'y'; /* about byte 930 of the messages' JSON */
    key_of(chat_body(sys, "What is 2+2?", ""), k3);
    cr_assert_str_neq(k1, k3);
}

Test(route, completions_key_the_start_of_their_first_prompt)
{
    char k1[GW_PREFIX_KEY_SIZE], k2[GW_PREFIX_KEY_SIZE], k3[GW_PREFIX_KEY_SIZE], k4[GW_PREFIX_KEY_SIZE];
    key_of("{\"model\":\"m\",\"prompt\":\"Once upon a time\"}", k1);
    key_of("{\"model\":\"m\",\"prompt\":[\"Once upon a time\",\"Something else\"]}", k2);
    cr_assert_str_eq(k1, k2);
    key_of("{\"model\":\"m\",\"prompt\":\"Once upon a tide\"}", k3);
    cr_assert_str_neq(k1, k3);
    key_of("{\"model\":\"m\",\"prompt\":[1,2,3]}", k4);
    key_of("{\"model\":\"m\",\"prompt\":[1,2,4]}", k3);
    cr_assert_str_neq(k3, k4);
    /* A resent history keeps the key once the first turn fills the key's bytes. */
    char body[2048], text[700];
    memset(text, 'a', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    snprintf(body, sizeof body, "{\"model\":\"m\",\"prompt\":\"%.300s\"}", text);
    key_of(body, k1);
    snprintf(body, sizeof body, "{\"model\":\"m\",\"prompt\":\"%s and then more\"}", text);
    key_of(body, k2);
    cr_assert_str_eq(k1, k2);
}
