// Torch binding of the CUDA kernels (module xtc_ds_cuda_ops): argument checks, workspace, current stream.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "quant_kernels.cuh"
#include "xtc_binding.h"
#include "xtc_checks.h"

namespace xtc {
namespace {

cuda::DType dtype_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return cuda::DType::kFloat32;
    case torch::kFloat16: return cuda::DType::kFloat16;
    case torch::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "xtc fake_quant: expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check(cudaError_t err, const char* what) { TORCH_CHECK(err == cudaSuccess, "xtc ", what, ": ", cudaGetErrorString(err)); }

torch::Tensor packer(const torch::Tensor& t, int64_t bits, bool packing) {
  const char* what = packing ? "pack_bits" : "unpack_bits";
  check_pack_args(t, bits, packing, c10::DeviceType::CUDA);
  const int64_t per_byte = 8 / bits;
  const c10::cuda::CUDAGuard guard(t.device());
  auto input = t.contiguous();
  auto sizes = input.sizes().vec();
  const int64_t row_codes = packing ? sizes.back() : sizes.back() * per_byte;
  sizes.back() = packing ? sizes.back() / per_byte : row_codes;
  auto out = torch::empty(sizes, input.options());
  const int64_t rows = input.numel() == 0 ? 0 : input.numel() / input.size(-1);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (packing) {
    check(cuda::pack_bits(input.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), rows, row_codes, bits, stream), what);
  } else {
    check(cuda::unpack_bits(input.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), rows, row_codes, bits, stream), what);
  }
  return out;
}

}  // namespace

torch::Tensor fake_quant(const torch::Tensor& x, int64_t bits, int64_t num_groups, bool symmetric,
                         const c10::optional<torch::Tensor>& out_arg) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto [input, out] = fake_quant_tensors(x, bits, num_groups, out_arg, c10::DeviceType::CUDA);
  auto workspace = torch::empty({cuda::fake_quant_workspace_size(num_groups)}, input.options().dtype(torch::kFloat64));
  check(cuda::fake_quant(input.data_ptr(), out.data_ptr(), dtype_of(input), input.numel(), num_groups,
                         static_cast<int>(bits), symmetric, workspace.data_ptr<double>(),
                         c10::cuda::getCurrentCUDAStream()),
        "fake_quant");
  return out;
}

std::vector<torch::Tensor> prepack_weight(const torch::Tensor& packed_weight, int64_t bits, int64_t in_features) {
  check_prepack_args(packed_weight, bits, in_features, c10::DeviceType::CUDA);
  const int64_t row_bytes = packed_weight.size(1);
  const c10::cuda::CUDAGuard guard(packed_weight.device());
  auto kernel_weight = packed_weight.contiguous();  // the CUDA kernel reads the stored rows directly
  auto row_sum = torch::empty({packed_weight.size(0)}, packed_weight.options().dtype(torch::kInt32));
  check(cuda::packed_row_sum(kernel_weight.data_ptr<uint8_t>(), row_sum.data_ptr<int32_t>(), packed_weight.size(0),
                             in_features, row_bytes, static_cast<int>(bits), c10::cuda::getCurrentCUDAStream()),
        "prepack_weight");
  return {kernel_weight, row_sum};
}

torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& kernel_weight, const torch::Tensor& row_sum,
                            const torch::Tensor& row_scale, const c10::optional<torch::Tensor>& bias, int64_t bits,
                            int64_t act_bits) {
  TORCH_CHECK(kernel_weight.is_cuda() && kernel_weight.scalar_type() == torch::kUInt8 && kernel_weight.dim() == 2,
              "xtc packed_linear: kernel_weight must come from prepack_weight");
  const int64_t k = x.size(-1), n = kernel_weight.size(0);
  TORCH_CHECK(k % kTileInputs == 0, "xtc packed_linear: in_features (", k, ") must be a multiple of ", kTileInputs);
  check_packed_linear_args(x, row_sum, row_scale, bias, bits, act_bits, k, n, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  auto input = x.reshape({-1, k}).contiguous();
  const int64_t m = input.size(0);
  auto out = torch::empty({m, n}, input.options());
  auto codes = torch::empty({m, k}, input.options().dtype(torch::kInt8));
  auto token_scale = torch::empty({m}, input.options());
  auto scales = row_scale.contiguous();
  auto bias_c = bias.has_value() ? bias->contiguous() : torch::Tensor();
  check(cuda::packed_linear(input.data_ptr<float>(), kernel_weight.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                            bias.has_value() ? bias_c.data_ptr<float>() : nullptr, out.data_ptr<float>(),
                            codes.data_ptr<int8_t>(), token_scale.data_ptr<float>(), m, n, k, kernel_weight.size(1),
                            static_cast<int>(bits), static_cast<int>(act_bits), c10::cuda::getCurrentCUDAStream()),
        "packed_linear");
  auto sizes = x.sizes().vec();
  sizes.back() = n;
  return out.reshape(sizes);
}

torch::Tensor pack_bits(const torch::Tensor& codes, int64_t bits) { return packer(codes, bits, true); }
torch::Tensor unpack_bits(const torch::Tensor& packed, int64_t bits) { return packer(packed, bits, false); }

}  // namespace xtc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { xtc::define_ops(m); }
