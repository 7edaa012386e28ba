// sk_moe_route (sluice_kernels.h, "mixture of experts"): the router's softmax and top-k, one
// warp per token. Its grid is sized from the step's token count and the model's shape, never
// from a count on the host, so a decode step that runs it can be captured in a CUDA graph.
#include "kernels/moe_common.cuh"
#include "kernels/sluice_kernels.h"

namespace
{

constexpr int kPerLane = SK_MOE_MAX_EXPERTS / 32;

__global__ void route_kernel(const float *__restrict__ logits, int n_tokens, int n_experts, int top_k,
                             int renormalise, int32_t *__restrict__ choice, float *__restrict__ weight)
{
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (t >= n_tokens) return;
    const float *l = logits + (int64_t)t * n_experts;
    float v[kPerLane];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; j++) {
        int e = lane + 32 * j;
        v[j] = e < n_experts ? l[e] : -INFINITY;
        mx = fmaxf(mx, v[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; j++) {
        int e = lane + 32 * j;
        v[j] = e < n_experts ? expf(v[j] - mx) : -1.0f; // -1: never chosen (probabilities are >= 0)
        if (e < n_experts) sum += v[j];
    }
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
#pragma unroll
    for (int j = 0; j < kPerLane; j++)
        if (lane + 32 * j < n_experts) v[j] *= inv;
    // k rounds of a warp arg-max over the probabilities; equal values go to the lower expert id.
    float top = 0.0f;
    float wsel[SK_MOE_MAX_TOP_K];
    int32_t esel[SK_MOE_MAX_TOP_K];
    for (int r = 0; r < top_k; r++) {
        float bv = -2.0f;
        int be = INT32_MAX;
#pragma unroll
        for (int j = 0; j < kPerLane; j++) {
            int e = lane + 32 * j;
            // Ascending e per lane: the first of equals stays. Only real experts: where every
            // probability is NaN no comparison holds, and no padding id may win instead.
            if (e < n_experts && v[j] > bv) bv = v[j], be = e;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oe = __shfl_xor_sync(0xffffffffu, be, o);
            if (ov > bv || (ov == bv && oe < be)) bv = ov, be = oe;
        }
#pragma unroll
        for (int j = 0; j < kPerLane; j++)
            if (lane + 32 * j == be) v[j] = -1.0f;
        if (be == INT32_MAX) be = r; // NaN logits: no order; any id keeps the later kernels in bounds
        wsel[r] = bv;
        esel[r] = be;
        top += bv; // in the chosen order, as the CPU router sums them
    }
    if (lane == 0) {
        for (int r = 0; r < top_k; r++) {
            choice[(int64_t)t * top_k + r] = esel[r];
            weight[(int64_t)t * top_k + r] = renormalise ? wsel[r] / top : wsel[r];
        }
    }
}

} // namespace

extern "C" cudaError_t sk_moe_route(const float *logits, int n_tokens, int n_experts, int top_k, int renormalise,
                                    int32_t *choice, float *weight, cudaStream_t s)
{
    if (n_tokens <= 0) return cudaSuccess;
    if (n_experts < 1 || n_experts > SK_MOE_MAX_EXPERTS || top_k < 1 || top_k > SK_MOE_MAX_TOP_K ||
        top_k > n_experts)
        return cudaErrorInvalidValue;
    const int per_block = 8;
    route_kernel<<<(n_tokens + per_block - 1) / per_block, per_block * 32, 0, s>>>(logits, n_tokens, n_experts, top_k,
                                                                                   renormalise, choice, weight);
    return cudaGetLastError();
}
