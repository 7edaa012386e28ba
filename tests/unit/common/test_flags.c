#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <stdlib.h>
#include <string.h>

#include "common/flags.h"

static const char *host;
static long port;
static double temp;
static bool verbose;

static struct flag_spec specs[] = {
    {"host", FLAG_STRING, &host, "TEST_FLAGS_HOST", "HOST", "address to bind", 0, 0},
    {"port", FLAG_INT, &port, "TEST_FLAGS_PORT", "PORT", "port to listen on", 0, 65535},
    {"temperature", FLAG_DOUBLE, &temp, NULL, "T", "sampling temperature", 0, 2},
    {"verbose", FLAG_BOOL, &verbose, "TEST_FLAGS_VERBOSE", NULL, "log more", 0, 0},
    {NULL, 0, NULL, NULL, NULL, NULL, 0, 0},
};

static void defaults(void)
{
    host = "127.0.0.1";
    port = 8000;
    temp = 0.7;
    verbose = false;
    unsetenv("TEST_FLAGS_HOST");
    unsetenv("TEST_FLAGS_PORT");
    unsetenv("TEST_FLAGS_VERBOSE");
    cr_redirect_stderr();
}

static int parse(int argc, char **argv)
{
    return flags_parse("prog", "a test program", specs, argc, argv, 1, NULL, 0, NULL);
}

TestSuite(flags, .init = defaults);

Test(flags, defaults_stay_without_flags)
{
    char *argv[] = {"prog"};
    cr_assert_eq(parse(1, argv), FLAGS_OK);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 8000);
    cr_assert_float_eq(temp, 0.7, 1e-12);
    cr_assert(!verbose);
}

Test(flags, both_value_forms)
{
    char *argv[] = {"prog", "--port=9001", "--host", "0.0.0.0", "--temperature", "1.5", "--verbose"};
    cr_assert_eq(parse(7, argv), FLAGS_OK);
    cr_assert_eq(port, 9001);
    cr_assert_str_eq(host, "0.0.0.0");
    cr_assert_float_eq(temp, 1.5, 1e-12);
    cr_assert(verbose);
}

Test(flags, environment_overrides_default_and_flag_overrides_environment)
{
    setenv("TEST_FLAGS_PORT", "7000", 1);
    setenv("TEST_FLAGS_HOST", "::", 1);
    setenv("TEST_FLAGS_VERBOSE", "true", 1);
    char *argv1[] = {"prog"};
    cr_assert_eq(parse(1, argv1), FLAGS_OK);
    cr_assert_eq(port, 7000);
    cr_assert_str_eq(host, "::");
    cr_assert(verbose);
    char *argv2[] = {"prog", "--port=7001"};
    cr_assert_eq(parse(2, argv2), FLAGS_OK);
    cr_assert_eq(port, 7001);
}

Test(flags, bounds_and_bad_values_fail)
{
    char *a1[] = {"prog", "--port=70000"};
    cr_assert_eq(parse(2, a1), FLAGS_ERROR);
    char *a2[] = {"prog", "--port=-1"};
    cr_assert_eq(parse(2, a2), FLAGS_ERROR);
    char *a3[] = {"prog", "--port=12ab"};
    cr_assert_eq(parse(2, a3), FLAGS_ERROR);
    char *a4[] = {"prog", "--temperature=2.5"};
    cr_assert_eq(parse(2, a4), FLAGS_ERROR);
    char *a5[] = {"prog", "--port"};
    cr_assert_eq(parse(2, a5), FLAGS_ERROR, "a missing value must fail");
    char *a6[] = {"prog", "--port=65535", "--temperature=0"};
    cr_assert_eq(parse(3, a6), FLAGS_OK, "bounds are inclusive");
    cr_assert_eq(port, 65535);
    cr_assert_float_eq(temp, 0.0, 1e-12);
}

Test(flags, bad_environment_value_fails)
{
    setenv("TEST_FLAGS_PORT", "lots", 1);
    char *argv[] = {"prog"};
    cr_assert_eq(parse(1, argv), FLAGS_ERROR);
    fflush(stderr);
    cr_assert_stderr_neq_str("", "the error names nothing");
}

Test(flags, unknown_flag_and_stray_argument_fail)
{
    char *a1[] = {"prog", "--nope=1"};
    cr_assert_eq(parse(2, a1), FLAGS_ERROR);
    char *a2[] = {"prog", "stray"};
    cr_assert_eq(parse(2, a2), FLAGS_ERROR);
    char *a3[] = {"prog", "--portx=1"};
    cr_assert_eq(parse(2, a3), FLAGS_ERROR, "a prefix of a name is not the name");
}

Test(flags, positional_arguments_collected)
{
    const char *pos[2];
    int n = -1;
    char *argv[] = {"prog", "a", "--port", "1", "b"};
    cr_assert_eq(flags_parse("prog", "s", specs, 5, argv, 1, pos, 2, &n), FLAGS_OK);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(pos[0], "a");
    cr_assert_str_eq(pos[1], "b");
    cr_assert_eq(port, 1);
    char *too_many[] = {"prog", "a", "b", "c"};
    cr_assert_eq(flags_parse("prog", "s", specs, 4, too_many, 1, pos, 2, &n), FLAGS_ERROR);
}

Test(flags, help_returns_help_and_lists_flags)
{
    cr_redirect_stdout();
    char *argv[] = {"prog", "--port=1", "--help"};
    cr_assert_eq(parse(3, argv), FLAGS_HELP);
    fflush(stdout);
    FILE *out = cr_get_redirected_stdout();
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, out);
    text[n] = '\0';
    cr_assert(strstr(text, "usage: prog"), "%s", text);
    cr_assert(strstr(text, "--port PORT"), "%s", text);
    cr_assert(strstr(text, "TEST_FLAGS_PORT"), "%s", text);
    cr_assert(strstr(text, "--verbose"), "%s", text);
    cr_assert(strstr(text, "--help"), "%s", text);
}

/* A help text that names its default itself keeps it, without the stored value (often a
 * sentinel such as 0) appended as a second one; other flags still get theirs. */
Test(flags, help_says_each_default_once)
{
    static long max_len, threads;
    const struct flag_spec own[] = {
        {"max-len", FLAG_INT, &max_len, NULL, "N", "context length (default: the model's)", 0, 100},
        {"threads", FLAG_INT, &threads, NULL, "N", "threads", 0, 100},
        {NULL, 0, NULL, NULL, NULL, NULL, 0, 0},
    };
    max_len = 0;
    threads = 4;
    cr_redirect_stdout();
    flags_print_help("prog", "s", own);
    fflush(stdout);
    FILE *out = cr_get_redirected_stdout();
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, out);
    text[n] = '\0';
    cr_assert(strstr(text, "context length (default: the model's)\n"), "%s", text);
    cr_assert(!strstr(text, "(default: 0)"), "%s", text);
    cr_assert(strstr(text, "threads (default: 4)\n"), "%s", text);
}
