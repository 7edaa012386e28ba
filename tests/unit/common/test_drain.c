/* The graceful stop the gateway and the worker share: the first signal begins it, the loop
 * stops once nothing is in flight, and past the timeout what is left is aborted once. */
#include <criterion/criterion.h>
#include <signal.h>

#include "common/drain.h"

struct prog {
    unsigned open;       /* what in_flight reports */
    int begun, aborted;
    bool abort_ends_all; /* abort brings open to 0, as the programs' aborts do */
};

static void begin(void *arg)
{
    ((struct prog *)arg)->begun++;
}

static unsigned in_flight(void *arg)
{
    return ((struct prog *)arg)->open;
}

static void abort_open(void *arg)
{
    struct prog *p = arg;
    p->aborted++;
    if (p->abort_ends_all) p->open = 0;
}

static const struct drain_ops ops = {begin, in_flight, abort_open};

static void handler(http_request *req, void *user)
{
    (void)user;
    http_respond(req, 200, "text/plain", "ok", 2);
}

static void on_finish_request(uv_timer_t *t)
{
    ((struct prog *)t->data)->open = 0;
}

static void on_server_closed(void *arg)
{
    *(bool *)arg = true;
}

/* Starts the drain on a fresh loop with a server, raises SIGTERM and runs the loop until the
 * drain stops it (uv_run returns with handles still open). Returns the milliseconds it took. */
static double run_drain(struct prog *p, double timeout_s, unsigned finish_after_ms)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    http_server *srv = NULL;
    struct http_server_config cfg = {.host = "127.0.0.1", .port = 0};
    cr_assert_eq(http_server_init(&srv, &loop, &cfg, handler, NULL), 0);
    struct drain d;
    cr_assert_eq(drain_watch(&d, &loop, srv, timeout_s, &ops, p), 0);
    uv_timer_t finish;
    uv_timer_init(&loop, &finish);
    finish.data = p;
    /* The clock starts before the request's timer: libuv times it from the loop's cached time,
     * which is refreshed here (else it dates from the loop's start, and under load the timer
     * fires "early" against t0). */
    uint64_t t0 = uv_hrtime();
    uv_update_time(&loop);
    if (finish_after_ms) uv_timer_start(&finish, on_finish_request, finish_after_ms, 0);
    raise(SIGTERM);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns at the drain's uv_stop: the server still listens */
    double ms = (double)(uv_hrtime() - t0) / 1e6;

    drain_close(&d);
    drain_close(&d); /* once, however often called */
    uv_close((uv_handle_t *)&finish, NULL);
    bool closed = false;
    http_server_close(srv, on_server_closed, &closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert(closed);
    cr_assert_eq(uv_loop_close(&loop), 0, "a handle was left open");
    return ms;
}

Test(drain, stops_once_nothing_is_in_flight)
{
    struct prog p = {.open = 1};
    double ms = run_drain(&p, 30, 100);
    cr_assert_eq(p.begun, 1);
    cr_assert_eq(p.aborted, 0);
    /* libuv's timers count whole milliseconds of its cached clock: up to 1 ms short of t0's. */
    cr_assert_geq(ms, 99, "stopped before the request finished (%.2f ms)", ms);
    cr_assert_lt(ms, 5000);
}

Test(drain, aborts_once_past_the_timeout)
{
    struct prog p = {.open = 3, .abort_ends_all = true};
    double ms = run_drain(&p, 0.1, 0);
    cr_assert_eq(p.begun, 1);
    cr_assert_eq(p.aborted, 1);
    cr_assert_geq(ms, 100);
    cr_assert_lt(ms, DRAIN_ABORT_GRACE_MS, "what the abort ended needs no grace period");
}

Test(drain, stops_anyway_a_grace_period_after_the_abort)
{
    struct prog p = {.open = 1};
    double ms = run_drain(&p, 0.05, 0);
    cr_assert_eq(p.aborted, 1, "aborted once, not at every tick");
    cr_assert_geq(ms, 50 + DRAIN_ABORT_GRACE_MS);
}
