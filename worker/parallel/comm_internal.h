/* What the communicator's implementations (comm_cpu.c, nccl/comm_nccl.c) share: a rank's
 * handle starts with struct comm, whose ops the public functions (comm.c) dispatch to.
 * Private to worker/parallel/. */
#ifndef SLUICE_WORKER_PARALLEL_COMM_INTERNAL_H
#define SLUICE_WORKER_PARALLEL_COMM_INTERNAL_H

#include <stdarg.h>

#include "worker/parallel/comm.h"

struct comm_ops {
    const char *kind;
    int (*all_reduce_sum)(struct comm *c, void *buf, size_t count, enum comm_dtype dtype);
    int (*all_gather)(struct comm *c, const void *send, void *recv, size_t count, enum comm_dtype dtype);
    int (*barrier)(struct comm *c);
    int (*sync)(struct comm *c);
    void (*abort)(struct comm *c, const char *why);
    bool (*failed)(const struct comm *c);
    void (*destroy)(struct comm **ranks, int n);
};

struct comm {
    const struct comm_ops *ops;
    int rank, size;
    char error[512];
};

/* Writes the rank's error ("rank R: ...") and returns -1. */
int comm_fail(struct comm *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
