// CPU kernels for the contracts in xtc_ops.h: two passes over memory (group statistics, then the write),
// parallel over groups or, for few large groups, over chunks of a group; inner loops are `omp simd`.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "xtc_checks.h"
#include "xtc_ops.h"

namespace xtc {
namespace {

constexpr float kTiny = std::numeric_limits<float>::min();  // torch.finfo(torch.float32).tiny
constexpr float kTernaryThreshold = 0.7f;
constexpr int64_t kGrain = 1 << 15;

// Plain selects (not std::min/std::max, which return references) so the loops below vectorize.
inline float clamp(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

struct Stats {
  double sum = 0.0;  // of |x|, or of |x| above the threshold
  double count = 0.0;
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();

  Stats merge(const Stats& o) const {
    return {sum + o.sum, count + o.count, std::min(lo, o.lo), std::max(hi, o.hi)};
  }
};

enum class Pass { kAbsSum, kAbove, kMinMax };

template <typename T>
Stats segment_stats(const T* p, int64_t n, Pass pass, float threshold) {
  Stats s;
  if (pass == Pass::kMinMax) {
    float lo = s.lo, hi = s.hi;
#pragma omp simd reduction(min : lo) reduction(max : hi)
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(p[i]);
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    s.lo = lo;
    s.hi = hi;
  } else if (pass == Pass::kAbsSum) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += std::fabs(static_cast<float>(p[i]));
    s.sum = sum;
  } else {
    double sum = 0.0, count = 0.0;  // a double count keeps the loop in one vector type
#pragma omp simd reduction(+ : sum, count)
    for (int64_t i = 0; i < n; ++i) {
      const float a = std::fabs(static_cast<float>(p[i]));
      const bool keep = a > threshold;
      sum += keep ? a : 0.0f;
      count += keep ? 1.0 : 0.0;
    }
    s.sum = sum;
    s.count = count;
  }
  return s;
}

// Statistics of every group; `threshold[g]` is read by Pass::kAbove.
template <typename T>
std::vector<Stats> group_stats(const T* x, int64_t groups, int64_t n, Pass pass, const std::vector<float>& threshold) {
  std::vector<Stats> out(groups);
  if (groups >= at::get_num_threads()) {
    at::parallel_for(0, groups, std::max<int64_t>(1, kGrain / n), [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) out[g] = segment_stats(x + g * n, n, pass, pass == Pass::kAbove ? threshold[g] : 0.f);
    });
    return out;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const T* p = x + g * n;
    const float t = pass == Pass::kAbove ? threshold[g] : 0.f;
    out[g] = at::parallel_reduce(
        0, n, kGrain, Stats{},
        [&](int64_t b, int64_t e, Stats acc) { return acc.merge(segment_stats(p + b, e - b, pass, t)); },
        [](const Stats& a, const Stats& b) { return a.merge(b); });
  }
  return out;
}

// Calls body(g, begin, end) for every contiguous run of one group, in parallel chunks.
template <typename F>
void for_each_segment(int64_t numel, int64_t n, F body) {
  at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t g = b / n; g * n < e; ++g) body(g, std::max(b, g * n), std::min(e, (g + 1) * n));
  });
}

template <typename T>
void fake_quant_impl(const T* x, T* out, int64_t numel, int64_t groups, int64_t bits, bool symmetric) {
  const int64_t n = numel / groups;
  const std::vector<float> none;
  if (bits <= 2) {
    const auto abs_sum = group_stats(x, groups, n, Pass::kAbsSum, none);
    std::vector<float> alpha(groups), threshold(groups);
    for (int64_t g = 0; g < groups; ++g) {
      const float mean = static_cast<float>(abs_sum[g].sum / static_cast<double>(n));
      alpha[g] = mean;
      threshold[g] = kTernaryThreshold * mean;
    }
    if (bits == 1) {
      for_each_segment(numel, n, [&](int64_t g, int64_t b, int64_t e) {
        const float a = alpha[g];
#pragma omp simd
        for (int64_t i = b; i < e; ++i) out[i] = static_cast<T>(static_cast<float>(x[i]) >= 0.f ? a : -a);
      });
      return;
    }
    const auto above = group_stats(x, groups, n, Pass::kAbove, threshold);
    for (int64_t g = 0; g < groups; ++g) {
      alpha[g] = static_cast<float>(above[g].sum / std::max(above[g].count, 1.0));
    }
    for_each_segment(numel, n, [&](int64_t g, int64_t b, int64_t e) {
      const float a = alpha[g], t = threshold[g];
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        const float v = static_cast<float>(x[i]);
        out[i] = static_cast<T>(std::fabs(v) > t ? (v > 0.f ? a : -a) : 0.f);
      }
    });
    return;
  }
  const auto range = group_stats(x, groups, n, Pass::kMinMax, none);
  if (symmetric) {
    const float q_max = static_cast<float>((1 << (bits - 1)) - 1);
    for_each_segment(numel, n, [&](int64_t g, int64_t b, int64_t e) {
      const float scale = std::max(std::max(-range[g].lo, range[g].hi) / q_max, kTiny);
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        out[i] = static_cast<T>(clamp(std::rint(static_cast<float>(x[i]) / scale), -q_max, q_max) * scale);
      }
    });
    return;
  }
  const float q_max = static_cast<float>((1 << bits) - 1);
  for_each_segment(numel, n, [&](int64_t g, int64_t b, int64_t e) {
    const float lo = std::min(range[g].lo, 0.f), hi = std::max(range[g].hi, 0.f);
    const float scale = std::max((hi - lo) / q_max, kTiny);
    const float zero_point = std::rint(-lo / scale);
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float code = clamp(std::rint(static_cast<float>(x[i]) / scale) + zero_point, 0.f, q_max);
      out[i] = static_cast<T>((code - zero_point) * scale);
    }
  });
}

}  // namespace

torch::Tensor fake_quant(const torch::Tensor& x, int64_t bits, int64_t num_groups, bool symmetric,
                         const c10::optional<torch::Tensor>& out_arg) {
  auto [input, out] = fake_quant_tensors(x, bits, num_groups, out_arg, c10::DeviceType::CPU);
  if (input.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "xtc_fake_quant", [&] {
    fake_quant_impl<scalar_t>(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), input.numel(), num_groups, bits,
                              symmetric);
  });
  return out;
}

torch::Tensor pack_bits(const torch::Tensor& codes, int64_t bits) {
  check_pack_args(codes, bits, true, c10::DeviceType::CPU);
  const int64_t per_byte = 8 / bits, n = codes.size(-1);
  auto input = codes.contiguous();
  auto sizes = input.sizes().vec();
  sizes.back() = n / per_byte;
  auto out = torch::empty(sizes, input.options());
  const uint8_t* src = input.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const uint8_t mask = static_cast<uint8_t>((1 << bits) - 1);
  at::parallel_for(0, out.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint8_t byte = 0;
      for (int64_t k = 0; k < per_byte; ++k) byte |= static_cast<uint8_t>((src[i * per_byte + k] & mask) << (k * bits));
      dst[i] = byte;
    }
  });
  return out;
}

torch::Tensor unpack_bits(const torch::Tensor& packed, int64_t bits) {
  check_pack_args(packed, bits, false, c10::DeviceType::CPU);
  const int64_t per_byte = 8 / bits;
  auto input = packed.contiguous();
  auto sizes = input.sizes().vec();
  sizes.back() *= per_byte;
  auto out = torch::empty(sizes, input.options());
  const uint8_t* src = input.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const uint8_t mask = static_cast<uint8_t>((1 << bits) - 1);
  at::parallel_for(0, input.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      for (int64_t k = 0; k < per_byte; ++k) dst[i * per_byte + k] = static_cast<uint8_t>((src[i] >> (k * bits)) & mask);
    }
  });
  return out;
}

}  // namespace xtc
