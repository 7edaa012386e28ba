// The SwiGLU activation, out = bf16(silu(gate) * up) (sk_silu_mul, sk_silu_mul_interleaved,
// sk_silu_mul_bf16), and the weight layout its interleaved form reads (sk_gate_up_interleave):
// gate and up rows in alternating blocks of SK_GATE_UP_BLOCK, which the fused Hopper products
// (sk_hopper_gemm_swiglu, sk_hopper_mlp) need to find a gate block beside its up block. Once a
// model's weights are laid out so, the products that do not fuse leave their rows interleaved too.
#include "kernels/sk_fp8.h"
#include "kernels/sk_quant.h"
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>

#include "kernels/bf16.cuh"
#include "kernels/fp8_row.cuh"
#include "kernels/launch_dims.cuh"
#include "kernels/pdl.cuh"
#include "kernels/q8_act.cuh"
#include "kernels/row_sums.cuh"

namespace
{

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

// bf16(silu(g) * u) of 8 gates and ups, packed for one 16-byte store: the one expression both
// kernels below use, so the fused kernel's activations are silu_mul_kernel's bit for bit.
__device__ __forceinline__ uint4 swiglu8(const float (&g)[8], const float (&u)[8])
{
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
        w[k] = pack_bf16(g[2 * k] / (1.0f + expf(-g[2 * k])) * u[2 * k],
                         g[2 * k + 1] / (1.0f + expf(-g[2 * k + 1])) * u[2 * k + 1]);
    return make_uint4(w[0], w[1], w[2], w[3]);
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
            *reinterpret_cast<uint4 *>(out + e) = swiglu8(g, u);
        } else {
            for (int k = 0; k < V; k++) out[e + k] = __float2bfloat16_rn(g[k] / (1.0f + expf(-g[k])) * u[k]);
        }
    }
}

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

// silu_mul_kernel's activation (plain layout, fp32 gate/up, inter % 32 == 0) that also leaves its
// rows in the block GEMV's int8 (q8_act.cuh) for the down product after it: a group of 32 is
// four neighbouring threads' runs of 8 (the grid's stride keeps them in one iteration together),
// so its max and sum are shuffles among them. Groups need no row-wide value, so the rows spread
// over every block as silu_mul_kernel's do.
__global__ void silu_mul_q8_kernel(__nv_bfloat16 *__restrict__ out, int8_t *__restrict__ xq, float2 *__restrict__ pairs,
                                   const float *__restrict__ gu, int inter, int64_t n)
{
    pdl_let_dependents_launch();
    pdl_wait(); // gate/up is the kernel before's output
    const unsigned group = 0xfu << (threadIdx.x & 28);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n / 8; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t e = i * 8, t = e / inter, j = e % inter;
        float g[8], u[8];
        load_run<8>(gu + t * 2 * inter + j, g);
        load_run<8>(gu + t * 2 * inter + inter + j, u);
        const uint4 a = swiglu8(g, u);
        *reinterpret_cast<uint4 *>(out + e) = a;
        float f[8];
        bf16x8_to_f32(a, f);
        const q8_run<8> qa = q8_quantize<4>(f, group);
        *reinterpret_cast<uint2 *>(xq + e) = make_uint2(qa.q[0], qa.q[1]);
        if (i % 4 == 0) pairs[t * (inter / kQ8Group) + j / kQ8Group] = qa.pair;
    }
}

// silu_mul_kernel's rows (plain layout, fp32 gate/up, inter % 8 == 0) one block each, VECS runs
// of 8 a thread kept in registers as bf16, then quantized per token for the FP8 product that
// reads them (fp8_row.cuh): the same bf16 values and codes as silu_mul_kernel then
// sk_fp8_quantize_rows, with one launch and one trip to memory.
constexpr int kQuantThreads = 256;
constexpr int kQuantMaxVecs = 8; // rows of up to 16384
template <int VECS>
__global__ void __launch_bounds__(kQuantThreads)
    silu_mul_quant_kernel(__nv_bfloat16 *__restrict__ out, uint8_t *__restrict__ q, float *__restrict__ q_scale,
                          const float *__restrict__ gu, int inter)
{
    pdl_let_dependents_launch();
    pdl_wait(); // gate/up is the kernel before's output
    __shared__ float sh[32];
    const int t = blockIdx.x, n_vec = inter / 8;
    const float *row = gu + (int64_t)t * 2 * inter;
    uint4 act[VECS];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VECS; i++) {
        const int c = threadIdx.x + i * kQuantThreads;
        act[i] = make_uint4(0, 0, 0, 0);
        if (c >= n_vec) continue;
        float g[8], u[8];
        load_run<8>(row + 8 * c, g);
        load_run<8>(row + inter + 8 * c, u);
        act[i] = swiglu8(g, u);
        amax = fmaxf(fmaxf(fmaxf(bf16_pair_amax(act[i].x), bf16_pair_amax(act[i].y)),
                           fmaxf(bf16_pair_amax(act[i].z), bf16_pair_amax(act[i].w))),
                     amax);
    }
    const float sc = fp8_row_scale(block_max(amax, sh));
    if (threadIdx.x == 0) q_scale[t] = sc;
    uint4 *o = reinterpret_cast<uint4 *>(out + (int64_t)t * inter);
    uint2 *qr = reinterpret_cast<uint2 *>(q + (int64_t)t * inter);
#pragma unroll
    for (int i = 0; i < VECS; i++) {
        const int c = threadIdx.x + i * kQuantThreads;
        if (c >= n_vec) break;
        o[c] = act[i];
        qr[c] = make_uint2(e4m3_codes4(act[i].x, act[i].y, sc), e4m3_codes4(act[i].z, act[i].w, sc));
    }
}

template <int VECS>
cudaError_t silu_mul_quant(uint16_t *out, uint8_t *q, float *q_scale, const float *gu, int n_tokens, int inter,
                           cudaStream_t s)
{
    return launch_pdl(silu_mul_quant_kernel<VECS>, dim3(n_tokens), dim3(kQuantThreads), 0, s, (__nv_bfloat16 *)out, q,
                      q_scale, gu, inter);
}

} // namespace

extern "C" cudaError_t sk_silu_mul_fp8(uint16_t *out, uint8_t *q, float *q_scale, const float *gu, int n_tokens,
                                       int inter, int interleaved, cudaStream_t s)
{
    if (!q || !q_scale || n_tokens < 0 || inter < 1) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const int per_thread = (inter / 8 + kQuantThreads - 1) / kQuantThreads;
    if (!interleaved && inter % 8 == 0 && per_thread <= kQuantMaxVecs && !((uintptr_t)gu & 15) &&
        !((uintptr_t)out & 15) && !((uintptr_t)q & 7)) {
        if (per_thread <= 1) return silu_mul_quant<1>(out, q, q_scale, gu, n_tokens, inter, s);
        if (per_thread <= 2) return silu_mul_quant<2>(out, q, q_scale, gu, n_tokens, inter, s);
        if (per_thread <= 4) return silu_mul_quant<4>(out, q, q_scale, gu, n_tokens, inter, s);
        return silu_mul_quant<kQuantMaxVecs>(out, q, q_scale, gu, n_tokens, inter, s);
    }
    // Other rows: the activation, then its codes from it.
    cudaError_t e = silu_mul(out, gu, n_tokens, inter, interleaved != 0, s);
    return e == cudaSuccess ? sk_fp8_quantize_rows(q, q_scale, out, n_tokens, inter, s) : e;
}

extern "C" cudaError_t sk_silu_mul_q8(uint16_t *out, void *scratch, const float *gu, int n_tokens, int inter,
                                      cudaStream_t s)
{
    if (!scratch || (uintptr_t)scratch % 16 || n_tokens < 0 || n_tokens > kQ8MaxRows || inter < kQ8Group ||
        inter % kQ8Group || ((uintptr_t)gu & 15) || ((uintptr_t)out & 15))
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const int64_t n = (int64_t)n_tokens * inter;
    return launch_pdl(silu_mul_q8_kernel, dim3(grid_for(n / 8, 256)), dim3(256), 0, s, (__nv_bfloat16 *)out,
                      q8_quants(scratch), q8_pairs(scratch, inter), gu, inter, n);
}

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
