/* Captured decode steps. A pure decode step (cuda_step_plan.graph) is captured as a CUDA graph the
 * first time its shape comes (sequences, block-table width, whether the logits get sorted, the
 * history buffer its sampler reads) and replayed after that: one launch instead of a few hundred.
 * What else the step's kernels depend on follows from that shape, so the shape is the key. The
 * cache keeps the CUDA_GRAPH_CACHE shapes used last. */
#include "worker/backend/cuda/cuda_internal.h"

int cuda_graph_run(struct cuda_backend *b, const struct cuda_step_args *a)
{
    struct cuda_graphs *gs = &b->graphs;
    const struct cuda_step_plan *p = a->plan;
    int rc = 0;
    struct cuda_graph_entry *g = NULL;
    cudaGraph_t graph = NULL;
    bool capturing = false;
    for (int i = 0; i < gs->n; i++) {
        struct cuda_graph_entry *e = &gs->entries[i];
        if (e->n_seqs == p->n_seqs && e->bt_stride == p->bt_stride && e->any_cut == p->any_cut &&
            e->model_only == a->model_only && e->hist == b->steps.hist_dev) {
            g = e;
            break;
        }
    }
    if (!g) {
        if (gs->n < CUDA_GRAPH_CACHE) {
            g = &gs->entries[gs->n++];
        } else {
            g = &gs->entries[0];
            for (int i = 1; i < gs->n; i++)
                if (gs->entries[i].last_used < g->last_used) g = &gs->entries[i];
            cudaGraphExecDestroy(g->exec);
        }
        memset(g, 0, sizeof *g);
        CUDA_CHECK(b, cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
        capturing = true;
        rc = cuda_forward_enqueue(b, a);
        capturing = false;
        cudaError_t e = cudaStreamEndCapture(b->stream, &graph);
        if (rc < 0) goto fail;
        CUDA_CHECK(b, e);
        CUDA_CHECK(b, cudaGraphInstantiate(&g->exec, graph, 0));
        g->n_seqs = p->n_seqs;
        g->bt_stride = p->bt_stride;
        g->any_cut = p->any_cut;
        g->model_only = a->model_only;
        g->hist = b->steps.hist_dev;
        gs->captures++;
    }
    g->last_used = ++gs->clock;
    CUDA_CHECK(b, cudaGraphLaunch(g->exec, b->stream));
    gs->replays++;
fail:
    if (capturing) {
        cudaGraph_t dropped = NULL;
        cudaStreamEndCapture(b->stream, &dropped);
        if (dropped) cudaGraphDestroy(dropped);
    }
    if (graph) cudaGraphDestroy(graph);
    if (rc < 0 && g && !g->exec) {
        /* Drop the half-made entry: move the last one into its place. */
        *g = gs->entries[--gs->n];
    }
    return rc;
}

void cuda_graphs_free(struct cuda_backend *b)
{
    for (int i = 0; i < b->graphs.n; i++) cudaGraphExecDestroy(b->graphs.entries[i].exec);
    b->graphs.n = 0;
}
