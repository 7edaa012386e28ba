// Per-token layers: weight conversion, embedding, residual add + RMSNorm, SiLU-and-mul, and the
// QKV epilogue (bias, q/k norm, rotary, KV cache write).
#include "kernels/bf16.cuh"
#include "kernels/pdl.cuh"
#include "kernels/qkv_head.cuh"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace
{

// Block-wide sum for blockDim.x a multiple of 32 (at most 1024); every thread gets the total.
__device__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}

__global__ void convert_kernel(__nv_bfloat16 *dst, const void *src, int dtype, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v;
        if (dtype == SK_F32)
            v = ((const float *)src)[i];
        else if (dtype == SK_F16)
            v = __half2float(((const __half *)src)[i]);
        else
            v = __bfloat162float(((const __nv_bfloat16 *)src)[i]);
        dst[i] = __float2bfloat16_rn(v);
    }
}

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

__global__ void embed_kernel(float *x, const __nv_bfloat16 *table, const int32_t *tokens,
                             const sk_sample_out *prev, int hidden)
{
    int t = blockIdx.x;
    const int32_t id = tokens[t] < 0 ? prev[-1 - tokens[t]].token : tokens[t];
    const __nv_bfloat16 *row = table + (int64_t)id * hidden;
    float *o = x + (int64_t)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = __bfloat162float(row[i]);
}

// One element of a product left in parts: its only part, or its parts added in split order
// starting from zero, exactly as the Hopper product's cluster reduction adds them
// (sk_hopper_gemm_parts), so that both paths give the same bits. All loads in flight at once.
__device__ __forceinline__ float sum_parts_at(const float *d, int n_parts, int64_t part_stride, int64_t i)
{
    if (n_parts == 1) return d[i];
    float v[SK_HOPPER_MAX_SPLITS];
#pragma unroll
    for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
        if (j < n_parts) v[j] = d[j * part_stride + i];
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < SK_HOPPER_MAX_SPLITS; j++)
        if (j < n_parts) sum += v[j];
    return sum;
}

// Residual add and RMSNorm of one row per block. Any hidden size; add_rmsnorm_vec_kernel takes
// the common ones faster.
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
        yr[i] = __float2bfloat16_rn(w[i] * (v * inv));
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
// threads (rows up to 4096 wide).
constexpr int kPartsThreads = 256;
template <bool PARTS>
__global__ void __launch_bounds__(PARTS ? kPartsThreads : 1024)
    add_rmsnorm_vec_kernel(float *__restrict__ x, const float *__restrict__ delta, int n_parts, int64_t part_stride,
                           const int32_t *__restrict__ rows, const float *__restrict__ w, __nv_bfloat16 *__restrict__ y,
                           int hidden, float eps)
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
#pragma unroll
    for (int j = 0; j < kNormVec; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= n4) continue;
        yr[i] = make_uint2(pack_bf16(wv[j].x * (v[j].x * inv), wv[j].y * (v[j].y * inv)),
                           pack_bf16(wv[j].z * (v[j].z * inv), wv[j].w * (v[j].w * inv)));
    }
}

// V consecutive gate (and up) values of a row from fp32 or bf16 gate/up products.
template <int V> __device__ __forceinline__ void load_run(const float *p, float (&v)[V])
{
    if constexpr (V == 8) {
        const float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
        for (int i = 0; i < V; i++) v[i] = p[i];
    }
}

template <int V> __device__ __forceinline__ void load_run(const __nv_bfloat16 *p, float (&v)[V])
{
    if constexpr (V == 8) {
        bf16x8_to_f32(*reinterpret_cast<const uint4 *>(p), v);
    } else {
        for (int i = 0; i < V; i++) v[i] = __bfloat162float(p[i]);
    }
}

// out[t, j] = bf16(silu(gate[t, j]) * up[t, j]), V outputs per thread (8: 16-byte loads and
// stores, when inter % 8 == 0). INTERLEAVED: a row holds gate and up in alternating blocks of
// SK_GATE_UP_BLOCK, else gate then up. Tin: fp32 products, or bf16 ones (prefill), which halve
// the bytes this kernel reads.
template <bool INTERLEAVED, int V, typename Tin>
__global__ void silu_mul_kernel(__nv_bfloat16 *out, const Tin *gu, int inter, int64_t n)
{
    pdl_let_dependents_launch();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n / V; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t e = i * V, t = e / inter, j = e % inter;
        const Tin *row = gu + t * 2 * inter;
        const int64_t gi = INTERLEAVED ? 2 * (j / SK_GATE_UP_BLOCK) * SK_GATE_UP_BLOCK + j % SK_GATE_UP_BLOCK : j;
        const int64_t ui = INTERLEAVED ? gi + SK_GATE_UP_BLOCK : inter + j;
        float g[V], u[V];
        load_run<V>(row + gi, g);
        load_run<V>(row + ui, u);
        if constexpr (V == 8) {
            uint32_t w[4];
            for (int k = 0; k < 4; k++)
                w[k] = pack_bf16(g[2 * k] / (1.0f + expf(-g[2 * k])) * u[2 * k],
                                 g[2 * k + 1] / (1.0f + expf(-g[2 * k + 1])) * u[2 * k + 1]);
            *reinterpret_cast<uint4 *>(out + e) = make_uint4(w[0], w[1], w[2], w[3]);
        } else {
            for (int k = 0; k < V; k++) out[e + k] = __float2bfloat16_rn(g[k] / (1.0f + expf(-g[k])) * u[k]);
        }
    }
}

// One warp per head of one token: q heads, then k heads, then v heads. qkv may be in n_parts
// parts (sk_qkv_post_parts). At most 64 registers, so that four blocks of 8 warps share an SM
// (latency, not arithmetic, bounds this kernel).
__global__ void __launch_bounds__(256, 4)
    qkv_post_kernel(const float *qkv, int n_parts, int64_t part_stride, const float *bias, const float *q_norm,
                    const float *k_norm, const float *inv_freq, const int32_t *pos, const int32_t *slot, float *q_out,
                    __nv_bfloat16 *k_cache, __nv_bfloat16 *v_cache, sk_qkv_params p, bool vec128)
{
    int t = blockIdx.x;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int d = p.head_dim, half = d / 2;
    int n_all = p.n_heads + 2 * p.n_kv_heads;
    const float *row = qkv + (int64_t)t * n_all * d;
    // Positions and slots are the step's inputs, not the product's output: read before the wait.
    float fpos = (float)pos[t];
    int64_t sl = slot[t];
    // The decode attention that follows waits for this kernel's output before reading it.
    pdl_let_dependents_launch();
    pdl_wait();
    int64_t blk = sl / SK_KV_BLOCK, off = sl % SK_KV_BLOCK;
    // Blocks (t, y) take heads y*nw + warp, y*nw + warp + nw*gridDim.y, ...: enough blocks for a
    // decode batch to fill the GPU.
    for (int h = blockIdx.y * nw + warp; h < n_all; h += nw * gridDim.y) {
        const float *src = row + (int64_t)h * d;
        const float *b = bias ? bias + (int64_t)h * d : nullptr;
        bool is_q = h < p.n_heads, is_k = !is_q && h < p.n_heads + p.n_kv_heads;
        if (vec128) {
            const int kvh = is_q ? 0 : is_k ? h - p.n_heads : h - p.n_heads - p.n_kv_heads;
            const int64_t at = ((blk * p.n_kv_heads + kvh) * SK_KV_BLOCK + off) * d;
            const float4 y = qkv_head128(src, n_parts, part_stride, b, is_q || is_k, is_q ? q_norm : k_norm, p.eps,
                                         p.interleaved, inv_freq, fpos, lane);
            if (is_q)
                reinterpret_cast<float4 *>(q_out + ((int64_t)t * p.n_heads + h) * d)[lane] = y;
            else
                reinterpret_cast<uint2 *>((is_k ? k_cache : v_cache) + at)[lane] =
                    make_uint2(pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
            continue;
        }
        if (!is_q && !is_k) {
            int kvh = h - p.n_heads - p.n_kv_heads;
            __nv_bfloat16 *dst = v_cache + ((blk * p.n_kv_heads + kvh) * SK_KV_BLOCK + off) * d;
            for (int i = lane; i < d; i += 32)
                dst[i] = __float2bfloat16_rn(sum_parts_at(src, n_parts, part_stride, i) + (b ? b[i] : 0.0f));
            continue;
        }
        const float *nw_ = is_q ? q_norm : k_norm;
        float inv = 1.0f;
        if (nw_) {
            float ss = 0.0f;
            for (int i = lane; i < d; i += 32) {
                float v = sum_parts_at(src, n_parts, part_stride, i) + (b ? b[i] : 0.0f);
                ss += v * v;
            }
            ss = warp_sum(ss);
            inv = rsqrtf(ss / (float)d + p.eps);
        }
        float *qdst = nullptr;
        __nv_bfloat16 *kdst = nullptr;
        if (is_q)
            qdst = q_out + ((int64_t)t * p.n_heads + h) * d;
        else
            kdst = k_cache + ((blk * p.n_kv_heads + (h - p.n_heads)) * SK_KV_BLOCK + off) * d;
        for (int i = lane; i < half; i += 32) {
            int i0 = p.interleaved ? 2 * i : i, i1 = p.interleaved ? 2 * i + 1 : i + half;
            float x0 = sum_parts_at(src, n_parts, part_stride, i0) + (b ? b[i0] : 0.0f);
            float x1 = sum_parts_at(src, n_parts, part_stride, i1) + (b ? b[i1] : 0.0f);
            if (nw_) {
                x0 = nw_[i0] * (x0 * inv);
                x1 = nw_[i1] * (x1 * inv);
            }
            float sn, cs;
            sincosf(fpos * inv_freq[i], &sn, &cs);
            float y0 = x0 * cs - x1 * sn, y1 = x1 * cs + x0 * sn;
            if (qdst) {
                qdst[i0] = y0;
                qdst[i1] = y1;
            } else {
                kdst[i0] = __float2bfloat16_rn(y0);
                kdst[i1] = __float2bfloat16_rn(y1);
            }
        }
    }
}

int grid_for(int64_t n, int threads)
{
    int64_t g = (n + threads - 1) / threads;
    if (g > 65535 * 16) g = 65535 * 16;
    return g < 1 ? 1 : (int)g;
}

int threads_for_row(int n)
{
    int t = (n + 31) / 32 * 32;
    return t > 1024 ? 1024 : (t < 32 ? 32 : t);
}

} // namespace

extern "C" cudaError_t sk_convert_to_bf16(uint16_t *dst, const void *src, int src_dtype, int64_t n, cudaStream_t s)
{
    if (n <= 0) return cudaSuccess;
    convert_kernel<<<grid_for(n, 256), 256, 0, s>>>((__nv_bfloat16 *)dst, src, src_dtype, n);
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

extern "C" cudaError_t sk_embed(float *x, const uint16_t *table, const int32_t *tokens, const sk_sample_out *prev,
                                int n_tokens, int hidden, cudaStream_t s)
{
    if (n_tokens <= 0) return cudaSuccess;
    embed_kernel<<<n_tokens, threads_for_row(hidden), 0, s>>>(x, (const __nv_bfloat16 *)table, tokens, prev, hidden);
    return cudaGetLastError();
}

extern "C" cudaError_t sk_add_rmsnorm_parts(float *x, const float *delta, int n_parts, int64_t part_stride,
                                            const int32_t *rows, const float *w, uint16_t *y, int n_rows, int hidden,
                                            float eps, cudaStream_t s)
{
    if (n_rows <= 0) return cudaSuccess;
    if (!delta) n_parts = 1;
    if (n_parts < 1 || n_parts > SK_HOPPER_MAX_SPLITS || (n_parts > 1 && part_stride < (int64_t)hidden))
        return cudaErrorInvalidValue;
    const int n4 = hidden / 4, threads = ((n4 + kNormVec - 1) / kNormVec + 31) / 32 * 32;
    if (hidden % 4 == 0 && threads <= (n_parts > 1 ? kPartsThreads : 1024) && part_stride % 4 == 0) {
        return launch_pdl(n_parts > 1 ? add_rmsnorm_vec_kernel<true> : add_rmsnorm_vec_kernel<false>, dim3(n_rows),
                          dim3(threads), 0, s, x, delta, n_parts, part_stride, rows, w, (__nv_bfloat16 *)y, hidden,
                          eps);
    }
    return launch_pdl(add_rmsnorm_kernel, dim3(n_rows), dim3(threads_for_row(hidden)), 0, s, x, delta, n_parts,
                      part_stride, rows, w, (__nv_bfloat16 *)y, hidden, eps);
}

extern "C" cudaError_t sk_add_rmsnorm(float *x, const float *delta, const int32_t *rows, const float *w, uint16_t *y,
                                      int n_rows, int hidden, float eps, cudaStream_t s)
{
    return sk_add_rmsnorm_parts(x, delta, 1, 0, rows, w, y, n_rows, hidden, eps, s);
}

namespace
{

template <typename Tin>
cudaError_t silu_mul(uint16_t *out, const Tin *gu, int n_tokens, int inter, bool interleaved, cudaStream_t s)
{
    const int64_t n = (int64_t)n_tokens * inter;
    if (interleaved && inter % SK_GATE_UP_BLOCK) return cudaErrorInvalidValue;
    if (n <= 0) return cudaSuccess;
    __nv_bfloat16 *o = (__nv_bfloat16 *)out;
    const bool vec = inter % 8 == 0;
    const int grid = grid_for(vec ? n / 8 : n, 256);
    if (interleaved)
        silu_mul_kernel<true, 8, Tin><<<grid, 256, 0, s>>>(o, gu, inter, n); // inter % 64 == 0
    else if (vec)
        silu_mul_kernel<false, 8, Tin><<<grid, 256, 0, s>>>(o, gu, inter, n);
    else
        silu_mul_kernel<false, 1, Tin><<<grid, 256, 0, s>>>(o, gu, inter, n);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_silu_mul(uint16_t *out, const float *gu, int n_tokens, int inter, cudaStream_t s)
{
    return silu_mul(out, gu, n_tokens, inter, false, s);
}

extern "C" cudaError_t sk_silu_mul_interleaved(uint16_t *out, const float *gu, int n_tokens, int inter, cudaStream_t s)
{
    return silu_mul(out, gu, n_tokens, inter, true, s);
}

extern "C" cudaError_t sk_silu_mul_bf16(uint16_t *out, const uint16_t *gu, int n_tokens, int inter, int interleaved,
                                        cudaStream_t s)
{
    return silu_mul(out, (const __nv_bfloat16 *)gu, n_tokens, inter, interleaved != 0, s);
}

extern "C" cudaError_t sk_gate_up_interleave(uint16_t *dst, const uint16_t *src, int inter, int k_in, cudaStream_t s)
{
    if (inter % SK_GATE_UP_BLOCK || k_in < 1) return cudaErrorInvalidValue;
    // Block j of gate goes to rows 2j*B.., block j of up to rows (2j+1)*B..: two strided copies.
    const size_t block = (size_t)SK_GATE_UP_BLOCK * k_in * 2, n_blocks = (size_t)inter / SK_GATE_UP_BLOCK;
    cudaError_t e = cudaMemcpy2DAsync(dst, 2 * block, src, block, block, n_blocks, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) return e;
    return cudaMemcpy2DAsync((unsigned char *)dst + block, 2 * block, (const unsigned char *)src + n_blocks * block,
                             block, block, n_blocks, cudaMemcpyDeviceToDevice, s);
}

extern "C" cudaError_t sk_qkv_post_parts(const float *qkv, int n_parts, int64_t part_stride, const float *bias,
                                         const float *q_norm, const float *k_norm, const float *inv_freq,
                                         const int32_t *pos, const int32_t *slot, float *q_out, uint16_t *k_cache,
                                         uint16_t *v_cache, struct sk_qkv_params p, cudaStream_t s)
{
    if (p.n_tokens <= 0) return cudaSuccess;
    if (p.head_dim < 2 || p.head_dim % 2) return cudaErrorInvalidValue;
    int n_all = p.n_heads + 2 * p.n_kv_heads;
    if (n_parts < 1 || n_parts > SK_HOPPER_MAX_SPLITS || (n_parts > 1 && part_stride < (int64_t)n_all * p.head_dim))
        return cudaErrorInvalidValue;
    int warps = n_all < 8 ? n_all : 8;
    dim3 grid(p.n_tokens, (n_all + warps - 1) / warps);
    // head_dim 128 takes 16-byte accesses where every row they touch starts 16-byte aligned.
    const uintptr_t at = (uintptr_t)qkv | (uintptr_t)bias | (uintptr_t)q_norm | (uintptr_t)k_norm | (uintptr_t)q_out |
                         (uintptr_t)k_cache | (uintptr_t)v_cache;
    const bool vec128 = p.head_dim == 128 && !(at & 15) && (n_parts == 1 || part_stride % 4 == 0);
    return launch_pdl(qkv_post_kernel, grid, dim3(32 * warps), 0, s, qkv, n_parts, part_stride, bias, q_norm, k_norm,
                      inv_freq, pos, slot, q_out, (__nv_bfloat16 *)k_cache, (__nv_bfloat16 *)v_cache, p, vec128);
}

extern "C" cudaError_t sk_qkv_post(const float *qkv, const float *bias, const float *q_norm, const float *k_norm,
                                   const float *inv_freq, const int32_t *pos, const int32_t *slot, float *q_out,
                                   uint16_t *k_cache, uint16_t *v_cache, struct sk_qkv_params p, cudaStream_t s)
{
    return sk_qkv_post_parts(qkv, 1, 0, bias, q_norm, k_norm, inv_freq, pos, slot, q_out, k_cache, v_cache, p, s);
}
