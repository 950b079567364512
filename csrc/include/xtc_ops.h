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

}  // namespace xtc
