/* Rows of a load-time conversion in parallel (model_internal.h): an 8B checkpoint has 7e9
 * weights to quantize (--quantization fp8) or repack (GPTQ, AWQ) before it can serve. */
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include "worker/model/model_internal.h"

#define MAX_THREADS 32

struct share {
    int (*fn)(void *arg, int64_t r0, int64_t r1);
    void *arg;
    int64_t r0, r1;
    int rc;
};

static void *run_share(void *p)
{
    struct share *s = p;
    s->rc = s->fn(s->arg, s->r0, s->r1);
    return NULL;
}

int model_parallel_rows(int64_t rows, int64_t min_rows, int (*fn)(void *arg, int64_t r0, int64_t r1), void *arg)
{
    long n_cpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = n_cpu < 1 ? 1 : n_cpu > MAX_THREADS ? MAX_THREADS : (int)n_cpu;
    if (min_rows < 1) min_rows = 1;
    if (rows < min_rows * n) n = rows / min_rows > 1 ? (int)(rows / min_rows) : 1;
    pthread_t tids[MAX_THREADS];
    struct share shares[MAX_THREADS];
    bool started[MAX_THREADS] = {0};
    int rc = 0;
    for (int i = 0; i < n; i++) {
        shares[i] = (struct share){.fn = fn, .arg = arg, .r0 = rows * i / n, .r1 = rows * (i + 1) / n};
        /* The last share, and any a thread cannot be started for, on this thread. */
        started[i] = i + 1 < n && pthread_create(&tids[i], NULL, run_share, &shares[i]) == 0;
        if (!started[i]) run_share(&shares[i]);
    }
    for (int i = 0; i < n; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        if (shares[i].rc) rc = -1;
    }
    return rc;
}
