#include "common/signals.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "common/log.h"

static void on_signal(uv_signal_t *h, int signum)
{
    struct signals_watch *s = h->data;
    if (++s->received == 1) {
        log_info("signal %d: stopping gracefully (send it again to stop at once)", signum);
        if (s->on_first) s->on_first(s->arg, signum);
        return;
    }
    log_warn("signal %d again: stopping now", signum);
    if (s->on_again) {
        s->on_again(s->arg, signum);
        return;
    }
    /* Nothing of the graceful stop is waited for, and no teardown runs: that teardown could
     * be what is slow (an engine thread in the middle of a step). */
    _exit(1);
}

int signals_watch_start(struct signals_watch *s, uv_loop_t *loop, signals_fn on_first,
                        signals_fn on_again, void *arg)
{
    *s = (struct signals_watch){.on_first = on_first, .on_again = on_again, .arg = arg};
    int rc = uv_signal_init(loop, &s->sigint);
    if (rc < 0) return rc;
    rc = uv_signal_init(loop, &s->sigterm);
    if (rc < 0) {
        uv_close((uv_handle_t *)&s->sigint, NULL);
        return rc;
    }
    s->sigint.data = s->sigterm.data = s;
    s->open = true;
    rc = uv_signal_start(&s->sigint, on_signal, SIGINT);
    if (rc == 0) rc = uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    if (rc < 0) {
        signals_watch_close(s);
        return rc;
    }
    /* A blocked signal mask passes through fork and exec: a supervisor that left these blocked
     * would leave the program deaf to the signals it drains on. */
    sigset_t drain;
    sigemptyset(&drain);
    sigaddset(&drain, SIGINT);
    sigaddset(&drain, SIGTERM);
    rc = -pthread_sigmask(SIG_UNBLOCK, &drain, NULL);
    if (rc < 0) signals_watch_close(s);
    return rc;
}

void signals_watch_close(struct signals_watch *s)
{
    if (!s->open) return;
    s->open = false;
    uv_handle_t *hs[] = {(uv_handle_t *)&s->sigint, (uv_handle_t *)&s->sigterm};
    for (int i = 0; i < 2; i++)
        if (!uv_is_closing(hs[i])) uv_close(hs[i], NULL);
}
