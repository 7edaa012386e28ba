#include <criterion/criterion.h>
#include <string.h>

#include "common/auth.h"

Test(auth, equal_compares_whole_keys)
{
    cr_expect(auth_equal("abc", 3, "abc", 3));
    cr_expect(!auth_equal("abc", 3, "abd", 3));
    cr_expect(!auth_equal("ab", 2, "abc", 3));
    cr_expect(!auth_equal("abcd", 4, "abc", 3));
    cr_expect(!auth_equal("", 0, "abc", 3));
    cr_expect(!auth_equal("abc", 3, "", 0));
    cr_expect(!auth_equal("abcabc", 6, "abc", 3), "a repeated key is not the key");
}

Test(auth, bearer_credential)
{
    size_t n = 99;
    const char *c = auth_bearer_credential("Bearer  tok  ", &n);
    cr_assert_not_null(c);
    cr_expect_eq(n, 3);
    cr_expect(!strncmp(c, "tok", 3));
    cr_expect_not_null(auth_bearer_credential("bEARER x", &n));
    cr_expect_null(auth_bearer_credential(NULL, &n));
    cr_expect_null(auth_bearer_credential("Basic x", &n));
    cr_expect_null(auth_bearer_credential("Bearerx", &n));
    cr_expect_null(auth_bearer_credential("tok", &n));
}

Test(auth, bearer_ok)
{
    cr_assert(auth_bearer_ok(NULL, NULL), "no token configured allows everything");
    cr_assert(auth_bearer_ok(NULL, ""));
    cr_assert(auth_bearer_ok("Bearer s3cret", "s3cret"));
    cr_assert(auth_bearer_ok("bearer s3cret", "s3cret"));
    cr_assert(auth_bearer_ok("Bearer s3cret ", "s3cret"));
    cr_assert_not(auth_bearer_ok(NULL, "s3cret"));
    cr_assert_not(auth_bearer_ok("", "s3cret"));
    cr_assert_not(auth_bearer_ok("s3cret", "s3cret"));
    cr_assert_not(auth_bearer_ok("Bearer s3cre", "s3cret"));
    cr_assert_not(auth_bearer_ok("Bearer s3cret2", "s3cret"));
    cr_assert_not(auth_bearer_ok("Bearer S3cret", "s3cret"));
    cr_assert_not(auth_bearer_ok("Bearer ", "s3cret"));
    cr_assert_not(auth_bearer_ok("Basic s3cret", "s3cret"));
}

Test(auth, listen_check)
{
    struct auth_internal none = {.program = "test"};
    struct auth_internal token = {.token = "t", .program = "test"};
    struct auth_internal open = {.allow_unauthenticated = true, .program = "test"};
    cr_expect_eq(auth_listen_check(&none, "127.0.0.1"), 0);
    cr_expect_eq(auth_listen_check(&none, "127.0.0.5"), 0);
    cr_expect_eq(auth_listen_check(&none, "::1"), 0);
    cr_expect_eq(auth_listen_check(&none, "0.0.0.0"), -1);
    cr_expect_eq(auth_listen_check(&none, "::"), -1);
    cr_expect_eq(auth_listen_check(&none, "10.0.0.1"), -1);
    cr_expect_eq(auth_listen_check(&token, "0.0.0.0"), 0);
    cr_expect_eq(auth_listen_check(&open, "0.0.0.0"), 0);
    struct auth_internal empty = {.token = "", .program = "test"};
    cr_expect_eq(auth_listen_check(&empty, "0.0.0.0"), -1, "an empty token is no token");
}
