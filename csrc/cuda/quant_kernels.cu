// CUDA kernels for xtc_ops.h. Group statistics: each block reduces a strided chunk of one group in shared
// memory and merges it into per-group accumulators with atomics (double sums; min/max through an
// order-preserving integer mapping), so any group size works with any grid. Then one elementwise pass writes
// the result. fp16/bf16 are converted to float in registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>

#include "quant_kernels.cuh"

namespace xtc {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocksPerGroup = 1024;
constexpr float kTernaryThreshold = 0.7f;

int blocks_for(int64_t work) { return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 1 << 20)); }

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Monotone float <-> uint mapping so atomicMin/atomicMax on integers order floats correctly.
__device__ __forceinline__ unsigned long long ordered(float v) {
  const unsigned int bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float unordered(unsigned long long key) {
  const unsigned int bits = static_cast<unsigned int>(key);
  return __uint_as_float((bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits);
}

// Workspace per group g: [4g] sum, [4g+1] count, [4g+2] ordered min, [4g+3] ordered max (as doubles' bits).
__global__ void init_workspace(double* ws, int64_t groups) {
  for (int64_t g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    ws[4 * g] = 0.0;
    ws[4 * g + 1] = 0.0;
    reinterpret_cast<unsigned long long*>(ws)[4 * g + 2] = ordered(FLT_MAX);
    reinterpret_cast<unsigned long long*>(ws)[4 * g + 3] = ordered(-FLT_MAX);
  }
}

enum Pass { kAbsSum = 0, kAbove = 1, kMinMax = 2 };

// One block's share of one group's statistics, merged into that group's 4 workspace slots.
template <typename T>
__device__ void group_stats_one(const T* __restrict__ p, int64_t n, int pass, float t, double* __restrict__ slots) {
  double sum = 0.0, count = 0.0;
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = load(p, i);
    if (pass == kMinMax) {
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    } else {
      const float a = fabsf(v);
      const bool keep = pass == kAbsSum || a > t;
      sum += keep ? a : 0.f;
      count += keep ? 1.0 : 0.0;
    }
  }
  __shared__ double s_sum[kThreads], s_count[kThreads];
  __shared__ float s_lo[kThreads], s_hi[kThreads];
  s_sum[threadIdx.x] = sum;
  s_count[threadIdx.x] = count;
  s_lo[threadIdx.x] = lo;
  s_hi[threadIdx.x] = hi;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s_sum[threadIdx.x] += s_sum[threadIdx.x + stride];
      s_count[threadIdx.x] += s_count[threadIdx.x + stride];
      s_lo[threadIdx.x] = fminf(s_lo[threadIdx.x], s_lo[threadIdx.x + stride]);
      s_hi[threadIdx.x] = fmaxf(s_hi[threadIdx.x], s_hi[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (pass == kMinMax) {
      auto* keys = reinterpret_cast<unsigned long long*>(slots);
      atomicMin(keys + 2, ordered(s_lo[0]));
      atomicMax(keys + 3, ordered(s_hi[0]));
    } else {
      atomicAdd(slots, s_sum[0]);
      atomicAdd(slots + 1, s_count[0]);
    }
  }
  __syncthreads();  // the shared arrays are reused for the block's next group
}



// grid: (blocks per group, min(groups, 65535)), looping over groups in y. kAbove reads the threshold params[2g+1].
template <typename T>
__global__ void group_stats(const T* __restrict__ x, int64_t groups, int64_t n, int pass,
                            const float* __restrict__ params, double* __restrict__ ws) {
  for (int64_t g = blockIdx.y; g < groups; g += gridDim.y) {
    group_stats_one(x + g * n, n, pass, pass == kAbove ? params[2 * g + 1] : 0.f, ws + 4 * g);
  }
}
// Per-group parameters from the statistics; params[2g], params[2g+1] as the write pass reads them.
__global__ void group_params(const double* __restrict__ ws, int64_t groups, int64_t n, int bits, bool symmetric,
                             int stage, float* __restrict__ params) {
  for (int64_t g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    if (bits <= 2 && stage == 0) {  // mean |x|: binary scale, or the ternary threshold
      const float mean = static_cast<float>(ws[4 * g] / static_cast<double>(n));
      params[2 * g] = mean;
      params[2 * g + 1] = kTernaryThreshold * mean;
    } else if (bits == 2) {  // ternary scale: mean |x| above the threshold (sums were reset before this pass)
      params[2 * g] = static_cast<float>(ws[4 * g] / fmax(ws[4 * g + 1], 1.0));
    } else {
      const auto* keys = reinterpret_cast<const unsigned long long*>(ws);
      const float lo = unordered(keys[4 * g + 2]), hi = unordered(keys[4 * g + 3]);
      if (symmetric) {
        const float q_max = static_cast<float>((1 << (bits - 1)) - 1);
        params[2 * g] = fmaxf(fmaxf(-lo, hi) / q_max, FLT_MIN);
        params[2 * g + 1] = 0.f;
      } else {
        const float q_max = static_cast<float>((1 << bits) - 1);
        const float scale = fmaxf((fmaxf(hi, 0.f) - fminf(lo, 0.f)) / q_max, FLT_MIN);
        params[2 * g] = scale;
        params[2 * g + 1] = rintf(-fminf(lo, 0.f) / scale);
      }
    }
  }
}

template <typename T>
__global__ void write_quantized(const T* __restrict__ x, T* __restrict__ out, int64_t numel, int64_t n, int bits,
                                bool symmetric, const float* __restrict__ params) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t g = i / n;
    const float v = load(x, i), a = params[2 * g], b = params[2 * g + 1];
    float r;
    if (bits == 1) {
      r = v >= 0.f ? a : -a;
    } else if (bits == 2) {
      r = fabsf(v) > b ? (v > 0.f ? a : -a) : 0.f;
    } else if (symmetric) {
      const float q_max = static_cast<float>((1 << (bits - 1)) - 1);
      r = fminf(fmaxf(rintf(__fdiv_rn(v, a)), -q_max), q_max) * a;
    } else {
      const float q_max = static_cast<float>((1 << bits) - 1);
      r = (fminf(fmaxf(rintf(__fdiv_rn(v, a)) + b, 0.f), q_max) - b) * a;
    }
    store(out, i, r);
  }
}

template <typename T>
cudaError_t fake_quant_typed(const T* x, T* out, int64_t numel, int64_t groups, int bits, bool symmetric,
                             double* ws, cudaStream_t stream) {
  const int64_t n = numel / groups;
  double* stats = ws;                                    // 4 doubles per group
  float* params = reinterpret_cast<float*>(ws + 4 * groups);  // then 2 floats per group
  const int blocks_per_group = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocksPerGroup));
  const dim3 stats_grid(blocks_per_group, static_cast<unsigned int>(std::min<int64_t>(groups, 65535)));
  const int group_blocks = static_cast<int>(std::min<int64_t>((groups + kThreads - 1) / kThreads, 65535));
  init_workspace<<<group_blocks, kThreads, 0, stream>>>(stats, groups);
  if (bits <= 2) {
    group_stats<T><<<stats_grid, kThreads, 0, stream>>>(x, groups, n, kAbsSum, params, stats);
    group_params<<<group_blocks, kThreads, 0, stream>>>(stats, groups, n, bits, symmetric, 0, params);
    if (bits == 2) {
      init_workspace<<<group_blocks, kThreads, 0, stream>>>(stats, groups);
      group_stats<T><<<stats_grid, kThreads, 0, stream>>>(x, groups, n, kAbove, params, stats);
      group_params<<<group_blocks, kThreads, 0, stream>>>(stats, groups, n, bits, symmetric, 1, params);
    }
  } else {
    group_stats<T><<<stats_grid, kThreads, 0, stream>>>(x, groups, n, kMinMax, params, stats);
    group_params<<<group_blocks, kThreads, 0, stream>>>(stats, groups, n, bits, symmetric, 1, params);
  }
  write_quantized<T><<<blocks_for(numel), kThreads, 0, stream>>>(x, out, numel, n, bits, symmetric, params);
  return cudaGetLastError();
}

__global__ void pack_kernel(const uint8_t* __restrict__ codes, uint8_t* __restrict__ packed, int64_t bytes, int bits) {
  const int per_byte = 8 / bits;
  const uint8_t mask = static_cast<uint8_t>((1 << bits) - 1);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
    uint8_t byte = 0;
    for (int k = 0; k < per_byte; ++k) byte |= static_cast<uint8_t>((codes[i * per_byte + k] & mask) << (k * bits));
    packed[i] = byte;
  }
}

__global__ void unpack_kernel(const uint8_t* __restrict__ packed, uint8_t* __restrict__ codes, int64_t bytes,
                              int bits) {
  const int per_byte = 8 / bits;
  const uint8_t mask = static_cast<uint8_t>((1 << bits) - 1);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < bytes; i += (int64_t)gridDim.x * blockDim.x) {
    for (int k = 0; k < per_byte; ++k) codes[i * per_byte + k] = static_cast<uint8_t>((packed[i] >> (k * bits)) & mask);
  }
}

}  // namespace

cudaError_t fake_quant(const void* x, void* out, DType dtype, int64_t numel, int64_t groups, int bits, bool symmetric,
                       double* workspace, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32:
      return fake_quant_typed(static_cast<const float*>(x), static_cast<float*>(out), numel, groups, bits, symmetric,
                              workspace, stream);
    case DType::kFloat16:
      return fake_quant_typed(static_cast<const __half*>(x), static_cast<__half*>(out), numel, groups, bits,
                              symmetric, workspace, stream);
    case DType::kBFloat16:
      return fake_quant_typed(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(out), numel, groups,
                              bits, symmetric, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t pack_bits(const uint8_t* codes, uint8_t* packed, int64_t rows, int64_t row_codes, int bits,
                      cudaStream_t stream) {
  const int64_t bytes = rows * row_codes * bits / 8;
  if (bytes == 0) return cudaSuccess;
  pack_kernel<<<blocks_for(bytes), kThreads, 0, stream>>>(codes, packed, bytes, bits);
  return cudaGetLastError();
}

cudaError_t unpack_bits(const uint8_t* packed, uint8_t* codes, int64_t rows, int64_t row_codes, int bits,
                        cudaStream_t stream) {
  const int64_t bytes = rows * row_codes * bits / 8;
  if (bytes == 0) return cudaSuccess;
  unpack_kernel<<<blocks_for(bytes), kThreads, 0, stream>>>(packed, codes, bytes, bits);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace xtc
