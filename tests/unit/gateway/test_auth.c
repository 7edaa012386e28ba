#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "gateway/auth.h"

Test(auth, no_keys_allows_everything)
{
    gw_auth *a;
    cr_assert_eq(gw_auth_init(&a, NULL, NULL), 0);
    cr_expect_eq(gw_auth_key_count(a), 0);
    cr_expect(gw_auth_check(a, NULL));
    cr_expect(gw_auth_check(a, "Bearer whatever"));
    gw_auth_free(a);
}

Test(auth, keys_from_flag_and_file)
{
    char path[] = "/tmp/sluice-gw-keys-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# comment\nfilekey1\n\n  filekey2  \r\n");
    fclose(f);
    gw_auth *a;
    cr_assert_eq(gw_auth_init(&a, "k1, k2,", path), 0);
    unlink(path);
    cr_expect_eq(gw_auth_key_count(a), 4);
    cr_expect(gw_auth_check(a, "Bearer k1"));
    cr_expect(gw_auth_check(a, "bearer k2"));
    cr_expect(gw_auth_check(a, "Bearer filekey1"));
    cr_expect(gw_auth_check(a, "Bearer filekey2"));
    cr_expect(!gw_auth_check(a, NULL));
    cr_expect(!gw_auth_check(a, ""));
    cr_expect(!gw_auth_check(a, "Bearer "));
    cr_expect(!gw_auth_check(a, "Bearer k3"));
    cr_expect(!gw_auth_check(a, "Basic k1"));
    cr_expect(!gw_auth_check(a, "k1"));
    cr_expect(!gw_auth_check(a, "Bearer # comment"));
    cr_expect(!gw_auth_check(a, "Bearer k1k2"));
    gw_auth_free(a);
}

Test(auth, unreadable_file_fails)
{
    gw_auth *a = (gw_auth *)1;
    cr_expect_lt(gw_auth_init(&a, "k", "/nonexistent/sluice/keys"), 0);
    cr_expect_null(a);
}
