// sk_allreduce_oneshot: the one-shot all-reduce of kernels/sk_allreduce.h, and its group's memory.
//
// Each rank's buffer holds kBlocks x SK_ONESHOT_MAX_RANKS flag words, then two staging halves of
// SK_ONESHOT_MAX_BYTES. Flag [b][k] of rank r's buffer is the last round whose block b rank k has
// signalled to rank r: ranks push their signals into each other's buffers, so a rank waits on
// its own memory, and flag [b][r] of its own buffer is block b's round counter (the next launch
// takes that round plus one). A launch of rank r, per block b:
//
//   1. round = own flag [b][r] + 1; copy the partial (its parts added) into staging half
//      round % 2 of r's own buffer, the elements block b owns;
//   2. fence at system scope, then write round into flag [b][r] of every rank's buffer (a
//      release store: a peer that sees the round sees the copy);
//   3. wait until flag [b][k] of its own buffer reaches round for every rank k (a bounded spin);
//   4. out = residual + the ranks' staging halves round % 2, in rank order, read from the peers'
//      buffers directly.
//
// Why two halves and no second barrier: rank r writes half round % 2 again at round + 2, and a
// peer may still be reading it (step 4 of round) until that peer signals round + 1, which it
// does only in its next launch, after its round's launch has completed (stream order, and
// pdl_wait below). Rank r reaches round + 2's copy only after its round + 1 launch saw every
// peer's round + 1 signal, so by then every peer is done reading round's data. Round + 1 uses
// the other half, which nobody reads during round. So a peer's flag is round - 1, round or
// round + 1 while rank r waits in round, and "reached" means at least round.
//
// "Completed" holds because this kernel lets the next one launch early only after its wait, and
// every kernel between two launches on the group either is launched the ordinary way or waits
// for the kernel before it (pdl_wait) before it ends: each of them reads what the one before
// wrote, as the forward's kernels do, so none can end before this one has.
//
// Blocks synchronize only with the same block of the other ranks, never with each other: an
// element belongs to the same block at every launch whatever the count (16-byte group v goes to
// block (v / kThreads) % kBlocks), so the argument above holds per block. The grid is fixed and
// small (kBlocks x kThreads), so that the ranks' kernels are resident together even where they
// share a GPU with each other and with other work.
#include "kernels/sk_allreduce.h"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>
#include <stdlib.h>

#include "kernels/pdl.cuh"

namespace
{

constexpr int kBlocks = 16;
constexpr int kThreads = 256;
constexpr size_t kFlagBytes = 4096; // the flags, padded so that the halves stay 4 KiB aligned
static_assert(kBlocks * SK_ONESHOT_MAX_RANKS * sizeof(unsigned int) <= kFlagBytes, "the flags fit");
static_assert(SK_ONESHOT_MAX_RANKS <= kThreads, "a thread signals and waits for each rank");
constexpr size_t kBufBytes = kFlagBytes + 2 * (size_t)SK_ONESHOT_MAX_BYTES;
// Spins on a flag between two looks at the clock and the status word: the status word lives in
// host memory, a read over PCIe, kept off the path of a wait that ends at once.
constexpr unsigned kCheckEvery = 256;

__device__ __forceinline__ unsigned int *flags_of(void *buf, int block)
{
    return static_cast<unsigned int *>(buf) + block * SK_ONESHOT_MAX_RANKS;
}

template <typename E> __device__ __forceinline__ E *staging_of(void *buf, unsigned int round)
{
    return reinterpret_cast<E *>(static_cast<char *>(buf) + kFlagBytes + (round & 1u) * (size_t)SK_ONESHOT_MAX_BYTES);
}

__device__ __forceinline__ unsigned int ld_acquire(const unsigned int *p)
{
    unsigned int v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void st_release(unsigned int *p, unsigned int v)
{
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Nanoseconds on the GPU's global timer: a timeout in wall time, whatever the SM clock does
// (clock64 counts cycles of a clock that boosts and throttles).
__device__ __forceinline__ uint64_t global_ns()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ void from_float(float v, float &o) { o = v; }
__device__ __forceinline__ void from_float(float v, uint16_t &o) { o = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

// 16 bytes of elements, moved in one access where whole and aligned.
template <typename E> union Group {
    uint4 u;
    E e[16 / sizeof(E)];
};

// The n elements from p (n at most a group's). PEER: p is a staging half another rank writes, read
// through L2 only: this SM's L1 may hold the line from two rounds ago.
template <bool PEER, typename E> __device__ __forceinline__ void load(Group<E> &g, const E *p, int n, bool vec)
{
    constexpr int W = 16 / sizeof(E);
    if (vec && n == W) {
        g.u = PEER ? __ldcg(reinterpret_cast<const uint4 *>(p)) : *reinterpret_cast<const uint4 *>(p);
        return;
    }
#pragma unroll
    for (int j = 0; j < W; j++)
        if (j < n) g.e[j] = PEER ? __ldcg(p + j) : p[j];
}

// acc[j] += the j-th of the n elements from p (IEEE addition commutes: acc + x is x + acc).
template <bool PEER, typename E>
__device__ __forceinline__ void add_group(float (&acc)[16 / sizeof(E)], const E *p, int n, bool vec)
{
    Group<E> g;
    load<PEER>(g, p, n, vec);
#pragma unroll
    for (int j = 0; j < 16 / (int)sizeof(E); j++)
        if (j < n) acc[j] += to_float(g.e[j]);
}

// The n values of acc rounded to E, at p.
template <typename E>
__device__ __forceinline__ void store_group(E *p, const float (&acc)[16 / sizeof(E)], int n, bool vec)
{
    constexpr int W = 16 / sizeof(E);
    Group<E> g;
#pragma unroll
    for (int j = 0; j < W; j++) from_float(acc[j], g.e[j]);
    if (vec && n == W) {
        *reinterpret_cast<uint4 *>(p) = g.u;
        return;
    }
#pragma unroll
    for (int j = 0; j < W; j++)
        if (j < n) p[j] = g.e[j];
}

// Waits until *slot, the signal `peer` sends this rank, reaches round (the rounds wrap at 2^32,
// hence the signed difference). False when the group's status says it failed, or when the wait
// passes the timeout, which this rank then records there.
__device__ bool wait_for(const unsigned int *slot, unsigned int round, const sk_oneshot_peers &p, int peer)
{
    volatile unsigned int *status = p.status;
    const uint64_t start = global_ns();
    for (unsigned spin = 1;; spin++) {
        if ((int)(ld_acquire(slot) - round) >= 0) return true;
        if (spin % kCheckEvery) continue;
        if (*status) return false;
        if (global_ns() - start > p.timeout_ns) {
            *status = SK_ONESHOT_TIMED_OUT | (unsigned)p.rank << 8 | (unsigned)peer;
            __threadfence_system();
            return false;
        }
    }
}

template <typename E>
__global__ void __launch_bounds__(kThreads)
    oneshot_kernel(const __grid_constant__ sk_oneshot_peers p, E *out, const E *residual, const E *partial, int n_parts,
                   int64_t part_stride, int64_t count, bool vec)
{
    constexpr int W = 16 / sizeof(E);
    __shared__ unsigned int round_sh;
    __shared__ int failed_sh;
    // The partial is the previous kernel's output, and this rank's previous launch on the group
    // must be complete before this one signals its round (the argument at the top).
    pdl_wait();
    unsigned int *own = flags_of(p.buf[p.rank], blockIdx.x);
    if (threadIdx.x == 0) {
        round_sh = *(volatile unsigned int *)(own + p.rank) + 1u;
        failed_sh = 0;
    }
    __syncthreads();
    const unsigned int round = round_sh;
    const int64_t groups = (count + W - 1) / W, stride = (int64_t)kBlocks * kThreads;
    const int64_t first = (int64_t)blockIdx.x * kThreads + threadIdx.x;

    // 1. This rank's partial, its parts added in order from zero (as sk_add_rmsnorm_parts adds
    // them), into its own staging half of this round.
    E *mine = staging_of<E>(p.buf[p.rank], round);
    for (int64_t v = first; v < groups; v += stride) {
        const int64_t i0 = v * W;
        const int n = count - i0 < W ? (int)(count - i0) : W;
        float acc[W] = {};
        for (int k = 0; k < n_parts; k++) add_group<false>(acc, partial + k * part_stride + i0, n, vec);
        store_group(mine + i0, acc, n, true);
    }

    // 2. The copy visible to every GPU first, then the round, to every rank (this one's own slot
    // included: it is the next launch's round counter). The barrier orders the whole block's
    // copy before the signalling threads' fence, which is cumulative: what the barrier made it
    // see, it makes visible at system scope before the release store (one fence per rank
    // signalled, not one per thread).
    __syncthreads();
    if (threadIdx.x < p.n_ranks) {
        __threadfence_system();
        st_release(flags_of(p.buf[threadIdx.x], blockIdx.x) + p.rank, round);
    }

    // 3. Every rank's signal of this round, one thread per rank; the barrier passes on what the
    // acquiring threads saw to the whole block.
    if (threadIdx.x < p.n_ranks && !wait_for(own + threadIdx.x, round, p, threadIdx.x)) failed_sh = 1;
    __syncthreads();
    if (failed_sh) return;
    pdl_let_dependents_launch();

    // 4. The ranks' copies in rank order, in fp32, then the residual: the same bits on every rank.
    for (int64_t v = first; v < groups; v += stride) {
        const int64_t i0 = v * W;
        const int n = count - i0 < W ? (int)(count - i0) : W;
        float s[W] = {};
        for (int k = 0; k < p.n_ranks; k++) add_group<true>(s, staging_of<E>(p.buf[k], round) + i0, n, true);
        if (residual) add_group<false>(s, residual + i0, n, vec);
        store_group(out + i0, s, n, vec);
    }
}

bool aligned16(const void *q) { return ((uintptr_t)q & 15u) == 0; }

// Peer access from every rank's device to every other's (a no-op between ranks of one device).
cudaError_t enable_peers(const sk_oneshot_group *g, int no_peer[2])
{
    for (int r = 0; r < g->n; r++)
        for (int k = 0; k < g->n; k++) {
            const int a = g->devices[r], b = g->devices[k];
            if (a == b) continue;
            int can = 0;
            cudaError_t e = cudaDeviceCanAccessPeer(&can, a, b);
            if (e != cudaSuccess) return e;
            if (!can) {
                if (no_peer) no_peer[0] = a, no_peer[1] = b;
                return cudaErrorPeerAccessUnsupported;
            }
            if ((e = cudaSetDevice(a)) != cudaSuccess) return e;
            e = cudaDeviceEnablePeerAccess(b, 0);
            if (e == cudaErrorPeerAccessAlreadyEnabled)
                (void)cudaGetLastError(); // enabled before (NCCL, another group): what we need
            else if (e != cudaSuccess)
                return e;
        }
    return cudaSuccess;
}

// Loads the kernels into the current device's context (cudaFuncGetAttributes forces it).
cudaError_t preload()
{
    cudaFuncAttributes a;
    cudaError_t e = cudaFuncGetAttributes(&a, oneshot_kernel<float>);
    return e != cudaSuccess ? e : cudaFuncGetAttributes(&a, oneshot_kernel<uint16_t>);
}

} // namespace

extern "C" cudaError_t sk_oneshot_group_reset(struct sk_oneshot_group *g)
{
    int current = 0;
    cudaError_t e = cudaGetDevice(&current);
    // Only the flags: a staging half is always written before anyone reads it.
    for (int r = 0; r < g->n && e == cudaSuccess; r++) {
        if ((e = cudaSetDevice(g->devices[r])) != cudaSuccess) break;
        if ((e = cudaMemset(g->buf[r], 0, kFlagBytes)) != cudaSuccess) break;
        // cudaMemset's stream does not order the ranks' non-blocking streams: done before theirs.
        e = cudaDeviceSynchronize();
    }
    *g->status = 0;
    cudaSetDevice(current);
    return e;
}

extern "C" cudaError_t sk_oneshot_group_create(struct sk_oneshot_group **out, int n, const int *devices,
                                               uint64_t timeout_ns, int no_peer[2])
{
    *out = NULL;
    if (n < 1 || n > SK_ONESHOT_MAX_RANKS || !devices) return cudaErrorInvalidValue;
    int current = 0;
    cudaError_t e = cudaGetDevice(&current);
    if (e != cudaSuccess) return e;
    sk_oneshot_group *g = static_cast<sk_oneshot_group *>(calloc(1, sizeof *g));
    if (!g) return cudaErrorMemoryAllocation;
    g->n = n;
    g->timeout_ns = timeout_ns;
    for (int r = 0; r < n; r++) g->devices[r] = devices[r];
    e = enable_peers(g, no_peer);
    void *status = NULL;
    // Mapped and portable: every rank's GPU reads and writes it, at the host pointer (unified
    // addressing).
    if (e == cudaSuccess) e = cudaHostAlloc(&status, sizeof(unsigned int), cudaHostAllocMapped | cudaHostAllocPortable);
    g->status = static_cast<volatile unsigned int *>(status);
    for (int r = 0; r < n && e == cudaSuccess; r++) {
        if ((e = cudaSetDevice(devices[r])) != cudaSuccess) break;
        if ((e = cudaMalloc(&g->buf[r], kBufBytes)) != cudaSuccess) break;
        e = preload();
    }
    if (e == cudaSuccess) e = sk_oneshot_group_reset(g);
    cudaSetDevice(current);
    if (e != cudaSuccess) {
        sk_oneshot_group_destroy(g);
        return e;
    }
    *out = g;
    return cudaSuccess;
}

extern "C" void sk_oneshot_group_destroy(struct sk_oneshot_group *g)
{
    if (!g) return;
    for (int r = 0; r < g->n; r++)
        if (g->buf[r]) cudaFree(g->buf[r]);
    if (g->status) cudaFreeHost((void *)g->status);
    free(g);
}

extern "C" struct sk_oneshot_peers sk_oneshot_group_peers(const struct sk_oneshot_group *g, int r)
{
    sk_oneshot_peers p = {};
    for (int k = 0; k < g->n; k++) p.buf[k] = g->buf[k];
    p.status = (unsigned int *)g->status;
    p.timeout_ns = g->timeout_ns;
    p.rank = r;
    p.n_ranks = g->n;
    return p;
}

extern "C" void sk_oneshot_group_abort(struct sk_oneshot_group *g)
{
    // A kernel's timeout may have written first: either says the group failed.
    __sync_bool_compare_and_swap((unsigned int *)g->status, 0u, SK_ONESHOT_ABORTED);
}

extern "C" unsigned int sk_oneshot_group_status(const struct sk_oneshot_group *g) { return *g->status; }

extern "C" cudaError_t sk_allreduce_oneshot(const struct sk_oneshot_peers *p, void *out, const void *residual,
                                            const void *partial, int n_parts, int64_t part_stride, int64_t count,
                                            int dtype, cudaStream_t s)
{
    const int64_t size = dtype == SK_F32 ? 4 : dtype == SK_BF16 ? 2 : 0;
    if (!p || !out || !partial || size == 0 || p->n_ranks < 1 || p->n_ranks > SK_ONESHOT_MAX_RANKS || p->rank < 0 ||
        p->rank >= p->n_ranks || count < 0 || count * size > SK_ONESHOT_MAX_BYTES || n_parts < 1 ||
        (n_parts > 1 && part_stride < count))
        return cudaErrorInvalidValue;
    // Every rank has the same count: all of them skip the launch, and their rounds still agree.
    if (count == 0) return cudaSuccess;
    const bool vec = aligned16(out) && aligned16(partial) && (!residual || aligned16(residual)) &&
                     (n_parts == 1 || part_stride % (16 / size) == 0);
    if (dtype == SK_F32)
        return launch_pdl(oneshot_kernel<float>, dim3(kBlocks), dim3(kThreads), 0, s, *p, static_cast<float *>(out),
                          static_cast<const float *>(residual), static_cast<const float *>(partial), n_parts,
                          part_stride, count, vec);
    return launch_pdl(oneshot_kernel<uint16_t>, dim3(kBlocks), dim3(kThreads), 0, s, *p, static_cast<uint16_t *>(out),
                      static_cast<const uint16_t *>(residual), static_cast<const uint16_t *>(partial), n_parts,
                      part_stride, count, vec);
}
