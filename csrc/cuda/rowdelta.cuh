// rowdelta_matvec: y[t, :] = W x[t, :] with W in the rowdelta layout (sparsekit/formats/rowdelta.py):
// per row, entries of (value, 4-bit column step), 8 per vector, rows 16-byte aligned.
//
// The one-token path for unstructured sparse weights. Work is per non-zero, not per position: a
// warp owns a row and walks it 32 vectors (256 entries) per round; lane l loads vector l of the
// round (16 bytes of values, 4 bytes of steps: both coalesced across the warp), turns its 8 steps
// into 8 running column sums with two byte-wise multiplies, and a warp scan of the lanes' totals
// gives each lane its starting column. x sits in shared memory as fp32 (one block loads it once
// and its warps then walk rows gridDim.x * WARPS apart), so the 8 products read x[col] there.
// Two rounds are in flight per warp; the first row's are issued before waiting on the previous
// kernel (programmatic dependent launch), since the weights do not depend on it.
#pragma once
#include "common.cuh"

namespace sk {

struct RowDeltaParams {
  const void* x;            // [T, K] contiguous
  const void* values;       // entries (16-byte aligned); 8 per vector
  const uint32_t* deltas;   // one word of 8 steps per vector
  const int* row_offsets;   // [N + 1], in vectors
  void* y;                  // [T, N]
  int N, K;
};

// One round of a lane: one vector of 8 values (VW 16-byte words) and its steps.
template <typename T>
struct RdChunk {
  static constexpr int VW = 8 * sizeof(T) / 16;
  uint4 v[VW];
  uint32_t d;
};

template <typename T>
__device__ __forceinline__ void rd_load(RdChunk<T>& c, const RowDeltaParams& p, int vec, int end) {
  if (vec < end) {
    const uint4* src = static_cast<const uint4*>(p.values) + static_cast<size_t>(vec) * RdChunk<T>::VW;
#pragma unroll
    for (int i = 0; i < RdChunk<T>::VW; ++i) c.v[i] = ld_stream16(src + i);
    c.d = ld_stream_u32(p.deltas + vec);
  } else {
#pragma unroll
    for (int i = 0; i < RdChunk<T>::VW; ++i) c.v[i] = make_uint4(0u, 0u, 0u, 0u);
    c.d = 0u;  // steps 0, values 0: the lane adds 0 * x[last column]
  }
}

// Adds the lane's 8 products; `carry` is the row's column before this round (the same in every lane).
template <typename T>
__device__ __forceinline__ void rd_consume(const RdChunk<T>& c, const float* xs, int lane, int& carry, float& a0,
                                           float& a1) {
  const uint32_t plo = (c.d & 0x0F0F0F0Fu) * 0x01010101u;         // running sums of steps 0..3
  const uint32_t phi = ((c.d >> 4) & 0x0F0F0F0Fu) * 0x01010101u;  // of steps 4..7
  const int tot = static_cast<int>((plo >> 24) + (phi >> 24));
  int incl = tot;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(FULL, incl, o);
    if (lane >= o) incl += t;
  }
  const float* xb = xs + carry + incl - tot;
  carry += __shfl_sync(FULL, incl, 31);
  float v[8];
  if constexpr (sizeof(T) == 2) {
    unpack16<T>(c.v[0], v);
  } else {
    float lo[4], hi[4];
    unpack16<float>(c.v[0], lo);
    unpack16<float>(c.v[1], hi);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[i] = lo[i];
      v[4 + i] = hi[i];
    }
  }
  a0 = fmaf(v[0], xb[plo & 255u], a0);
  a1 = fmaf(v[1], xb[(plo >> 8) & 255u], a1);
  a0 = fmaf(v[2], xb[(plo >> 16) & 255u], a0);
  a1 = fmaf(v[3], xb[plo >> 24], a1);
  const float* xh = xb + (plo >> 24);
  a0 = fmaf(v[4], xh[phi & 255u], a0);
  a1 = fmaf(v[5], xh[(phi >> 8) & 255u], a1);
  a0 = fmaf(v[6], xh[(phi >> 16) & 255u], a0);
  a1 = fmaf(v[7], xh[phi >> 24], a1);
}

// grid (blocks, T): block b of token t walks rows b*WARPS + warp, then gridDim.x * WARPS apart.
// Dynamic shared memory: K floats.
template <typename T, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) rowdelta_kernel(const RowDeltaParams p) {
  extern __shared__ float xs[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t = blockIdx.y, stride = gridDim.x * WARPS;
  int row = blockIdx.x * WARPS + warp;
  RdChunk<T> a, b;
  int v0 = 0, v1 = 0;
  if (row < p.N) {
    v0 = __ldg(p.row_offsets + row);
    v1 = __ldg(p.row_offsets + row + 1);
    rd_load(a, p, v0 + lane, v1);
    rd_load(b, p, v0 + 32 + lane, v1);
  }
  grid_dependency_wait();
  const T* xg = static_cast<const T*>(p.x) + static_cast<size_t>(t) * p.K;
  for (int i = threadIdx.x; i < p.K; i += WARPS * 32) xs[i] = to_f<T>(xg[i]);
  __syncthreads();
  T* y = static_cast<T*>(p.y) + static_cast<size_t>(t) * p.N;
  while (row < p.N) {
    float a0 = 0.f, a1 = 0.f;
    int carry = 0;
    for (int base = v0; base < v1; base += 64) {
      RdChunk<T> na, nb;
      rd_load(na, p, base + 64 + lane, v1);
      rd_load(nb, p, base + 96 + lane, v1);
      rd_consume(a, xs, lane, carry, a0, a1);
      if (base + 32 < v1) rd_consume(b, xs, lane, carry, a0, a1);  // warp-uniform
      a = na;
      b = nb;
    }
    float s = a0 + a1;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL, s, o);
    if (lane == 0) y[row] = from_f<T>(s);
    row += stride;
    if (row < p.N) {
      v0 = __ldg(p.row_offsets + row);
      v1 = __ldg(p.row_offsets + row + 1);
      rd_load(a, p, v0 + lane, v1);
      rd_load(b, p, v0 + 32 + lane, v1);
    }
  }
}

}  // namespace sk
