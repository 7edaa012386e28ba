/* The communicator's public calls: checks common to every implementation, then its ops. */
#include <stdio.h>

#include "worker/parallel/comm.h"
#include "worker/parallel/comm_internal.h"

int comm_fail(struct comm *c, const char *fmt, ...)
{
    int n = snprintf(c->error, sizeof c->error, "rank %d: ", c->rank);
    if (n < 0 || (size_t)n >= sizeof c->error) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error + n, sizeof c->error - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

void comm_destroy(struct comm **ranks, int n)
{
    if (ranks && n > 0 && ranks[0]) ranks[0]->ops->destroy(ranks, n);
}

int comm_rank(const struct comm *c) { return c->rank; }
int comm_size(const struct comm *c) { return c->size; }
const char *comm_kind(const struct comm *c) { return c->ops->kind; }
const char *comm_error(const struct comm *c) { return c->error; }
bool comm_failed(const struct comm *c) { return c->ops->failed(c); }

int comm_all_reduce_sum(struct comm *c, void *buf, size_t count, enum comm_dtype dtype)
{
    if (count > 0 && !buf) return comm_fail(c, "all_reduce_sum of %zu elements without a buffer", count);
    return c->ops->all_reduce_sum(c, buf, count, dtype);
}

int comm_all_gather(struct comm *c, const void *send, void *recv, size_t count, enum comm_dtype dtype)
{
    if (count > 0 && (!send || !recv)) return comm_fail(c, "all_gather of %zu elements without a buffer", count);
    return c->ops->all_gather(c, send, recv, count, dtype);
}

int comm_barrier(struct comm *c) { return c->ops->barrier(c); }
int comm_sync(struct comm *c) { return c->ops->sync(c); }
void comm_abort(struct comm *c, const char *why) { c->ops->abort(c, why); }
