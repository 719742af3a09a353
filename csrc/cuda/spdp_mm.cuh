// spdp_mm: y[T, N] = mask(x)[T, K] @ W.T with W in the spdp format, on tensor cores. It is how
// spdp_matvec runs on CUDA for several tokens (a prefill, a decode batch): fp16/bf16, K % 8 == 0,
// values 16-byte aligned. Bytes read from DRAM: the packed weight once per TN tokens.
//
// A block (8 warps) owns one R-row tile, up to TN tokens (blockIdx.z picks the token chunk) and one
// of S slices of the tile's column chunks. A chunk is KC = 4096 / R input columns, so its dense
// tile holds 4096 values. cp.async copies each chunk into an NST-deep shared-memory ring: the
// chunk's packed values (one contiguous run in the format, copied from the 16-byte boundary below
// its first value), its bitmap words, its column offsets and the x tile [TN][KC]. Then, per chunk:
//  1. the threads expand the packed values into a dense shared tile A^T [KC][R] (column-major):
//     a unit is G (8 or 16) consecutive rows of one column: its bitmap bits, the popcount below
//     them, G predicated 2-byte shared loads and 16-byte stores. A balanced unit (exactly 2 bits in
//     each 4-row group, the 2:4-over-rows pattern, and its first value 8-byte aligned) instead loads
//     its G / 2 values with 8-byte loads and places each group's pair with two byte permutes whose
//     selectors come from a 16-entry table indexed by the group's 4 bits (knob spdp_bal: 0 per
//     unit, 1 required: a unit inside the rows without it traps, 2 never);
//  2. the warps multiply: A fragments by ldmatrix.trans from A^T, B fragments from the x tile by
//     ldmatrix, masked in registers (|x| > t, compared in x's dtype), mma.m16n8k16 with fp32
//     accumulation. Up to 16 tokens a warp owns two m16 strips, so the x tile is read by R / 32 warps
//     per k-step instead of R / 16.
// The kernel is bound by shared-memory wavefronts at 32 tokens (ncu on the H100: L1/TEX 85 % busy, short-
// scoreboard stalls first), so each step reads shared memory as few times as it can: no separate masking
// pass over the x tile, one 4-byte selector load per group, the FX variant's values as one 16-byte load.
// The S slices of a tile add their partial sums through distributed shared memory (a (1, S, 1)
// cluster, cluster_reduce_store), in a fixed order: results are bitwise deterministic.
// FX = true: a weight declared in the fixed balanced layout (spdp.fixed_layout; the host checks N % R == 0
// and that every value is there): column j of tile t holds values (t * K + j) * R / 2 .. + R / 2, two in each
// 4-row group, so the chunk bounds need no offsets (no dependent global load per chunk, no offsets copied),
// a unit's first value is at c * R / 2 + r0 / 2 of its chunk's run, and every unit is balanced (no pattern
// or alignment test). It expands the same A^T tile, so its results equal the checked path's bit for bit.
// TN = 0 instantiates spdp_decode instead (the prefill path above 64 tokens): the same copies and
// expansion, then step 2 writes the chunk's dense tile to y = W [N, K] (16-byte stores, two rows per
// thread read from A^T as 4-byte pairs), no x tile, no mma, no reduction (slices own their columns).
// No torch headers: compile with `nvcc -arch=sm_90 -Xptxas -v -c` to read the resource report.
#pragma once
#include <algorithm>
#include <climits>

#include "common.cuh"

namespace sk {

struct SpdpMmParams {
  const void* x;           // [T, K] contiguous, K % 8 == 0, 16-byte aligned
  const void* vals;        // 16-bit values, 16-byte aligned
  const uint32_t* bitmap;  // [NT, K, R / 32], 16-byte aligned
  const int* offsets;      // [NT * K + 1], 16-byte aligned
  void* y;                 // [T, N]
  long long nvals;         // values readable from vals (copies past it are zero-filled)
  int T, N, K, S;
  float thr;               // keep |x| > thr (already rounded to x's dtype)
  int bal;                 // the spdp_bal knob: 0 balanced units where the pattern holds, 1 required, 2 never
};

constexpr int kMmThreads = 256;

template <int R, int TN, int G, int MSX = 0, bool FX = false>
struct MmCfg {
  // ring stages: the FX variant's value runs are half as long (exactly R / 2 values per column, 16-byte
  // aligned), so from 32 tokens the same shared memory holds a fourth stage (H100, 32 tokens: gate/up 73.1
  // -> 68.6 us, the fused layer -3.4 %; five stages at 4 and 16 tokens measured no gain, benchmarks/NOTES.md)
  static constexpr int NW = kMmThreads / 32, NST = FX && TN >= 32 ? 4 : 3;
  static constexpr int KC = 4096 / R;  // columns per chunk
  static constexpr int W = R / 32;     // bitmap words per column
  static constexpr int KS = KC / 16;   // mma k-steps per chunk
  // a fully dense run plus its misalignment; FX: the run itself (its first value is 16-byte aligned)
  static constexpr int V_BYTES = FX ? R * KC : R * KC * 2 + 16;
  static constexpr int B_BYTES = KC * W * 4;
  static constexpr int O_BYTES = FX ? 0 : KC * 4;  // column offsets (FX: computed, not staged)
  static constexpr int XLD = KC + 8;  // halves per x-tile row (16 bytes of padding: conflict-free ldmatrix)
  static constexpr int X_BYTES = TN * XLD * 2;
  static constexpr int STAGE = V_BYTES + B_BYTES + O_BYTES + X_BYTES;
  static constexpr int ALD = R + 8;  // halves per A^T row (one column of the tile)
  static constexpr int A_BYTES = KC * ALD * 2;
  static constexpr int PART = TN * R * 4;  // 0 when decoding
  static constexpr size_t SMEM = (NST * STAGE + A_BYTES > PART) ? NST * STAGE + A_BYTES : PART;
  // the output tile is MT x NT8 mma tiles: warp w owns the MS m16 strips of group w % MG and every n8 tile;
  // WK = NW / MG warps split a group's k-steps. Two strips per warp (up to 16 tokens) halve the B fragments
  // read from shared memory (each group reads the x tile once): 2-3 % faster than one strip at 8 and 16 tokens
  // on the H100, 0-7 % slower at 32 (benchmarks/NOTES.md, seventeenth session); MSX > 0 forces MS
  // (tune("spdp_mm_strips"), the FX variant)
  static constexpr int MT = R / 16, NT8 = TN / 8, MS = MSX > 0 ? MSX : ((TN > 0 && TN <= 16) ? 2 : 1), MG = MT / MS,
                       WK = NW / MG;
  static constexpr int UC = R / G;                     // expansion units per column
  static constexpr int UNITS = KC * UC / kMmThreads;  // per thread per chunk
  static_assert(STAGE % 16 == 0 && A_BYTES % 16 == 0, "16-byte aligned stages");
  static_assert(MT % MS == 0 && MG <= NW && KS % WK == 0, "warp tiling");
  static_assert(G == 8 || G == 16, "G rows per unit");
  static_assert(kMmThreads % UC == 0 && UNITS >= 1, "units");
  static constexpr int NXP = TN * KC / 8;  // 16-byte pieces of the x tile
  static_assert(TN > 0 || (R / 2) * (KC / 8) == kMmThreads, "decode: one (row pair, 8 columns) piece per thread");
};

// 2 x 16 bits of `w` where |value| > thr, else 0 (NaN fails the comparison, as in torch).
template <typename T>
__device__ __forceinline__ uint32_t mask_pair(uint32_t w, uint32_t thr2);
template <>
__device__ __forceinline__ uint32_t mask_pair<__half>(uint32_t w, uint32_t thr2) {
  const __half2 a = __habs2(*reinterpret_cast<const __half2*>(&w));
  return w & __hgt2_mask(a, *reinterpret_cast<const __half2*>(&thr2));
}
template <>
__device__ __forceinline__ uint32_t mask_pair<__nv_bfloat16>(uint32_t w, uint32_t thr2) {
  const __nv_bfloat162 a = __habs2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  return w & __hgt2_mask(a, *reinterpret_cast<const __nv_bfloat162*>(&thr2));
}
// The byte-permute selectors that place a 4-row group's two packed values (one 32-bit word: the
// first value in bytes 0-1, the second in 2-3) at the rows of its 4 bitmap bits `n`, zeros elsewhere
// (byte 4: the zero operand): .x builds rows 0-1, .y rows 2-3. Only nibbles with 2 bits are used.
__device__ __forceinline__ uint2 pair_selectors(uint32_t n) {
  uint32_t s[2] = {0u, 0u}, seen = 0u;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const uint32_t code = (n >> r) & 1u ? (seen++ ? 0x32u : 0x10u) : 0x44u;
    s[r >> 1] |= code << (8 * (r & 1));
  }
  return make_uint2(s[0], s[1]);
}

// prmt with selector nibbles 0-4 (no sign-replicate bit: __byte_perm would mask the selector first).
__device__ __forceinline__ uint32_t prmt_zero(uint32_t a, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(a), "r"(sel));
  return r;
}

template <typename T>
__device__ __forceinline__ uint32_t splat_threshold(float t) {
  const T h = from_f<T>(t);
  const uint32_t b = *reinterpret_cast<const unsigned short*>(&h);
  return b | (b << 16);
}

// Launch bounds: the shared memory of up to 32 tokens allows 4 resident blocks per SM, so registers must too (64: 3).
template <typename T, int R, int TN, int G, bool FX = false, int MSX = 0>
__global__ void __launch_bounds__(kMmThreads, TN == 64 ? 3 : 4) spdp_mm_kernel(const SpdpMmParams p) {
  using C = MmCfg<R, TN, G, MSX, FX>;
  constexpr int KC = C::KC, W = C::W, NST = C::NST, UC = C::UC;
  extern __shared__ __align__(16) unsigned char smem[];
  // pair_selectors of every nibble, .x in the low half (prmt reads the low 16 bits), .y in the high half: one
  // 4-byte load per group (read after the loop's first barrier)
  __shared__ uint32_t sel_tab[16];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid < 16) {
    const uint2 ps = pair_selectors(tid);
    sel_tab[tid] = ps.x | (ps.y << 16);
  }
  grid_dependency_wait();
  const int tile = blockIdx.x, split = blockIdx.y, t0 = blockIdx.z * TN;
  const int nck = (p.K + KC - 1) / KC;
  const int per = (nck + p.S - 1) / p.S;
  const int ca = min(nck, split * per), nc = min(nck, ca + per) - ca;
  const long long tbase = static_cast<long long>(tile) * p.K;  // (tile, column 0) index
  const unsigned short* xg = static_cast<const unsigned short*>(p.x);
  const unsigned short* vg = static_cast<const unsigned short*>(p.vals);
  unsigned short* const at = reinterpret_cast<unsigned short*>(smem + NST * C::STAGE);

  const int* const toffs = p.offsets + tbase;
  // chunk q's packed values: [o0, o1). Both loaded straight into the registers that keep them: deriving
  // o0 from the previous chunk's o1 made the compiler move a just-loaded value within the iteration,
  // a wait on global memory every chunk (ncu: long-scoreboard stalls 0.5 -> 2.0 per instruction)
  auto bounds = [&](int q, int& o0, int& o1) {
    if constexpr (FX) {  // (tile * K + j) * R / 2 < 2^31: the host checks NT * K * R / 2 < 2^31
      o0 = static_cast<int>((tbase + q * KC) * (R / 2));
      o1 = static_cast<int>((tbase + min(p.K, (q + 1) * KC)) * (R / 2));
      return;
    }
    o0 = __ldg(toffs + q * KC);
    o1 = __ldg(toffs + min(p.K, (q + 1) * KC));
  };
  // this thread's pieces of the x tile (NXP of them, 16 bytes each): fixed rows and columns per chunk
  constexpr int XPT = (C::NXP + kMmThreads - 1) / kMmThreads;
  const unsigned short* xsrc[XPT > 0 ? XPT : 1];  // the piece's start at column 0 (nullptr: zero-filled)
  int xlim[XPT > 0 ? XPT : 1];                    // K minus its first column in the chunk: copied while j0 < xlim
#pragma unroll
  for (int k = 0; k < XPT; ++k) {
    const int v = k * kMmThreads + tid, t = v / (KC / 8), kp = v % (KC / 8);
    const bool ok = (C::NXP % kMmThreads == 0 || v < C::NXP) && t0 + t < p.T;
    xsrc[k] = ok ? xg + static_cast<long long>(t0 + t) * p.K + kp * 8 : nullptr;
    xlim[k] = ok ? p.K - kp * 8 : INT_MIN;
  }
  const int nvals = static_cast<int>(p.nvals);  // <= INT32_MAX, as the int32 offsets
  const unsigned smem0 = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  // 32-bit index arithmetic and one 64-bit address per copy: with 64-bit bounds math and a remainder
  // loop, issuing the copies had been ~40 % of a chunk's instructions
  static_assert(C::V_BYTES <= 3 * 16 * kMmThreads, "at most 3 value pieces per thread");
  auto issue = [&](int slot, int q, int o0, int o1) {
    const unsigned st = smem0 + slot * C::STAGE;
    const int j0 = q * KC;
    const int a = o0 & ~7;                  // copied from here: 16-byte aligned
    const int nv = (o1 - a + 7) >> 3;       // 16-byte pieces of values
    const int room = nvals - a;             // values readable from a (a <= o0 <= nvals)
    const int nfull = min(nv, room >> 3);   // whole pieces
    if (tid < nfull) {  // piece i by thread i % 256
      const unsigned short* src = vg + (a + 8 * tid);
      const unsigned dst = st + 16 * tid;
      cp_async16_bytes(dst, src, 16);
      if (tid + kMmThreads < nfull) {
        cp_async16_bytes(dst + 16 * kMmThreads, src + 8 * kMmThreads, 16);
        if (tid + 2 * kMmThreads < nfull) cp_async16_bytes(dst + 32 * kMmThreads, src + 16 * kMmThreads, 16);
      }
    }
    if (tid == 0 && nfull < nv)  // the last piece ends past the readable values (at most one): zero-filled
      cp_async16_bytes(st + nfull * 16, vg + (a + 8 * nfull), 2 * (room - 8 * nfull));
#pragma unroll
    for (int k = 0; k < XPT; ++k) {
      if (C::NXP % kMmThreads != 0 && k * kMmThreads + tid >= C::NXP) break;
      const int v = k * kMmThreads + tid;
      const unsigned dst = st + C::V_BYTES + C::B_BYTES + C::O_BYTES + ((v / (KC / 8)) * C::XLD + (v % (KC / 8)) * 8) * 2;
      const bool ok = j0 < xlim[k];
      cp_async16_bytes(dst, ok ? xsrc[k] + j0 : xg, ok ? 16 : 0);
    }
    if (warp == 0) {  // the chunk's bitmap words: 4096 / 32 = 128 words = 32 pieces, one per lane
      static_assert(C::B_BYTES == 32 * 16, "one bitmap piece per lane");
      const bool ok = j0 + lane * 4 / W < p.K;  // piece `lane` holds columns j0 + 4 lane / W ...
      cp_async16_bytes(st + C::V_BYTES + lane * 16, ok ? p.bitmap + (tbase + j0) * W + lane * 4 : p.bitmap,
                       ok ? 16 : 0);
    } else if (!FX && warp == 1 && lane < C::O_BYTES / 16) {  // its column offsets
      const bool ok = j0 + 4 * lane < p.K;
      cp_async16_bytes(st + C::V_BYTES + C::B_BYTES + lane * 16, ok ? p.offsets + tbase + j0 + 4 * lane : p.offsets,
                       ok ? 16 : 0);
    }
  };

  float acc[C::MS][C::NT8 > 0 ? C::NT8 : 1][4];
#pragma unroll
  for (int m = 0; m < C::MS; ++m)
#pragma unroll
    for (int o = 0; o < C::NT8; ++o)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][o][i] = 0.f;

  // this thread's expansion unit: rows r0 .. r0 + G - 1 of its columns
  const int r0 = (tid % UC) * G, wsel = r0 >> 5, sh = r0 & 31;
  const uint32_t below = (1u << sh) - 1u;
  // a balanced unit's nibble counts: 2 per whole 4-row group inside the tile's rows, 0 above
  const int ng = min(G / 4, max(0, (p.N - tile * R - r0) >> 2));
  const uint32_t bal_counts = 0x22222222u & static_cast<uint32_t>((1ull << (4 * ng)) - 1ull);
  // this warp's mma tiles: strips mg * MS .. mg * MS + MS - 1, k-steps kq, kq + WK, ...
  const int mg = warp % C::MG, kq = warp / C::MG;
  const uint32_t thr2 = splat_threshold<T>(p.thr);

#pragma unroll
  for (int s = 0; s < NST - 1; ++s) {
    if (s < nc) {
      int o0, o1;
      bounds(ca + s, o0, o1);
      issue(s, ca + s, o0, o1);
    }
    cp_async_commit();
  }
  int n0v = 0, n1v = 0;  // bounds of the next chunk to issue, loaded one iteration ahead
  if (NST - 1 < nc) bounds(ca + NST - 1, n0v, n1v);

  int ring = 0;  // i % NST, kept as a counter (NST = 3 is not a power of two)
  for (int i = 0; i < nc; ++i) {
    cp_async_wait<NST - 2>();
    __syncthreads();  // chunk i has landed; every warp is done with chunk i - 1
    const int qn = i + NST - 1;
    const int ring_n = ring == 0 ? NST - 1 : ring - 1;  // qn % NST
    if (qn < nc) issue(ring_n, ca + qn, n0v, n1v);
    cp_async_commit();
    if (qn + 1 < nc) bounds(ca + qn + 1, n0v, n1v);

    unsigned char* st = smem + ring * C::STAGE;
    ring = ring == NST - 1 ? 0 : ring + 1;
    const uint32_t sva = static_cast<uint32_t>(__cvta_generic_to_shared(st));
    const uint32_t* bm = reinterpret_cast<const uint32_t*>(st + C::V_BYTES);
    const int* offs = reinterpret_cast<const int*>(st + C::V_BYTES + C::B_BYTES);
    const unsigned short* xt = reinterpret_cast<const unsigned short*>(st + C::V_BYTES + C::B_BYTES + C::O_BYTES);

    // 1. expand the packed values into A^T
    const int abase = FX ? 0 : offs[0] & ~7;  // the value index the run was copied from (FX: offsets not staged)
#pragma unroll
    for (int u = 0; u < C::UNITS; ++u) {
      const int c = u * (kMmThreads / UC) + tid / UC;
      uint32_t m;
      int idx;
      if constexpr (FX) {
        m = bm[c * W + wsel];
        idx = c * (R / 2) + (r0 >> 1);
      } else {
        idx = offs[c] - abase;
        if constexpr (W == 1) {
          m = bm[c];
        } else if constexpr (W == 2) {
          const uint2 b2 = reinterpret_cast<const uint2*>(bm)[c];
          m = wsel ? b2.y : b2.x;
          idx += wsel ? __popc(b2.x) : 0;
        } else {
          const uint4 b4 = reinterpret_cast<const uint4*>(bm)[c];
          m = wsel == 0 ? b4.x : (wsel == 1 ? b4.y : (wsel == 2 ? b4.z : b4.w));
          idx += (wsel > 0 ? __popc(b4.x) : 0) + (wsel > 1 ? __popc(b4.y) : 0) + (wsel > 2 ? __popc(b4.z) : 0);
        }
        idx += __popc(m & below);
      }
      const uint32_t bits = (m >> sh) & static_cast<uint32_t>((1ull << G) - 1ull);
      uint32_t out[G / 2];
      const bool bal = FX || (p.bal != 2 && nibble_counts(bits) == bal_counts && (idx & 3) == 0);
      if (!FX && p.bal == 1 && !bal && (ca + i) * KC + c < p.K) __trap();  // (columns past K are zero-filled)
      if (bal) {
        uint32_t w[G / 4] = {};  // each group's pair (a unit with no bits reads nothing)
        if (bits) {
          if constexpr (FX) {  // 8 values at c * R + r0 bytes: 16-byte aligned (one shared-memory wavefront per 8 lanes)
            static_assert(!FX || G == 16, "the FX variant expands 16 rows per unit");
            const uint4 q = *reinterpret_cast<const uint4*>(st + 2 * idx);
            w[0] = q.x;
            w[1] = q.y;
            w[2] = q.z;
            w[3] = q.w;
          } else {
#pragma unroll
            for (int k = 0; k < G / 4; k += 2) {
              const uint2 q = *reinterpret_cast<const uint2*>(st + 2 * (idx + 2 * k));
              w[k] = q.x;
              w[k + 1] = q.y;
            }
          }
        }
#pragma unroll
        for (int k = 0; k < G / 4; ++k) {
          const uint32_t sel = sel_tab[(bits >> (4 * k)) & 15u];
          out[2 * k] = prmt_zero(w[k], sel);
          out[2 * k + 1] = prmt_zero(w[k], sel >> 16);
        }
      } else {
        uint32_t a = sva + 2u * static_cast<uint32_t>(idx), v[G];
#pragma unroll
        for (int k = 0; k < G; ++k) {
          v[k] = lds_u16_if(a, bits & (1u << k));
          if (bits & (1u << k)) a += 2u;
        }
#pragma unroll
        for (int k = 0; k < G / 2; ++k) out[k] = __byte_perm(v[2 * k], v[2 * k + 1], 0x5410);
      }
      unsigned short* dst = at + c * C::ALD + r0;
      *reinterpret_cast<uint4*>(dst) = make_uint4(out[0], out[1], out[2], out[3]);
      if constexpr (G == 16) *reinterpret_cast<uint4*>(dst + 8) = make_uint4(out[4], out[5], out[6], out[7]);
    }
    __syncthreads();
    if constexpr (TN == 0) {  // 2'. decode: rows 2 rp, 2 rp + 1, columns 8 cq .. 8 cq + 7 of the chunk
      // a warp: 16 row pairs x 2 adjacent pieces, so every store instruction writes whole 32-byte sectors
      // (32 row pairs x 1 piece wrote half sectors: 1.6x the time at R = 64, 2x at 128)
      constexpr int RG = R / 32;  // warps along the rows
      const int rp = (lane >> 1) + 16 * (warp % RG), cq = (lane & 1) + 2 * (warp / RG);
      const int n0 = tile * R + 2 * rp, j = (ca + i) * KC + 8 * cq;
      uint32_t w[8];  // column 8 cq + e: row 2 rp in the low half, 2 rp + 1 in the high half
#pragma unroll
      for (int e = 0; e < 8; ++e) w[e] = *reinterpret_cast<const uint32_t*>(at + (8 * cq + e) * C::ALD + 2 * rp);
      if (j < p.K) {  // K % 8 == 0: whole pieces
        unsigned short* y = static_cast<unsigned short*>(p.y) + static_cast<long long>(n0) * p.K + j;
        if (n0 < p.N)
          *reinterpret_cast<uint4*>(y) = make_uint4(__byte_perm(w[0], w[1], 0x5410), __byte_perm(w[2], w[3], 0x5410),
                                                    __byte_perm(w[4], w[5], 0x5410), __byte_perm(w[6], w[7], 0x5410));
        if (n0 + 1 < p.N)
          *reinterpret_cast<uint4*>(y + p.K) = make_uint4(__byte_perm(w[0], w[1], 0x7632), __byte_perm(w[2], w[3], 0x7632),
                                                          __byte_perm(w[4], w[5], 0x7632), __byte_perm(w[6], w[7], 0x7632));
      }
    } else {  // 2. multiply; x is masked (|x| > t, in x's dtype) in the B fragments
#pragma unroll
      for (int s = 0; s < C::KS / C::WK; ++s) {
        const int ks = kq + s * C::WK;
        uint32_t af[C::MS][4];
        const int qm = lane >> 3, r8 = lane & 7;
#pragma unroll
        for (int m = 0; m < C::MS; ++m)
          ldmatrix_x4_trans(af[m], at + (ks * 16 + (qm >> 1) * 8 + r8) * C::ALD + (mg * C::MS + m) * 16 + (qm & 1) * 8);
        if constexpr (C::NT8 == 1) {
          uint32_t r[2];
          const int rr = lane & 15;
          ldmatrix_x2(r, xt + (rr & 7) * C::XLD + ks * 16 + (rr >> 3) * 8);
          r[0] = mask_pair<T>(r[0], thr2);
          r[1] = mask_pair<T>(r[1], thr2);
#pragma unroll
          for (int m = 0; m < C::MS; ++m) mma16816<T>(acc[m][0], af[m], r[0], r[1]);
        } else {
#pragma unroll
          for (int o = 0; o < C::NT8; o += 2) {
            uint32_t r[4];
            const int tok = (o + (lane >> 4)) * 8 + (lane & 7);
            ldmatrix_x4(r, xt + tok * C::XLD + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int e = 0; e < 4; ++e) r[e] = mask_pair<T>(r[e], thr2);
#pragma unroll
            for (int m = 0; m < C::MS; ++m) {
              mma16816<T>(acc[m][o], af[m], r[0], r[1]);
              mma16816<T>(acc[m][o + 1], af[m], r[2], r[3]);
            }
          }
        }
      }
    }
  }
  cp_async_wait<0>();
  if constexpr (TN > 0) {  // (decoded: nothing to reduce)
    __syncthreads();  // the ring is free: reuse it for the partial sums

    float* part = reinterpret_cast<float*>(smem);  // [TN][R]
    const int gq = lane >> 2, tq = lane & 3;
    for (int h = 0; h < C::WK; ++h) {  // the k-split warps of a group add in a fixed order
      if (kq == h) {
#pragma unroll
        for (int m = 0; m < C::MS; ++m)
#pragma unroll
          for (int o = 0; o < C::NT8; ++o)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                float* dst = part + (o * 8 + 2 * tq + j) * R + (mg * C::MS + m) * 16 + gq + 8 * hh;
                *dst = h == 0 ? acc[m][o][2 * hh + j] : *dst + acc[m][o][2 * hh + j];
              }
      }
      __syncthreads();
    }
    T* y = static_cast<T*>(p.y);
    const int nrow0 = tile * R;
    cluster_reduce_store<TN, kMmThreads>(part, R, p.S, [&](int t, int o, float s) {
      const int n = nrow0 + o;
      if (t0 + t < p.T && n < p.N) y[static_cast<size_t>(t0 + t) * p.N + n] = from_f<T>(s);
    });
  }
}

// The automatic split below `smax` (the most slices that fill the SMs in one wave): the S minimising
// ceil(nck / S) + 2 S, i.e. a slice costs its chunks plus about two chunks' time of its own (the ring fill and
// the cluster reduction); ties go to the fewer slices. Measured on the H100 (benchmarks/NOTES.md, eighteenth
// session): 4096 -> 4096 (64 chunks) is fastest at S = 5 at 4, 16 and 32 tokens (14.1 / 15.5 / 19.5-19.9 us
// against 14.8 / 16.4 / 20.7-21.0 at the 7-8 slices that fit); 11008 -> 4096 (172 chunks) at 7-8, as before.
inline int mm_split(int nck, int smax) {
  int best = 1;
  for (int s = 2; s <= smax; ++s)
    if ((nck + s - 1) / s + 2 * s < (nck + best - 1) / best + 2 * best) best = s;
  return best;
}

// Opts in to the kernel's shared memory (once per device), then returns its resident blocks per SM.
template <typename T, int R, int TN, int G, bool FX = false, int MSX = 0>
inline cudaError_t spdp_mm_prepare(int device, int* blocks_per_sm) {
  constexpr size_t smem = MmCfg<R, TN, G, MSX, FX>::SMEM;
  const cudaError_t e = allow_smem_cached<spdp_mm_kernel<T, R, TN, G, FX, MSX>>(device, smem);
  if (e != cudaSuccess) return e;
  *blocks_per_sm = blocks_per_sm_cached<spdp_mm_kernel<T, R, TN, G, FX, MSX>>(device, kMmThreads, smem);
  return cudaSuccess;
}

// spdp_decode through the tensor-core kernel's copies and expansion (TN = 0): y = W [N, K], 16-bit
// values, K % 8 == 0, values 16-byte aligned. S column slices per tile, no cluster (nothing to reduce).
template <int R>
inline cudaError_t spdp_mm_decode(SpdpMmParams p, int sms, cudaStream_t stream, int device) {
  using C = MmCfg<R, 0, 16>;
  int bps = 1;
  const cudaError_t e = spdp_mm_prepare<__half, R, 0, 16>(device, &bps);
  if (e != cudaSuccess) return e;
  const int tiles = (p.N + R - 1) / R, nck = (p.K + C::KC - 1) / C::KC;
  p.S = std::max(1, std::min(nck, (sms * bps + tiles - 1) / tiles));  // about one wave
  p.T = 0;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.S), 1u);
  return launch_sliced(spdp_mm_kernel<__half, R, 0, 16>, p, grid, kMmThreads, C::SMEM, 1, stream, false);
}

// Launches with grid (tiles, S, token chunks); p.S must be set and spdp_mm_prepare called.
template <typename T, int R, int TN, int G, bool FX = false, int MSX = 0>
inline cudaError_t spdp_mm_launch(const SpdpMmParams& p, cudaStream_t stream, bool pdl) {
  const dim3 grid(static_cast<unsigned>((p.N + R - 1) / R), static_cast<unsigned>(p.S),
                  static_cast<unsigned>((p.T + TN - 1) / TN));
  return launch_sliced(spdp_mm_kernel<T, R, TN, G, FX, MSX>, p, grid, kMmThreads, MmCfg<R, TN, G, MSX, FX>::SMEM, p.S,
                       stream, pdl);
}

}  // namespace sk
