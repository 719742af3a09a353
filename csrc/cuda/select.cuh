// select(x, threshold) -> (xs, idx, nnz): mask |x| > threshold, and list the channels active in any
// token (ascending) with their count, all on the device (no host synchronisation).
//
// Few tokens (T * K small): one block of 1024 threads does everything; each thread owns 8
// consecutive channels per pass (one 16-byte vector per token when aligned), and a block-wide scan
// of the per-thread counts places the channel ids in ascending order.
// Many tokens: `select_mask_kernel` (grid over channels x token blocks) writes xs and one "any"
// byte per (token block, channel); `select_compact_kernel` (one block) ORs them and compacts.
#pragma once
#include "common.cuh"

namespace sk {

constexpr int SEL_THREADS = 1024;
constexpr int SEL_PER = 8;        // channels per thread per pass
constexpr int SEL_TOK_BLOCK = 32; // tokens per block of the mask kernel

template <typename T>
__device__ __forceinline__ void load8(const T* p, bool vec, int valid, float (&f)[8]) {
  if (vec) {
    if constexpr (sizeof(T) == 2) {
      unpack16<T>(*reinterpret_cast<const uint4*>(p), f);
    } else {
      float a[4], b[4];
      unpack16<T>(*reinterpret_cast<const uint4*>(p), a);
      unpack16<T>(*reinterpret_cast<const uint4*>(p + 4), b);
#pragma unroll
      for (int i = 0; i < 4; ++i) { f[i] = a[i]; f[4 + i] = b[i]; }
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = i < valid ? to_f<T>(p[i]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* p, bool vec, int valid, const float (&f)[8]) {
  if (vec) {
    if constexpr (sizeof(T) == 2) {
      uint32_t w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const T lo = from_f<T>(f[2 * i]), hi = from_f<T>(f[2 * i + 1]);
        w[i] = static_cast<uint32_t>(*reinterpret_cast<const unsigned short*>(&lo)) |
               (static_cast<uint32_t>(*reinterpret_cast<const unsigned short*>(&hi)) << 16);
      }
      *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
      *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (i < valid) p[i] = from_f<T>(f[i]);
  }
}

// Writes idx[base + ...] for this pass's active channels, returns the new base.
__device__ __forceinline__ int select_emit(unsigned bits, int k0, int base, int* idx, int* s_warp) {
  int total;
  int pos = base + block_exclusive_scan<SEL_THREADS / 32>(__popc(bits), s_warp, total);
#pragma unroll
  for (int i = 0; i < SEL_PER; ++i)
    if (bits & (1u << i)) idx[pos++] = k0 + i;
  __syncthreads();  // s_warp is reused by the next pass
  return base + total;
}

template <typename T>
__global__ void __launch_bounds__(SEL_THREADS) select_small_kernel(const T* __restrict__ x, T* __restrict__ xs,
                                                                   int* __restrict__ idx, int* __restrict__ nnz,
                                                                   int T_, int K, float thr, int vec) {
  __shared__ int s_warp[SEL_THREADS / 32 + 1];
  int base = 0;
  for (int c0 = 0; c0 < K; c0 += SEL_THREADS * SEL_PER) {
    const int k0 = c0 + threadIdx.x * SEL_PER;
    const int valid = min(SEL_PER, K - k0);  // may be <= 0
    unsigned bits = 0;
    if (valid > 0) {
      const bool v8 = vec && valid == SEL_PER;
      for (int t = 0; t < T_; ++t) {
        float f[8];
        load8<T>(x + static_cast<size_t>(t) * K + k0, v8, valid, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          f[i] = fabsf(f[i]) > thr ? f[i] : 0.f;
          bits |= (f[i] != 0.f ? 1u : 0u) << i;
        }
        store8<T>(xs + static_cast<size_t>(t) * K + k0, v8, valid, f);
      }
    }
    base = select_emit(bits, k0, base, idx, s_warp);
  }
  if (threadIdx.x == 0) *nnz = base;
}

// grid (ceil(K / 256), ceil(T / SEL_TOK_BLOCK)), 256 threads: thread = one channel x one token block.
template <typename T>
__global__ void __launch_bounds__(256) select_mask_kernel(const T* __restrict__ x, T* __restrict__ xs,
                                                          uint8_t* __restrict__ flags, int T_, int K, float thr) {
  const int k = blockIdx.x * 256 + threadIdx.x;
  if (k >= K) return;
  const int ta = blockIdx.y * SEL_TOK_BLOCK, tb = min(T_, ta + SEL_TOK_BLOCK);
  bool any = false;
  for (int t = ta; t < tb; ++t) {
    float v = to_f<T>(x[static_cast<size_t>(t) * K + k]);
    v = fabsf(v) > thr ? v : 0.f;
    any |= v != 0.f;
    xs[static_cast<size_t>(t) * K + k] = from_f<T>(v);
  }
  flags[static_cast<size_t>(blockIdx.y) * K + k] = any ? 1 : 0;
}

__global__ void __launch_bounds__(SEL_THREADS) select_compact_kernel(const uint8_t* __restrict__ flags, int nblk,
                                                                     int* __restrict__ idx, int* __restrict__ nnz,
                                                                     int K) {
  __shared__ int s_warp[SEL_THREADS / 32 + 1];
  int base = 0;
  for (int c0 = 0; c0 < K; c0 += SEL_THREADS * SEL_PER) {
    const int k0 = c0 + threadIdx.x * SEL_PER;
    unsigned bits = 0;
    for (int b = 0; b < nblk; ++b) {
#pragma unroll
      for (int i = 0; i < SEL_PER; ++i)
        if (k0 + i < K && flags[static_cast<size_t>(b) * K + k0 + i]) bits |= 1u << i;
    }
    base = select_emit(bits, k0, base, idx, s_warp);
  }
  if (threadIdx.x == 0) *nnz = base;
}

}  // namespace sk
