// What the sampler and the prompt-logprob kernels share to rank tokens across a block: a
// (value, id) pair ordered as worker/sampler/sampler.h ranks tokens (higher value first, the
// lower id among equals), cub reduction operators, and the broadcast of a reduction's result.
#ifndef SLUICE_KERNELS_RANK_REDUCE_CUH
#define SLUICE_KERNELS_RANK_REDUCE_CUH

#include <math.h>
#include <stdint.h>

#include "kernels/sk_shapes.h"

namespace
{

struct ArgBest {
    float v;
    int32_t id;
};

// Ranks higher value first, the lower id among equals; id -1 ranks last.
__device__ __forceinline__ bool better(const ArgBest &a, const ArgBest &b)
{
    if (a.id < 0) return false;
    if (b.id < 0) return true;
    return a.v > b.v || (a.v == b.v && a.id < b.id);
}

struct ArgBestOp {
    __device__ __forceinline__ ArgBest operator()(const ArgBest &a, const ArgBest &b) const
    {
        return better(a, b) ? a : b;
    }
};

struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

struct MinIntOp {
    __device__ __forceinline__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxIntOp {
    __device__ __forceinline__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// Broadcasts a value computed by thread 0 (cub's reductions leave the result there only); the
// barriers also free the reduction's temporary storage for the next one.
template <typename T> __device__ T bcast(T v, T *slot)
{
    if (threadIdx.x == 0) *slot = v;
    __syncthreads();
    T r = *slot;
    __syncthreads();
    return r;
}

// The n (clamped to [0, SK_MAX_TOP] and the row) largest of row l as (id, l - lse), in
// descending order, ties to the lower id, one block-wide pass each: n is small. Thread 0 writes
// ids and lps; every thread returns how many there are. Reduce: cub::BlockReduce<ArgBest, the
// block's threads>, whose storage is tmp.
template <typename Reduce>
__device__ int top_logprobs(const float *l, int vocab, int n, double lse, int32_t *ids, float *lps,
                            typename Reduce::TempStorage &tmp, ArgBest *slot)
{
    n = n < 0 ? 0 : (n > SK_MAX_TOP ? SK_MAX_TOP : n);
    if (n > vocab) n = vocab;
    ArgBest prev = {INFINITY, -1};
    for (int k = 0; k < n; k++) {
        ArgBest best = {0.0f, -1};
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            ArgBest c = {l[i], i};
            const bool after = prev.id < 0 || c.v < prev.v || (c.v == prev.v && i > prev.id);
            if (after && better(c, best)) best = c;
        }
        best = bcast(Reduce(tmp).Reduce(best, ArgBestOp()), slot);
        if (best.id < 0) return k;
        if (threadIdx.x == 0) {
            ids[k] = best.id;
            lps[k] = (float)((double)best.v - lse);
        }
        prev = best;
    }
    return n;
}

} // namespace

#endif
