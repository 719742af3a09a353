// spinfer_matmul: y[T, N] = x[T, K] @ W.T with W in SpInfer's TCA-BME format
// (sparsekit/formats/spinfer.py), on tensor cores (mma.sync m16n8k16, fp32 accumulation).
//
// A block (4 warps) owns one 64-row group stripe and one of S slices of its group columns, for up
// to NTOK tokens (blockIdx.z picks the token chunk). Each group tile (its 64 bitmaps, 4 tile
// offsets, its values run, which the format pads to 16 bytes, and the matching 64-column slice of
// x) is copied to shared memory with cp.async, NSTAGE deep. Warp w decodes tensor-core tile w
// straight into A fragments: lane l owns bits 2l and 2l+1 of every 8x8 bitmap (row l/4, columns
// 2(l%4), +1: exactly mma's A-fragment layout), its value index being the popcount of the bits
// below. B fragments come from the x tile by ldmatrix. The S blocks of a stripe reduce their
// partial sums through distributed shared memory (thread-block cluster), in a fixed order.
#pragma once
#include "common.cuh"

namespace sk {

struct SpinferParams {
  const void* x;             // [T, K] contiguous, K % 8 == 0, 16-byte aligned
  const void* values;        // 16-bit values; every group's run starts 16-byte aligned
  const long long* bitmaps;  // [G * 64]
  const int* tile_offsets;   // [G * 4]
  const int* group_offsets;  // [G + 1]
  void* y;                   // [T, N]
  int T, N, K, KG;           // KG = Kp / 64 group columns
  int S;                     // column slices = cluster size along y
};

constexpr int SPI_NSTAGE = 3;
constexpr int SPI_XSTRIDE = 72;  // halves per x-tile row (64 + 8 padding: conflict-free ldmatrix)

template <int NTOK>
struct SpiCfg {
  static constexpr int NTILE = NTOK / 8;  // mma n-tiles
  static constexpr size_t BM_BYTES = 512;
  static constexpr size_t TO_BYTES = 16;
  static constexpr size_t V_BYTES = 64 * 64 * 2;
  static constexpr size_t X_BYTES = size_t(NTOK) * SPI_XSTRIDE * 2;
  static constexpr size_t STAGE = BM_BYTES + TO_BYTES + V_BYTES + X_BYTES;
  static constexpr size_t PART = size_t(NTOK) * 64 * 4;
  static constexpr size_t SMEM = (SPI_NSTAGE * STAGE > PART) ? SPI_NSTAGE * STAGE : PART;
};

// NWARP = 4: warp w decodes all 16 bitmaps of tensor-core tile w. NWARP = 8: warps w and w + 4
// split tile w's four k-steps (8 bitmaps each), halving the serial decode per warp; their partial
// sums are added in a fixed order.
template <typename T, int NTOK, int NWARP>
__global__ void __launch_bounds__(NWARP * 32) spinfer_kernel(const SpinferParams p) {
  using C = SpiCfg<NTOK>;
  constexpr int NTILE = C::NTILE, SPI_THREADS = NWARP * 32, NB = NWARP == 8 ? 8 : 16;
  extern __shared__ __align__(16) unsigned char smem[];
  grid_dependency_wait();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tct = warp & 3, kh = NWARP == 8 ? (warp >> 2) : 0;  // tensor-core tile, k half
  const int gr = blockIdx.x, split = blockIdx.y, t0 = blockIdx.z * NTOK;
  const int gper = (p.KG + p.S - 1) / p.S;
  const int gc_a = min(p.KG, split * gper), gc_b = min(p.KG, gc_a + gper);
  const int ng = gc_b - gc_a;
  const unsigned short* xg = static_cast<const unsigned short*>(p.x);
  const unsigned short* vg = static_cast<const unsigned short*>(p.values);

  auto load_stage = [&](int slot, int gc) {
    unsigned char* st = smem + slot * C::STAGE;
    const long long g = static_cast<long long>(gr) * p.KG + gc;
    const int v0 = __ldg(p.group_offsets + g), v1 = __ldg(p.group_offsets + g + 1);
    const int nv = (v1 - v0) >> 3;  // 16-byte chunks of values
    const int nx = NTOK * 8;        // 16-byte chunks of the x tile
    const int total = 32 + 1 + nv + nx;
    for (int i = tid; i < total; i += SPI_THREADS) {
      if (i < 32) {
        cp_async16(st + i * 16, reinterpret_cast<const unsigned char*>(p.bitmaps + g * 64) + i * 16, true);
      } else if (i == 32) {
        cp_async16(st + C::BM_BYTES, p.tile_offsets + g * 4, true);
      } else if (i < 33 + nv) {
        const int c = i - 33;
        cp_async16(st + C::BM_BYTES + C::TO_BYTES + c * 16, vg + v0 + c * 8, true);
      } else {
        const int c = i - 33 - nv, t = c >> 3, kc = c & 7;
        const int k = gc * 64 + kc * 8;
        const bool ok = (t0 + t) < p.T && k < p.K;
        const unsigned short* src = ok ? xg + static_cast<size_t>(t0 + t) * p.K + k : xg;
        cp_async16(st + C::BM_BYTES + C::TO_BYTES + C::V_BYTES + (t * SPI_XSTRIDE + kc * 8) * 2, src, ok);
      }
    }
  };

  float c[NTILE][4];
#pragma unroll
  for (int n = 0; n < NTILE; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[n][i] = 0.f;

  const int sh = 2 * (lane & 15);
  const uint32_t below = (1u << sh) - 1u;
  const bool hiword = lane >= 16;

#pragma unroll
  for (int s = 0; s < SPI_NSTAGE - 1; ++s) {
    if (s < ng) load_stage(s, gc_a + s);
    cp_async_commit();
  }
  for (int i = 0; i < ng; ++i) {
    cp_async_wait<SPI_NSTAGE - 2>();
    __syncthreads();
    if (i + SPI_NSTAGE - 1 < ng) load_stage((i + SPI_NSTAGE - 1) % SPI_NSTAGE, gc_a + i + SPI_NSTAGE - 1);
    cp_async_commit();

    const unsigned char* st = smem + (i % SPI_NSTAGE) * C::STAGE;
    const unsigned long long* bm = reinterpret_cast<const unsigned long long*>(st) + tct * 16;
    const unsigned short* vals = reinterpret_cast<const unsigned short*>(st + C::BM_BYTES + C::TO_BYTES);
    const unsigned short* xt = reinterpret_cast<const unsigned short*>(st + C::BM_BYTES + C::TO_BYTES + C::V_BYTES);
    int pb = reinterpret_cast<const int*>(st + C::BM_BYTES)[tct];
    if (NWARP == 8 && kh == 1) {  // skip the values of the first 8 bitmaps: a warp-wide popcount
      int n8 = lane < 8 ? __popcll(bm[lane]) : 0;
      n8 += __shfl_xor_sync(FULL, n8, 1);
      n8 += __shfl_xor_sync(FULL, n8, 2);
      n8 += __shfl_xor_sync(FULL, n8, 4);
      pb += __shfl_sync(FULL, n8, 0);
    }

    uint32_t a[NB];
#pragma unroll
    for (int bi = 0; bi < NB; ++bi) {
      const int b = kh * 8 + bi;
      const unsigned long long m = bm[b];
      const uint32_t lo = static_cast<uint32_t>(m), hi = static_cast<uint32_t>(m >> 32);
      const uint32_t word = hiword ? hi : lo;
      const int pl = __popc(lo);
      const int pos = pb + (hiword ? pl : 0) + __popc(word & below);
      const uint32_t b0 = (word >> sh) & 1u, b1 = (word >> (sh + 1)) & 1u;
      const uint32_t v0 = b0 ? vals[pos] : 0u;
      const uint32_t v1 = b1 ? vals[pos + b0] : 0u;
      a[bi] = v0 | (v1 << 16);
      pb += pl + __popc(hi);
    }
#pragma unroll
    for (int kq = 0; kq < NB / 4; ++kq) {
      const int ks = kh * 2 + kq;
      const uint32_t af[4] = {a[4 * kq], a[4 * kq + 1], a[4 * kq + 2], a[4 * kq + 3]};
      if constexpr (NTILE == 1) {
        uint32_t r[2];
        const int rr = lane & 15;
        ldmatrix_x2(r, xt + (rr & 7) * SPI_XSTRIDE + ks * 16 + (rr >> 3) * 8);
        mma16816<T>(c[0], af, r[0], r[1]);
      } else {
#pragma unroll
        for (int n = 0; n < NTILE; n += 2) {
          uint32_t r[4];
          const int tok = (n + (lane >> 4)) * 8 + (lane & 7);
          ldmatrix_x4(r, xt + tok * SPI_XSTRIDE + ks * 16 + ((lane >> 3) & 1) * 8);
          mma16816<T>(c[n], af, r[0], r[1]);
          mma16816<T>(c[n + 1], af, r[2], r[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // stages are free: reuse them for the partial sums

  float* part = reinterpret_cast<float*>(smem);  // [NTOK][64]
  const int gq = lane >> 2, tq = lane & 3;
  for (int half = 0; half < (NWARP == 8 ? 2 : 1); ++half) {  // k half 0 stores, k half 1 adds
    if (kh == half) {
#pragma unroll
      for (int n = 0; n < NTILE; ++n)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float* dst = part + (n * 8 + 2 * tq + j) * 64 + tct * 16 + gq + 8 * h;
            *dst = half == 0 ? c[n][2 * h + j] : *dst + c[n][2 * h + j];
          }
    }
    __syncthreads();
  }
  T* y = static_cast<T*>(p.y);
  const int n0 = gr * 64;
  cluster_reduce_store<NTOK, SPI_THREADS>(part, 64, p.S, [&](int t, int o, float s) {
    const int n = n0 + o;
    if (t0 + t < p.T && n < p.N) y[static_cast<size_t>(t0 + t) * p.N + n] = from_f<T>(s);
  });
}

// Dense decode of the format (the path for fp32 or mismatched dtypes): one block per group,
// one thread per bitmap tile. V is the raw value type (uint16_t or uint32_t). out: [N, K].
template <typename V>
__global__ void __launch_bounds__(64) spinfer_decode_kernel(const V* __restrict__ values,
                                                           const long long* __restrict__ bitmaps,
                                                           const int* __restrict__ tile_offsets,
                                                           const int* __restrict__ group_offsets, V* __restrict__ out,
                                                           int N, int K, int KG) {
  const long long g = blockIdx.x;
  const int gr = static_cast<int>(g / KG), gc = static_cast<int>(g % KG);
  const int tc = threadIdx.x >> 4, b = threadIdx.x & 15, kc = b >> 1, rh = b & 1;
  const unsigned long long* bm = reinterpret_cast<const unsigned long long*>(bitmaps) + g * 64 + tc * 16;
  int pos = group_offsets[g] + tile_offsets[g * 4 + tc];
  for (int q = 0; q < b; ++q) pos += __popcll(bm[q]);
  const unsigned long long m = bm[b];
  for (int bit = 0; bit < 64; ++bit) {
    const int r = gr * 64 + tc * 16 + rh * 8 + (bit >> 3), col = gc * 64 + kc * 8 + (bit & 7);
    V v = 0;
    if ((m >> bit) & 1ull) v = values[pos++];
    if (r < N && col < K) out[static_cast<size_t>(r) * K + col] = v;
  }
}

template <typename T, int NTOK, int NWARP>
inline int spinfer_blocks_per_sm(int device) {
  return blocks_per_sm_cached<spinfer_kernel<T, NTOK, NWARP>>(device, NWARP * 32, SpiCfg<NTOK>::SMEM);
}

template <typename T, int NTOK, int NWARP>
inline cudaError_t spinfer_prepare(int device) {
  return allow_smem_cached<spinfer_kernel<T, NTOK, NWARP>>(device, SpiCfg<NTOK>::SMEM);
}

template <typename T, int NTOK, int NWARP>
inline cudaError_t spinfer_launch(const SpinferParams& p, int tchunks, cudaStream_t stream, bool pdl) {
  const int grows = (p.N + 63) / 64;
  const dim3 grid(static_cast<unsigned>(grows), static_cast<unsigned>(p.S), static_cast<unsigned>(tchunks));
  return launch_sliced(spinfer_kernel<T, NTOK, NWARP>, p, grid, NWARP * 32, SpiCfg<NTOK>::SMEM, p.S, stream, pdl);
}

}  // namespace sk
