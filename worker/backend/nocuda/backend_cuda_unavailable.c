/* backend_cuda_create for builds made where nvcc was absent: says so instead of failing to
 * link, so that the same worker binary still serves on the CPU. */
#include <stdio.h>

#include "worker/backend/backend.h"

int backend_cuda_create(struct backend **out, const struct model *m, const struct backend_options *opt,
                        char *err, size_t errlen)
{
    (void)m;
    (void)opt;
    *out = NULL;
    snprintf(err, errlen, "this sluice-worker was built without CUDA (nvcc not found at build time)");
    return -1;
}
