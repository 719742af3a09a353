// spdp_decode in one pass: the dense [N, K] weight of an spdp-packed one, bit for bit (the prefill
// path above 64 tokens: decode once, then one dense matmul for every token of the prompt). CUDA runs
// it for fp32 values, K % 8 != 0 or tune("spdp_mm", 2); 16-bit values with K % 8 == 0 take
// spdp_mm.cuh's copy and expansion pipeline instead (TN = 0), 12-20 % faster (benchmarks/NOTES.md).
//
// A block owns one R-row tile and CJ consecutive input columns. Phase 1: warp w takes CJ / 8
// consecutive columns; for a column, every lane reads the tile column's bitmap words and offset (the
// same address: one broadcast transaction), lane l owns rows l + 32 i, finds its value by popcount
// and writes it (or 0) into a shared-memory tile [R][CJ]. Every load of a warp's columns is issued
// before any is used (a first version walked the columns two at a time and ran at 0.9-1.3 TB/s).
// Phase 2: the block writes the tile out row by row, CJ elements of one output row contiguous, in
// 16-byte stores when K is a multiple of 8 (fp16/bf16) or 4 (fp32) elements, else one element per
// store. The shared tile's rows are padded by one 4-byte word so that phase 1's column writes (32
// rows at once) hit 32 different banks. Both phases keep their address arithmetic to one 64-bit
// address per load or store: the kernel had been bound by instructions issued (ncu, H200: 38
// thread-instructions per element, SM throughput 78 %, DRAM 35 %).
// Values are moved as raw bits (E = uint16_t for fp16/bf16, uint32_t for fp32): exact by design.
// No torch headers: compile with `nvcc -arch=sm_90 -Xptxas -v -c` to read the resource report.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace sk {

constexpr int kDecodeCols = 64;     // CJ: columns per block
constexpr int kDecodeThreads = 256;  // 8 warps

// v = *p where pred, else 0: one predicated load (no branch), so every load of a warp can be in flight.
__device__ __forceinline__ uint16_t ld_nc_if(const uint16_t* p, bool pred) {
  unsigned short v = 0;
  asm("{\n\t.reg .pred q;\n\tsetp.ne.u32 q, %2, 0;\n\t@q ld.global.nc.u16 %0, [%1];\n\t}"
      : "+h"(v) : "l"(p), "r"(static_cast<unsigned>(pred)));
  return v;
}
__device__ __forceinline__ uint32_t ld_nc_if(const uint32_t* p, bool pred) {
  uint32_t v = 0;
  asm("{\n\t.reg .pred q;\n\tsetp.ne.u32 q, %2, 0;\n\t@q ld.global.nc.u32 %0, [%1];\n\t}"
      : "+r"(v) : "l"(p), "r"(static_cast<unsigned>(pred)));
  return v;
}

template <typename E, int R>
struct DecodeCfg {
  static constexpr int W = R / 32;                     // bitmap words per tile column
  static constexpr int LD = kDecodeCols + 4 / sizeof(E);  // shared row stride in elements (one word of padding)
  static constexpr int NW = kDecodeThreads / 32;
};

// 6 resident blocks (<= 40 registers) where that needs no spills; 128-row tiles keep 4
template <typename E, int R>
__global__ void __launch_bounds__(kDecodeThreads, R == 128 ? 4 : 6) spdp_decode_kernel(const E* __restrict__ vals,
                                                                     const uint32_t* __restrict__ bitmap,
                                                                     const int* __restrict__ offsets,
                                                                     E* __restrict__ out, int N, int K) {
  using C = DecodeCfg<E, R>;
  constexpr int W = C::W, LD = C::LD, NW = C::NW, CJ = kDecodeCols;
  __shared__ __align__(16) E s[R * LD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tile = blockIdx.x, j0 = blockIdx.y * CJ;
  const uint32_t lt = (1u << lane) - 1u;

  // ---- phase 1: scatter each column's packed values into the shared tile ----------------------
  // warp w owns columns [jw, jw + CPW): all their bitmap/offset loads, then all their value loads,
  // are in flight at once (two dependent round trips per block instead of two per column)
  constexpr int CPW = CJ / NW;
  const int jw = j0 + warp * CPW;
  const uint32_t* bw = bitmap + (static_cast<long long>(tile) * K + jw) * W;
  const int* ow = offsets + static_cast<long long>(tile) * K + jw;
  uint32_t m[CPW][W];
  int base[CPW];
  if (jw + CPW <= K) {  // every column inside K: fixed offsets from one address
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
#pragma unroll
      for (int w = 0; w < W; ++w) m[c][w] = __ldg(bw + c * W + w);
      base[c] = __ldg(ow + c);
    }
  } else {  // the block at the right edge: columns past K read column K - 1 of the tile, masked empty
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
      const int cc = min(c, K - 1 - jw);
#pragma unroll
      for (int w = 0; w < W; ++w) m[c][w] = __ldg(bw + cc * W + w) & (jw + c < K ? ~0u : 0u);
      base[c] = __ldg(ow + cc);
    }
  }
  E v[CPW][W];
#pragma unroll
  for (int c = 0; c < CPW; ++c) {
    int b = base[c];
#pragma unroll
    for (int w = 0; w < W; ++w) {
      v[c][w] = ld_nc_if(vals + (b + __popc(m[c][w] & lt)), (m[c][w] >> lane) & 1u);  // one int index
      b += __popc(m[c][w]);
    }
  }
#pragma unroll
  for (int c = 0; c < CPW; ++c)
#pragma unroll
    for (int w = 0; w < W; ++w) s[(32 * w + lane) * LD + warp * CPW + c] = v[c][w];
  __syncthreads();

  // ---- phase 2: write the tile's rows (rows past N are the format's zero padding) --------------
  const int row0 = tile * R;
  const int rows = min(R, N - row0);
  const int cols = min(CJ, K - j0);
  constexpr int VEC = 16 / sizeof(E);  // elements per 16-byte piece
  if (K % VEC == 0) {
    // 16-byte stores: thread t writes piece t % PR of rows t / PR, t / PR + RS, ...; each piece is read
    // from the padded tile as 4 words (conflict-free for 2-byte elements: rows 33 words apart)
    constexpr int PR = CJ / VEC, RS = kDecodeThreads / PR, PPT = R / RS;
    static_assert(R % RS == 0 && (LD * sizeof(E)) % 4 == 0, "whole passes, word-aligned tile rows");
    const int pc = threadIdx.x % PR, r0 = threadIdx.x / PR;
    if (pc * VEC < cols) {
      const uint32_t* sw = reinterpret_cast<const uint32_t*>(s) + (r0 * LD + pc * VEC) * static_cast<int>(sizeof(E)) / 4;
      E* dst = out + static_cast<size_t>(row0 + r0) * K + j0 + pc * VEC;
      const size_t step = static_cast<size_t>(RS) * K;
#pragma unroll
      for (int i = 0; i < PPT; ++i) {
        if (r0 + i * RS >= rows) break;
        const uint32_t* q = sw + i * RS * LD * static_cast<int>(sizeof(E)) / 4;
        *reinterpret_cast<uint4*>(dst + i * step) = make_uint4(q[0], q[1], q[2], q[3]);
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows * CJ; i += kDecodeThreads) {
      const int r = i / CJ, c = i - r * CJ;
      if (c < cols) out[static_cast<size_t>(row0 + r) * K + j0 + c] = s[r * LD + c];
    }
  }
}

// ---- host side (no torch) -----------------------------------------------------------------------
template <typename E, int R>
inline cudaError_t spdp_decode_launch(const void* vals, const int* bitmap, const int* offsets, void* out, int N, int K,
                                      cudaStream_t stream) {
  const int tiles = (N + R - 1) / R;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((K + kDecodeCols - 1) / kDecodeCols));
  spdp_decode_kernel<E, R><<<grid, kDecodeThreads, 0, stream>>>(
      static_cast<const E*>(vals), reinterpret_cast<const uint32_t*>(bitmap), offsets, static_cast<E*>(out), N, K);
  return cudaGetLastError();
}

}  // namespace sk
