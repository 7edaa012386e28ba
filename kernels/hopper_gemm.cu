// Decode products on Hopper's own path: y[M, N] = x[M, K] w[N, K]^T for 2..128 rows, bf16 operands,
// fp32 accumulation and output; or e4m3 operands with a scale per weight row and per token
// (sk_hopper_fp8_gemm: FP8 weights, activations quantized per token), the same stream over the
// same 128-byte stages. A decode product is bound by reading the weights once, so the
// kernel is a weight stream (hopper_stream.cuh): each block owns BM = 128 output features and a
// range of K (split-K when the feature tiles alone would leave SMs idle), weights many stages deep
// in its ring (they come from device memory), x a few (it comes from L2).
//
// The blocks that split one tile's K form a thread block cluster: each leaves its partial sums in
// its own shared memory, and after a cluster barrier every block adds a share of the tile's
// values over all the blocks' memories (distributed shared memory), in split order. No partial
// sum touches device memory, and the result does not depend on block timing. Or, where the one
// kernel that reads the product can add them (sk_hopper_gemm_parts: the RMSNorm after the o and
// down products, qkv_post after qkv), each split writes its partial sums as a part of its own,
// and the blocks need no cluster, no barrier across blocks and no reduction before they exit.
// The split count depends on the shape alone, not on the number of rows, and the parts are added
// in split order either way, so a row's result is the same at every batch size and on both paths.
//
// wgmma needs the sm_90a target: the Makefile builds this file (and hopper_mlp.cu) for it (with
// SK_HOPPER_BUILT defined) when CUDA_ARCH is sm_90; otherwise sk_hopper_gemm_create answers
// cudaErrorNotSupported and the backend keeps cuBLAS.
#include "kernels/hopper_stream.cuh"
#include "kernels/pdl.cuh"

#include <stdlib.h>
#include <string.h>

using namespace hopper;

namespace
{

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Each consumer fragment value (frag_feature, frag_token) times its weight row's and its token's
// scale; rows and features past the matrix keep their zeros and read no scale. A thread's
// fragments span 4 weight rows (h, (r/2)%2), whose scales it reads once.
template <int NT>
__device__ __forceinline__ void scale_fragments(float (&acc)[2][NT / 2], const float *w_scale, const float *x_scale,
                                                int rows, int n_out, int tile)
{
    // x_scale comes from the kernel before, like x (long finished by now: x's stages came after it).
    pdl_wait();
    float ws[2][2];
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int f = tile * BM + frag_feature(h, 2 * j);
            ws[h][j] = f < n_out ? __ldg(w_scale + f) : 0.0f;
        }
#pragma unroll
    for (int r = 0; r < NT / 2; r++) {
        const int t = frag_token(r);
        if (t >= rows) continue;
        const float xs = __ldg(x_scale + t);
#pragma unroll
        for (int h = 0; h < 2; h++)
            if (tile * BM + frag_feature(h, r) < n_out) acc[h][r] *= ws[h][(r / 2) % 2] * xs;
    }
}

__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// With SWIGLU the weights are a gate/up pair interleaved in blocks of 64 rows, splits is 1, and
// the block writes silu(gate) * up in bf16 to act[rows][n_out / 2] instead of y (store_act_tile).
// With FP8 both operands are e4m3 (sk_hopper_fp8_gemm) and each sum is multiplied by its weight
// row's scale w_scale[f] and its token's x_scale[t] before the split-K reduction.
template <int NT, bool SWIGLU, bool FP8>
__global__ void __launch_bounds__(kThreads)
    hopper_gemm_kernel(const __grid_constant__ CUtensorMap tw, const __grid_constant__ CUtensorMap tx, float *y,
                       __nv_bfloat16 *act, int rows, int n_out, int k_blocks, int per_split, int64_t part_stride,
                       int trigger, const float *w_scale, const float *x_scale)
{
    // With trigger, the next kernel (a programmatic dependent) may launch once every block of this
    // one runs, and do what precedes its wait while this one streams: the down product after
    // gate/up streams its weights, the decode attention after qkv (and qkv_post) its settled keys.
    if (trigger) pdl_let_dependents_launch();
    extern __shared__ unsigned char smem_raw[];
    const ring g = ring_init<NT>(smem_raw);
    // Split-K: the cluster is the blocks of this tile, one per split, rank = split; with
    // part_stride, split s writes part s at y + s * part_stride instead, and there is no cluster.
    const int tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    const bool reduce_in_cluster = splits > 1 && part_stride == 0;
    const int kb0 = split * per_split, kb1 = min(kb0 + per_split, k_blocks), n_kb = kb1 - kb0;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    if (threadIdx.x == kConsumers) {
        prefetch_tensormap(tw);
        prefetch_tensormap(tx);
    }
    __syncthreads();

    float acc[2][NT / 2];
    if (warp >= 4) {
        if (lane == 0) {
            // Launched as a programmatic dependent (PDL), the block may start while the kernel
            // before it still runs: the weights do not depend on it, so their first stages are
            // on the way already; x is its output, read only after the wait.
            const bool weights = warp == 4;
            if (!weights) pdl_wait();
            produce<NT>(g, weights, weights ? &tw : &tx, kb0, n_kb, weights ? tile * BM : 0, FP8);
        }
        __syncwarp();
        if (!reduce_in_cluster) return;
    } else {
        if constexpr (FP8) {
            consume<NT, wgmma_e4m3_op<NT>>(g, acc, n_kb);
            scale_fragments<NT>(acc, w_scale, x_scale, rows, n_out, tile);
        } else {
            consume<NT>(g, acc, n_kb);
        }
        consumers_sync(); // the ring is read: the epilogue may stage its tile there
    }

    if (SWIGLU) {
        store_act_tile<NT>(g, acc, act, rows, n_out / 2, tile);
        return;
    }
    float *sy = warp < 4 ? stage_out_tile<NT>(g, acc) : reinterpret_cast<float *>(g.stage);
    if (!reduce_in_cluster) {
        consumers_sync();
        store_out_tile(sy, y + split * part_stride, rows, n_out, tile);
        return;
    }
    // Split-K: block `split` adds its share of the tile's real rows over the cluster's blocks
    // (distributed shared memory), in split order, with every block's loads in flight at once.
    cluster_sync();
    const uint32_t base = smem_u32(g.stage);
    const bool vec = n_out % 4 == 0 && !(reinterpret_cast<uintptr_t>(y) & 15);
    if (warp < 4) {
        constexpr int U = 2;
        const int n4 = rows * 32, chunk = (n4 + splits - 1) / splits;
        const int lo = split * chunk, hi = min(n4, lo + chunk);
        uint32_t remote[SK_HOPPER_MAX_SPLITS];
#pragma unroll
        for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
            if (j < splits) asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote[j]) : "r"(base), "r"(j));
        for (int i0 = lo + threadIdx.x; i0 < hi; i0 += kConsumers * U) {
            float4 v[U][SK_HOPPER_MAX_SPLITS];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++) {
                    const int i = i0 + u * kConsumers;
                    const uint32_t at = remote[j] + 4 * ((i / 32) * kOutStride + 4 * (i % 32));
                    if (j < splits && i < hi)
                        asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                                     : "=f"(v[u][j].x), "=f"(v[u][j].y), "=f"(v[u][j].z), "=f"(v[u][j].w)
                                     : "r"(at));
                }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int i = i0 + u * kConsumers;
                if (i >= hi) break;
                float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
                for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
                    if (j < splits) {
                        sum.x += v[u][j].x;
                        sum.y += v[u][j].y;
                        sum.z += v[u][j].z;
                        sum.w += v[u][j].w;
                    }
                store_out4(y + (size_t)(i / 32) * n_out, tile * BM + 4 * (i % 32), n_out, vec, sum);
            }
        }
    }
    // No block may leave while another still reads its shared memory.
    cluster_sync();
}
#else
// Built without sm_90a: never launched (sk_hopper_gemm_create refuses).
template <int NT, bool SWIGLU, bool FP8>
__global__ void hopper_gemm_kernel(const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap, float *,
                                   __nv_bfloat16 *, int, int, int, int, int64_t, int, const float *, const float *)
{
}
#endif

} // namespace

namespace hopper
{

// The tensor map of a row-major bf16 matrix [outer][inner] read in boxes of 64 x box_rows,
// cached: the weights' maps are made once, x's once per batch size. The map is copied out:
// the weights' and x's maps of one launch may hash to the same slot, and a pointer into the
// cache would then give the kernel x's map for the weights too (its weight stages would wait
// forever for bytes that never come: the GPU hangs).
bool tensor_map(struct sk_hopper_gemm *h, const void *ptr, uint64_t inner, uint64_t outer, uint32_t box_rows,
                CUtensorMap *out, bool bytes)
{
    uint64_t key = (uint64_t)(uintptr_t)ptr ^ (inner * 0x9E3779B97F4A7C15ull) ^ (outer * 0xBF58476D1CE4E5B9ull) ^
                   ((uint64_t)box_rows << 40) ^ ((uint64_t)bytes << 63);
    key ^= key >> 29;
    map_slot *e = &h->maps[key % (uint64_t)h->n_slots];
    if (e->used && e->ptr == ptr && e->inner == inner && e->outer == outer && e->box_rows == box_rows &&
        e->bytes == bytes) {
        *out = e->map;
        return true;
    }
    const cuuint64_t dims[2] = {inner, outer}, strides[1] = {inner * (bytes ? 1 : 2)};
    const cuuint32_t box[2] = {(cuuint32_t)stage_elems(bytes), box_rows}, elem[2] = {1, 1};
    CUresult r = h->encode(&e->map, bytes ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                           const_cast<void *>(ptr), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        e->used = false;
        return false;
    }
    e->ptr = ptr;
    e->inner = inner;
    e->outer = outer;
    e->box_rows = box_rows;
    e->bytes = bytes;
    e->used = true;
    *out = e->map;
    return true;
}

} // namespace hopper

namespace
{

// splits: as launch_splits gives it. part_stride 0: split-K sums added within clusters; else part s
// of the sums at y + s * part_stride. trigger: let the next kernel launch early (see
// hopper_gemm_kernel).
// FP8: w and x are e4m3 bytes (k_in of them a row) with the scales of sk_hopper_fp8_gemm.
template <int NT, bool SWIGLU, bool FP8>
cudaError_t launch(struct sk_hopper_gemm *h, const void *w, const void *x, float *y, uint16_t *act, int rows,
                   int n_out, int k_in, int splits, int64_t part_stride, bool trigger, cudaStream_t s,
                   const float *w_scale, const float *x_scale)
{
    CUtensorMap mw, mx;
    if (!tensor_map(h, w, (uint64_t)k_in, (uint64_t)n_out, BM, &mw, FP8) ||
        !tensor_map(h, x, (uint64_t)k_in, (uint64_t)rows, NT, &mx, FP8))
        return cudaErrorInvalidValue;
    const int k_blocks = (k_in + stage_elems(FP8) - 1) / stage_elems(FP8), per = (k_blocks + splits - 1) / splits;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((n_out + BM - 1) / BM, splits);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = smem_bytes<NT>();
    cfg.stream = s;
    cudaLaunchAttribute attrs[2];
    attrs[0].id = cudaLaunchAttributeClusterDimension;
    attrs[0].val.clusterDim.x = 1;
    attrs[0].val.clusterDim.y = part_stride ? 1 : splits;
    attrs[0].val.clusterDim.z = 1;
    attrs[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attrs;
    cfg.numAttrs = 2;
    cudaError_t e = cudaLaunchKernelEx(&cfg, hopper_gemm_kernel<NT, SWIGLU, FP8>, mw, mx, y, (__nv_bfloat16 *)act, rows,
                                       n_out, k_blocks, per, part_stride, trigger ? 1 : 0, w_scale, x_scale);
    return e != cudaSuccess ? e : cudaGetLastError();
}

template <int NT> cudaError_t allow_smem()
{
    cudaError_t e = cudaFuncSetAttribute(hopper_gemm_kernel<NT, false, false>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes<NT>());
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(hopper_gemm_kernel<NT, true, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem_bytes<NT>());
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(hopper_gemm_kernel<NT, false, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem_bytes<NT>());
    return e;
}

// The splits a launch makes of a requested count (<= 0: sk_hopper_gemm_splits's): at most one per K
// block, none left empty (a count whose even ranges would leave the last one empty shrinks); 0 when
// over SK_HOPPER_MAX_SPLITS. sk_hopper_gemm and sk_hopper_gemm_parts both take it, so that their
// partial sums are the same.
int launch_splits(const struct sk_hopper_gemm *h, int n_out, int k_in, int splits)
{
    if (splits <= 0) splits = sk_hopper_gemm_splits(h, n_out, k_in);
    const int k_blocks = (k_in + BK - 1) / BK;
    if (splits > k_blocks) splits = k_blocks;
    if (splits > SK_HOPPER_MAX_SPLITS) return 0;
    const int per = (k_blocks + splits - 1) / splits;
    return (k_blocks + per - 1) / per;
}

// The launch for the token tile that holds `rows` (16, 32, 64 or 128 wide).
template <bool SWIGLU, bool FP8 = false>
cudaError_t launch_rows(struct sk_hopper_gemm *h, const void *w, const void *x, float *y, uint16_t *act, int rows,
                        int n_out, int k_in, int splits, int64_t part_stride, bool trigger, cudaStream_t s,
                        const float *w_scale = NULL, const float *x_scale = NULL)
{
    if (rows <= 16)
        return launch<16, SWIGLU, FP8>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, trigger, s, w_scale,
                                       x_scale);
    if (rows <= 32)
        return launch<32, SWIGLU, FP8>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, trigger, s, w_scale,
                                       x_scale);
    if (rows <= 64)
        return launch<64, SWIGLU, FP8>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, trigger, s, w_scale,
                                       x_scale);
    return launch<128, SWIGLU, FP8>(h, w, x, y, act, rows, n_out, k_in, splits, part_stride, trigger, s, w_scale,
                                    x_scale);
}

} // namespace

extern "C" cudaError_t sk_hopper_gemm_create(struct sk_hopper_gemm **out)
{
    *out = NULL;
#ifndef SK_HOPPER_BUILT
    return cudaErrorNotSupported;
#else
    int dev = 0, major = 0, minor = 0;
    cudaError_t e;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess) return e;
    if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess) return e;
    if ((e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess) return e;
    if (major != 9 || minor != 0) return cudaErrorNotSupported; // sm_90a code runs on sm_90 only
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    if ((e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q)) !=
        cudaSuccess)
        return e;
    if (q != cudaDriverEntryPointSuccess || !fn) return cudaErrorNotSupported;
    if ((e = allow_smem<16>()) != cudaSuccess || (e = allow_smem<32>()) != cudaSuccess ||
        (e = allow_smem<64>()) != cudaSuccess || (e = allow_smem<128>()) != cudaSuccess ||
        (e = mlp_allow_smem()) != cudaSuccess)
        return e;
    struct sk_hopper_gemm *h = (struct sk_hopper_gemm *)calloc(1, sizeof *h);
    if (!h) return cudaErrorMemoryAllocation;
    h->encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
    h->maps = (map_slot *)calloc(kMapSlots, sizeof *h->maps);
    h->n_slots = kMapSlots;
    if (!h->maps) {
        free(h);
        return cudaErrorMemoryAllocation;
    }
    // The fused MLP's counters start at zero, and each launch leaves its set at zero.
    const size_t sync_bytes = 2 * kMlpSync * sizeof(int);
    if ((e = cudaMalloc(&h->mlp_sync, sync_bytes)) != cudaSuccess ||
        (e = cudaMemset(h->mlp_sync, 0, sync_bytes)) != cudaSuccess) {
        sk_hopper_gemm_destroy(h);
        return e;
    }
    // A cluster's blocks must sit in one GPC at once, so how many clusters fit depends on their
    // size in a way only the occupancy calculator knows (every tile width takes about the same
    // shared memory, so one width stands for all).
    for (int sp = 1; sp <= SK_HOPPER_MAX_SPLITS && e == cudaSuccess; sp++) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(1, sp);
        cfg.blockDim = dim3(kThreads);
        cfg.dynamicSmemBytes = smem_bytes<64>();
        cudaLaunchAttribute a;
        a.id = cudaLaunchAttributeClusterDimension;
        a.val.clusterDim.x = 1;
        a.val.clusterDim.y = sp;
        a.val.clusterDim.z = 1;
        cfg.attrs = &a;
        cfg.numAttrs = 1;
        e = cudaOccupancyMaxActiveClusters(&h->clusters[sp], hopper_gemm_kernel<64, false, false>, &cfg);
        if (e == cudaSuccess && h->clusters[sp] < 1) e = cudaErrorNotSupported;
    }
    if (e != cudaSuccess) {
        sk_hopper_gemm_destroy(h);
        return e;
    }
    *out = h;
    return cudaSuccess;
#endif
}

extern "C" void sk_hopper_gemm_destroy(struct sk_hopper_gemm *h)
{
    if (!h) return;
    cudaFree(h->mlp_sync);
    free(h->maps);
    free(h);
}

extern "C" void sk_hopper_gemm_set_map_slots(struct sk_hopper_gemm *h, int n)
{
    h->n_slots = n < 1 ? 1 : n > kMapSlots ? kMapSlots : n;
    for (int i = 0; i < kMapSlots; i++) h->maps[i].used = false;
}

extern "C" int sk_hopper_gemm_splits(const struct sk_hopper_gemm *h, int n_out, int k_in)
{
    const int tiles = (n_out + BM - 1) / BM, k_blocks = (k_in + BK - 1) / BK;
    // Pick the split count whose waves of clusters (one cluster per feature tile) take the least
    // time: a block costs its K blocks plus a fixed part (launch, pipeline fill, the epilogue)
    // worth about 8 K blocks in the timings; the cluster reduction a few more.
    int best = 1;
    double best_cost = 0;
    for (int sp = 1; sp <= k_blocks && sp <= SK_HOPPER_MAX_SPLITS; sp++) {
        const int per = (k_blocks + sp - 1) / sp, real = (k_blocks + per - 1) / per;
        if (real != sp) continue;
        const int waves = (tiles + h->clusters[sp] - 1) / h->clusters[sp];
        const double cost = (double)waves * (per + 8) + (sp > 1 ? 3 : 0);
        if (sp == 1 || cost < best_cost * 0.98) {
            best = sp;
            best_cost = cost;
        }
    }
    return best;
}

extern "C" cudaError_t sk_hopper_gemm(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y, int rows,
                                      int n_out, int k_in, int splits, cudaStream_t s)
{
    if (!shape_ok(h, w, x, rows, k_in) || n_out < 1) return cudaErrorInvalidValue;
    if (!(splits = launch_splits(h, n_out, k_in, splits))) return cudaErrorInvalidValue;
    return launch_rows<false>(h, w, x, y, NULL, rows, n_out, k_in, splits, 0, false, s);
}

extern "C" cudaError_t sk_hopper_gemm_parts(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x, float *y,
                                            int rows, int n_out, int k_in, int splits, int *n_parts,
                                            int early_dependents, cudaStream_t s)
{
    *n_parts = 0;
    if (!shape_ok(h, w, x, rows, k_in) || n_out < 1) return cudaErrorInvalidValue;
    if (!(splits = launch_splits(h, n_out, k_in, splits))) return cudaErrorInvalidValue;
    cudaError_t e = launch_rows<false>(h, w, x, y, NULL, rows, n_out, k_in, splits, (int64_t)rows * n_out,
                                       early_dependents != 0, s);
    if (e == cudaSuccess) *n_parts = splits;
    return e;
}

extern "C" cudaError_t sk_hopper_gemm_swiglu(struct sk_hopper_gemm *h, const uint16_t *w, const uint16_t *x,
                                             uint16_t *act, int rows, int inter, int k_in, int early_dependents,
                                             cudaStream_t s)
{
    if (!shape_ok(h, w, x, rows, k_in) || inter < 64 || inter % 64 || ((uintptr_t)act & 15)) return cudaErrorInvalidValue;
    return launch_rows<true>(h, w, x, NULL, act, rows, 2 * inter, k_in, 1, 0, early_dependents != 0, s);
}

extern "C" cudaError_t sk_hopper_fp8_gemm(struct sk_hopper_gemm *h, const uint8_t *w, const float *w_scale,
                                          const uint8_t *x, const float *x_scale, float *y, int rows, int n_out,
                                          int k_in, int splits, cudaStream_t s)
{
    if (!h || rows < 1 || rows > SK_HOPPER_MAX_ROWS || n_out < 1 || k_in < 16 || k_in % 16 || !w_scale || !x_scale ||
        ((uintptr_t)w & 15) || ((uintptr_t)x & 15))
        return cudaErrorInvalidValue;
    // A stage is 128 bytes of a row either way, so the bf16 product of half the width has the
    // same stages and takes the same split count.
    if (!(splits = launch_splits(h, n_out, k_in / 2, splits))) return cudaErrorInvalidValue;
    return launch_rows<false, true>(h, w, x, y, NULL, rows, n_out, k_in, splits, 0, true, s, w_scale, x_scale);
}
