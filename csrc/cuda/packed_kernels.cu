// CUDA packed linear: per-token int8 activations x packed weight rows (pack_bits layout, used as stored),
// integer accumulation with dp4a (4 int8 products per instruction). Contract: ../include/xtc_ops.h.
//
// One 8 x 32 output tile per block; each K step stages 8 activation rows and 32 weight rows, the weight codes
// decoded to int8 levels in shared memory (never to float), then every thread accumulates its output.
#include <cfloat>

#include "quant_kernels.cuh"
#include "xtc_layout.h"

namespace xtc {
namespace cuda {
namespace {

constexpr int kTileM = 8;
constexpr int kTileN = 32;
constexpr int kTileK = 64;               // codes per K step
constexpr int kWords = kTileK / 4;       // int32 words of 4 int8 per row per step
constexpr int kQuantThreads = 256;

__device__ __forceinline__ int level_of(const uint8_t* row, int64_t k, int storage, int bits) {
  const int per_byte = 8 / storage;
  const int code = (row[k / per_byte] >> ((k % per_byte) * storage)) & ((1 << storage) - 1);
  if (bits == 1) return code ? 1 : -1;
  if (bits == 2) return code - 1;
  return code - (1 << (bits - 1));
}

__global__ void quantize_tokens_kernel(const float* __restrict__ x, int8_t* __restrict__ codes,
                                       float* __restrict__ scales, int64_t k, float q_max) {
  const int64_t row = blockIdx.x;
  const float* in = x + row * k;
  __shared__ float partial[kQuantThreads];
  float amax = 0.0f;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) amax = fmaxf(amax, fabsf(in[i]));
  partial[threadIdx.x] = amax;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  const float scale = fmaxf(partial[0] / q_max, FLT_MIN);  // IEEE division, as the reference
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const float q = fminf(fmaxf(rintf(in[i] / scale), -q_max), q_max);
    codes[row * k + i] = static_cast<int8_t>(q);
  }
  if (threadIdx.x == 0) scales[row] = scale;
}

__global__ void row_sum_kernel(const uint8_t* __restrict__ packed, int32_t* __restrict__ sums, int64_t n,
                               int64_t k, int64_t row_bytes, int storage, int bits) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= n) return;
  int32_t sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += level_of(packed + row * row_bytes, i, storage, bits);
  sums[row] = sum;
}

__global__ void packed_linear_kernel(const int8_t* __restrict__ codes, const float* __restrict__ token_scale,
                                     const uint8_t* __restrict__ packed, const float* __restrict__ row_scale,
                                     const float* __restrict__ bias, float* __restrict__ out, int64_t m, int64_t n,
                                     int64_t k, int64_t row_bytes, int storage, int bits) {
  __shared__ int32_t a_tile[kTileM][kWords + 1];
  __shared__ int32_t w_tile[kTileN][kWords + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTileN + tx;
  const int64_t m0 = blockIdx.y * static_cast<int64_t>(kTileM), n0 = blockIdx.x * static_cast<int64_t>(kTileN);
  int32_t acc = 0;
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    for (int idx = tid; idx < kTileM * kWords; idx += kTileM * kTileN) {
      const int r = idx / kWords, word = idx % kWords;
      const int64_t row = m0 + r, col = k0 + 4 * word;
      int32_t value = 0;
      if (row < m && col < k) value = *reinterpret_cast<const int32_t*>(codes + row * k + col);  // k % 4 == 0
      a_tile[r][word] = value;
    }
    for (int idx = tid; idx < kTileN * kWords; idx += kTileM * kTileN) {
      const int r = idx / kWords, word = idx % kWords;
      const int64_t row = n0 + r, col = k0 + 4 * word;
      uint32_t value = 0;
      if (row < n && col < k) {
        const uint8_t* src = packed + row * row_bytes;
        for (int j = 0; j < 4; ++j)
          value |= static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(level_of(src, col + j, storage, bits))))
                   << (8 * j);
      }
      w_tile[r][word] = static_cast<int32_t>(value);
    }
    __syncthreads();
#pragma unroll
    for (int word = 0; word < kWords; ++word) acc = __dp4a(a_tile[ty][word], w_tile[tx][word], acc);
    __syncthreads();
  }
  const int64_t row = m0 + ty, col = n0 + tx;
  if (row < m && col < n) {
    const float value = static_cast<float>(acc) * (token_scale[row] * row_scale[col]);
    out[row * n + col] = bias ? value + bias[col] : value;
  }
}

}  // namespace

cudaError_t packed_row_sum(const uint8_t* packed, int32_t* row_sum, int64_t n, int64_t k, int64_t row_bytes, int bits,
                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 128;
  row_sum_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      packed, row_sum, n, k, row_bytes, static_cast<int>(storage_bits(bits)), bits);
  return cudaGetLastError();
}

cudaError_t packed_linear(const float* x, const uint8_t* packed, const float* row_scale, const float* bias, float* out,
                          int8_t* codes, float* token_scale, int64_t m, int64_t n, int64_t k, int64_t row_bytes,
                          int bits, int act_bits, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const float q_max = static_cast<float>((1 << (act_bits - 1)) - 1);
  quantize_tokens_kernel<<<static_cast<unsigned>(m), kQuantThreads, 0, stream>>>(x, codes, token_scale, k, q_max);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 block(kTileN, kTileM);
  const dim3 grid(static_cast<unsigned>((n + kTileN - 1) / kTileN), static_cast<unsigned>((m + kTileM - 1) / kTileM));
  packed_linear_kernel<<<grid, block, 0, stream>>>(codes, token_scale, packed, row_scale, bias, out, m, n, k, row_bytes,
                                                   static_cast<int>(storage_bits(bits)), bits);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace xtc
