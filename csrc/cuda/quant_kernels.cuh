// Launcher interface of the CUDA kernels: plain pointers and sizes, no torch headers, so the kernels compile
// with nvcc alone (CI has nvcc but no GPU and a CPU-only torch). Contracts as in ../include/xtc_ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace xtc {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Doubles of scratch memory fake_quant needs for `groups` groups: 4 statistics and 2 float parameters each.
inline int64_t fake_quant_workspace_size(int64_t groups) { return 5 * groups; }

// out = fake-quantized x (numel elements in `groups` contiguous groups); workspace: see above, any content.
cudaError_t fake_quant(const void* x, void* out, DType dtype, int64_t numel, int64_t groups, int bits, bool symmetric,
                       double* workspace, cudaStream_t stream);

// bits in {1, 2, 4, 8}; `rows` rows of `row_codes` codes (a multiple of 8 / bits).
cudaError_t pack_bits(const uint8_t* codes, uint8_t* packed, int64_t rows, int64_t row_codes, int bits,
                      cudaStream_t stream);
cudaError_t unpack_bits(const uint8_t* packed, uint8_t* codes, int64_t rows, int64_t row_codes, int bits,
                        cudaStream_t stream);

// Sum of each packed row's levels (row_sum of prepack_weight); rows in the pack_bits layout of `bits`-bit codes.
cudaError_t packed_row_sum(const uint8_t* packed, int32_t* row_sum, int64_t n, int64_t k, int64_t row_bytes, int bits,
                           cudaStream_t stream);

// out (m, n) = per-token act_bits codes of x (m, k) times the packed rows (n, row_bytes), int32 accumulation,
// scaled by token and row scales, plus bias (may be null). codes (m * k int8) and token_scale (m) are scratch.
// k must be a multiple of 4 and x 4-byte aligned rows of k codes.
cudaError_t packed_linear(const float* x, const uint8_t* packed, const float* row_scale, const float* bias, float* out,
                          int8_t* codes, float* token_scale, int64_t m, int64_t n, int64_t k, int64_t row_bytes,
                          int bits, int act_bits, cudaStream_t stream);

}  // namespace cuda
}  // namespace xtc
