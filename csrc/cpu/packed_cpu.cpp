// Packed W1/W2/W8 x A8 linear on CPU: integer accumulation against the packed weight, never a float weight.
//
// prepack_weight rewrites the on-disk rows (pack_bits layout) into the kernel layout documented in xtc_ops.h,
// once per module. packed_linear quantizes the activations per token exactly as the fake quantizer does
// (symmetric, ties to even, the same float division), then computes u8 x s8 dot products: with AVX512-VNNI,
// one vpdpbusd per 4 inputs x 16 outputs, the 1-bit weights expanded from a 64-bit mask by one vpmovm2b; with
// AVX2, the same per 8 outputs with vpdpbusd in its VEX form (AVX-VNNI) or vpmaddubsw + vpmaddwd.
// Activation codes are stored as q + 128 (unsigned); the 128 * sum(w) term is removed with the row sums.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define XTC_VNNI 1
#elif defined(__AVX2__)
#include <immintrin.h>
#define XTC_AVX2 1
#endif

#include "xtc_checks.h"
#include "xtc_ops.h"

namespace xtc {
namespace {

constexpr int kTileTokens = 8;
constexpr int64_t kChunkTokens = 256;  // token rows whose int8 codes (256 x in_features) stay in L2
constexpr float kTiny = std::numeric_limits<float>::min();

inline int level(uint8_t code, int64_t bits) {
  if (bits == 1) return code ? 1 : -1;
  if (bits == 2) return static_cast<int>(code) - 1;
  return static_cast<int>(code) - (1 << (bits - 1));
}

inline uint8_t code_at(const uint8_t* row, int64_t k, int64_t sb) {
  const int64_t per_byte = 8 / sb;
  return static_cast<uint8_t>((row[k / per_byte] >> ((k % per_byte) * sb)) & ((1 << sb) - 1));
}

void check_kernel_weight(const torch::Tensor& kernel_weight, int64_t bits) {
  TORCH_CHECK(kernel_weight.device().is_cpu() && kernel_weight.scalar_type() == torch::kUInt8 &&
                  kernel_weight.dim() == 3 && kernel_weight.size(2) == block_bytes(bits) && kernel_weight.is_contiguous(),
              "xtc packed_linear: kernel_weight must come from prepack_weight with the same bits");
}

// Codes of one token: clamp(round_half_even(x / scale)) + 128, the same float division as the fake quantizer.
inline void quantize_row(const float* row, int64_t k, float scale, float q_max, uint8_t* out) {
  int64_t i = 0;
#ifdef XTC_VNNI
  const __m512 s = _mm512_set1_ps(scale), hi = _mm512_set1_ps(q_max), lo = _mm512_set1_ps(-q_max);
  const __m512i offset = _mm512_set1_epi32(128);
  for (; i + 16 <= k; i += 16) {
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(row + i), s),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(q), offset)));
  }
#elif defined(XTC_AVX2)
  const __m256 s = _mm256_set1_ps(scale), hi = _mm256_set1_ps(q_max), lo = _mm256_set1_ps(-q_max);
  const __m256i offset = _mm256_set1_epi32(128);
  for (; i + 8 <= k; i += 8) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(row + i), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
    const __m256i codes = _mm256_add_epi32(_mm256_cvtps_epi32(q), offset);
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(words, words));
  }
#endif
  for (; i < k; ++i) {
    float q = std::nearbyint(row[i] / scale);
    q = q < -q_max ? -q_max : q;
    q = q > q_max ? q_max : q;
    out[i] = static_cast<uint8_t>(static_cast<int>(q) + 128);
  }
}

// Per-token symmetric quantization, identical to reference.fake_quant_symmetric: codes + 128 and scales.
void quantize_tokens(const float* x, int64_t m, int64_t k, int64_t act_bits, uint8_t* codes, float* scales) {
  const float q_max = static_cast<float>((1 << (act_bits - 1)) - 1);
  at::parallel_for(0, m, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = x + t * k;
      float lo = std::numeric_limits<float>::infinity(), hi = -lo;
#pragma omp simd reduction(min : lo) reduction(max : hi)
      for (int64_t i = 0; i < k; ++i) {
        lo = row[i] < lo ? row[i] : lo;
        hi = row[i] > hi ? row[i] : hi;
      }
      scales[t] = std::max(std::max(-lo, hi) / q_max, kTiny);
      quantize_row(row, k, scales[t], q_max, codes + t * k);
    }
  });
}

#ifdef XTC_VNNI
// acc += u8 a . s8 b in place. Through the intrinsic, GCC copies every accumulator to a scratch register and
// back around each vpdpbusd (two extra moves per product); the asm keeps the accumulators where they are.
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

template <int Bits>
inline __m512i decode_block(const uint8_t* block) {
  if constexpr (Bits == 1) {
    uint64_t bits;
    std::memcpy(&bits, block, 8);
    return _mm512_or_si512(_mm512_movm_epi8(~bits), _mm512_set1_epi8(1));
  } else if constexpr (Bits == 2) {
    uint64_t nonzero, negative;
    std::memcpy(&nonzero, block, 8);
    std::memcpy(&negative, block + 8, 8);
    const __m512i v = _mm512_maskz_mov_epi8(nonzero, _mm512_set1_epi8(1));
    return _mm512_mask_mov_epi8(v, negative, _mm512_set1_epi8(-1));
  } else {
    return _mm512_loadu_si512(block);
  }
}

inline __m512i broadcast4(const uint8_t* p) {
  int32_t four;
  std::memcpy(&four, p, 4);
  return _mm512_set1_epi32(four);
}

// acc[MR tokens][NT tiles x 16 outputs] = sum over k of codes[token][k] * level[output][k]. Named accumulators
// (no arrays) so that all 2 * MR stay in registers across the loop.
template <int Bits, int MR, int NT>
void micro_kernel(const uint8_t* codes, int64_t k, const uint8_t* const* tiles, int64_t quads, int32_t* acc_out,
                  int64_t acc_stride) {
  static_assert(MR == 1 || MR == 8, "token blocks of 8, and single tokens for the tail");
  const __m512i zero = _mm512_setzero_si512();
  __m512i c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero, c30 = zero, c31 = zero;
  __m512i c40 = zero, c41 = zero, c50 = zero, c51 = zero, c60 = zero, c61 = zero, c70 = zero, c71 = zero;
  const uint8_t* r[8];
  for (int m = 0; m < MR; ++m) r[m] = codes + m * k;
  for (int64_t q = 0; q < quads; ++q) {
    const __m512i w0 = decode_block<Bits>(tiles[0] + q * block_bytes(Bits));
    const __m512i w1 = NT == 2 ? decode_block<Bits>(tiles[1] + q * block_bytes(Bits)) : w0;
#define XTC_ROW(m)                            \
  {                                           \
    const __m512i a = broadcast4(r[m] + 4 * q); \
    dpbusd(c##m##0, a, w0);                   \
    if (NT == 2) dpbusd(c##m##1, a, w1);      \
  }
    XTC_ROW(0)
    if constexpr (MR == 8) {
      XTC_ROW(1) XTC_ROW(2) XTC_ROW(3) XTC_ROW(4) XTC_ROW(5) XTC_ROW(6) XTC_ROW(7)
    }
#undef XTC_ROW
  }
  const __m512i results[8][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                                 {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
  for (int m = 0; m < MR; ++m)
    for (int t = 0; t < NT; ++t) _mm512_storeu_si512(acc_out + m * acc_stride + t * kTileRows, results[m][t]);
}

template <int Bits, int NT>
void tile_rows(const uint8_t* codes, int64_t m, int64_t k, const uint8_t* const* tiles, int32_t* acc, int64_t stride) {
  const int64_t quads = k / 4;
  int64_t t0 = 0;
  for (; t0 + kTileTokens <= m; t0 += kTileTokens)
    micro_kernel<Bits, kTileTokens, NT>(codes + t0 * k, k, tiles, quads, acc + t0 * stride, stride);
  for (; t0 < m; ++t0) micro_kernel<Bits, 1, NT>(codes + t0 * k, k, tiles, quads, acc + t0 * stride, stride);
}

// Expands 1/2-bit tiles to int8 once into `scratch` (2 tiles x quads x 64 bytes) when more than one token block
// will read them: the inner loop then feeds vpdpbusd straight from memory instead of decoding per block.
template <int Bits>
void accumulate(const uint8_t* codes, int64_t m, int64_t k, const uint8_t* const* tiles, int nt, int32_t* acc,
                int64_t stride, uint8_t* scratch) {
  const int64_t quads = k / 4;
  if constexpr (Bits != 8) {
    if (m > kTileTokens) {
      const uint8_t* expanded[2] = {scratch, scratch + quads * 64};
      for (int t = 0; t < nt; ++t)
        for (int64_t q = 0; q < quads; ++q)
          _mm512_storeu_si512(scratch + (t * quads + q) * 64, decode_block<Bits>(tiles[t] + q * block_bytes(Bits)));
      if (nt == 2)
        tile_rows<8, 2>(codes, m, k, expanded, acc, stride);
      else
        tile_rows<8, 1>(codes, m, k, expanded, acc, stride);
      return;
    }
  }
  if (nt == 2)
    tile_rows<Bits, 2>(codes, m, k, tiles, acc, stride);
  else
    tile_rows<Bits, 1>(codes, m, k, tiles, acc, stride);
}
#endif

#ifdef XTC_AVX2
constexpr int kTokensAvx2 = 4;  // tokens per micro-kernel: 4 x 2 accumulators, 2 weight vectors, a broadcast
constexpr int64_t kFlushQuads = 32;  // int16 partial sums of 1/2-bit products: 32 quads x 2 x 255 < 32767

// Bytes of `mask` as 32 bytes, 0xFF where bit i of the mask is set (byte i): AVX2 has no vpmovm2b.
inline __m256i bit_bytes(uint32_t mask) {
  const __m256i select = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(mask)), select);
  return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

// Half h (rows 8h..8h+7, 4 inputs each) of a kernel-layout block as int8 levels.
template <int Bits>
inline __m256i decode_half(const uint8_t* block, int h) {
  if constexpr (Bits == 8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 32 * h));
  } else {
    uint32_t first;
    std::memcpy(&first, block + 4 * h, 4);
    const __m256i set = bit_bytes(first);
    const __m256i one = _mm256_set1_epi8(1);
    if constexpr (Bits == 1) return _mm256_sub_epi8(_mm256_and_si256(set, _mm256_set1_epi8(2)), one);
    uint32_t negative;
    std::memcpy(&negative, block + 8 + 4 * h, 4);
    return _mm256_and_si256(set, _mm256_or_si256(bit_bytes(negative), one));
  }
}

// part += vpmaddubsw(a, w). The asm add keeps each partial sum in its register: through the intrinsic, GCC adds
// into a scratch register and moves it back (one extra move per product), as around vpdpbusd above.
inline void maddubs_add(__m256i& part, __m256i a, __m256i w) {
  const __m256i product = _mm256_maddubs_epi16(a, w);
  asm("vpaddw %1, %0, %0" : "+x"(part) : "x"(product));
}

inline __m256i broadcast4_256(const uint8_t* p) {
  int32_t four;
  std::memcpy(&four, p, 4);
  return _mm256_set1_epi32(four);
}

// acc[MR tokens][16 outputs of one tile] = sum over k of codes[token][k] * level[output][k]. With AVX-VNNI one
// vpdpbusd per 4 inputs x 8 outputs; without it vpmaddubsw into int16 partial sums (exact: |level| <= 1, so a
// pair is at most 510), widened with vpmaddwd every kFlushQuads quads.
template <int Bits, int MR>
void micro_kernel_avx2(const uint8_t* codes, int64_t k, const uint8_t* tile, int64_t quads, int32_t* acc_out,
                       int64_t acc_stride) {
  static_assert(MR == 1 || MR == kTokensAvx2, "token blocks of 4, and single tokens for the tail");
  const uint8_t* r[kTokensAvx2];
  for (int m = 0; m < MR; ++m) r[m] = codes + m * k;
#ifdef __AVXVNNI__
  __m256i total[kTokensAvx2][2];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) total[m][0] = total[m][1] = _mm256_setzero_si256();
  for (int64_t q = 0; q < quads; ++q) {
    const uint8_t* block = tile + q * block_bytes(Bits);
    const __m256i w0 = decode_half<Bits>(block, 0), w1 = decode_half<Bits>(block, 1);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m256i a = broadcast4_256(r[m] + 4 * q);
      total[m][0] = _mm256_dpbusd_avx_epi32(total[m][0], a, w0);
      total[m][1] = _mm256_dpbusd_avx_epi32(total[m][1], a, w1);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_out + m * acc_stride), total[m][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_out + m * acc_stride + 8), total[m][1]);
  }
#else
  // Named partial sums (no arrays, which GCC keeps in memory around the asm adds); the int32 totals live in
  // acc_out, touched once per flush, so the 8 partial sums, 2 weight vectors and the broadcast fit 16 registers.
  const __m256i ones = _mm256_set1_epi16(1);
  for (int m = 0; m < MR; ++m) std::fill(acc_out + m * acc_stride, acc_out + m * acc_stride + kTileRows, 0);
  for (int64_t q0 = 0; q0 < quads; q0 += kFlushQuads) {
    const int64_t q1 = std::min(quads, q0 + kFlushQuads);
    const __m256i zero = _mm256_setzero_si256();
    __m256i p00 = zero, p01 = zero, p10 = zero, p11 = zero, p20 = zero, p21 = zero, p30 = zero, p31 = zero;
    for (int64_t q = q0; q < q1; ++q) {
      const uint8_t* block = tile + q * block_bytes(Bits);
      const __m256i w0 = decode_half<Bits>(block, 0), w1 = decode_half<Bits>(block, 1);
#define XTC_ROW(m)                                  \
  {                                                 \
    const __m256i a = broadcast4_256(r[m] + 4 * q); \
    maddubs_add(p##m##0, a, w0);                    \
    maddubs_add(p##m##1, a, w1);                    \
  }
      XTC_ROW(0)
      if constexpr (MR == 4) {
        XTC_ROW(1) XTC_ROW(2) XTC_ROW(3)
      }
#undef XTC_ROW
    }
    const __m256i parts[4][2] = {{p00, p01}, {p10, p11}, {p20, p21}, {p30, p31}};
    for (int m = 0; m < MR; ++m) {
      for (int h = 0; h < 2; ++h) {
        __m256i* total = reinterpret_cast<__m256i*>(acc_out + m * acc_stride + 8 * h);
        _mm256_storeu_si256(total, _mm256_add_epi32(_mm256_loadu_si256(total), _mm256_madd_epi16(parts[m][h], ones)));
      }
    }
  }
#endif
}

template <int Bits>
void tile_rows_avx2(const uint8_t* codes, int64_t m, int64_t k, const uint8_t* tile, int32_t* acc, int64_t stride) {
  const int64_t quads = k / 4;
  int64_t t0 = 0;
  for (; t0 + kTokensAvx2 <= m; t0 += kTokensAvx2)
    micro_kernel_avx2<Bits, kTokensAvx2>(codes + t0 * k, k, tile, quads, acc + t0 * stride, stride);
  for (; t0 < m; ++t0) micro_kernel_avx2<Bits, 1>(codes + t0 * k, k, tile, quads, acc + t0 * stride, stride);
}

// One tile of 1/2-bit weights. Expands it to int8 levels once into `scratch` (quads x 64 bytes) when more than
// one token block will read it, so the inner loop loads levels instead of decoding them per block.
template <int Bits>
void accumulate_avx2(const uint8_t* codes, int64_t m, int64_t k, const uint8_t* tile, int32_t* acc, int64_t stride,
                     uint8_t* scratch) {
  static_assert(Bits == 1 || Bits == 2, "levels above +-1 would saturate vpmaddubsw: 3..8-bit weights go elsewhere");
  if (m <= kTokensAvx2) return tile_rows_avx2<Bits>(codes, m, k, tile, acc, stride);
  for (int64_t q = 0; q < k / 4; ++q)
    for (int h = 0; h < 2; ++h)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(scratch + q * 64 + 32 * h),
                          decode_half<Bits>(tile + q * block_bytes(Bits), h));
  tile_rows_avx2<8>(codes, m, k, scratch, acc, stride);
}
#endif

// Portable path: expand one tile to int8 rows, then plain dot products (auto-vectorized).
void accumulate_portable(const uint8_t* codes, int64_t m, int64_t k, const uint8_t* tile, int64_t bits, int32_t* acc,
                         int64_t stride) {
  std::vector<int8_t> rows(kTileRows * k);
  const int64_t bb = block_bytes(bits);
  for (int64_t q = 0; q < k / 4; ++q) {
    const uint8_t* block = tile + q * bb;
    uint64_t bits_a = 0, bits_b = 0;
    if (bits <= 2) std::memcpy(&bits_a, block, 8);
    if (bits == 2) std::memcpy(&bits_b, block + 8, 8);
    for (int64_t r = 0; r < kTileRows; ++r) {
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t bit = 4 * r + j;
        int v;
        if (bits == 1)
          v = ((bits_a >> bit) & 1) ? 1 : -1;
        else if (bits == 2)
          v = ((bits_a >> bit) & 1) ? (((bits_b >> bit) & 1) ? -1 : 1) : 0;
        else
          v = static_cast<int8_t>(block[bit]);
        rows[r * k + 4 * q + j] = static_cast<int8_t>(v);
      }
    }
  }
  for (int64_t t = 0; t < m; ++t) {
    const uint8_t* a = codes + t * k;
    for (int64_t r = 0; r < kTileRows; ++r) {
      const int8_t* w = rows.data() + r * k;
      int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < k; ++i) sum += static_cast<int32_t>(a[i]) * static_cast<int32_t>(w[i]);
      acc[t * stride + r] = sum;
    }
  }
}

}  // namespace

std::vector<torch::Tensor> prepack_weight(const torch::Tensor& packed_weight, int64_t bits, int64_t in_features) {
  check_prepack_args(packed_weight, bits, in_features, c10::DeviceType::CPU);
  const int64_t sb = storage_bits(bits), n = packed_weight.size(0), k = in_features;
  const int64_t row_bytes = packed_weight.size(1);
  TORCH_CHECK(n % kTileRows == 0, "xtc prepack_weight: out_features (", n, ") must be a multiple of ", kTileRows);
  auto src_tensor = packed_weight.contiguous();
  const uint8_t* src = src_tensor.data_ptr<uint8_t>();
  const int64_t tiles = n / kTileRows, quads = k / 4, bb = block_bytes(bits);
  auto out = torch::zeros({tiles, quads, bb}, packed_weight.options());
  auto row_sum = torch::empty({n}, packed_weight.options().dtype(torch::kInt32));
  uint8_t* dst = out.data_ptr<uint8_t>();
  int32_t* sums = row_sum.data_ptr<int32_t>();
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t r = 0; r < kTileRows; ++r) {
        const uint8_t* row = src + (t * kTileRows + r) * row_bytes;
        int32_t sum = 0;
        for (int64_t i = 0; i < k; ++i) {
          const int v = level(code_at(row, i, sb), bits);
          sum += v;
          uint8_t* block = dst + (t * quads + i / 4) * bb;
          const int64_t bit = 4 * r + i % 4;
          if (bits == 1) {
            if (v > 0) block[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
          } else if (bits == 2) {
            if (v != 0) block[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
            if (v < 0) block[8 + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
          } else {
            block[bit] = static_cast<uint8_t>(static_cast<int8_t>(v));
          }
        }
        sums[t * kTileRows + r] = sum;
      }
    }
  });
  return {out, row_sum};
}

torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& kernel_weight, const torch::Tensor& row_sum,
                            const torch::Tensor& row_scale, const c10::optional<torch::Tensor>& bias, int64_t bits,
                            int64_t act_bits) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "xtc packed_linear: bits must be 1..8, got ", bits);
  check_kernel_weight(kernel_weight, bits);
  const int64_t k = kernel_weight.size(1) * kTileInputs, n = kernel_weight.size(0) * kTileRows;
  check_packed_linear_args(x, row_sum, row_scale, bias, bits, act_bits, k, n, c10::DeviceType::CPU);
  auto input = x.reshape({-1, k}).contiguous();
  const int64_t m = input.size(0);
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  auto out = torch::empty({m, n}, x.options());
  if (m == 0) return out.reshape(out_sizes);
  auto codes_tensor = torch::empty({m, k}, x.options().dtype(torch::kUInt8));
  auto scale_tensor = torch::empty({m}, x.options());
  uint8_t* codes = codes_tensor.data_ptr<uint8_t>();
  float* token_scale = scale_tensor.data_ptr<float>();
  quantize_tokens(input.data_ptr<float>(), m, k, act_bits, codes, token_scale);

  const auto scale_c = row_scale.contiguous();
  const auto sum_c = row_sum.contiguous();
  const float* rs = scale_c.data_ptr<float>();
  const int32_t* sums = sum_c.data_ptr<int32_t>();
  const auto bias_c = bias.has_value() ? bias->contiguous() : torch::Tensor();
  const float* b = bias.has_value() ? bias_c.data_ptr<float>() : nullptr;
  const uint8_t* w = kernel_weight.data_ptr<uint8_t>();
  float* y = out.data_ptr<float>();
  const int64_t tiles = kernel_weight.size(0), bb = block_bytes(bits), tile_bytes = (k / 4) * bb;
  const int64_t pairs = (tiles + 1) / 2;
  // Token chunks outermost: one chunk's activation codes stay in L2 while every tile pair passes over them.
  for (int64_t c0 = 0; c0 < m; c0 += kChunkTokens) {
    const int64_t mc = std::min(kChunkTokens, m - c0);
    const uint8_t* chunk_codes = codes + c0 * k;
    at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<int32_t[]> acc_buffer(new int32_t[mc * 2 * kTileRows]);
      int32_t* acc = acc_buffer.get();
      std::unique_ptr<uint8_t[]> scratch(new uint8_t[2 * (k / 4) * 64]);
      const int64_t stride = 2 * kTileRows;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t t0 = 2 * p;
        const int nt = t0 + 1 < tiles ? 2 : 1;
        const uint8_t* tile_ptrs[2] = {w + t0 * tile_bytes, w + (t0 + nt - 1) * tile_bytes};
#ifdef XTC_VNNI
        if (bits == 1)
          accumulate<1>(chunk_codes, mc, k, tile_ptrs, nt, acc, stride, scratch.get());
        else if (bits == 2)
          accumulate<2>(chunk_codes, mc, k, tile_ptrs, nt, acc, stride, scratch.get());
        else
          accumulate<8>(chunk_codes, mc, k, tile_ptrs, nt, acc, stride, scratch.get());
#elif defined(XTC_AVX2)
        for (int t = 0; t < nt; ++t) {
          int32_t* tile_acc = acc + t * kTileRows;
          if (bits == 1)
            accumulate_avx2<1>(chunk_codes, mc, k, tile_ptrs[t], tile_acc, stride, scratch.get());
          else if (bits == 2)
            accumulate_avx2<2>(chunk_codes, mc, k, tile_ptrs[t], tile_acc, stride, scratch.get());
          else
#ifdef __AVXVNNI__
            tile_rows_avx2<8>(chunk_codes, mc, k, tile_ptrs[t], tile_acc, stride);
#else
            accumulate_portable(chunk_codes, mc, k, tile_ptrs[t], bits, tile_acc, stride);
#endif
        }
#else
        for (int t = 0; t < nt; ++t)
          accumulate_portable(chunk_codes, mc, k, tile_ptrs[t], bits, acc + t * kTileRows, stride);
#endif
        const int64_t n0 = t0 * kTileRows, width = nt * kTileRows;
        for (int64_t t = 0; t < mc; ++t) {
          float* row = y + (c0 + t) * n + n0;
          const int32_t* a = acc + t * stride;
          const float s = token_scale[c0 + t];
#pragma omp simd
          for (int64_t j = 0; j < width; ++j) {
            const float v = static_cast<float>(a[j] - 128 * sums[n0 + j]) * (s * rs[n0 + j]);
            row[j] = b ? v + b[n0 + j] : v;
          }
        }
      }
    });
  }
  return out.reshape(out_sizes);
}

}  // namespace xtc
