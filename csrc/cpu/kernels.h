// Interface between the torch glue (ops_cpu.cpp) and the SIMD kernels (isa_*.cpp).
// No torch headers here: every ISA translation unit is compiled for its own instruction set, and
// sharing inline torch code between them could let the linker keep an AVX-512 copy for everyone.
#pragma once
#include <cstdint>

namespace sparsekit::cpu {

enum class WType : int { F32 = 0, BF16 = 1, F16 = 2 };

// Activations of the active channels, compacted: xa[c * T + t] = float(xs[t, idx[c]]).
struct Active {
  const float* xa;
  const int32_t* idx;  // ascending channel ids, nnz of them
  int64_t nnz;
  int64_t T;
};

// y[t, n] = sum_c xa[c, t] * w_t[idx[c], n]; w_t is [K, N] row-major.
struct TealArgs {
  Active a;
  const void* w_t;
  WType wtype;
  int64_t N;
  float* y;  // [T, N]
};

// spdp format (sparsekit/formats/spdp.py): R-row tiles, per (tile, column) a bitmap of R bits
// (R/32 int32 words) and the non-zeros in increasing row order from values[offsets[r*K + j]].
struct SpdpArgs {
  Active a;
  const void* values;
  WType wtype;
  const int32_t* bitmap;   // [NT, K, R/32]
  const int32_t* offsets;  // [NT*K + 1]
  int64_t N, K, R;
  float* y;  // [T, N]
};

// spinfer format (sparsekit/formats/spinfer.py): 64x64 group tiles, row-major over (N/64, K/64);
// each = 4 tensor-core tiles of 16x64 (top to bottom); each = 16 bitmap tiles of 8x8 in
// column-major order over its 2x8 grid; bit r*8+c of a bitmap marks element (r, c).
struct SpinferArgs {
  const float* x;  // [T, Kp] (zero-padded to Kp)
  int64_t T;
  const void* values;
  WType wtype;
  const int64_t* bitmaps;        // [G * 64]
  const int32_t* tile_offsets;   // [G * 4], relative to the group start
  const int32_t* group_offsets;  // [G + 1]
  int64_t N, Np, Kp;
  float* y;  // [T, N]
};

struct Kernels {
  const char* name;
  void (*teal)(const TealArgs&, int64_t n0, int64_t n1);           // columns [n0, n1)
  void (*spdp)(const SpdpArgs&, int64_t tile0, int64_t tile1);     // row tiles [tile0, tile1)
  void (*spinfer)(const SpinferArgs&, int64_t g0, int64_t g1);     // group rows [g0, g1)
};

const Kernels& kernels_base();
const Kernels& kernels_avx2();    // needs avx2, fma, f16c
const Kernels& kernels_avx512();  // needs avx512f, avx512bw, avx512vl (+ avx2, fma, f16c)

}  // namespace sparsekit::cpu
