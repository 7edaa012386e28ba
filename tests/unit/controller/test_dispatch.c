/* Dispatch policies: lottery frequencies, shortest_queue's argmin, tie spreading and counting. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller/dispatch.h"

static double fake_now;
static double fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static ctl_registry *reg;
static struct ctl_rng rng;

static void setup(void)
{
    fake_now = 50.0;
    cr_assert_eq(ctl_registry_init(&reg, 10.0, fake_clock, NULL), 0);
    ctl_rng_seed(&rng, 12345);
}

static void teardown(void)
{
    ctl_registry_free(reg);
}

static void add(const char *name, const char *model, double speed, int64_t q)
{
    const char *models[] = {model};
    struct ctl_worker_status st = {models, 1, speed, q};
    cr_assert_eq(ctl_registry_register(reg, name, true, false, &st), 0);
}

static int index_of(struct ctl_worker *w, const char *const *names, int n)
{
    cr_assert_not_null(w);
    for (int i = 0; i < n; i++)
        if (strcmp(w->name, names[i]) == 0) return i;
    cr_assert_fail("unexpected worker %s", w->name);
    return -1;
}

TestSuite(dispatch, .init = setup, .fini = teardown);

Test(dispatch, method_names)
{
    cr_assert_eq(ctl_dispatch_method_parse("lottery"), CTL_DISPATCH_LOTTERY);
    cr_assert_eq(ctl_dispatch_method_parse("shortest_queue"), CTL_DISPATCH_SHORTEST_QUEUE);
    cr_assert_eq(ctl_dispatch_method_parse("round_robin"), -1);
    cr_assert_str_eq(ctl_dispatch_method_name(CTL_DISPATCH_LOTTERY), "lottery");
}

Test(dispatch, no_worker_is_null)
{
    cr_assert_null(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_LOTTERY, &rng));
    cr_assert_null(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng));
    add("http://a:1", "other", 1, 0);
    cr_assert_null(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng));
}

/* Each worker's count is binomial(N, p_i); every one must fall within 5 sigma, and the
 * chi-square statistic (3 degrees of freedom) must be below 30 (p < 1e-5 by chance). */
Test(dispatch, lottery_frequencies_follow_speed)
{
    const char *names[] = {"http://a:1", "http://b:1", "http://c:1", "http://d:1"};
    const double speeds[] = {1, 2, 3, 4};
    for (int i = 0; i < 4; i++) add(names[i], "m", speeds[i], 0);
    add("http://other:1", "x", 100, 0);
    const int N = 10000;
    int counts[4] = {0};
    for (int k = 0; k < N; k++) counts[index_of(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_LOTTERY, &rng), names, 4)]++;
    double chi2 = 0;
    for (int i = 0; i < 4; i++) {
        double p = speeds[i] / 10.0, mean = N * p, sd = sqrt(N * p * (1 - p));
        cr_assert(fabs(counts[i] - mean) < 5 * sd, "worker %d: %d draws, expected %.0f +- %.0f", i, counts[i],
                  mean, 5 * sd);
        chi2 += (counts[i] - mean) * (counts[i] - mean) / mean;
    }
    cr_assert_lt(chi2, 30.0);
    /* Lottery does not touch the queue. */
    cr_assert_eq(ctl_registry_find(reg, names[0])->queue_length, 0);
}

Test(dispatch, lottery_skips_expired)
{
    add("http://a:1", "m", 1, 0);
    fake_now += 5;
    add("http://b:1", "m", 1000, 0);
    fake_now += 7; /* b is 7 s old, a 12 s: expired */
    for (int k = 0; k < 200; k++)
        cr_assert_str_eq(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_LOTTERY, &rng)->name, "http://b:1");
    add("http://b:1", "m", 1000, 0);
    fake_now += 11;
    cr_assert_null(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_LOTTERY, &rng));
    cr_assert_null(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng));
}

Test(dispatch, shortest_queue_picks_argmin_of_queue_over_speed)
{
    add("http://a:1", "m", 1, 3);  /* 3.0 */
    add("http://b:1", "m", 4, 6);  /* 1.5 */
    add("http://c:1", "m", 2, 4);  /* 2.0 */
    struct ctl_worker *w = ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng);
    cr_assert_str_eq(w->name, "http://b:1");
    cr_assert_eq(w->queue_length, 7); /* the dispatch was counted */
    /* b: 7/4 = 1.75 still lowest; then 8/4 = 2.0 ties with c */
    cr_assert_str_eq(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng)->name, "http://b:1");
    cr_assert_eq(ctl_registry_find(reg, "http://b:1")->queue_length, 8);
}

Test(dispatch, shortest_queue_counts_until_heartbeat)
{
    add("http://a:1", "m", 1, 0);
    add("http://b:1", "m", 1, 0);
    /* Twenty dispatches between heartbeats alternate strictly in pairs: the counted queue
     * keeps the two within one of each other. */
    for (int k = 0; k < 20; k++) ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng);
    cr_assert_eq(ctl_registry_find(reg, "http://a:1")->queue_length, 10);
    cr_assert_eq(ctl_registry_find(reg, "http://b:1")->queue_length, 10);
    /* The heartbeat tells the truth: a is idle, b busy. */
    cr_assert(ctl_registry_heartbeat(reg, "http://a:1", 0));
    cr_assert(ctl_registry_heartbeat(reg, "http://b:1", 5));
    for (int k = 0; k < 5; k++)
        cr_assert_str_eq(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng)->name, "http://a:1");
    cr_assert_eq(ctl_registry_find(reg, "http://a:1")->queue_length, 5);
}

/* With the queue counted, ties appear after each round; what must be random is which tied
 * worker goes first. Reset the queues each draw so that all four always tie. */
Test(dispatch, shortest_queue_spreads_ties)
{
    const char *names[] = {"http://a:1", "http://b:1", "http://c:1", "http://d:1"};
    for (int i = 0; i < 4; i++) add(names[i], "m", 2, 1);
    add("http://slow:1", "m", 1, 1); /* 1/1 > 1/2: never chosen */
    const int N = 8000;
    int counts[4] = {0};
    for (int k = 0; k < N; k++) {
        struct ctl_worker *w = ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng);
        counts[index_of(w, names, 4)]++;
        w->queue_length = 1;
    }
    for (int i = 0; i < 4; i++) {
        double mean = N / 4.0, sd = sqrt(N * 0.25 * 0.75);
        cr_assert(fabs(counts[i] - mean) < 5 * sd, "worker %d chosen %d times of %d", i, counts[i], N);
    }
}

Test(dispatch, shortest_queue_skips_expired)
{
    add("http://a:1", "m", 1, 0);
    fake_now += 6;
    add("http://b:1", "m", 1, 50);
    fake_now += 6; /* a (idle) expired; b busy but live */
    cr_assert_str_eq(ctl_dispatch_pick(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng)->name, "http://b:1");
}

Test(dispatch, exclude_skips_named_workers)
{
    add("http://a:1", "m", 1, 0);
    add("http://b:1", "m", 1, 5);
    const char *ex[] = {"http://a:1"};
    for (int k = 0; k < 50; k++) {
        cr_assert_str_eq(ctl_dispatch_pick_excluding(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng, ex, 1)->name,
                         "http://b:1");
        cr_assert_str_eq(ctl_dispatch_pick_excluding(reg, "m", CTL_DISPATCH_LOTTERY, &rng, ex, 1)->name,
                         "http://b:1");
    }
    const char *both[] = {"http://b:1", "http://a:1"};
    cr_assert_null(ctl_dispatch_pick_excluding(reg, "m", CTL_DISPATCH_LOTTERY, &rng, both, 2));
    cr_assert_null(ctl_dispatch_pick_excluding(reg, "m", CTL_DISPATCH_SHORTEST_QUEUE, &rng, both, 2));
}

Test(dispatch, rng_is_seeded_and_uniform)
{
    struct ctl_rng a, b;
    ctl_rng_seed(&a, 7);
    ctl_rng_seed(&b, 7);
    double sum = 0;
    for (int i = 0; i < 10000; i++) {
        double u = ctl_rng_uniform(&a);
        cr_assert(u >= 0 && u < 1);
        cr_assert_eq(u, ctl_rng_uniform(&b));
        sum += u;
    }
    cr_assert(fabs(sum / 10000 - 0.5) < 0.02);
}

/* ---- cache_aware ----------------------------------------------------------------------------- */

static struct ctl_worker *pick_key(const char *key)
{
    return ctl_dispatch_pick_keyed(reg, "m", CTL_DISPATCH_CACHE_AWARE, &rng, NULL, 0, key);
}

static void reset_queues(const char *const *names, int n)
{
    for (int i = 0; i < n; i++) ctl_registry_find(reg, names[i])->queue_length = 0;
}

Test(dispatch, cache_aware_name)
{
    cr_assert_eq(ctl_dispatch_method_parse("cache_aware"), CTL_DISPATCH_CACHE_AWARE);
    cr_assert_str_eq(ctl_dispatch_method_name(CTL_DISPATCH_CACHE_AWARE), "cache_aware");
}

Test(dispatch, cache_aware_sends_a_key_to_the_same_worker)
{
    const char *names[] = {"http://a:1", "http://b:1", "http://c:1"};
    for (int i = 0; i < 3; i++) add(names[i], "m", 1, 0);
    const char *keys[] = {"0123456789abcdef", "fedcba9876543210", "x", "another key"};
    for (int k = 0; k < 4; k++) {
        struct ctl_worker *first = pick_key(keys[k]);
        cr_assert_not_null(first);
        /* Up to 16 requests more than an idle worker, the key stays put. */
        for (int j = 0; j < 15; j++) cr_assert_eq(pick_key(keys[k]), first, "key %d, request %d", k, j + 2);
        cr_assert_eq(first->queue_length, 16, "each dispatch counted until the next heartbeat");
        reset_queues(names, 3);
        cr_assert_eq(pick_key(keys[k]), first, "the choice depends on the key, not on history");
        reset_queues(names, 3);
    }
}

/* Keys spread over workers in proportion to speed, and a worker joining takes only the keys
 * it now wins, from everyone, moving no other key. */
Test(dispatch, cache_aware_spreads_keys_and_moves_few_when_a_worker_joins)
{
    const char *names[] = {"http://a:1", "http://b:1", "http://c:1", "http://d:1"};
    const double speeds[] = {1, 1, 2, 2};
    for (int i = 0; i < 3; i++) add(names[i], "m", speeds[i], 0);
    enum { N = 4000 };
    static int before[N];
    int counts[4] = {0};
    char key[32];
    for (int k = 0; k < N; k++) {
        snprintf(key, sizeof key, "%016x", (unsigned)k * 2654435761u);
        before[k] = index_of(pick_key(key), names, 3);
        counts[before[k]]++;
        reset_queues(names, 3);
    }
    for (int i = 0; i < 3; i++) {
        double p = speeds[i] / 4.0, mean = N * p, sd = sqrt(N * p * (1 - p));
        cr_assert(fabs(counts[i] - mean) < 5 * sd, "worker %d: %d keys, expected %.0f", i, counts[i], mean);
    }
    add(names[3], "m", speeds[3], 0);
    int moved = 0;
    for (int k = 0; k < N; k++) {
        snprintf(key, sizeof key, "%016x", (unsigned)k * 2654435761u);
        int now = index_of(pick_key(key), names, 4);
        reset_queues(names, 4);
        if (now == before[k]) continue;
        cr_assert_eq(now, 3, "key %d moved between old workers", k);
        moved++;
    }
    double p = 2.0 / 6.0, sd = sqrt(N * p * (1 - p));
    cr_assert(fabs(moved - N * p) < 5 * sd, "%d of %d keys moved to the new worker", moved, N);
}

Test(dispatch, cache_aware_goes_to_the_shortest_queue_when_far_out_of_balance)
{
    add("http://a:1", "m", 1, 0);
    add("http://b:1", "m", 1, 0);
    struct ctl_worker *home = pick_key("hot system prompt");
    struct ctl_worker *other = strcmp(home->name, "http://a:1") ? ctl_registry_find(reg, "http://a:1")
                                                                  : ctl_registry_find(reg, "http://b:1");
    /* 16 more than the idle one: still home (the dispatch makes it 17). */
    home->queue_length = 16;
    cr_assert_eq(pick_key("hot system prompt"), home);
    cr_assert_eq(home->queue_length, 17);
    /* 17 more than idle: the shortest queue takes it. */
    cr_assert_eq(pick_key("hot system prompt"), other);
    cr_assert_eq(other->queue_length, 1);
    /* Both busy: 60 against 40 is 20 more but only 1.5 times: home; 61 is past both bounds. */
    home->queue_length = 60;
    other->queue_length = 40;
    cr_assert_eq(pick_key("hot system prompt"), home);
    home->queue_length = 61;
    cr_assert_eq(pick_key("hot system prompt"), other);
    /* Without a key it is shortest_queue. */
    home->queue_length = 0;
    other->queue_length = 3;
    cr_assert_eq(pick_key(NULL), home);
    cr_assert_eq(pick_key(""), home);
}

/* A retry that excludes the failed worker gets the key's next choice; expired workers are
 * never chosen; other policies ignore the key. */
Test(dispatch, cache_aware_respects_exclude_and_expiry)
{
    const char *names[] = {"http://a:1", "http://b:1", "http://c:1"};
    for (int i = 0; i < 3; i++) add(names[i], "m", 1, 0);
    struct ctl_worker *first = pick_key("k");
    const char *ex[] = {first->name};
    struct ctl_worker *second = ctl_dispatch_pick_keyed(reg, "m", CTL_DISPATCH_CACHE_AWARE, &rng, ex, 1, "k");
    cr_assert_not_null(second);
    cr_assert_neq(second, first);
    /* The second choice is the best score among the rest. */
    double best = -1;
    const char *want = NULL;
    for (int i = 0; i < 3; i++) {
        if (!strcmp(names[i], first->name)) continue;
        double u = ctl_dispatch_rendezvous("k", names[i]);
        cr_assert(u > 0 && u < 1);
        if (u > best) best = u, want = names[i];
    }
    cr_assert_str_eq(second->name, want);
    /* Every worker but the first one expires: re-registering refreshes only it. */
    fake_now += 8;
    cr_assert(ctl_registry_heartbeat(reg, first->name, 0));
    fake_now += 5;
    for (int k = 0; k < 20; k++) {
        char key[16];
        snprintf(key, sizeof key, "key%d", k);
        cr_assert_str_eq(pick_key(key)->name, first->name);
    }
    cr_assert_null(ctl_dispatch_pick_keyed(reg, "m", CTL_DISPATCH_CACHE_AWARE, &rng, ex, 1, "k"));
    cr_assert_null(ctl_dispatch_pick_keyed(reg, "other", CTL_DISPATCH_CACHE_AWARE, &rng, NULL, 0, "k"));
}
