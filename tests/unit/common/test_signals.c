/* The signal watcher every program stops through: the first signal starts the graceful stop,
 * a later one the immediate one, and the handles close once however often close is called. */
#include <criterion/criterion.h>
#include <signal.h>

#include "common/signals.h"

struct seen {
    int first, again, last_signum;
};

static void on_first(void *arg, int signum)
{
    struct seen *s = arg;
    s->first++;
    s->last_signum = signum;
}

static void on_again(void *arg, int signum)
{
    struct seen *s = arg;
    s->again++;
    s->last_signum = signum;
}

/* Runs the loop until cond holds, at most a few hundred iterations (signals arrive through
 * libuv's pipe, so one iteration may not be enough). */
#define RUN_UNTIL(loop, cond)                                                      \
    for (int i_ = 0; i_ < 500 && !(cond); i_++) uv_run((loop), UV_RUN_NOWAIT)

Test(signals, first_then_again_then_closed_once)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct signals_watch w;
    struct seen seen = {0};
    cr_assert_eq(signals_watch_start(&w, &loop, on_first, on_again, &seen), 0);

    raise(SIGINT);
    RUN_UNTIL(&loop, seen.first == 1);
    cr_assert_eq(seen.first, 1);
    cr_assert_eq(seen.again, 0);
    cr_assert_eq(seen.last_signum, SIGINT);

    /* Both kinds after the first count as "again", however many arrive together. */
    raise(SIGTERM);
    raise(SIGINT);
    RUN_UNTIL(&loop, seen.again == 2);
    cr_assert_eq(seen.first, 1);
    cr_assert_eq(seen.again, 2);

    signals_watch_close(&w);
    signals_watch_close(&w); /* a second close is a no-op, not libuv's double-close abort */
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "a handle was left open");
}

/* Started with SIGTERM blocked (a mask a supervisor left, which exec keeps), the watcher still
 * hears it. */
Test(signals, a_blocked_signal_is_unblocked)
{
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    cr_assert_eq(sigprocmask(SIG_BLOCK, &term, NULL), 0);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct signals_watch w;
    struct seen seen = {0};
    cr_assert_eq(signals_watch_start(&w, &loop, on_first, on_again, &seen), 0);
    raise(SIGTERM);
    RUN_UNTIL(&loop, seen.first == 1);
    cr_assert_eq(seen.first, 1, "SIGTERM stayed blocked");
    cr_assert_eq(seen.last_signum, SIGTERM);
    signals_watch_close(&w);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(signals, close_before_any_signal)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct signals_watch w;
    cr_assert_eq(signals_watch_start(&w, &loop, on_first, NULL, NULL), 0);
    signals_watch_close(&w);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    signals_watch_close(&w);
}
