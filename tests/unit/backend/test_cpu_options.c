/* The CPU backend's flags (CPU_OPTIONS_FLAG_SPECS, worker/backend/cpu/cpu_options.h), the table
 * entries `sluice-worker` and `sluice-worker bench` both take: --threads lands in
 * cpu_options.n_threads and nowhere else, within its bounds, under the help line README.md lists. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <string.h>

#include "worker/backend/cpu/cpu_options.h"

static int parse(struct cpu_options *o, int argc, char **argv)
{
    const struct flag_spec specs[] = {CPU_OPTIONS_FLAG_SPECS(o), {0}};
    return flags_parse("test_cpu_options", "CPU options", specs, argc, argv, 1, NULL, 0, NULL);
}

/* Fields with no flag, set to values a flag would not write, so that a flag aimed at the wrong
 * field shows. */
static struct cpu_options marked(void)
{
    return (struct cpu_options){.f32_weights = true, .fp8_act_rows = {11, 12, 13, 14}};
}

static void expect_marks_kept(const struct cpu_options *o)
{
    const struct cpu_options m = marked();
    cr_expect(o->f32_weights, "f32_weights has no flag");
    cr_expect(!memcmp(o->fp8_act_rows, m.fp8_act_rows, sizeof m.fp8_act_rows), "fp8_act_rows has no flag");
}

Test(cpu_options, no_flag_leaves_the_defaults)
{
    struct cpu_options o = {0}, zero = {0};
    char *argv[] = {"prog"};
    cr_assert_eq(parse(&o, 1, argv), FLAGS_OK);
    cr_assert(!memcmp(&o, &zero, sizeof o), "zero everywhere is the default");
}

Test(cpu_options, threads_sets_n_threads_only)
{
    struct cpu_options o = marked();
    char *argv[] = {"prog", "--threads", "3"};
    cr_assert_eq(parse(&o, 3, argv), FLAGS_OK);
    cr_assert_eq(o.n_threads, 3);
    expect_marks_kept(&o);

    char *argv_eq[] = {"prog", "--threads=1024"};
    cr_assert_eq(parse(&o, 2, argv_eq), FLAGS_OK);
    cr_assert_eq(o.n_threads, 1024);
    char *argv_zero[] = {"prog", "--threads", "0"};
    cr_assert_eq(parse(&o, 3, argv_zero), FLAGS_OK);
    cr_assert_eq(o.n_threads, 0, "0: all cores");
    expect_marks_kept(&o);
}

Test(cpu_options, threads_out_of_bounds_is_refused, .init = cr_redirect_stderr)
{
    const char *bad[] = {"-1", "1025", "four"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cpu_options o = {.n_threads = 2};
        char *argv[] = {"prog", "--threads", (char *)bad[i]};
        cr_assert_eq(parse(&o, 3, argv), FLAGS_ERROR, "--threads %s accepted", bad[i]);
        cr_assert_eq(o.n_threads, 2, "--threads %s changed n_threads", bad[i]);
    }
}

/* The line README.md's worker flag listing has: the worker's and the bench's --help print it. */
Test(cpu_options, help_line)
{
    struct cpu_options o = {0};
    const struct flag_spec specs[] = {CPU_OPTIONS_FLAG_SPECS(&o), {0}};
    cr_redirect_stdout();
    flags_print_help("prog", "s", specs);
    fflush(stdout);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, cr_get_redirected_stdout());
    text[n] = '\0';
    cr_assert(strstr(text, "  --threads N                        CPU: threads (0: all cores) (default: 0)\n"), "%s",
              text);
}
