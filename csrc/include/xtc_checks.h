// Argument checks shared by the CPU and CUDA bindings: the same contract, the same messages, on either device.
#pragma once

#include <torch/extension.h>

#include <utility>

#include "xtc_layout.h"

namespace xtc {

inline const char* device_name(c10::DeviceType device) { return device == c10::DeviceType::CUDA ? "CUDA" : "CPU"; }

// fake_quant: returns {contiguous input, output tensor} after checking bits, groups and `out`.
inline std::pair<torch::Tensor, torch::Tensor> fake_quant_tensors(const torch::Tensor& x, int64_t bits,
                                                                  int64_t num_groups,
                                                                  const c10::optional<torch::Tensor>& out_arg,
                                                                  c10::DeviceType device) {
  TORCH_CHECK(x.device().type() == device, "xtc fake_quant: expected a ", device_name(device), " tensor");
  TORCH_CHECK(bits >= 1 && bits <= 8, "xtc fake_quant: bits must be 1..8, got ", bits);
  TORCH_CHECK(num_groups >= 1 && x.numel() % num_groups == 0, "xtc fake_quant: cannot split ", x.numel(),
              " elements into ", num_groups, " equal groups");
  auto input = x.contiguous();
  auto out = out_arg.has_value() ? *out_arg : torch::empty_like(input);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == input.sizes() && out.scalar_type() == input.scalar_type() &&
                  out.device() == input.device(),
              "xtc fake_quant: out must be a contiguous tensor of the input's shape, dtype and device");
  return {input, out};
}

// pack_bits (packing) and unpack_bits.
inline void check_pack_args(const torch::Tensor& t, int64_t bits, bool packing, c10::DeviceType device) {
  const char* what = packing ? "pack_bits" : "unpack_bits";
  TORCH_CHECK(t.device().type() == device, "xtc ", what, ": expected a ", device_name(device), " tensor");
  TORCH_CHECK(t.scalar_type() == torch::kUInt8, "xtc ", what, ": expected uint8, got ", t.scalar_type());
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "xtc ", what, ": bits must be 1, 2, 4 or 8, got ", bits);
  TORCH_CHECK(t.dim() >= 1, "xtc ", what, ": expected at least one dimension");
  TORCH_CHECK(!packing || t.size(-1) % (8 / bits) == 0, "xtc pack_bits: the last dimension (", t.size(-1),
              ") must be a multiple of ", 8 / bits);
}

// prepack_weight: packed rows of `in_features` codes (the CPU layout also needs whole kTileRows tiles).
inline void check_prepack_args(const torch::Tensor& packed_weight, int64_t bits, int64_t in_features,
                               c10::DeviceType device) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "xtc prepack_weight: bits must be 1..8, got ", bits);
  TORCH_CHECK(packed_weight.device().type() == device && packed_weight.scalar_type() == torch::kUInt8 &&
                  packed_weight.dim() == 2,
              "xtc prepack_weight: expected a 2-D uint8 ", device_name(device), " tensor (out_features, packed bytes)");
  TORCH_CHECK(in_features > 0 && in_features % kTileInputs == 0, "xtc prepack_weight: in_features (", in_features,
              ") must be a positive multiple of ", kTileInputs);
  const int64_t sb = storage_bits(bits), row_bytes = packed_weight.size(1);
  TORCH_CHECK(row_bytes * 8 >= in_features * sb && (row_bytes - 1) * 8 < in_features * sb, "xtc prepack_weight: ",
              row_bytes, " bytes per row do not hold ", in_features, " codes of ", sb, " bits");
}

// packed_linear: float32 x (..., in_features) against `out_features` prepacked rows.
inline void check_packed_linear_args(const torch::Tensor& x, const torch::Tensor& row_sum,
                                     const torch::Tensor& row_scale, const c10::optional<torch::Tensor>& bias,
                                     int64_t bits, int64_t act_bits, int64_t in_features, int64_t out_features,
                                     c10::DeviceType device) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "xtc packed_linear: bits must be 1..8, got ", bits);
  TORCH_CHECK(act_bits >= 2 && act_bits <= 8, "xtc packed_linear: act_bits must be 2..8, got ", act_bits);
  TORCH_CHECK(x.device().type() == device && x.scalar_type() == torch::kFloat32, "xtc packed_linear: x must be float32 on ",
              device_name(device));
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "xtc packed_linear: x has ", x.size(-1),
              " features, the weight ", in_features);
  TORCH_CHECK(row_sum.scalar_type() == torch::kInt32 && row_sum.numel() == out_features,
              "xtc packed_linear: row_sum must be int32 (", out_features, ",)");
  TORCH_CHECK(row_scale.scalar_type() == torch::kFloat32 && row_scale.numel() == out_features &&
                  row_scale.device() == x.device(),
              "xtc packed_linear: row_scale must be float32 (", out_features, ",) on the input's device");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->numel() == out_features && bias->device() == x.device(),
                "xtc packed_linear: bias must be float32 (", out_features, ",) on the input's device");
}

}  // namespace xtc
