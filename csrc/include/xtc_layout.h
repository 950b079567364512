// Packed layout constants shared by the CPU and CUDA kernels (no torch dependency, so nvcc-compiled kernels
// include it too). Mirrored in Python by xtc_ds/quant/reference.py (storage_bits) and xtc_ds/ops/library.py
// (TILE_ROWS, TILE_INPUTS, block_bytes); tests/ops/test_packed_linear_cpu.py checks they agree.
#pragma once

#include <cstdint>

namespace xtc {

constexpr int64_t kTileRows = 16;   // output rows of one CPU kernel block
constexpr int64_t kTileInputs = 4;  // inputs of one CPU kernel block (one VNNI dot product)

// Bits per stored code: 1 and 2 as they are, 3..4 in nibbles, 5..8 in bytes.
constexpr int64_t storage_bits(int64_t bits) { return bits <= 2 ? bits : (bits <= 4 ? 4 : 8); }

// Bytes of one kTileRows x kTileInputs block of the CPU kernel layout.
constexpr int64_t block_bytes(int64_t bits) { return bits == 1 ? 8 : (bits == 2 ? 16 : 64); }

}  // namespace xtc
