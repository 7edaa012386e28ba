// What a step hands out besides sampled tokens: prompt logprobs (log-softmax of a prompt
// position's logits at the next prompt token, its rank and the top alternatives, as
// sampler_prompt_logprob defines them) and final hidden states for embeddings (the model's last
// norm in fp32, summed or taken last per sequence).
#include "kernels/sluice_kernels.h"

#include <cub/cub.cuh>
#include <math.h>

#include "kernels/rank_reduce.cuh"

namespace
{

constexpr int kThreads = 512;

typedef cub::BlockReduce<float, kThreads> ReduceF;
typedef cub::BlockReduce<double, kThreads> ReduceD;
typedef cub::BlockReduce<int, kThreads> ReduceI;
typedef cub::BlockReduce<ArgBest, kThreads> ReduceB;
union Temp {
    typename ReduceF::TempStorage f;
    typename ReduceD::TempStorage d;
    typename ReduceI::TempStorage i;
    typename ReduceB::TempStorage b;
};

// One block per row: lse as sampler.c's log_sum_exp (the maximum factored out, expf summed in
// double), the target's logprob and rank, then the top n one at a time (n <= SK_MAX_TOP).
__global__ void __launch_bounds__(kThreads)
    prompt_logprobs_kernel(const float *logits, const int32_t *targets, const int32_t *n_tops, sk_prompt_lp *outs,
                           int vocab)
{
    __shared__ Temp tmp;
    __shared__ float sf;
    __shared__ double sd;
    __shared__ int si;
    __shared__ ArgBest sb;
    const int r = blockIdx.x;
    const float *l = logits + (int64_t)r * vocab;
    sk_prompt_lp *out = outs + r;
    int target = targets[r];
    if (target < 0 || target >= vocab) target = 0; // the backend checked; never read outside the row
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += kThreads) mx = fmaxf(mx, l[i]);
    mx = bcast(ReduceF(tmp.f).Reduce(mx, MaxOp()), &sf);
    const float lt = l[target];
    double sum = 0.0;
    int above = 0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
        const float v = l[i];
        sum += (double)expf(v - mx);
        above += v > lt;
    }
    sum = bcast(ReduceD(tmp.d).Sum(sum), &sd);
    above = bcast(ReduceI(tmp.i).Sum(above), &si);
    const double lse = (double)mx + log(sum);
    const int n_top = top_logprobs<ReduceB>(l, vocab, n_tops[r], lse, out->top_ids, out->top_logprobs, tmp.b, &sb);
    if (threadIdx.x == 0) {
        out->token = target;
        out->logprob = (float)((double)lt - lse);
        out->rank = above + 1;
        out->n_top = n_top;
    }
}

// One block per row: v = x[t] + delta's parts (added in order from zero, as the norms do), then
// w * v * rsqrt(mean(v^2) + eps) in fp32.
__global__ void __launch_bounds__(kThreads)
    final_hidden_kernel(const float *x, const float *delta, int n_parts, int64_t part_stride, const int32_t *rows,
                        const float *w, float *out, int hidden, float eps)
{
    __shared__ typename ReduceF::TempStorage tmp;
    __shared__ float sf;
    const int r = blockIdx.x;
    const int64_t t = rows[r];
    const float *xr = x + t * hidden;
    float *o = out + (int64_t)r * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += kThreads) {
        float d = 0.0f;
        if (delta)
            for (int j = 0; j < n_parts; j++) d += delta[j * part_stride + t * hidden + i];
        const float v = xr[i] + d;
        o[i] = v;
        ss += v * v;
    }
    ss = bcast(ReduceF(tmp).Sum(ss), &sf);
    const float inv = rsqrtf(ss / (float)hidden + eps);
    // Each thread rereads only what it wrote.
    for (int i = threadIdx.x; i < hidden; i += kThreads) o[i] = w[i] * (o[i] * inv);
}

// Block (s, column tile): the sum of sequence s's rows and its last row.
__global__ void pool_hidden_kernel(const float *h, const int32_t *segs, float *out, int hidden)
{
    const int s = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= hidden) return;
    const int first = segs[3 * s], count = segs[3 * s + 1];
    float sum = 0.0f;
    for (int k = 0; k < count; k++) sum += h[(int64_t)(first + k) * hidden + i];
    out[(int64_t)(2 * s) * hidden + i] = sum;
    out[(int64_t)(2 * s + 1) * hidden + i] = count > 0 ? h[(int64_t)(first + count - 1) * hidden + i] : 0.0f;
}

} // namespace

extern "C" cudaError_t sk_prompt_logprobs(const float *logits, const int32_t *targets, const int32_t *n_tops,
                                          struct sk_prompt_lp *out, int n_rows, int vocab, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    if (vocab < 1) return cudaErrorInvalidValue;
    prompt_logprobs_kernel<<<n_rows, kThreads, 0, s>>>(logits, targets, n_tops, out, vocab);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_final_hidden(const float *x, const float *delta, int n_parts, int64_t part_stride,
                                       const int32_t *rows, const float *w, float *out, int n_rows, int hidden,
                                       float eps, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    if (hidden < 1 || (delta && (n_parts < 1 || (n_parts > 1 && part_stride < (int64_t)hidden))))
        return cudaErrorInvalidValue;
    final_hidden_kernel<<<n_rows, kThreads, 0, s>>>(x, delta, delta ? n_parts : 0, part_stride, rows, w, out, hidden,
                                                    eps);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_pool_hidden(const float *h, const int32_t *segs, float *out, int n_seqs, int hidden,
                                      cudaStream_t s)
{
    if (n_seqs <= 0) return cudaSuccess;
    if (hidden < 1) return cudaErrorInvalidValue;
    const int threads = 256;
    pool_hidden_kernel<<<dim3(n_seqs, (hidden + threads - 1) / threads), threads, 0, s>>>(h, segs, out, hidden);
    return cudaGetLastError();
}
