/* The threads of a tensor-parallel backend's ranks: rank 0 runs on the caller's thread (the
 * engine's), ranks 1..N-1 each on a thread of their own, kept for the backend's life so that a
 * rank's per-thread state (its CUDA device, its communicator) stays put. tp_group_run runs one
 * function on every rank at once and returns when all have returned: the ranks' collectives
 * need every rank inside them at the same time.
 *
 * No run hangs: once rank 0 is done, the others get the group's timeout to finish (the
 * communicator's, after which their collectives fail on their own); a rank that never finishes
 * breaks the group, whose later runs fail at once. A function that fails should abort its
 * rank's communicator (comm_abort), so that the ranks still waiting in a collective fail too. */
#ifndef SLUICE_WORKER_PARALLEL_TP_GROUP_H
#define SLUICE_WORKER_PARALLEL_TP_GROUP_H

#include <stdbool.h>

struct tp_group;

/* Returns 0 or -1 with err set (the rank's error goes where the function writes it). */
typedef int (*tp_rank_fn)(void *arg, int rank);

/* What a run came to: failed_rank is the lowest rank whose function failed (-1: none);
 * stuck_rank the lowest that did not finish within the timeout (-1: none; the group is broken
 * from then on). */
struct tp_run_result {
    int failed_rank;
    int stuck_rank;
};

/* Starts threads for ranks 1..n-1 (n >= 1; none for n = 1). timeout_s <= 0 takes
 * COMM_DEFAULT_TIMEOUT_S. */
int tp_group_start(struct tp_group **out, int n, double timeout_s, char *err, size_t errlen);
/* fn(arg, r) on every rank r. 0 when every rank returned 0; -1 otherwise, with res saying who. */
int tp_group_run(struct tp_group *g, tp_rank_fn fn, void *arg, struct tp_run_result *res);
/* Whether a rank once failed to finish a run (then every run fails at once). */
bool tp_group_broken(const struct tp_group *g);
/* Stops and joins the threads. Returns false when a rank is still stuck in a run: its thread is
 * left running (detached), and whatever it uses must not be freed (the process's exit does). */
bool tp_group_stop(struct tp_group *g);

#endif
