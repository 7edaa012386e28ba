/* comm_nccl_create for builds made where NCCL (or nvcc) was absent: says so instead of failing
 * to link, so that the same worker still runs tensor parallel on the CPU. */
#include <stdio.h>

#include "worker/parallel/comm.h"

int comm_nccl_create(struct comm **ranks, int n, const int *devices, void *const *streams, double timeout_s,
                     const char *library, char *err, size_t errlen)
{
    (void)ranks, (void)n, (void)devices, (void)streams, (void)timeout_s, (void)library;
    snprintf(err, errlen, "this sluice-worker was built without NCCL (nccl.h or libnccl not found at build time)");
    return -1;
}
