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

}  // namespace cuda
}  // namespace xtc
