/* The bounded wait for a step: a GPU that never finishes one (a kernel that hangs) becomes a
 * device error that the worker reports (its requests end with it, /health answers 503) instead of
 * a worker that waits forever. Past the timeout the backend is marked stuck and asks nothing more
 * of the device, not even at cleanup. */
#include <time.h>

#include "worker/backend/cuda/cuda_internal.h"

double cuda_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Spins on the event as cudaEventSynchronize does, looking at the clock every few hundred
 * queries. */
int cuda_watchdog_wait(struct cuda_backend *b, cudaEvent_t ev)
{
    int rc = 0;
    double t0 = -1.0;
    for (unsigned n = 0;; n++) {
        const cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) CUDA_CHECK(b, e);
        if (n % 256 == 0) {
            const double t = cuda_now_s();
            if (t0 < 0) {
                t0 = t;
            } else if (t - t0 > b->watchdog.timeout_s) {
                b->watchdog.stuck = true;
                CUDA_FAIL(b, "cuda: a step did not finish within %g s: the GPU is stuck; restart the worker",
                          b->watchdog.timeout_s);
            }
        }
    }
fail:
    return rc;
}
