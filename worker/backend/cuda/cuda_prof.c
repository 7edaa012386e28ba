/* --cuda-profile: the device time of each phase of a step (events recorded between kernels, so
 * the steps run eagerly, without graphs), summed by step shape and printed as means per step
 * when the backend is freed. Launch gaps between small kernels count too, so the phases add up to
 * more than a graph replay takes; tests/bench/kernel_trace.c shows the replays themselves. */
#include "worker/backend/cuda/cuda_internal.h"

#define CUDA_PROF_EVENTS 640
#define CUDA_PROF_SHAPES 8

struct cuda_prof {
    cudaEvent_t ev[CUDA_PROF_EVENTS];
    int phase[CUDA_PROF_EVENTS];
    int n_ev;
    int shape[CUDA_PROF_SHAPES]; /* decode batch size; -T for other steps */
    int steps[CUDA_PROF_SHAPES];
    double ms[CUDA_PROF_SHAPES][CUDA_PROF_PHASES];
    double wall_ms[CUDA_PROF_SHAPES];
    int n_shapes;
};

static const char *const phase_names[CUDA_PROF_PHASES] = {
    "embed", "norm",      "gemm qkv",    "qkv post", "attention", "gemm o", "gemm gate/up",
    "silu",  "gemm down", "mlp (fused)", "lm_head",  "sample",    "copies"};

int cuda_prof_create(struct cuda_backend *b)
{
    int rc = 0;
    b->prof = calloc(1, sizeof *b->prof);
    if (!b->prof) CUDA_FAIL(b, "cuda: out of host memory");
    for (int i = 0; i < CUDA_PROF_EVENTS; i++) CUDA_CHECK(b, cudaEventCreate(&b->prof->ev[i]));
fail:
    return rc;
}

static void report(const struct cuda_prof *p)
{
    for (int k = 0; k < p->n_shapes; k++) {
        if (!p->steps[k]) continue;
        char line[1024];
        int at = 0;
        double tot = 0;
        for (int c = 0; c < CUDA_PROF_PHASES; c++) tot += p->ms[k][c];
        for (int c = 0; c < CUDA_PROF_PHASES && at < (int)sizeof line - 64; c++)
            at += snprintf(line + at, sizeof line - at, " %s %.3f", phase_names[c], p->ms[k][c] / p->steps[k]);
        fprintf(stderr, "cuda profile: %s %d, %d steps: device %.3f ms/step, host wall %.3f ms/step; ms/step:%s\n",
                p->shape[k] > 0 ? "decode batch" : "tokens", p->shape[k] > 0 ? p->shape[k] : -p->shape[k], p->steps[k],
                tot / p->steps[k], p->wall_ms[k] / p->steps[k], line);
    }
}

void cuda_prof_free(struct cuda_backend *b)
{
    struct cuda_prof *p = b->prof;
    if (!p) return;
    if (!b->watchdog.stuck) {
        report(p);
        for (int i = 0; i < CUDA_PROF_EVENTS; i++)
            if (p->ev[i]) cudaEventDestroy(p->ev[i]);
    }
    free(p);
    b->prof = NULL;
}

void cuda_prof_begin(struct cuda_backend *b)
{
    if (b->prof) b->prof->n_ev = 0;
}

void cuda_prof_mark(struct cuda_backend *b, enum cuda_prof_phase phase)
{
    struct cuda_prof *p = b->prof;
    if (!p || p->n_ev >= CUDA_PROF_EVENTS) return;
    if (cudaEventRecord(p->ev[p->n_ev], b->stream) == cudaSuccess) p->phase[p->n_ev++] = phase;
}

void cuda_prof_collect(struct cuda_backend *b, int shape, double wall_ms)
{
    struct cuda_prof *p = b->prof;
    int k = 0;
    while (k < p->n_shapes && p->shape[k] != shape) k++;
    if (k == p->n_shapes) {
        if (k == CUDA_PROF_SHAPES) goto done;
        p->shape[k] = shape;
        p->n_shapes++;
    }
    for (int i = 1; i < p->n_ev; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) == cudaSuccess) p->ms[k][p->phase[i]] += ms;
    }
    p->steps[k]++;
    p->wall_ms[k] += wall_ms;
done:
    p->n_ev = 0;
}
