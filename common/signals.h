/* SIGINT and SIGTERM for the three servers, handled in one place so that each program has a
 * single shutdown path and closes its signal handles exactly once.
 *
 * The first of either signal calls on_first, which begins a graceful stop (drain, then leave
 * the loop). A later one means the operator wants out now: on_again runs, by default ending
 * the process at once with _exit(1), as redis does on a second signal during its shutdown,
 * without waiting for whatever the graceful stop waits for. signals_watch_close closes both
 * handles once (later calls do nothing); libuv then restores the default disposition, so a
 * signal during the final teardown ends the process as well. */
#ifndef SLUICE_COMMON_SIGNALS_H
#define SLUICE_COMMON_SIGNALS_H

#include <stdbool.h>
#include <uv.h>

typedef void (*signals_fn)(void *arg, int signum);

struct signals_watch {
    uv_signal_t sigint, sigterm;
    signals_fn on_first;
    signals_fn on_again; /* NULL: _exit(1) */
    void *arg;
    int received;        /* signals seen so far */
    bool open;           /* the handles are initialized and not closed yet */
};

/* Starts watching SIGINT and SIGTERM on loop. Returns 0, or a negative libuv error (then
 * nothing is left open). */
int signals_watch_start(struct signals_watch *s, uv_loop_t *loop, signals_fn on_first,
                        signals_fn on_again, void *arg);
void signals_watch_close(struct signals_watch *s);

#endif
