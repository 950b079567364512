// Op contracts shared by the CPU and CUDA builds. The pure-PyTorch functions in xtc_ds/quant/ are the
// specification: xtc_ds/quant/reference.py (fake quantization) and xtc_ds/quant/packing.py (bit layout).
#pragma once

#include <torch/extension.h>

namespace xtc {

// Fake quantization of `x` split into `num_groups` contiguous groups of its row-major elements
// (a weight's groups, or one group per token for activations). Returns a new contiguous tensor of x's
// shape and dtype (float32, float16 or bfloat16); statistics are computed in float32 or better.
//   bits 1: binary   sign(x) * mean|x| per group, sign(0) = +1
//   bits 2: ternary  threshold 0.7 * mean|x|, scale = mean of |x| above it
//   bits 3..8, symmetric:  scale = max|x| / (2^(bits-1) - 1), codes in [-(2^(bits-1) - 1), 2^(bits-1) - 1]
//   bits 3..8, asymmetric: range [min(x, 0), max(x, 0)], scale = range / (2^bits - 1), integer zero point
// Rounding is to nearest, ties to even (torch.round); group means are accumulated in double and rounded to
// float. numel must be a multiple of num_groups. `out`, if given, must be a contiguous tensor of x's shape
// and dtype; it is written and returned.
torch::Tensor fake_quant(const torch::Tensor& x, int64_t bits, int64_t num_groups, bool symmetric,
                         const c10::optional<torch::Tensor>& out);

// Pack uint8 codes (< 2^bits) along the last dimension, 8 / bits codes per byte, first code in the
// least-significant bits. bits in {1, 2, 4, 8}; the last dimension must be a multiple of 8 / bits.
torch::Tensor pack_bits(const torch::Tensor& codes, int64_t bits);

// Inverse of pack_bits.
torch::Tensor unpack_bits(const torch::Tensor& packed, int64_t bits);

// Packed inference. A quantized weight's levels are 2c-1 (1 bit), c-1 (2 bits) or c-2^(bits-1) (3..8 bits,
// symmetric) for its codes c, times one float scale per output row.
//
// prepack_weight turns `packed_weight` (uint8 (out_features, bytes), pack_bits layout of the codes along
// in_features, storage bits 1, 2, 4 or 8) into the device's kernel layout and returns {kernel_weight,
// row_sum (int32 (out_features,), the sum of each row's levels)}. out_features % 16 == 0, in_features % 4 == 0.
// CPU kernel layout: uint8 (out_features / 16, in_features / 4, B): block (t, q) covers rows 16t..16t+15 and
// inputs 4q..4q+3, element (r, j) at index 4r + j of the block (the AVX512-VNNI operand order):
//   1 bit:     B = 8,  one 64-bit little-endian mask, bit 4r+j set for level +1
//   2 bits:    B = 16, mask of nonzero levels, then mask of negative levels
//   3..8 bits: B = 64, int8 levels
// CUDA kernel layout: the pack_bits rows unchanged.
std::vector<torch::Tensor> prepack_weight(const torch::Tensor& packed_weight, int64_t bits, int64_t in_features);

// y = (s * q) (row_scale * level)^T + bias for float32 x (..., in_features), where q, s are the symmetric
// act_bits per-token codes and scales of x (exactly the fake quantizer's) and accumulation is in int32.
// Returns float32 (..., out_features).
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& kernel_weight, const torch::Tensor& row_sum,
                            const torch::Tensor& row_scale, const c10::optional<torch::Tensor>& bias, int64_t bits,
                            int64_t act_bits);

}  // namespace xtc
