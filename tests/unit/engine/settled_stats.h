/* Engine stats for tests, once a run has settled. The stats are a snapshot the engine thread
 * publishes after each step, and a request's last event reaches the loop before the step that
 * frees its blocks publishes: wait until every block is back, bounded (5 s), before reading
 * them, or a check of the counts races the engine thread. */
#ifndef SLUICE_TESTS_ENGINE_SETTLED_STATS_H
#define SLUICE_TESTS_ENGINE_SETTLED_STATS_H

#include <unistd.h>

#include "worker/engine/engine.h"

static inline void settled_stats(struct engine *e, struct engine_stats *st)
{
    engine_get_stats(e, st);
    for (int tries = 0; st->kv_blocks_free != st->kv_blocks_total && tries < 500; tries++) {
        usleep(10000);
        engine_get_stats(e, st);
    }
}

#endif
