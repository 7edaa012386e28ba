/* The registry: registration, replacement, heartbeats, expiry on an injected clock. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/registry.h"
#include "common/strmap.h"

static double fake_now;
static double fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static ctl_registry *reg;

static void setup(void)
{
    fake_now = 1000.0;
    cr_assert_eq(ctl_registry_init(&reg, 30.0, fake_clock, NULL), 0);
}

static void teardown(void)
{
    ctl_registry_free(reg);
}

static void add(const char *name, bool check, double speed, int64_t q, const char *m1, const char *m2)
{
    const char *models[] = {m1, m2};
    struct ctl_worker_status st = {models, m2 ? 2 : 1, speed, q};
    cr_assert_eq(ctl_registry_register(reg, name, check, false, &st), 0);
}

TestSuite(registry, .init = setup, .fini = teardown);

Test(registry, register_and_find)
{
    add("http://a:1", true, 1, 0, "m1", "m2");
    add("http://b:1", true, 2, 3, "m2", NULL);
    cr_assert_eq(ctl_registry_count(reg), 2);
    struct ctl_worker *w = ctl_registry_find(reg, "http://b:1");
    cr_assert_not_null(w);
    cr_assert_float_eq(w->speed, 2.0, 1e-12);
    cr_assert_eq(w->queue_length, 3);
    cr_assert_str_eq(w->address_body, "{\"address\":\"http://b:1\"}");
    struct ctl_worker *const *ws;
    cr_assert_eq(ctl_registry_model_workers(reg, "m2", &ws), 2);
    cr_assert_eq(ctl_registry_model_workers(reg, "m1", &ws), 1);
    cr_assert_eq(ctl_registry_model_workers(reg, "nope", &ws), 0);
    const char **names;
    cr_assert_eq(ctl_registry_live_models(reg, &names), 2);
    cr_assert_str_eq(names[0], "m1");
    cr_assert_str_eq(names[1], "m2");
    free(names);
}

Test(registry, reregister_replaces_models)
{
    add("http://a:1", true, 1, 0, "m1", "m2");
    add("http://a:1", true, 5, 0, "m3", NULL);
    cr_assert_eq(ctl_registry_count(reg), 1);
    struct ctl_worker *const *ws;
    cr_assert_eq(ctl_registry_model_workers(reg, "m1", &ws), 0);
    cr_assert_eq(ctl_registry_model_workers(reg, "m3", &ws), 1);
    cr_assert_float_eq(ws[0]->speed, 5.0, 1e-12);
}

Test(registry, duplicate_model_names_count_once)
{
    add("http://a:1", true, 1, 0, "m1", "m1");
    struct ctl_worker *const *ws;
    cr_assert_eq(ctl_registry_model_workers(reg, "m1", &ws), 1);
    cr_assert_eq(ctl_registry_find(reg, "http://a:1")->n_models, 1);
}

Test(registry, heartbeat_known_and_unknown)
{
    add("http://a:1", true, 1, 0, "m1", NULL);
    fake_now += 10;
    cr_assert(ctl_registry_heartbeat(reg, "http://a:1", 7));
    cr_assert_eq(ctl_registry_find(reg, "http://a:1")->queue_length, 7);
    cr_assert_float_eq(ctl_registry_find(reg, "http://a:1")->last_heartbeat, 1010.0, 1e-9);
    cr_assert_not(ctl_registry_heartbeat(reg, "http://zz:1", 1));
}

Test(registry, expiry_with_injected_clock)
{
    add("http://a:1", true, 1, 0, "m1", NULL);
    add("http://b:1", false, 1, 0, "m1", NULL); /* never expires */
    struct ctl_worker *a = ctl_registry_find(reg, "http://a:1");
    fake_now += 30.0; /* exactly at the limit: still live */
    cr_assert(ctl_registry_is_live(reg, a, fake_now));
    cr_assert_eq(ctl_registry_live_count(reg), 2);
    fake_now += 0.5;
    cr_assert_not(ctl_registry_is_live(reg, a, fake_now));
    cr_assert_eq(ctl_registry_live_count(reg), 1);
    cr_assert_eq(ctl_registry_count(reg), 2); /* not swept yet */
    cr_assert_eq(ctl_registry_sweep(reg), 1);
    cr_assert_eq(ctl_registry_count(reg), 1);
    cr_assert_null(ctl_registry_find(reg, "http://a:1"));
    cr_assert_eq(ctl_registry_expired_total(reg), 1);
    fake_now += 1e6;
    cr_assert_eq(ctl_registry_sweep(reg), 0);
    cr_assert_not_null(ctl_registry_find(reg, "http://b:1"));
}

Test(registry, heartbeat_keeps_alive)
{
    add("http://a:1", true, 1, 0, "m1", NULL);
    for (int i = 0; i < 10; i++) {
        fake_now += 20;
        cr_assert(ctl_registry_heartbeat(reg, "http://a:1", 0));
        cr_assert_eq(ctl_registry_sweep(reg), 0);
    }
    cr_assert_eq(ctl_registry_live_count(reg), 1);
}

Test(registry, late_heartbeat_removes_and_asks_to_register)
{
    add("http://a:1", true, 1, 0, "m1", NULL);
    fake_now += 31;
    cr_assert_not(ctl_registry_heartbeat(reg, "http://a:1", 0));
    cr_assert_eq(ctl_registry_count(reg), 0);
    const char **names;
    cr_assert_eq(ctl_registry_live_models(reg, &names), 0);
    free(names);
}

Test(registry, expired_model_not_listed)
{
    add("http://a:1", true, 1, 0, "m1", NULL);
    add("http://b:1", true, 1, 0, "m2", NULL);
    fake_now += 20;
    cr_assert(ctl_registry_heartbeat(reg, "http://b:1", 0));
    fake_now += 15; /* a is 35 s old, b 15 s */
    const char **names;
    cr_assert_eq(ctl_registry_live_models(reg, &names), 1);
    cr_assert_str_eq(names[0], "m2");
    free(names);
}

Test(registry, remove_many_keeps_order)
{
    char name[64];
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "http://w%d:1", i);
        add(name, true, 1, 0, i % 2 ? "odd" : "even", "all");
    }
    for (int i = 0; i < 200; i += 3) {
        snprintf(name, sizeof name, "http://w%d:1", i);
        cr_assert(ctl_registry_remove(reg, name));
    }
    cr_assert_not(ctl_registry_remove(reg, "http://w0:1"));
    cr_assert_eq(ctl_registry_count(reg), 200 - 67);
    struct ctl_worker *const *ws;
    cr_assert_eq(ctl_registry_model_workers(reg, "all", &ws), 133);
    cr_assert_str_eq(ws[0]->name, "http://w1:1");
    cr_assert_str_eq(ctl_registry_worker_at(reg, 1)->name, "http://w2:1");
}

Test(strmap, put_get_remove_grow)
{
    strmap *m;
    cr_assert_eq(strmap_init(&m), 0);
    static int vals[1000];
    char k[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "key%d", i);
        cr_assert_eq(strmap_put(m, k, &vals[i]), 0);
    }
    cr_assert_eq(strmap_count(m), 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "key%d", i);
        cr_assert_eq(strmap_get(m, k), &vals[i]);
    }
    cr_assert_eq(strmap_remove(m, "key5"), &vals[5]);
    cr_assert_null(strmap_get(m, "key5"));
    cr_assert_null(strmap_remove(m, "key5"));
    cr_assert_eq(strmap_count(m), 999);
    strmap_free(m);
}

Test(registry, models_by_modality)
{
    const char *m1[] = {"text", "both"}, *m2[] = {"vision", "both"};
    struct ctl_worker_status s1 = {m1, 2, 1, 0}, s2 = {m2, 2, 1, 0};
    cr_assert_eq(ctl_registry_register(reg, "http://t:1", true, false, &s1), 0);
    cr_assert_eq(ctl_registry_register(reg, "http://v:1", true, true, &s2), 0);
    const char **names;
    cr_assert_eq(ctl_registry_live_models_of(reg, 0, &names), 2);
    cr_assert_str_eq(names[0], "both");
    cr_assert_str_eq(names[1], "text");
    free(names);
    cr_assert_eq(ctl_registry_live_models_of(reg, 1, &names), 2);
    cr_assert_str_eq(names[1], "vision");
    free(names);
    cr_assert_eq(ctl_registry_live_models(reg, &names), 3);
    free(names);
}

/* A model whose workers all left (expired, removed, replaced by a registration without it) is
 * remembered for CTL_RECENT_MODEL_S so a gateway can answer 503 rather than 404 meanwhile. */
Test(registry, remembers_models_served_recently)
{
    cr_assert_not(ctl_registry_recently_served(reg, "m1"));
    add("http://a:1", true, 1, 0, "m1", NULL);
    add("http://b:1", true, 1, 0, "m2", NULL);
    cr_assert(ctl_registry_recently_served(reg, "m1"));

    cr_assert(ctl_registry_remove(reg, "http://a:1"));
    cr_assert(ctl_registry_recently_served(reg, "m1"));
    cr_assert_not(ctl_registry_recently_served(reg, "never"));

    /* Expired and swept: still remembered; then forgotten after the window. */
    fake_now += 31;
    cr_assert_eq(ctl_registry_sweep(reg), 1);
    cr_assert(ctl_registry_recently_served(reg, "m2"));
    fake_now += CTL_RECENT_MODEL_S + 1;
    cr_assert_not(ctl_registry_recently_served(reg, "m1"));
    cr_assert_not(ctl_registry_recently_served(reg, "m2"));

    /* A re-registration that drops a model leaves it remembered; registering it again makes it
     * served, not merely remembered. */
    add("http://a:1", true, 1, 0, "m1", "m3");
    add("http://a:1", true, 1, 0, "m1", NULL);
    cr_assert(ctl_registry_recently_served(reg, "m3"));
    add("http://a:1", true, 1, 0, "m3", NULL);
    struct ctl_worker *const *ws;
    cr_assert_eq(ctl_registry_model_workers(reg, "m3", &ws), 1);
    cr_assert(ctl_registry_recently_served(reg, "m3"));
}

Test(registry, recent_model_memory_is_bounded)
{
    char name[64];
    for (int i = 0; i < CTL_RECENT_MODEL_MAX + 50; i++) {
        snprintf(name, sizeof name, "model-%d", i);
        add("http://a:1", false, 1, 0, name, NULL);
        fake_now += 0.001;
    }
    /* The worker now serves only the last one; every earlier one went through the memory,
     * which kept the newest CTL_RECENT_MODEL_MAX. */
    cr_assert_not(ctl_registry_recently_served(reg, "model-0"));
    snprintf(name, sizeof name, "model-%d", CTL_RECENT_MODEL_MAX + 48);
    cr_assert(ctl_registry_recently_served(reg, name));
    snprintf(name, sizeof name, "model-%d", 60);
    cr_assert(ctl_registry_recently_served(reg, name));
}

Test(registry, model_load_sums_live_workers_and_takes_the_longest_wait)
{
    add("http://a:1", true, 1, 3, "m1", NULL);
    add("http://b:1", true, 1, 4, "m1", "m2");
    add("http://c:1", true, 1, 9, "m1", NULL);
    struct ctl_model_load load;
    ctl_registry_model_load(reg, "m1", &load);
    cr_assert_eq(load.workers, 3);
    cr_assert_eq(load.queue_length, 16);
    cr_assert_float_eq(load.queue_wait_s, 0.0, 1e-12, "no worker reported a wait");

    fake_now += 20;
    cr_assert(ctl_registry_heartbeat(reg, "http://a:1", 5));
    ctl_registry_queue_wait(reg, "http://a:1", 1.5);
    cr_assert(ctl_registry_heartbeat(reg, "http://b:1", 2));
    ctl_registry_queue_wait(reg, "http://b:1", 4.25);
    ctl_registry_queue_wait(reg, "http://zz:1", 100); /* unknown: ignored */
    ctl_registry_model_load(reg, "m1", &load);
    cr_assert_eq(load.queue_length, 16);
    cr_assert_float_eq(load.queue_wait_s, 4.25, 1e-12);

    fake_now += 15; /* c has missed its heartbeats: it no longer counts */
    ctl_registry_model_load(reg, "m1", &load);
    cr_assert_eq(load.workers, 2);
    cr_assert_eq(load.queue_length, 7);
    ctl_registry_model_load(reg, "m2", &load);
    cr_assert_eq(load.workers, 1);
    cr_assert_eq(load.queue_length, 2);
    ctl_registry_model_load(reg, "nope", &load);
    cr_assert_eq(load.workers, 0);
    cr_assert_eq(load.queue_length, 0);
}
