// Prefill attention on the tensor cores: flash-style tiles of 64 queries x 64 keys with WMMA
// (bf16 operands, fp32 accumulation). A block of 4 warps owns one head and 64 consecutive query
// tokens of one sequence; each warp owns 16 query rows. Per key tile: K and V rows are gathered
// from the paged cache into shared memory, S = Q K^T on the tensor cores, the online softmax
// runs on S in shared memory (two lanes per row), then P V on the tensor cores is folded into
// the fp32 output kept in shared memory (WMMA fragments hide their row layout, so the per-row
// rescale happens there).
#include "kernels/sluice_kernels.h"

#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>

using namespace nvcuda;

namespace
{

constexpr int kBQ = SK_PREFILL_TILE; // query rows per block
constexpr int kBK = 64;              // keys per tile
constexpr int kWarps = 4;

struct Layout {
    int ldh; // bf16 row stride of Q, K, V tiles
    int lds; // float row stride of S
    int ldp; // bf16 row stride of P
    int ldo; // float row stride of O and the P V product
    size_t q, k, v, s, pb, o, t, m, l, c, total;
};

__host__ __device__ inline size_t align128(size_t n)
{
    return (n + 127) & ~(size_t)127;
}

__host__ __device__ inline Layout layout_for(int d)
{
    Layout L;
    L.ldh = d + 8;
    L.lds = kBK + 4;
    L.ldp = kBK + 8;
    L.ldo = d + 4;
    size_t at = 0;
    L.q = at;
    at = align128(at + (size_t)kBQ * L.ldh * 2);
    L.k = at;
    at = align128(at + (size_t)kBK * L.ldh * 2);
    L.v = at;
    at = align128(at + (size_t)kBK * L.ldh * 2);
    L.s = at;
    at = align128(at + (size_t)kBQ * L.lds * 4);
    L.pb = at;
    at = align128(at + (size_t)kBQ * L.ldp * 2);
    L.o = at;
    at = align128(at + (size_t)kBQ * L.ldo * 4);
    L.t = at;
    at = align128(at + (size_t)kBQ * L.ldo * 4);
    L.m = at;
    at = align128(at + kBQ * 4);
    L.l = at;
    at = align128(at + kBQ * 4);
    L.c = at;
    at = align128(at + kBQ * 4);
    L.total = at;
    return L;
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    prefill_kernel(const float *q, const __nv_bfloat16 *k_cache, const __nv_bfloat16 *v_cache,
                   const int32_t *block_tables, const int32_t *tiles, const int32_t *pos, __nv_bfloat16 *out,
                   sk_attn_params p)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const Layout L = layout_for(D);
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)(smem + L.q), *Ks = (__nv_bfloat16 *)(smem + L.k),
                  *Vs = (__nv_bfloat16 *)(smem + L.v), *Pb = (__nv_bfloat16 *)(smem + L.pb);
    float *Sf = (float *)(smem + L.s), *Of = (float *)(smem + L.o), *Tf = (float *)(smem + L.t);
    float *Ms = (float *)(smem + L.m), *Ls = (float *)(smem + L.l), *Cs = (float *)(smem + L.c);

    const int h = blockIdx.x, tile = blockIdx.y;
    const int t0 = tiles[3 * tile], n = tiles[3 * tile + 1], seq = tiles[3 * tile + 2];
    const int kvh = h / (p.n_heads / p.n_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int p0 = pos[t0];
    const int n_keys = p0 + n; // keys 0 .. last query's position
    const int32_t *bt = block_tables + (int64_t)seq * p.bt_stride;
    const int64_t head_stride = (int64_t)SK_KV_BLOCK * D;

    for (int i = threadIdx.x; i < kBQ * D; i += blockDim.x) {
        int r = i / D, c = i % D;
        float v = r < n ? q[((int64_t)(t0 + r) * p.n_heads + h) * D + c] * p.scale : 0.0f;
        Qs[r * L.ldh + c] = __float2bfloat16_rn(v);
    }
    for (int i = threadIdx.x; i < kBQ * L.ldo; i += blockDim.x) Of[i] = 0.0f;
    for (int i = threadIdx.x; i < kBQ; i += blockDim.x) {
        Ms[i] = -INFINITY;
        Ls[i] = 0.0f;
    }

    const int row0 = warp * 16;
    for (int kt = 0; kt < n_keys; kt += kBK) {
        __syncthreads();           // previous tile's K, V no longer in use; Q, O initialised
        constexpr int VPR = D / 8; // 16-byte vectors per row
        for (int i = threadIdx.x; i < kBK * VPR; i += blockDim.x) {
            int r = i / VPR, c = (i % VPR) * 8, j = kt + r;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (j < n_keys) {
                int64_t off = ((int64_t)bt[j / SK_KV_BLOCK] * p.n_kv_heads + kvh) * head_stride +
                              (int64_t)(j % SK_KV_BLOCK) * D + c;
                kv = *reinterpret_cast<const uint4 *>(k_cache + off);
                vv = *reinterpret_cast<const uint4 *>(v_cache + off);
            }
            *reinterpret_cast<uint4 *>(Ks + r * L.ldh + c) = kv;
            *reinterpret_cast<uint4 *>(Vs + r * L.ldh + c) = vv;
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows.
#pragma unroll
        for (int nt = 0; nt < kBK / 16; nt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(a, Qs + row0 * L.ldh + kk * 16, L.ldh);
                wmma::load_matrix_sync(b, Ks + nt * 16 * L.ldh + kk * 16, L.ldh);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Sf + row0 * L.lds + nt * 16, acc, L.lds, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax: lanes 2r and 2r+1 share row r, 32 columns each.
        {
            const int r = row0 + (lane >> 1), half = lane & 1;
            const int qpos = p0 + r;
            const bool row_ok = r < n;
            float sv[32];
            float mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < 32; c++) {
                int col = half * 32 + c, j = kt + col;
                float v = (row_ok && j <= qpos) ? Sf[r * L.lds + col] : -INFINITY;
                sv[c] = v;
                mx = fmaxf(mx, v);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = Ms[r];
            const float m_new = fmaxf(m_old, mx);
            float corr, sum = 0.0f;
            if (m_new == -INFINITY) {
                corr = 1.0f;
#pragma unroll
                for (int c = 0; c < 32; c++) Pb[r * L.ldp + half * 32 + c] = __float2bfloat16_rn(0.0f);
            } else {
                corr = __expf(m_old - m_new);
#pragma unroll
                for (int c = 0; c < 32; c++) {
                    float pv = __expf(sv[c] - m_new);
                    // The sum uses the rounded weight, the same one P V multiplies.
                    __nv_bfloat16 pb = __float2bfloat16_rn(pv);
                    Pb[r * L.ldp + half * 32 + c] = pb;
                    sum += __bfloat162float(pb);
                }
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            if (half == 0) {
                Ms[r] = m_new;
                Ls[r] = Ls[r] * corr + sum;
                Cs[r] = corr;
            }
        }
        __syncwarp();

        // T = P V, then O = O * corr + T.
#pragma unroll
        for (int dt = 0; dt < D / 16; dt++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < kBK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(a, Pb + row0 * L.ldp + kk * 16, L.ldp);
                wmma::load_matrix_sync(b, Vs + kk * 16 * L.ldh + dt * 16, L.ldh);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Tf + row0 * L.ldo + dt * 16, acc, L.ldo, wmma::mem_row_major);
        }
        __syncwarp();
        for (int i = lane; i < 16 * D; i += 32) {
            int r = row0 + i / D, c = i % D;
            Of[r * L.ldo + c] = Of[r * L.ldo + c] * Cs[r] + Tf[r * L.ldo + c];
        }
    }
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
        int r = row0 + i / D, c = i % D;
        if (r < n) out[((int64_t)(t0 + r) * p.n_heads + h) * D + c] = __float2bfloat16_rn(Of[r * L.ldo + c] / Ls[r]);
    }
}

template <int D>
cudaError_t launch(const float *q, const uint16_t *k, const uint16_t *v, const int32_t *bt, const int32_t *tiles,
                   int n_tiles, const int32_t *pos, uint16_t *out, const sk_attn_params &p, cudaStream_t s)
{
    const Layout L = layout_for(D);
    cudaError_t e = cudaFuncSetAttribute(prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.total);
    if (e != cudaSuccess) return e;
    dim3 grid(p.n_heads, n_tiles);
    prefill_kernel<D><<<grid, kWarps * 32, L.total, s>>>(q, (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, bt,
                                                         tiles, pos, (__nv_bfloat16 *)out, p);
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t sk_attention_prefill(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                                            const int32_t *block_tables, const int32_t *tiles, int n_tiles,
                                            const int32_t *pos, uint16_t *out, struct sk_attn_params p, cudaStream_t s)
{
    if (n_tiles <= 0) return cudaSuccess;
    if (p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads || n_tiles > 65535) return cudaErrorInvalidValue;
    if (p.head_dim == 64) return launch<64>(q, k_cache, v_cache, block_tables, tiles, n_tiles, pos, out, p, s);
    if (p.head_dim == 128) return launch<128>(q, k_cache, v_cache, block_tables, tiles, n_tiles, pos, out, p, s);
    return cudaErrorInvalidValue;
}
