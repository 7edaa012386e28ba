// sk_fp8_quantize_rows (sk_fp8.h): rows of bf16 quantized to e4m3 with one scale each (amax /
// 448), one block per row, with fp8_row.cuh's arithmetic (the CPU's bits). A programmatic
// dependent (pdl.cuh) that lets its reader launch at once: the product after it streams its
// weights meanwhile.
//
// It runs before the FP8 products that read codes (the Hopper stream, cuBLASLt) where the kernel
// that wrote the row did not quantize it already (the attention output before o), while that
// product's weights stream in, so its time is the step's: a row is read once, in 16-byte vectors that every thread issues at once and keeps in
// registers, then written from them (rows of up to kQuantThreads * 8 * kMaxVectors values whose
// width is a multiple of 8). Other rows take the plain loop, which reads a row twice.
#include "kernels/fp8_common.cuh"
#include "kernels/fp8_row.cuh"
#include "kernels/pdl.cuh"
#include "kernels/row_sums.cuh"
#include "kernels/sk_fp8.h"

namespace
{

constexpr int kQuantThreads = 256;
constexpr int kMaxVectors = 8; // a thread's 16-byte vectors: rows of up to 16384 values

__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_kernel(uint8_t *__restrict__ q, float *__restrict__ scale, const uint16_t *__restrict__ x, int cols)
{
    pdl_let_dependents_launch();
    pdl_wait();
    __shared__ float sh[32];
    const int r = blockIdx.x;
    const uint16_t *row = x + (size_t)r * cols;
    float amax = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(bf16_bits_to_f32(row[c])));
    const float s = fp8_row_scale(block_max(amax, sh));
    if (threadIdx.x == 0) scale[r] = s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) q[(size_t)r * cols + c] = (uint8_t)e4m3_code(bf16_bits_to_f32(row[c]), s);
}

// VECS vectors of 8 values a thread; cols % 8 == 0, x 16-byte and q 8-byte aligned.
template <int VECS>
__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_vec_kernel(uint8_t *__restrict__ q, float *__restrict__ scale, const uint16_t *__restrict__ x,
                             int cols)
{
    pdl_let_dependents_launch();
    pdl_wait();
    __shared__ float sh[32];
    const int r = blockIdx.x, n_vec = cols / 8;
    const uint4 *row = reinterpret_cast<const uint4 *>(x + (size_t)r * cols);
    uint4 v[VECS];
#pragma unroll
    for (int i = 0; i < VECS; i++) {
        const int c = threadIdx.x + i * kQuantThreads;
        v[i] = c < n_vec ? __ldg(row + c) : make_uint4(0, 0, 0, 0); // zeros leave amax as it is
    }
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VECS; i++)
        amax = fmaxf(fmaxf(bf16_pair_amax(v[i].x), bf16_pair_amax(v[i].y)),
                     fmaxf(fmaxf(bf16_pair_amax(v[i].z), bf16_pair_amax(v[i].w)), amax));
    const float s = fp8_row_scale(block_max(amax, sh));
    if (threadIdx.x == 0) scale[r] = s;
    uint2 *out = reinterpret_cast<uint2 *>(q + (size_t)r * cols);
#pragma unroll
    for (int i = 0; i < VECS; i++) {
        const int c = threadIdx.x + i * kQuantThreads;
        if (c < n_vec) out[c] = make_uint2(e4m3_codes4(v[i].x, v[i].y, s), e4m3_codes4(v[i].z, v[i].w, s));
    }
}

template <int VECS>
cudaError_t launch_vec(uint8_t *q, float *scale, const uint16_t *x, int rows, int cols, cudaStream_t s)
{
    return launch_pdl(quantize_rows_vec_kernel<VECS>, dim3(rows), dim3(kQuantThreads), 0, s, q, scale, x, cols);
}

} // namespace

extern "C" cudaError_t sk_fp8_quantize_rows(uint8_t *q, float *scale, const uint16_t *x, int rows, int cols,
                                            cudaStream_t s)
{
    if (rows < 0 || cols < 1) return cudaErrorInvalidValue;
    if (rows == 0) return cudaSuccess;
    const int per_thread = (cols / 8 + kQuantThreads - 1) / kQuantThreads;
    if (cols % 8 == 0 && !((uintptr_t)x & 15) && !((uintptr_t)q & 7) && per_thread <= kMaxVectors) {
        if (per_thread <= 1) return launch_vec<1>(q, scale, x, rows, cols, s);
        if (per_thread <= 2) return launch_vec<2>(q, scale, x, rows, cols, s);
        if (per_thread <= 4) return launch_vec<4>(q, scale, x, rows, cols, s);
        return launch_vec<kMaxVectors>(q, scale, x, rows, cols, s);
    }
    return launch_pdl(quantize_rows_kernel, dim3(rows), dim3(kQuantThreads), 0, s, q, scale, x, cols);
}
