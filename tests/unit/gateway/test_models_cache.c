/* The gateway's memory of models served lately, which makes a restarting model 503 rather
 * than 404: what it remembers and that it stays bounded. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <time.h>

#include "gateway/models_cache.h"

Test(models_cache, remembers_served_models_within_bounds)
{
    gw_models *m = NULL;
    gw_ctls *ctls = NULL;
    char err[128];
    cr_assert_eq(gw_ctls_init(&ctls, "http://127.0.0.1:9", err, sizeof err), 0);
    /* No call goes out here: the client is never used. */
    cr_assert_eq(gw_models_init(&m, NULL, ctls, 100, 1000), 0);
    cr_assert_not(gw_models_recently_served(m, "a"));
    int64_t now = (int64_t)time(NULL);
    cr_assert_geq(gw_models_created(m, "a"), now, "an unknown model is created now");

    gw_models_note_served(m, "a");
    cr_assert(gw_models_recently_served(m, "a"));
    int64_t created = gw_models_created(m, "a");
    gw_models_note_served(m, "a");
    cr_assert_eq(gw_models_created(m, "a"), created, "created stays the first time seen");

    char name[32];
    for (int i = 0; i < GW_MODELS_RECENT_MAX + 10; i++) {
        snprintf(name, sizeof name, "m%d", i);
        gw_models_note_served(m, name);
    }
    /* Full: the names seen longest ago made room ("a" first). */
    cr_assert_not(gw_models_recently_served(m, "a"));
    cr_assert_not(gw_models_recently_served(m, "m0"));
    snprintf(name, sizeof name, "m%d", GW_MODELS_RECENT_MAX + 9);
    cr_assert(gw_models_recently_served(m, name));
    snprintf(name, sizeof name, "m%d", 20);
    cr_assert(gw_models_recently_served(m, name));
    gw_models_free(m);
    gw_ctls_free(ctls);
}
