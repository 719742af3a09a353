// spdp_decode: the dense [N, K] weight of an spdp-packed one, bit for bit (the prefill path: decode
// once, then one dense matmul for every token of the prompt).
//
// A block owns one R-row tile and CJ consecutive input columns. Phase 1: warp w takes columns
// w, w + 8, ...; for a column, every lane reads the tile column's bitmap words and offset (the same
// address: one broadcast transaction), lane l owns rows l + 32 i, finds its value by popcount and
// writes it (or 0) into a shared-memory tile [R][CJ]. Phase 2: the block writes the tile out row
// by row, CJ elements of one output row contiguous: coalesced 4-byte stores (2-byte elements are
// written in pairs when K is even). The shared tile's rows are padded by one 4-byte word so that
// phase 1's column writes (32 rows at once) hit 32 different banks.
// Values are moved as raw bits (E = uint16_t for fp16/bf16, uint32_t for fp32): exact by design.
// No torch headers: compile with `nvcc -arch=sm_90 -Xptxas -v -c` to read the resource report.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace sk {

constexpr int kDecodeCols = 64;     // CJ: columns per block
constexpr int kDecodeThreads = 256;  // 8 warps

template <typename E, int R>
struct DecodeCfg {
  static constexpr int W = R / 32;                     // bitmap words per tile column
  static constexpr int LD = kDecodeCols + 4 / sizeof(E);  // shared row stride in elements (one word of padding)
  static constexpr int NW = kDecodeThreads / 32;
};

template <typename E, int R>
__global__ void __launch_bounds__(kDecodeThreads) spdp_decode_kernel(const E* __restrict__ vals,
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
#pragma unroll 2
  for (int jj = warp; jj < CJ; jj += NW) {
    const int j = j0 + jj;
    E v[W];
    if (j < K) {  // warp-uniform
      const size_t pos = static_cast<size_t>(tile) * K + j;
      uint32_t m[W];
      const uint32_t* bp = bitmap + pos * W;
#pragma unroll
      for (int w = 0; w < W; ++w) m[w] = __ldg(bp + w);
      int base = __ldg(offsets + pos);
#pragma unroll
      for (int w = 0; w < W; ++w) {
        v[w] = ((m[w] >> lane) & 1u) ? __ldg(vals + base + __popc(m[w] & lt)) : E(0);
        base += __popc(m[w]);
      }
    } else {
#pragma unroll
      for (int w = 0; w < W; ++w) v[w] = E(0);
    }
#pragma unroll
    for (int w = 0; w < W; ++w) s[(32 * w + lane) * LD + jj] = v[w];
  }
  __syncthreads();

  // ---- phase 2: write the tile's rows (rows past N are the format's zero padding) --------------
  const int row0 = tile * R;
  const int rows = min(R, N - row0);
  const int cols = min(CJ, K - j0);
  if (sizeof(E) == 2 && (K & 1) == 0) {
    // pairs of elements as 4-byte words; j0 and K are even, so every pair is whole and aligned
    constexpr int PW = CJ / 2, LDW = LD / 2;  // words per tile row (data / stride)
    const uint32_t* sw = reinterpret_cast<const uint32_t*>(s);
    const int pw = cols / 2;
    for (int i = threadIdx.x; i < rows * PW; i += kDecodeThreads) {
      const int r = i / PW, c = i - r * PW;
      if (c < pw)
        reinterpret_cast<uint32_t*>(out + static_cast<size_t>(row0 + r) * K + j0)[c] = sw[r * LDW + c];
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
