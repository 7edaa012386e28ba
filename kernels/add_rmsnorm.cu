// sk_add_rmsnorm and sk_add_rmsnorm_parts: the residual add and the RMSNorm ahead of every
// sublayer and of lm_head (there over the rows that need logits only), in one pass over the row,
// taking the delta as the product leaves it (whole, or in the split-K parts of
// sk_hopper_gemm_parts). sk_add_rmsnorm_parts_fp8 (sk_fp8.h) also quantizes each output row for
// an FP8 product in that pass, sk_add_rmsnorm_parts_q8 (sk_quant.h) for the block GEMV's int8
// products.
#include "kernels/sk_fp8.h"
#include "kernels/sk_quant.h"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

#include "kernels/bf16.cuh"
#include "kernels/fp8_row.cuh"
#include "kernels/launch_dims.cuh"
#include "kernels/pdl.cuh"
#include "kernels/q8_act.cuh"
#include "kernels/qkv_head.cuh"
#include "kernels/row_sums.cuh"

namespace
{

// Residual add and RMSNorm of one row per block. Any hidden size; add_rmsnorm_vec_kernel takes
// the common ones faster. w NULL: no norm, the sum only converted (OLMo 2's layers norm after each
// sublayer, not before; rare enough that the fast kernel keeps no branch for it).
__global__ void add_rmsnorm_kernel(float *x, const float *delta, int n_parts, int64_t part_stride, const int32_t *rows,
                                   const float *w, __nv_bfloat16 *y, int hidden, float eps)
{
    // The next kernel may start launching now (a Hopper product then streams its weights while
    // this one runs); it still waits for this kernel's completion before reading its output.
    pdl_let_dependents_launch();
    pdl_wait();
    __shared__ float sh[32];
    int r = blockIdx.x;
    int64_t t = rows ? rows[r] : r;
    float *xr = x + t * hidden;
    const float *dr = delta ? delta + t * hidden : nullptr;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = xr[i] + (dr ? sum_parts_at(dr, n_parts, part_stride, i) : 0.0f);
        if (!rows) xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    float inv = rsqrtf(ss / (float)hidden + eps);
    __nv_bfloat16 *yr = y + (int64_t)r * hidden;
    // Each thread rereads only the elements it wrote itself, so no barrier is needed here.
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = rows ? xr[i] + (dr ? sum_parts_at(dr, n_parts, part_stride, i) : 0.0f) : xr[i];
        yr[i] = __float2bfloat16_rn(w ? w[i] * (v * inv) : v);
    }
}

// The same for hidden % 4 == 0 and at most kNormVec * 4 * 1024 columns: each thread holds its
// kNormVec float4 of the row in registers, so x and delta take one trip to memory with all the
// loads in flight at once, and the output needs no second read. During a decode step that trip
// goes to L2 while the next product's weight stream loads it fully, so trips are slow, and one
// trip instead of two made whole decode steps shorter than add_rmsnorm_kernel did.
constexpr int kNormVec = 4;

// PARTS: delta in n_parts (<= SK_HOPPER_MAX_SPLITS) parts, added as sum_parts_at adds them, with
// every part's loads in flight at once; the registers that takes allow at most kPartsThreads
// threads (rows up to 4096 wide). CODES: each output row also goes to q and q_scale, from the
// bf16 values in registers: as e4m3 codes and the row's scale (fp8_row.cuh), or as the block
// GEMV's int8 quants and a (scale, scale * sum) pair per 32 (q8_act.cuh; q_scale holds the pairs).
constexpr int kPartsThreads = 256;
enum class codes { none, e4m3_row, q8 };
template <bool PARTS, codes CODES>
__global__ void __launch_bounds__(PARTS ? kPartsThreads : 1024)
    add_rmsnorm_vec_kernel(float *__restrict__ x, const float *__restrict__ delta, int n_parts, int64_t part_stride,
                           const int32_t *__restrict__ rows, const float *__restrict__ w, __nv_bfloat16 *__restrict__ y,
                           int hidden, float eps, uint8_t *__restrict__ q, float *__restrict__ q_scale)
{
    __shared__ float sh[32];
    const int n4 = hidden / 4;
    // The norm's weights do not come from the previous kernel: fetch them before waiting.
    float4 wv[kNormVec];
#pragma unroll
    for (int j = 0; j < kNormVec; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        wv[j] = i < n4 ? reinterpret_cast<const float4 *>(w)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    const int r = blockIdx.x;
    const int64_t t = rows ? rows[r] : r;
    pdl_let_dependents_launch(); // as in add_rmsnorm_kernel
    pdl_wait();
    float4 *xr = reinterpret_cast<float4 *>(x + t * hidden);
    const float4 *dr = delta ? reinterpret_cast<const float4 *>(delta + t * hidden) : nullptr;
    float4 v[kNormVec];
#pragma unroll
    for (int j = 0; j < kNormVec; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        v[j] = i < n4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (!PARTS && dr && i < n4) add4(v[j], dr[i]);
    }
    if (PARTS && dr) {
        // Every part of every float4 in flight before the first add. Adding per float4 through a
        // helper like sum_parts_at takes fewer registers but has fewer loads in flight, and made
        // whole steps slower (docs/performance.md).
        float4 part[SK_HOPPER_MAX_SPLITS][kNormVec];
#pragma unroll
        for (int p = 0; p < SK_HOPPER_MAX_SPLITS; p++)
#pragma unroll
            for (int j = 0; j < kNormVec; j++) {
                const int i = threadIdx.x + j * blockDim.x;
                if (p < n_parts && i < n4) part[p][j] = dr[p * (part_stride / 4) + i];
            }
#pragma unroll
        for (int j = 0; j < kNormVec; j++) {
            // Past the row, v stays zero: it must not add to the sum of squares.
            if (threadIdx.x + j * blockDim.x >= n4) continue;
            float4 d = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int p = 0; p < SK_HOPPER_MAX_SPLITS; p++)
                if (p < n_parts) add4(d, part[p][j]);
            add4(v[j], d);
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kNormVec; j++) {
        ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
        const int i = threadIdx.x + j * blockDim.x;
        if (!rows && i < n4) xr[i] = v[j];
    }
    ss = block_sum(ss, sh);
    const float inv = rsqrtf(ss / (float)hidden + eps);
    uint2 *yr = reinterpret_cast<uint2 *>(y + (int64_t)r * hidden);
    uint2 out[kNormVec];
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < kNormVec; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= n4) continue;
        out[j] = make_uint2(pack_bf16(wv[j].x * (v[j].x * inv), wv[j].y * (v[j].y * inv)),
                            pack_bf16(wv[j].z * (v[j].z * inv), wv[j].w * (v[j].w * inv)));
        yr[i] = out[j];
        if (CODES == codes::e4m3_row) amax = fmaxf(amax, fmaxf(bf16_pair_amax(out[j].x), bf16_pair_amax(out[j].y)));
    }
    if constexpr (CODES == codes::q8) {
        // A group of 32 is 8 neighbouring lanes' 4 values (blockDim.x is whole warps, hidden a
        // multiple of 32), so every lane of a warp takes part in the shuffles or none does.
        float2 *pairs = reinterpret_cast<float2 *>(q_scale) + (int64_t)r * (hidden / kQ8Group);
#pragma unroll
        for (int j = 0; j < kNormVec; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i - (int)(threadIdx.x & 31) >= n4) break; // the whole warp is past the row
            float f[4];
            bf16x2_to_f32(i < n4 ? out[j].x : 0u, f[0], f[1]);
            bf16x2_to_f32(i < n4 ? out[j].y : 0u, f[2], f[3]);
            const q8_run<4> g = q8_quantize<8>(f);
            if (i < n4) {
                reinterpret_cast<uint32_t *>(q + (int64_t)r * hidden)[i] = g.q[0];
                if (i % 8 == 0) pairs[i / 8] = g.pair;
            }
        }
    }
    if constexpr (CODES == codes::e4m3_row) {
        const float sc = fp8_row_scale(block_max(amax, sh));
        if (threadIdx.x == 0) q_scale[r] = sc;
        uint32_t *qr = reinterpret_cast<uint32_t *>(q + (int64_t)r * hidden);
#pragma unroll
        for (int j = 0; j < kNormVec; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < n4) qr[i] = e4m3_codes4(out[j].x, out[j].y, sc);
        }
    }
}

// The fast kernel's instance for these parts and codes.
template <codes CODES> auto vec_kernel(int n_parts)
{
    return n_parts > 1 ? add_rmsnorm_vec_kernel<true, CODES> : add_rmsnorm_vec_kernel<false, CODES>;
}

// kind says what q and q_scale receive (none: both NULL).
cudaError_t add_rmsnorm(float *x, const float *delta, int n_parts, int64_t part_stride, const int32_t *rows,
                        const float *w, uint16_t *y, codes kind, uint8_t *q, float *q_scale, int n_rows, int hidden,
                        float eps, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    if (!delta) n_parts = 1;
    if (n_parts < 1 || n_parts > SK_HOPPER_MAX_SPLITS || (n_parts > 1 && part_stride < (int64_t)hidden))
        return cudaErrorInvalidValue;
    const int n4 = hidden / 4, threads = ((n4 + kNormVec - 1) / kNormVec + 31) / 32 * 32;
    __nv_bfloat16 *yb = (__nv_bfloat16 *)y;
    if (w && hidden % 4 == 0 && threads <= (n_parts > 1 ? kPartsThreads : 1024) && part_stride % 4 == 0 &&
        !((uintptr_t)q & 3)) {
        auto kernel = kind == codes::q8         ? vec_kernel<codes::q8>(n_parts)
                      : kind == codes::e4m3_row ? vec_kernel<codes::e4m3_row>(n_parts)
                                                : vec_kernel<codes::none>(n_parts);
        return launch_pdl(kernel, dim3(n_rows), dim3(threads), 0, s, x, delta, n_parts, part_stride, rows, w, yb,
                          hidden, eps, q, q_scale);
    }
    cudaError_t e = launch_pdl(add_rmsnorm_kernel, dim3(n_rows), dim3(threads_for_row(hidden)), 0, s, x, delta,
                               n_parts, part_stride, rows, w, yb, hidden, eps);
    // Rows the fast kernel does not take: their codes from y, by the quantizers.
    if (e != cudaSuccess || kind == codes::none) return e;
    return kind == codes::q8 ? sk_gemv_q_quantize_x(y, hidden, n_rows, hidden, q, s)
                             : sk_fp8_quantize_rows(q, q_scale, y, n_rows, hidden, s);
}

} // namespace

extern "C" cudaError_t sk_add_rmsnorm_parts(float *x, const float *delta, int n_parts, int64_t part_stride,
                                            const int32_t *rows, const float *w, uint16_t *y, int n_rows, int hidden,
                                            float eps, cudaStream_t s)
{
    return add_rmsnorm(x, delta, n_parts, part_stride, rows, w, y, codes::none, NULL, NULL, n_rows, hidden, eps, s);
}

extern "C" cudaError_t sk_add_rmsnorm_parts_fp8(float *x, const float *delta, int n_parts, int64_t part_stride,
                                                const float *w, uint16_t *y, uint8_t *q, float *q_scale, int n_rows,
                                                int hidden, float eps, cudaStream_t s)
{
    if (!q || !q_scale) return cudaErrorInvalidValue;
    return add_rmsnorm(x, delta, n_parts, part_stride, NULL, w, y, codes::e4m3_row, q, q_scale, n_rows, hidden, eps, s);
}

extern "C" cudaError_t sk_add_rmsnorm_parts_q8(float *x, const float *delta, int n_parts, int64_t part_stride,
                                               const float *w, uint16_t *y, void *scratch, int n_rows, int hidden,
                                               float eps, cudaStream_t s)
{
    if (!scratch || (uintptr_t)scratch % 16 || hidden % kQ8Group || n_rows > kQ8MaxRows) return cudaErrorInvalidValue;
    return add_rmsnorm(x, delta, n_parts, part_stride, NULL, w, y, codes::q8, (uint8_t *)q8_quants(scratch),
                       (float *)q8_pairs(scratch, hidden), n_rows, hidden, eps, s);
}

extern "C" cudaError_t sk_add_rmsnorm(float *x, const float *delta, const int32_t *rows, const float *w, uint16_t *y,
                                      int n_rows, int hidden, float eps, cudaStream_t s)
{
    return sk_add_rmsnorm_parts(x, delta, 1, 0, rows, w, y, n_rows, hidden, eps, s);
}
