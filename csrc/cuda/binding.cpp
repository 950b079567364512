// Torch binding of the CUDA kernels (module xtc_ds_cuda_ops): argument checks, workspace, current stream.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "quant_kernels.cuh"
#include "xtc_binding.h"

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
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == torch::kUInt8, "xtc ", what, ": expected a uint8 CUDA tensor");
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "xtc ", what, ": bits must be 1, 2, 4 or 8");
  const int64_t per_byte = 8 / bits;
  TORCH_CHECK(!packing || t.size(-1) % per_byte == 0, "xtc pack_bits: the last dimension must be a multiple of ",
              per_byte);
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
  TORCH_CHECK(x.is_cuda(), "xtc fake_quant: expected a CUDA tensor");
  TORCH_CHECK(bits >= 1 && bits <= 8, "xtc fake_quant: bits must be 1..8, got ", bits);
  TORCH_CHECK(num_groups >= 1 && x.numel() % num_groups == 0, "xtc fake_quant: cannot split ", x.numel(),
              " elements into ", num_groups, " equal groups");
  const c10::cuda::CUDAGuard guard(x.device());
  auto input = x.contiguous();
  auto out = out_arg.has_value() ? *out_arg : torch::empty_like(input);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == input.sizes() && out.scalar_type() == input.scalar_type() &&
                  out.device() == input.device(),
              "xtc fake_quant: out must be a contiguous tensor of the input's shape, dtype and device");
  auto workspace = torch::empty({cuda::fake_quant_workspace_size(num_groups)}, input.options().dtype(torch::kFloat64));
  check(cuda::fake_quant(input.data_ptr(), out.data_ptr(), dtype_of(input), input.numel(), num_groups,
                         static_cast<int>(bits), symmetric, workspace.data_ptr<double>(),
                         c10::cuda::getCurrentCUDAStream()),
        "fake_quant");
  return out;
}

torch::Tensor pack_bits(const torch::Tensor& codes, int64_t bits) { return packer(codes, bits, true); }
torch::Tensor unpack_bits(const torch::Tensor& packed, int64_t bits) { return packer(packed, bits, false); }

}  // namespace xtc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { xtc::define_ops(m); }
