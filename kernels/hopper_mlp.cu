// The MLP of a decode batch in one launch on Hopper's own path: gate/up with SwiGLU into act (as
// sk_hopper_gemm_swiglu does), then the down product of act, leaving its split parts in y (as
// sk_hopper_gemm_parts does). Launched one after the other, the down product could not start
// before the last gate/up block had ended: its blocks did not fit beside gate/up's, so every
// layer paid a cold start (launch, pipeline fill) with memory idle in between (docs/performance.md).
//
// Here a block takes its work by ticket (an atomic counter), all gate/up tiles first, then the
// down tiles, split by split. A gate/up block counts its finished tile against the down split
// whose K range its 64 activation columns fall in; a down block's weight producer streams at
// once, while its x producer waits until its split's count is complete. A block that drew a down
// ticket knows every gate/up ticket is held by a block that is already running and waits for
// nothing but the kernel before it, so the waits always end, whatever the hardware's block
// order. The tiles, their K ranges and their arithmetic are those of the two separate launches,
// so act and the parts are the same bits.
//
// The counters (kMlpSync ints: ticket, blocks done, one count per split) are zero
// before a launch; the block that finishes last zeroes them again. Consecutive launches take the
// handle's two sets in turn, so a launch never meets counters its predecessor still uses.
#include "kernels/hopper_stream.cuh"
#include "kernels/pdl.cuh"

using namespace hopper;

namespace
{

enum { SYNC_TICKET, SYNC_DONE, SYNC_SPLIT0 };
static_assert(kMlpSync >= SYNC_SPLIT0 + SK_HOPPER_MAX_SPLITS, "a count for every split");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Waits (one thread) until *count reaches n, then orders what the counted blocks wrote before the
// copy engine's reads of it (the writes went through the generic proxy, TMA reads through the
// async proxy).
__device__ __forceinline__ void wait_count(const int *count, int n)
{
    for (;;) {
        int v;
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
        if (v >= n) break;
        __nanosleep(128);
    }
    asm volatile("fence.proxy.async.global;" ::: "memory");
}

template <int NT>
__global__ void __launch_bounds__(kThreads) hopper_mlp_kernel(
    const __grid_constant__ CUtensorMap t_gu, const __grid_constant__ CUtensorMap t_x,
    const __grid_constant__ CUtensorMap t_down, const __grid_constant__ CUtensorMap t_act, __nv_bfloat16 *act,
    float *y, int *sync, int rows, int hidden, int inter, int down_per, int64_t part_stride, int trigger)
{
    if (trigger) pdl_let_dependents_launch(); // see hopper_gemm_kernel
    extern __shared__ unsigned char smem_raw[];
    __shared__ int ticket;
    const ring g = ring_init<NT>(smem_raw);
    if (threadIdx.x == 0) ticket = atomicAdd(sync + SYNC_TICKET, 1);
    if (threadIdx.x == kConsumers) {
        prefetch_tensormap(t_gu);
        prefetch_tensormap(t_x);
        prefetch_tensormap(t_down);
        prefetch_tensormap(t_act);
    }
    __syncthreads();

    // Gate/up tile j (2 * inter / BM of them, K = hidden) gives act's columns 64j..64j+63: down's
    // K block j. Down tiles are numbered split by split.
    const int gu_tiles = 2 * inter / BM, down_tiles = (hidden + BM - 1) / BM;
    const bool gu = ticket < gu_tiles;
    const int tile = gu ? ticket : (ticket - gu_tiles) % down_tiles, split = gu ? 0 : (ticket - gu_tiles) / down_tiles;
    const int k_blocks = gu ? (hidden + BK - 1) / BK : inter / BK;
    const int kb0 = split * down_per, n_kb = (gu ? k_blocks : min(kb0 + down_per, k_blocks)) - kb0;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    if (warp >= 4) {
        if (lane == 0) {
            const bool weights = warp == 4;
            if (!weights) {
                pdl_wait(); // x is the previous kernel's output
                if (!gu) wait_count(sync + SYNC_SPLIT0 + split, n_kb);
            }
            produce<NT>(g, weights, weights ? (gu ? &t_gu : &t_down) : (gu ? &t_x : &t_act), kb0, n_kb,
                        weights ? tile * BM : 0);
        }
        return;
    }
    float acc[2][NT / 2];
    consume<NT>(g, acc, n_kb);
    consumers_sync();
    if (gu) {
        store_act_tile<NT>(g, acc, act, rows, inter, tile);
        // Every thread's columns are out before the count says so.
        __threadfence();
        asm volatile("fence.proxy.async.global;" ::: "memory");
        consumers_sync();
        if (threadIdx.x == 0)
            asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(sync + SYNC_SPLIT0 + tile / down_per)
                         : "memory");
    } else {
        const float *sy = stage_out_tile<NT>(g, acc);
        consumers_sync();
        store_out_tile(sy, y + split * part_stride, rows, hidden, tile);
    }
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(sync + SYNC_DONE, 1) == (int)gridDim.x - 1)
            for (int i = 0; i < kMlpSync; i++) sync[i] = 0; // the next launch of this set starts clean
    }
}
#else
// Built without sm_90a: never launched (sk_hopper_gemm_create refuses).
template <int NT>
__global__ void hopper_mlp_kernel(const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap,
                                  const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap,
                                  __nv_bfloat16 *, float *, int *, int, int, int, int, int64_t, int)
{
}
#endif

template <int NT>
cudaError_t launch_mlp(struct sk_hopper_gemm *h, const uint16_t *w_gu, const uint16_t *w_down, const uint16_t *x,
                       uint16_t *act, float *y, int rows, int hidden, int inter, int splits, bool trigger,
                       cudaStream_t s)
{
    CUtensorMap m_gu, m_x, m_down, m_act;
    if (!tensor_map(h, w_gu, (uint64_t)hidden, (uint64_t)2 * inter, BM, &m_gu) ||
        !tensor_map(h, x, (uint64_t)hidden, (uint64_t)rows, NT, &m_x) ||
        !tensor_map(h, w_down, (uint64_t)inter, (uint64_t)hidden, BM, &m_down) ||
        !tensor_map(h, act, (uint64_t)inter, (uint64_t)rows, NT, &m_act))
        return cudaErrorInvalidValue;
    const int k_blocks = inter / BK, per = (k_blocks + splits - 1) / splits; // as launch() in hopper_gemm.cu
    int *sync = h->mlp_sync + (h->mlp_launches++ % 2) * kMlpSync;
    const dim3 grid(2 * inter / BM + (hidden + BM - 1) / BM * splits);
    return launch_pdl(hopper_mlp_kernel<NT>, grid, dim3(kThreads), smem_bytes<NT>(), s, m_gu, m_x, m_down, m_act,
                      (__nv_bfloat16 *)act, y, sync, rows, hidden, inter, per, (int64_t)rows * hidden, trigger ? 1 : 0);
}

template <int NT> cudaError_t allow_smem_mlp()
{
    return cudaFuncSetAttribute(hopper_mlp_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)smem_bytes<NT>());
}

} // namespace

cudaError_t hopper::mlp_allow_smem()
{
    cudaError_t e = allow_smem_mlp<16>();
    if (e == cudaSuccess) e = allow_smem_mlp<32>();
    if (e == cudaSuccess) e = allow_smem_mlp<64>();
    if (e == cudaSuccess) e = allow_smem_mlp<128>();
    return e;
}

extern "C" cudaError_t sk_hopper_mlp(struct sk_hopper_gemm *h, const uint16_t *w_gu, const uint16_t *w_down,
                                     const uint16_t *x, uint16_t *act, float *y, int rows, int hidden, int inter,
                                     int *n_parts, int early_dependents, cudaStream_t s)
{
    *n_parts = 0;
    if (!shape_ok(h, w_gu, x, rows, hidden) || !shape_ok(h, w_down, act, rows, inter) || inter < 64 || inter % 64)
        return cudaErrorInvalidValue;
    const int splits = sk_hopper_gemm_splits(h, hidden, inter);
    cudaError_t e;
    if (rows <= 16)
        e = launch_mlp<16>(h, w_gu, w_down, x, act, y, rows, hidden, inter, splits, early_dependents != 0, s);
    else if (rows <= 32)
        e = launch_mlp<32>(h, w_gu, w_down, x, act, y, rows, hidden, inter, splits, early_dependents != 0, s);
    else if (rows <= 64)
        e = launch_mlp<64>(h, w_gu, w_down, x, act, y, rows, hidden, inter, splits, early_dependents != 0, s);
    else
        e = launch_mlp<128>(h, w_gu, w_down, x, act, y, rows, hidden, inter, splits, early_dependents != 0, s);
    if (e == cudaSuccess) *n_parts = splits;
    return e;
}
