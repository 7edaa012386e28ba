// Sampling on the GPU, following worker/sampler/sampler.h step by step, one block per row, and
// the fixed inputs of its sort.
#include "kernels/sluice_kernels.h"

#include <cub/cub.cuh>
#include <math.h>

#include "kernels/launch_dims.cuh"
#include "kernels/rank_reduce.cuh"

namespace
{

constexpr int kThreads = 1024;

typedef cub::BlockReduce<float, kThreads> ReduceF;
typedef cub::BlockReduce<double, kThreads> ReduceD;
typedef cub::BlockReduce<ArgBest, kThreads> ReduceArg;
typedef cub::BlockReduce<int, kThreads> ReduceI;
typedef cub::BlockScan<double, kThreads> ScanD;

union TempStorage {
    typename ReduceF::TempStorage f;
    typename ReduceD::TempStorage d;
    typename ReduceArg::TempStorage a;
    typename ReduceI::TempStorage i;
    typename ScanD::TempStorage s;
};

__device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float uniform(uint64_t seed, uint64_t n)
{
    const uint64_t g = 0x9E3779B97F4A7C15ull;
    uint64_t h = mix64(mix64(seed + g) + (n + 1) * g);
    return __fmul_rn((float)(h >> 40), 0x1p-24f);
}

__device__ __forceinline__ bool is_greedy(const sk_sample_row &r)
{
    return r.temperature <= 1e-5f;
}

__global__ void __launch_bounds__(kThreads)
    prepare_kernel(const float *logits, const sk_sample_row *rows, const int32_t *history, const uint32_t *masks,
                   float *work_all, int32_t *counts_all, sk_sample_out *outs, int vocab)
{
    __shared__ TempStorage tmp;
    __shared__ float sf;
    __shared__ double sd;
    __shared__ ArgBest sa;
    __shared__ int si;
    const int r = blockIdx.x;
    const sk_sample_row sp = rows[r];
    const float *l = logits + (int64_t)r * vocab;
    float *work = work_all + (int64_t)r * vocab;
    int32_t *counts = counts_all + (int64_t)r * vocab;
    sk_sample_out *out = outs + r;

    // 1. Logprobs from the raw logits. Greedy rows also take the raw argmax on the way: it is
    // their token unless a penalty changes work. Rows of a multiple of 4 floats are read as
    // float4 (the rows then start 16-byte aligned).
    const bool greedy = is_greedy(sp), vec = (vocab & 3) == 0;
    const int32_t *hist = history ? history + sp.hist_off : nullptr;
    const int n_out_pen = sp.n_output < sp.n_history ? sp.n_output : sp.n_history;
    const bool penalized = hist && sp.n_history > 0 &&
                           ((sp.rep_penalty > 0.0f && sp.rep_penalty != 1.0f) ||
                            ((sp.presence != 0.0f || sp.frequency != 0.0f) && n_out_pen > 0));
    // Steps 2 (logit bias, suppressed tokens) and 2b (the mask) change work too.
    const bool biased = history && sp.n_bias > 0, suppressed = history && sp.n_supp > 0;
    const bool masked = masks && sp.mask_off >= 0;
    const bool modified = penalized || biased || suppressed || masked;
    // One pass over the row: the running maximum, the sum of exponentials relative to it (an
    // online softmax: the sum is rescaled when the maximum grows), the greedy argmax, and the
    // copy into work (for the penalties). Single precision per thread is exact enough for
    // logprobs (the test allows 1e-4); the threads' partial sums are combined in double.
    float mx = -INFINITY, part = 0.0f;
    ArgBest raw_best = {0.0f, -1};
    // A greedy row without penalties takes the raw argmax: it never reads work, so the copy
    // (as many bytes written as the row has) is skipped.
    const bool copy = !greedy || modified;
    auto take = [&](float v, int id) {
        if (v > mx) {
            part = (mx == -INFINITY ? 0.0f : part * expf(mx - v)) + 1.0f;
            mx = v;
        } else if (mx != -INFINITY) {
            part += expf(v - mx);
        }
        ArgBest c = {v, id};
        if (greedy && better(c, raw_best)) raw_best = c;
    };
    if (vec) {
        // kLoads pieces in flight per thread: one block streams a whole row (0.5 MB for a
        // 128K vocabulary), and with one load at a time it waits on memory latency; four in
        // flight made the kernel about a fifth faster.
        constexpr int kLoads = 4;
        const float4 *l4 = reinterpret_cast<const float4 *>(l);
        float4 *w4 = reinterpret_cast<float4 *>(work);
        const int n4 = vocab / 4;
        auto take4 = [&](float4 v, int i) {
            if (copy) w4[i] = v;
            take(v.x, 4 * i);
            take(v.y, 4 * i + 1);
            take(v.z, 4 * i + 2);
            take(v.w, 4 * i + 3);
        };
        int i = threadIdx.x;
        for (; i + (kLoads - 1) * kThreads < n4; i += kLoads * kThreads) {
            float4 v[kLoads];
#pragma unroll
            for (int u = 0; u < kLoads; u++) v[u] = l4[i + u * kThreads];
#pragma unroll
            for (int u = 0; u < kLoads; u++) take4(v[u], i + u * kThreads);
        }
        for (; i < n4; i += kThreads) take4(l4[i], i);
    } else {
        for (int i = threadIdx.x; i < vocab; i += kThreads) {
            float v = l[i];
            if (copy) work[i] = v;
            take(v, i);
        }
    }
    const float thread_mx = mx;
    mx = bcast(ReduceF(tmp.f).Reduce(mx, MaxOp()), &sf);
    if (greedy && !modified) raw_best = bcast(ReduceArg(tmp.a).Reduce(raw_best, ArgBestOp()), &sa);
    double sum = thread_mx == -INFINITY ? 0.0 : (double)part * exp((double)thread_mx - (double)mx);
    sum = bcast(ReduceD(tmp.d).Sum(sum), &sd);
    const double lse = (double)mx + log(sum);
    const int n_top =
        top_logprobs<ReduceArg>(l, vocab, sp.n_logprobs, lse, out->top_ids, out->top_logprobs, tmp.a, &sa);
    if (threadIdx.x == 0) {
        out->n_top = n_top;
        out->lse = (float)lse;
        out->fixed = 0;
    }

    // 2. Penalties on the copy.
    __syncthreads();
    if (penalized) {
        float rep = sp.rep_penalty;
        if (rep > 0.0f && rep != 1.0f) {
            // Every thread writing one token computes the same value from the raw logit.
            for (int i = threadIdx.x; i < sp.n_history; i += kThreads) {
                int t = hist[i];
                if (t < 0 || t >= vocab) continue;
                float v = l[t];
                work[t] = v > 0.0f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
            }
        }
        int n_out = sp.n_output < sp.n_history ? sp.n_output : sp.n_history;
        if ((sp.presence != 0.0f || sp.frequency != 0.0f) && n_out > 0) {
            const int32_t *op = hist + (sp.n_history - n_out);
            __syncthreads();
            for (int i = threadIdx.x; i < n_out; i += kThreads)
                if (op[i] >= 0 && op[i] < vocab) counts[op[i]] = 0;
            __syncthreads();
            for (int i = threadIdx.x; i < n_out; i += kThreads)
                if (op[i] >= 0 && op[i] < vocab) atomicAdd(&counts[op[i]], 1);
            __syncthreads();
            for (int i = threadIdx.x; i < n_out; i += kThreads) {
                int t = op[i];
                if (t < 0 || t >= vocab) continue;
                int c = atomicExch(&counts[t], 0);
                if (c > 0) work[t] = __fsub_rn(work[t], __fadd_rn(__fmul_rn((float)c, sp.frequency), sp.presence));
            }
        }
    }
    __syncthreads();
    // The logit bias after the penalties (ids are distinct: one thread per id), then the
    // suppressed ids (repeats only write -inf twice).
    if (biased) {
        for (int i = threadIdx.x; i < sp.n_bias; i += kThreads) {
            const int t = history[sp.bias_off + i];
            if (t >= 0 && t < vocab) work[t] = __fadd_rn(work[t], __int_as_float(history[sp.bias_off + sp.n_bias + i]));
        }
        __syncthreads();
    }
    if (suppressed) {
        for (int i = threadIdx.x; i < sp.n_supp; i += kThreads) {
            const int t = history[sp.supp_off + i];
            if (t >= 0 && t < vocab) work[t] = -INFINITY;
        }
        __syncthreads();
    }
    // 2b. The mask: disallowed tokens get -inf. With no allowed token of finite logit the token
    // is the lowest allowed id; with none allowed, -1 (the backend reports it).
    if (masked) {
        const uint32_t *m = masks + sp.mask_off;
        int first = INT_MAX, finite = 0;
        for (int i = threadIdx.x; i < vocab; i += kThreads) {
            if (!((m[i >> 5] >> (i & 31)) & 1u)) {
                work[i] = -INFINITY;
                continue;
            }
            if (i < first) first = i;
            if (work[i] > -INFINITY) finite = 1;
        }
        first = bcast(ReduceI(tmp.i).Reduce(first, MinIntOp()), &si);
        finite = bcast(ReduceI(tmp.i).Reduce(finite, MaxIntOp()), &si);
        if (first == INT_MAX || !finite) {
            if (threadIdx.x == 0) {
                out->fixed = 1;
                out->token = first == INT_MAX ? -1 : first;
                out->logprob = first == INT_MAX ? 0.0f : (float)((double)l[first] - lse);
            }
            return;
        }
    }

    // 3. Greedy: argmax of the penalized logits, ties to the lowest id.
    if (greedy && !modified) {
        if (threadIdx.x == 0) {
            int tok = raw_best.id < 0 ? 0 : raw_best.id;
            out->token = tok;
            out->logprob = (float)((double)l[tok] - lse);
        }
        return;
    }
    if (greedy) {
        ArgBest best = {0.0f, -1};
        for (int i = threadIdx.x; i < vocab; i += kThreads) {
            ArgBest c = {work[i], i};
            if (better(c, best)) best = c;
        }
        best = ReduceArg(tmp.a).Reduce(best, ArgBestOp());
        if (threadIdx.x == 0) {
            int tok = best.id < 0 ? 0 : best.id;
            out->token = tok;
            out->logprob = (float)((double)l[tok] - lse);
        }
        return;
    }

    // 4. Weights w = expf(l / T - max).
    const float inv_t = __fdiv_rn(1.0f, sp.temperature);
    float wm = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
        float v = __fmul_rn(work[i], inv_t);
        work[i] = v;
        wm = fmaxf(wm, v);
    }
    wm = bcast(ReduceF(tmp.f).Reduce(wm, MaxOp()), &sf);
    for (int i = threadIdx.x; i < vocab; i += kThreads) work[i] = expf(__fsub_rn(work[i], wm));
}

__device__ __forceinline__ bool needs_cut(const sk_sample_row &sp, int vocab)
{
    return (sp.top_k > 0 && sp.top_k < vocab) || (sp.top_p > 0.0f && sp.top_p < 1.0f);
}

__global__ void __launch_bounds__(kThreads)
    finish_kernel(const float *logits, const float *work_all, const float *sorted_w_all, const int32_t *sorted_ids_all,
                  int sorted, const sk_sample_row *rows, sk_sample_out *outs, int vocab)
{
    __shared__ TempStorage tmp;
    __shared__ double sd;
    __shared__ int si;
    const int r = blockIdx.x;
    const sk_sample_row sp = rows[r];
    if (is_greedy(sp)) return;
    const float *w = work_all + (int64_t)r * vocab;
    sk_sample_out *out = outs + r;
    if (out->fixed) return;

    int cut = -1;
    if (needs_cut(sp, vocab)) {
        if (!sorted) {
            if (threadIdx.x == 0) out->token = -1;
            return;
        }
        const float *sw = sorted_w_all + (int64_t)r * vocab;
        const int32_t *sid = sorted_ids_all + (int64_t)r * vocab;
        const int limit = sp.top_k > 0 && sp.top_k < vocab ? sp.top_k : vocab;
        const bool use_p = sp.top_p > 0.0f && sp.top_p < 1.0f;
        int cut_rank = limit - 1;
        if (use_p) {
            double tot = 0.0;
            for (int i = threadIdx.x; i < limit; i += kThreads) tot += sw[i];
            tot = bcast(ReduceD(tmp.d).Sum(tot), &sd);
            const double thr = (double)sp.top_p * tot;
            // The first rank whose inclusive running sum reaches thr, scanning in rank order.
            double carry = 0.0;
            int found = INT_MAX;
            for (int base = 0; base < limit && found == INT_MAX; base += kThreads) {
                int i = base + threadIdx.x;
                double v = i < limit ? (double)sw[i] : 0.0, incl, agg;
                ScanD(tmp.s).InclusiveSum(v, incl, agg);
                __syncthreads();
                int cand = (i < limit && carry + incl >= thr) ? i : INT_MAX;
                found = bcast(ReduceI(tmp.i).Reduce(cand, MinIntOp()), &si);
                carry += agg;
            }
            if (found != INT_MAX) cut_rank = found;
        }
        cut = sid[cut_rank];
    }
    const float cut_w = cut >= 0 ? w[cut] : 0.0f;
    const float min_w = sp.min_p > 0.0f ? sp.min_p : 0.0f;
#define KEPT(i) ((cut < 0 || w[i] > cut_w || (w[i] == cut_w && (i) <= cut)) && w[i] >= min_w && w[i] > 0.0f)

    // 5. Draw over kept weights in ascending id order: each thread owns a contiguous range.
    // Weights of 0 (masked, suppressed, underflowed) are never kept, so the rounding fallback
    // (the highest kept id) is never a masked token.
    const int seg = (vocab + kThreads - 1) / kThreads;
    const int lo = threadIdx.x * seg, hi = min(vocab, lo + seg);
    double mine = 0.0;
    int last = -1;
    for (int i = lo; i < hi; i++)
        if (KEPT(i)) {
            mine += w[i];
            last = i;
        }
    double before, total;
    ScanD(tmp.s).ExclusiveSum(mine, before, total);
    __syncthreads();
    const double target = (double)uniform(sp.seed, sp.n_generated) * total;
    int pick = INT_MAX;
    if (before + mine > target) {
        double acc = before;
        for (int i = lo; i < hi; i++)
            if (KEPT(i)) {
                acc += w[i];
                if (acc > target) {
                    pick = i;
                    break;
                }
            }
    }
#undef KEPT
    pick = bcast(ReduceI(tmp.i).Reduce(pick, MinIntOp()), &si);
    last = ReduceI(tmp.i).Reduce(last, MaxIntOp());
    if (threadIdx.x == 0) {
        int tok = pick != INT_MAX ? pick : (last >= 0 ? last : 0);
        out->token = tok;
        out->logprob = (float)((double)logits[(int64_t)r * vocab + tok] - (double)out->lse);
    }
}

// The sort's fixed inputs, filled once for the largest batch (sk_fill_iota_rows,
// sk_fill_row_offsets): every row's ids 0..vocab-1 to carry along with the weights, and the
// rows' bounds in the packed work array.
__global__ void iota_rows_kernel(int32_t *dst, int rows, int n)
{
    int64_t total = (int64_t)rows * n;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = (int32_t)(i % n);
}

__global__ void row_offsets_kernel(int32_t *off, int rows, int n)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r <= rows) off[r] = r * n;
}

} // namespace

extern "C" cudaError_t sk_sample_prepare(const float *logits, const struct sk_sample_row *rows, const int32_t *history,
                                         const uint32_t *masks, float *work, int32_t *counts, struct sk_sample_out *out,
                                         int n_rows, int vocab, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    prepare_kernel<<<n_rows, kThreads, 0, s>>>(logits, rows, history, masks, work, counts, out, vocab);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_fill_iota_rows(int32_t *dst, int rows, int n, cudaStream_t s)
{
    if ((int64_t)rows * n <= 0) return cudaSuccess;
    iota_rows_kernel<<<grid_for((int64_t)rows * n, 256), 256, 0, s>>>(dst, rows, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_fill_row_offsets(int32_t *offsets, int rows, int n, cudaStream_t s)
{
    row_offsets_kernel<<<(rows + 1 + 255) / 256, 256, 0, s>>>(offsets, rows, n);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_sort_temp_bytes(int max_rows, int vocab, size_t *bytes)
{
    *bytes = 0;
    return cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, *bytes, (const float *)nullptr, (float *)nullptr, (const int32_t *)nullptr, (int32_t *)nullptr,
        (int64_t)max_rows * vocab, max_rows, (const int32_t *)nullptr, (const int32_t *)nullptr + 1);
}

extern "C" cudaError_t sk_sample_sort(void *temp, size_t temp_bytes, const float *work, const int32_t *ids_in,
                                      const int32_t *offsets, float *sorted_w, int32_t *sorted_ids, int n_rows,
                                      int vocab, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    size_t bytes = temp_bytes;
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortPairsDescending(temp, bytes, work, sorted_w, ids_in, sorted_ids,
                                                                       (int64_t)n_rows * vocab, n_rows, offsets,
                                                                       offsets + 1, 0, (int)(sizeof(float) * 8), s);
    if (e != cudaSuccess) return e;
    return cudaGetLastError();
}

extern "C" cudaError_t sk_sample_finish(const float *logits, const float *work, const float *sorted_w,
                                        const int32_t *sorted_ids, int sorted, const struct sk_sample_row *rows,
                                        struct sk_sample_out *out, int n_rows, int vocab, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    finish_kernel<<<n_rows, kThreads, 0, s>>>(logits, work, sorted_w, sorted_ids, sorted, rows, out, vocab);
    return cudaGetLastError();
}
