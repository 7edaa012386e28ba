// sk_moe_sort (sluice_kernels.h, "mixture of experts"): the counting sort of (token, choice)
// pairs by expert, in one block, stable, so that each expert's rows keep the pair order. One
// block of a fixed size whatever the count: a decode step that runs it can be captured in a CUDA
// graph, and the segments and active experts it leaves size nothing on the host.
#include "kernels/sluice_kernels.h"

namespace
{

constexpr int kSortThreads = 1024;

__global__ void __launch_bounds__(kSortThreads)
    sort_kernel(const int32_t *__restrict__ choice, int n_pairs, int n_experts, int32_t *__restrict__ order,
                int32_t *__restrict__ pos, int32_t *__restrict__ seg, int32_t *__restrict__ active)
{
    __shared__ int32_t count[SK_MOE_MAX_EXPERTS], start[SK_MOE_MAX_EXPERTS + 1];
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) atomicAdd(&count[choice[i]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0, na = 0;
        for (int e = 0; e < n_experts; e++) {
            start[e] = s;
            seg[e] = s;
            if (count[e]) active[na++] = e;
            s += count[e];
        }
        start[n_experts] = s;
        seg[n_experts] = s;
        active[n_experts] = na;
    }
    __syncthreads();
    // Warp w places the pairs of experts w, w + 32, ... in pair order: a ballot per 32 pairs says
    // which lanes hold the expert, and the lanes below a lane say where its pair goes.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    const unsigned below = (1u << lane) - 1u;
    for (int e = warp; e < n_experts; e += n_warps) {
        if (!count[e]) continue;
        int at = start[e];
        for (int base = 0; base < n_pairs; base += 32) {
            int i = base + lane;
            bool mine = i < n_pairs && choice[i] == e;
            unsigned m = __ballot_sync(0xffffffffu, mine);
            if (mine) {
                int p = at + __popc(m & below);
                order[p] = i;
                pos[i] = p;
            }
            at += __popc(m);
        }
    }
}

} // namespace

extern "C" cudaError_t sk_moe_sort(const int32_t *choice, int n_pairs, int n_experts, int32_t *order, int32_t *pos,
                                   int32_t *seg, int32_t *active, cudaStream_t s)
{
    if (n_experts < 1 || n_experts > SK_MOE_MAX_EXPERTS || n_pairs < 0) return cudaErrorInvalidValue;
    sort_kernel<<<1, kSortThreads, 0, s>>>(choice, n_pairs, n_experts, order, pos, seg, active);
    return cudaGetLastError();
}
