// What more than one FP8 kernel file uses: bf16 bits as a float, shared by fp8_quantize.cu (the
// rows it quantizes) and fp8_scale_output.cu (a bf16 GEMM output), and the grid of a
// grid-stride loop over n elements, shared by fp8_dequant.cu and fp8_scale_output.cu.
//
// In an anonymous namespace, as they were in the one file these kernels came from: each file
// that includes this keeps internal copies (grid_for inline, so a file that does not call it
// has no unused function).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace
{

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t v)
{
    return __uint_as_float(static_cast<uint32_t>(v) << 16);
}

inline int grid_for(int64_t n)
{
    int64_t g = (n + 255) / 256;
    return (int)(g < 65536 ? (g > 0 ? g : 1) : 65536);
}

} // namespace
