// teal_matvec(_sel) and spdp_matvec(_sel): activation-sparse matrix-vector products for decode.
//
// One kernel skeleton serves both formats. A block owns one output tile (TEAL: `lpr * VEC`
// consecutive outputs n of w_t's rows; SPDP: one R-row tile of the spdp format) and one of S
// slices of the input channels, for TC tokens (blockIdx.z picks the token chunk):
//   1. it builds the list of its active channels in shared memory: from x and the threshold
//      (fused ops: the slice is a channel range) or from select's idx/nnz (the *_sel ops: the
//      slice is a range of idx[:nnz]); SPDP also stages each active column's bitmap and offset;
//   2. its warps stream only the weights of active channels (TEAL: one 16-byte vector per lane
//      per channel row; SPDP: each lane owns rows lane + 32*w of the tile and loads its non-zero
//      values found by popcount), accumulating in fp32 registers: no atomics;
//   3. warps reduce through shared memory in a fixed order, and the S blocks of one output tile,
//      launched as one thread-block cluster (Hopper), reduce through distributed shared memory in
//      a fixed order: results are deterministic and bf16 is as easy as fp16.
// No torch headers: compile with `nvcc -arch=sm_90 -Xptxas -v -c` to read the resource report.
#pragma once
#include "common.cuh"

namespace sk {

struct MatvecParams {
  const void* x;       // [T, K]: x (fused ops) or xs (the *_sel ops), contiguous
  const int* idx;      // *_sel: active channels (ascending), idx[:nnz]
  const int* nnz;      // *_sel: [1] on the device
  int idx_len;         // *_sel: entries of idx (nnz is clamped to it)
  float thr;           // fused: keep |x| > thr (relative: |x| > thr * the token's mean |x|)
  int fused;           // 1: threshold x here; 0: use idx/nnz
  int relative;        // fused: the threshold is relative to each token's mean |x| (reference.mask_relative)
  int xvec;            // relative: x's rows can be read as aligned 16-byte vectors
  int glu;             // fused: x is [T, 2K], the stacked gate/up outputs; channel k is
                       // silu(x[t, k]) * x[t, K + k], rounded as torch rounds it (sk::silu_mul)
  int T, K, N;
  int S;               // channel slices = cluster size along y (1 without clusters)
  void* y;             // [T, N], x's dtype
  const void* w;       // TEAL: w_t [K, N]; SPDP: values
  int lpr;             // TEAL: lanes sharing one row segment (8, 16 or 32)
  int vec;             // TEAL: 1 when w_t rows can be read as aligned 16-byte vectors
  const int* bitmap;   // SPDP: [NT, K, R/32]
  const int* offsets;  // SPDP: [NT*K + 1]
  int nvals;           // SPDP: values readable from w (the NIB variant reads whole 4-byte pairs below it)
  int bal;             // SPDP, NIB and STG, tune("spdp_bal"): 0 = the balanced path in blocks whose columns allow
                       // it, 1 = the same, and a block whose columns do not allow it traps (tests), 2 = never
  int pipe;            // TEAL: 0 = batches of U register loads; 1 = a cp.async ring of D rows per lane
                       // (only read by the PIPE instantiation)
  int l2pf;            // TEAL, fused: before waiting for its inputs, the block prefetches into L2 the
                       // row segments of the first l2pf channels of its slice (active or not), so the
                       // DRAM works while the block loads x and builds its list (tune("l2pf"))
  unsigned long long* trace;  // TEAL, PROBE instantiation: TR_N slots per block, thread 0 writes them
};

// Compile-time configuration of one kernel instantiation. R == 0: TEAL, else SPDP with R-row tiles.
// V selects a variant of one instantiation:
// - TEAL, V = 1 (PIPE): stream weights through a cp.async ring in shared memory (tune("pipe", 1)); the
//   default instantiation (V = 0) reserves no ring, so it keeps its shared memory small.
// - SPDP, V = 1 (DEEP): blocks of 256 threads (two per SM, so the same resident slots as the
//   default's 512) with up to 128 registers, spent on 2-4x more columns in flight per lane, and
//   every staging load of a thread in flight at once (tune("spdp_deep"); the default for R = 128,
//   where the V = 0 instantiation spills).
// - SPDP, V = 2 (NIB, one token, 16-bit values): a lane owns 4 consecutive rows of a column (one
//   nibble of its bitmap), so R/4 lanes share a column and a warp walks 128/R columns per step. The
//   lane's non-zeros are one contiguous run of at most 4 values: up to three 4-byte loads fetch it,
//   and two byte permutes driven by a 16-entry table expand it into the 4 rows. The V = 0 kernel spends a
//   popcount, a bit test and a 2-byte load per row and lane (about 22 warp-instructions per row
//   slot measured on the H200); this one spends them once per 4 rows (tune("spdp_nib")).
// - TEAL, V = 3 (PROBE): the default kernel that also writes each block's timeline to p.trace
//   (sparsekit_cuda::trace). Its own instantiation: the stamps cost the default kernel 8-23
//   registers wherever they were placed (nvcc 13.0, sm_90).
// - SPDP, V = 4 (STG, one token, 16-bit values): the weight stream is split from the decode. Each warp
//   copies the packed values of its next active columns (one record per column: the 16-byte-aligned
//   span of its values) into a ring of NST stages in shared memory with cp.async, 16 bytes per lane,
//   SB records per stage, while it decodes the stage copied before: lanes own rows lane + 32*w as in
//   the V = 0 kernel, but a value is a shared-memory load with a 32-bit address instead of a 2-byte
//   global load (the V = 0 kernel keeps only 2-byte loads in flight: ~16 KB per SM, below what the
//   DRAM latency needs, and spends most of its instructions on 64-bit address math; tune("spdp_stage")).
// - SPDP, NIB and STG (one token, 16-bit values), the balanced path (BAL): a block whose staged columns
//   all hold exactly 2 non-zeros in every 4-row group of their rows (the pattern of 2:4 pruning over
//   output rows, `--structure 2:4-out`), with 4-value aligned offsets, streams them another way: a lane
//   owns 8 rows of a column (one bitmap byte), its 4 values are one aligned 8-byte load at offset + 4 *
//   lane, and each value goes to its row with a select and a predicated FMA. No popcount, no cp.async
//   ring, no run straddling words. The check is made per pass from the staged words, so any spdp
//   weight takes this path wherever it has the pattern and the variant's own loop elsewhere.
// - TEAL skeleton, V = 5 (FIX, 16-bit values): an spdp weight in the fixed balanced layout (every R-row
//   tile column holds R / 2 values, 2 in each 4-row group, so its values start at (tile * K + k) * R / 2
//   and its offsets need not be read; the caller declares it with a negative tile_rows, the host checks
//   the sizes, spdp.fixed_layout the pattern). It is the TEAL kernel with R = lpr * 8 rows per tile: the
//   same list, split, lane mapping (a lane owns 8 rows, one bitmap byte) and reductions; per list entry a
//   lane loads its 4 values (8 bytes) and its bitmap byte at addresses computed from k, both in flight at
//   once, then places them with bal_nibble. The SPDP kernels' staging round trip (bitmap words and
//   offsets into shared memory, a block barrier) is gone.
template <typename T, int TC, int R, int V = 0>
struct MvCfg {
  static constexpr bool SPDP = R > 0;
  static constexpr bool PIPE = !SPDP && V == 1;
  static constexpr bool DEEP = SPDP && V == 1;
  static constexpr bool NIB = SPDP && V == 2;
  static constexpr bool PROBE = !SPDP && V == 3;  // the default TEAL kernel plus its block timeline
  static constexpr bool STG = SPDP && V == 4;
  static constexpr bool FIX = !SPDP && V == 5;  // a fixed-layout balanced spdp weight on the TEAL skeleton
  static constexpr bool BAL = NIB || STG;  // the balanced path (see above) is compiled into these
  static constexpr int UB = 16;            // BAL: columns in flight per lane
  static constexpr int NTHREADS = (SPDP && !DEEP) ? 512 : 256;
  static constexpr int NW = NTHREADS / 32;
  // resident blocks asked of ptxas (PROBE: 3, the default TEAL kernel's occupancy, despite the stamps)
  static constexpr int MINB = PROBE ? 3 : ((SPDP && TC > 1) ? 1 : 2);
  static constexpr int VEC = Vec<T>::N;
  static constexpr int W = SPDP ? R / 32 : 1;                       // bitmap words per column
  static constexpr int ACC = NIB ? 4 : (SPDP ? W : VEC);            // accumulators per lane per token
  static constexpr int TILE_MAX = SPDP ? R : 32 * VEC;              // outputs per tile (max)
  // list capacity per pass (STG, 128-row tiles: 1024, so two blocks with their rings fit one SM)
  static constexpr int CH = (FIX && TC == 1) ? 4096 : (TC == 1 && !(STG && R == 128)) ? 2048 : 1024;
  static constexpr int PER = CH / NTHREADS;                         // channels per thread (fused build)
  // loads in flight per lane in the batch loops (SPDP: columns, each R/32 values)
  static_assert(!DEEP || TC == 1, "the deep spdp variant exists for one token only");
  static_assert(!NIB || (TC == 1 && sizeof(T) == 2), "the nibble spdp variant exists for one token of 16-bit values");
  static_assert(!STG || (TC == 1 && sizeof(T) == 2), "the staged spdp variant exists for one token of 16-bit values");
  static_assert(!FIX || sizeof(T) == 2, "the fixed-layout spdp variant exists for 16-bit values");
  // STG: records per stage (32 / SB lanes copy one record), stages per warp, bytes per record slot
  // (the record's aligned span: at most R values plus 16 bytes of alignment slack)
  static constexpr int SB = R == 128 ? 4 : 8;
  static constexpr int NST = 3;
  static constexpr int SLOT = R * static_cast<int>(sizeof(T)) + 16;
  static constexpr int U = NIB   ? 4
                           : FIX ? (TC == 1 ? 16 : 8)
                               : SPDP ? (DEEP ? (W == 4 ? 12 : 32) : (TC == 1 ? 8 : (TC == 4 ? 4 : 2)))
                                      : (TC == 1 ? 8 : 4);
  static constexpr int SG = DEEP ? 4 : 2;                            // SPDP staging: entries in flight per thread
  static constexpr int D = 8;                                        // TEAL cp.async ring depth (rows per lane)
  // shared memory carve-up (bytes, each piece 16-byte aligned)
  static constexpr size_t BM_BYTES = SPDP ? size_t(CH) * W * 4 : 0;
  static constexpr size_t OFF_BYTES = SPDP ? size_t(CH) * W * 4 : 0;  // value index of each word's first bit
  static constexpr size_t J_BYTES = size_t(CH) * 4;
  static constexpr size_t X_BYTES = size_t(TC) * CH * 4;
  static constexpr size_t RED_BYTES = size_t(NW) * TILE_MAX * 4;
  static constexpr size_t PART_BYTES = size_t(TC) * TILE_MAX * 4;
  static constexpr size_t RING_BYTES = !PIPE ? 0 : size_t(NW) * D * 32 * 16;
  static constexpr size_t STG_BYTES = STG ? size_t(NW) * NST * SB * SLOT : 0;
  static constexpr size_t SMEM = BM_BYTES + OFF_BYTES + J_BYTES + X_BYTES + RED_BYTES + PART_BYTES + RING_BYTES + STG_BYTES;
};

template <typename T> __device__ __forceinline__ uint32_t ld_val_bits(const T* base, int i);
template <> __device__ __forceinline__ uint32_t ld_val_bits<float>(const float* base, int i) { return ld_stream_u32(base + i); }
template <> __device__ __forceinline__ uint32_t ld_val_bits<__half>(const __half* base, int i) { return ld_stream_u16(base + i); }
template <> __device__ __forceinline__ uint32_t ld_val_bits<__nv_bfloat16>(const __nv_bfloat16* base, int i) {
  return ld_stream_u16(base + i);
}
template <typename T> __device__ __forceinline__ float val_bits_to_f(uint32_t b) { return bits16_to_f<T>(b); }
template <> __device__ __forceinline__ float val_bits_to_f<float>(uint32_t b) { return __uint_as_float(b); }

// ---- NIB variant helpers -----------------------------------------------------------------------
// Table entry of a 4-bit bitmap nibble n: byte permutes that place run value rank(j) (the number of
// set bits below bit j) at row j of the nibble, for rows (0, 1) and (2, 3), and the masks that
// zero the rows whose bit is clear. The run's 4 values sit in two words r0 = (v0, v1), r1 = (v2, v3),
// so value k is bytes 2k and 2k + 1 of __byte_perm(r0, r1, .).
__host__ __device__ __forceinline__ uint4 nib_entry(uint32_t n) {
  uint32_t sel[2] = {0u, 0u}, mask[2] = {0u, 0u};
  uint32_t rank = 0;
  for (int j = 0; j < 4; ++j) {
    const uint32_t bit = (n >> j) & 1u, q = static_cast<uint32_t>(j & 1) * 8u;
    sel[j >> 1] |= ((2u * rank) << q) | ((2u * rank + 1u) << (q + 4u));
    if (bit) mask[j >> 1] |= 0xffffu << (2u * q);
    rank += bit;
  }
  return make_uint4(sel[0], sel[1], mask[0], mask[1]);
}
// 4-byte read-only load when `pred` (0 otherwise); no branch around it, so every load of a batch
// can be in flight together.
__device__ __forceinline__ uint32_t ld_nc_u32_if(const uint32_t* ptr, bool pred) {
  uint32_t r = 0u;
  asm("{\n .reg .pred q;\n setp.ne.b32 q, %2, 0;\n @q ld.global.nc.u32 %0, [%1];\n}"
      : "+r"(r)
      : "l"(ptr), "r"(static_cast<int>(pred)));
  return r;
}
// 1-byte read-only streaming load when `pred` (0 otherwise), without a branch around it.
__device__ __forceinline__ uint32_t ld_nc_u8_if(const unsigned char* ptr, bool pred) {
  uint32_t r = 0u;
  asm("{\n .reg .pred q;\n setp.ne.b32 q, %2, 0;\n @q ld.global.nc.L1::no_allocate.u8 %0, [%1];\n}"
      : "+r"(r)
      : "l"(ptr), "r"(static_cast<int>(pred)));
  return r;
}
// 8-byte read-only streaming load when `pred` (zeros otherwise), without a branch around it.
__device__ __forceinline__ uint2 ld_nc_u64_if(const uint2* ptr, bool pred) {
  uint2 r = make_uint2(0u, 0u);
  asm("{\n .reg .pred q;\n setp.ne.b32 q, %3, 0;\n @q ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n}"
      : "+r"(r.x), "+r"(r.y)
      : "l"(ptr), "r"(static_cast<int>(pred)));
  return r;
}
// Byte permute of the 8 bytes {b, a} (prmt.b32; unlike __byte_perm, the selector is not masked).
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}
// Two 16-bit values (low, high half of a word) -> floats.
template <typename T> __device__ __forceinline__ void unpack2(uint32_t w, float& a, float& b);
template <> __device__ __forceinline__ void unpack2<__half>(uint32_t w, float& a, float& b) {
  const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&w));
  a = v.x;
  b = v.y;
}
template <> __device__ __forceinline__ void unpack2<__nv_bfloat16>(uint32_t w, float& a, float& b) {
  a = __uint_as_float(w << 16);
  b = __uint_as_float(w & 0xffff0000u);
}

// BAL: rows 0..3 of a nibble n with exactly two bits set, whose two values (in row order) are the
// halves of w: each row takes the first or the second value or nothing.
template <typename T>
__device__ __forceinline__ void bal_nibble(uint32_t n, uint32_t w, float x, float* a) {
  float v0, v1;
  unpack2<T>(w, v0, v1);
  if (n & 1u) a[0] = fmaf(x, v0, a[0]);
  if (n & 2u) a[1] = fmaf(x, (n & 1u) ? v1 : v0, a[1]);
  if (n & 4u) a[2] = fmaf(x, (n & 8u) ? v0 : v1, a[2]);
  if (n & 8u) a[3] = fmaf(x, v1, a[3]);
}
// BAL: nibble_counts of bitmap word w (rows 32w..) of a balanced column in a tile of `rows` rows: 2 in
// each whole nibble inside the tile, 0 above.
__device__ __forceinline__ uint32_t bal_expected(int w, int rows) {
  const int nv = min(8, max(0, (rows - 32 * w) >> 2));
  return nv >= 8 ? 0x22222222u : (0x22222222u & ((1u << (4 * nv)) - 1u));
}

// SPDP: the staged bitmap words of list entry e and the value index of each word's first bit (one
// shared-memory vector load each).
template <int W>
__device__ __forceinline__ void staged_words(const uint32_t* s_bm, const int* s_off, int e, uint32_t (&m)[W],
                                             int (&o)[W]) {
  if constexpr (W == 4) {
    const uint4 q = *reinterpret_cast<const uint4*>(s_bm + e * W);
    const int4 f = *reinterpret_cast<const int4*>(s_off + e * W);
    m[0] = q.x; m[1] = q.y; m[2] = q.z; m[3] = q.w;
    o[0] = f.x; o[1] = f.y; o[2] = f.z; o[3] = f.w;
  } else if constexpr (W == 2) {
    const uint2 q = *reinterpret_cast<const uint2*>(s_bm + e * W);
    const int2 f = *reinterpret_cast<const int2*>(s_off + e * W);
    m[0] = q.x; m[1] = q.y;
    o[0] = f.x; o[1] = f.y;
  } else {
    m[0] = s_bm[e];
    o[0] = s_off[e];
  }
}

template <typename T, int TC, int R, int V = 0>
__global__ void __launch_bounds__(MvCfg<T, TC, R, V>::NTHREADS, MvCfg<T, TC, R, V>::MINB)
    matvec_kernel(const MatvecParams p) {
  using C = MvCfg<T, TC, R, V>;
  constexpr int NT = C::NTHREADS, NW = C::NW, CH = C::CH, VEC = C::VEC, W = C::W, ACC = C::ACC, U = C::U;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int s_warp[NW + 1];
  __shared__ uint4 s_tab[C::NIB ? 16 : 1];  // NIB: permutes and masks per bitmap nibble
  uint32_t* s_bm = reinterpret_cast<uint32_t*>(smem);
  int* s_off = reinterpret_cast<int*>(smem + C::BM_BYTES);
  int* s_j = reinterpret_cast<int*>(smem + C::BM_BYTES + C::OFF_BYTES);
  float* s_x = reinterpret_cast<float*>(smem + C::BM_BYTES + C::OFF_BYTES + C::J_BYTES);
  float* s_red = reinterpret_cast<float*>(smem + C::BM_BYTES + C::OFF_BYTES + C::J_BYTES + C::X_BYTES);
  float* s_part = s_red + NW * C::TILE_MAX;
  uint4* s_ring = reinterpret_cast<uint4*>(s_part + TC * C::TILE_MAX);  // TEAL: [NW][D][32] 16-byte slots
  unsigned char* s_stage = reinterpret_cast<unsigned char*>(s_ring) + C::RING_BYTES;  // STG: [NW][NST][SB] slots

  if (C::PROBE && threadIdx.x == 0) {
    trace_slot(p.trace, TR_G0) = global_ns();
    trace_slot(p.trace, TR_C0) = clock64();
  }
  if constexpr (!C::SPDP) {
    // weights do not depend on the previous kernel, so this may run before grid_dependency_wait
    if (p.l2pf > 0 && p.fused && p.vec) {
      const int kper = (p.K + p.S - 1) / p.S;
      const int b0 = min(p.K, static_cast<int>(blockIdx.y) * kper), nch = min(p.l2pf, min(p.K, b0 + kper) - b0);
      const size_t rowb = static_cast<size_t>(p.N) * sizeof(T);  // bytes per w_t row
      const size_t segb = static_cast<size_t>(blockIdx.x) * p.lpr * VEC * sizeof(T);
      const int lines = (p.lpr * VEC * static_cast<int>(sizeof(T)) + 127) / 128;
      const char* wb = static_cast<const char*>(p.w);
      for (int i = threadIdx.x; i < nch * lines; i += NT) {
        const size_t off = segb + static_cast<size_t>(i % lines) * 128;
        if (off < rowb) prefetch_l2(wb + static_cast<size_t>(b0 + i / lines) * rowb + off);
      }
    }
  }
  grid_dependency_wait();  // launched with programmatic stream serialization: inputs are ready after this
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tile = blockIdx.x, split = blockIdx.y, t0 = blockIdx.z * TC;
  const int tn = min(TC, p.T - t0);
  const int K = p.K, N = p.N;
  const int tile_out = C::SPDP ? R : p.lpr * VEC;
  const T* x = static_cast<const T*>(p.x);
  const size_t xrow = static_cast<size_t>(p.glu ? 2 * K : K);  // elements per token row of x
  if constexpr (C::NIB) {
    if (tid < 16) s_tab[tid] = nib_entry(static_cast<uint32_t>(tid));  // read after the pass's barriers
  }

  float acc[TC][ACC];
#pragma unroll
  for (int t = 0; t < TC; ++t)
#pragma unroll
    for (int a = 0; a < ACC; ++a) acc[t][a] = 0.f;

  // each token's threshold: p.thr, or p.thr * mean |x| over all K channels (every block reads the
  // whole rows of its tokens; float32 as reference.token_scale)
  float thr[TC];
#pragma unroll
  for (int t = 0; t < TC; ++t) thr[t] = p.thr;
  if (p.fused && p.relative) {
    float part[TC];
#pragma unroll
    for (int t = 0; t < TC; ++t) {
      part[t] = 0.f;
      if (t < tn) {
        const T* row = x + static_cast<size_t>(t0 + t) * K;
        if (p.xvec) {  // 16-byte loads, all of a thread's in flight
#pragma unroll 4
          for (int i = tid; i < K / VEC; i += NT) {
            float f[VEC];
            unpack16<T>(__ldg(reinterpret_cast<const uint4*>(row) + i), f);
#pragma unroll
            for (int j = 0; j < VEC; ++j) part[t] += fabsf(f[j]);
          }
        } else {
#pragma unroll 4
          for (int k = tid; k < K; k += NT) part[t] += fabsf(to_f<T>(row[k]));
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) part[t] += __shfl_xor_sync(FULL, part[t], o);
    }
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < TC; ++t) s_red[warp * TC + t] = part[t];
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < TC; ++t) {
      float sum = 0.f;
      for (int q = 0; q < NW; ++q) sum += s_red[q * TC + t];
      thr[t] = p.thr * (sum / static_cast<float>(K));
    }
    __syncthreads();  // s_red is reused by the reduction at the end
  }

  int beg, end;
  if (p.fused) {
    const int kper = (K + p.S - 1) / p.S;
    beg = min(K, split * kper);
    end = min(K, beg + kper);
  } else {
    const int cnt = min(max(__ldg(p.nnz), 0), min(K, p.idx_len));
    beg = static_cast<int>(static_cast<long long>(cnt) * split / p.S);
    end = static_cast<int>(static_cast<long long>(cnt) * (split + 1) / p.S);
  }

  // BAL: this block's balanced passes accumulate here (rows 8 * l8 + a of the tile, see below)
  bool any_bal = false;
  float ab[C::BAL ? 8 : 1];
#pragma unroll
  for (int a = 0; a < (C::BAL ? 8 : 1); ++a) ab[a] = 0.f;
  uint32_t bexp[C::BAL ? W : 1];  // BAL: nibble_counts of each word of a balanced column of this tile
#pragma unroll
  for (int w = 0; w < (C::BAL ? W : 1); ++w) bexp[w] = C::BAL ? bal_expected(w, min(R, N - tile * R)) : 0u;

  for (int c0 = beg; c0 < end; c0 += CH) {
    const int c1 = min(end, c0 + CH);
    __syncthreads();  // the previous pass is consumed
    // ---- 1. the list of active channels -------------------------------------------------------
    int cnt;
    if (p.fused) {
      const int kb = c0 + tid * C::PER;
      float xv[C::PER][TC];
      unsigned bits = 0;
#pragma unroll
      for (int i = 0; i < C::PER; ++i) {
        const int k = kb + i;
        bool any = false;
#pragma unroll
        for (int t = 0; t < TC; ++t) {
          float v = 0.f;
          if (k < c1 && t < tn) {
            const T* row = x + static_cast<size_t>(t0 + t) * xrow;
            v = p.glu ? silu_mul<T>(to_f<T>(row[k]), to_f<T>(row[K + k])) : to_f<T>(row[k]);
            v = fabsf(v) > thr[t] ? v : 0.f;
          }
          xv[i][t] = v;
          any |= (v != 0.f);
        }
        bits |= (any ? 1u : 0u) << i;
      }
      int total;
      int pos = block_exclusive_scan<NW>(__popc(bits), s_warp, total);
#pragma unroll
      for (int i = 0; i < C::PER; ++i) {
        if (bits & (1u << i)) {
          s_j[pos] = kb + i;
#pragma unroll
          for (int t = 0; t < TC; ++t) s_x[t * CH + pos] = xv[i][t];
          ++pos;
        }
      }
      cnt = total;
    } else {
      // entries e = tid + i * NT: every load of this thread in flight at once
      cnt = c1 - c0;
      int jv[C::PER];
#pragma unroll
      for (int i = 0; i < C::PER; ++i) {
        const int e = tid + i * NT;
        jv[i] = e < cnt ? __ldg(p.idx + c0 + e) : -1;
      }
      float xv[C::PER][TC];
#pragma unroll
      for (int i = 0; i < C::PER; ++i) {
        const bool ok = jv[i] >= 0 && jv[i] < K;
#pragma unroll
        for (int t = 0; t < TC; ++t)
          xv[i][t] = (ok && t < tn) ? to_f<T>(x[static_cast<size_t>(t0 + t) * K + jv[i]]) : 0.f;
      }
#pragma unroll
      for (int i = 0; i < C::PER; ++i) {
        const int e = tid + i * NT;
        if (e < cnt) {
          s_j[e] = (jv[i] >= 0 && jv[i] < K) ? jv[i] : 0;
#pragma unroll
          for (int t = 0; t < TC; ++t) s_x[t * CH + e] = xv[i][t];
        }
      }
    }
    __syncthreads();
    if (C::PROBE && tid == 0 && c0 == beg) {  // the first pass's list (the only one at decode shapes)
      trace_slot(p.trace, TR_LIST) = clock64();
      trace_slot(p.trace, TR_INFO) = sm_id() | (static_cast<unsigned long long>(cnt) << 32);
    }
    if constexpr (C::SPDP) {
      // stage each active column's bitmap words and the value index of each word's first bit
      constexpr int SG = C::SG;  // entries per thread per round (all their loads in flight)
      bool ok = true;              // BAL: every entry of this thread has the balanced pattern
#pragma unroll
      for (int i0 = 0; i0 < C::PER; i0 += SG) {
        uint32_t m[SG][W];
        int off[SG];
#pragma unroll
        for (int i = 0; i < SG; ++i) {
          const int e = tid + (i0 + i) * NT;
          if (e < cnt) {
            const size_t pos = static_cast<size_t>(tile) * K + s_j[e];
            const uint32_t* bp = reinterpret_cast<const uint32_t*>(p.bitmap) + pos * W;
            if constexpr (W == 4) {
              const uint4 q = __ldg(reinterpret_cast<const uint4*>(bp));
              m[i][0] = q.x; m[i][1] = q.y; m[i][2] = q.z; m[i][3] = q.w;
            } else if constexpr (W == 2) {
              const uint2 q = __ldg(reinterpret_cast<const uint2*>(bp));
              m[i][0] = q.x; m[i][1] = q.y;
            } else {
              m[i][0] = __ldg(bp);
            }
            off[i] = __ldg(p.offsets + pos);
          }
        }
#pragma unroll
        for (int i = 0; i < SG; ++i) {
          const int e = tid + (i0 + i) * NT;
          if (e < cnt) {
            int base = off[i];
#pragma unroll
            for (int w = 0; w < W; ++w) {
              s_bm[e * W + w] = m[i][w];
              s_off[e * W + w] = base;
              base += __popc(m[i][w]);
              if constexpr (C::BAL) ok = ok && nibble_counts(m[i][w]) == bexp[w];
            }
            // 8-byte aligned value groups, all readable
            if constexpr (C::BAL) ok = ok && (off[i] & 3) == 0 && base <= p.nvals;
          }
        }
      }
      if constexpr (C::BAL) {
        const bool bal = __syncthreads_and(ok && p.bal != 2 && (reinterpret_cast<uintptr_t>(p.w) & 7) == 0) != 0;
        any_bal = any_bal || bal;
        if (p.bal == 1 && !bal) __trap();  // tune("spdp_bal", 1): the test asked for this path everywhere
        if (bal) {
          // a lane owns rows 8 * l8 .. 8 * l8 + 7 of a column: byte l8 % 4 of word l8 / 4; its 4 values
          // are value group (offset / 4 + l8) of the column (2 per nibble, in row order)
          constexpr int L8 = R / 8, G8 = 32 / L8, UB = C::UB;
          const int g8 = lane / L8, l8 = lane - g8 * L8, wi = l8 >> 2, sh = (l8 & 3) * 8;
          const int nslots = NW * G8;
          const uint2* vg = static_cast<const uint2*>(p.w);
          for (int e0 = warp * G8 + g8; e0 < cnt; e0 += nslots * UB) {
            uint2 wv[UB];
#pragma unroll
            for (int u = 0; u < UB; ++u) {
              const int e = e0 + u * nslots;
              uint32_t b = 0u;
              int o = 0;
              if (e < cnt) {
                b = (s_bm[e * W + wi] >> sh) & 0xffu;
                o = s_off[e * W];
              }
              wv[u] = ld_nc_u64_if(vg + (o >> 2) + l8, b != 0u);
            }
#pragma unroll
            for (int u = 0; u < UB; ++u) {  // the byte read again (fewer live registers); 0 past the list
              const int e = min(e0 + u * nslots, CH - 1);
              const uint32_t b = e0 + u * nslots < cnt ? (s_bm[e * W + wi] >> sh) & 0xffu : 0u;
              const float xe = s_x[e];
              bal_nibble<T>(b & 0xfu, wv[u].x, xe, ab);
              bal_nibble<T>(b >> 4, wv[u].y, xe, ab + 4);
            }
          }
          continue;  // the next pass (the variant's own stream below is for unbalanced passes)
        }
      } else {
        __syncthreads();
      }
    }

    // ---- 2. stream the active weights --------------------------------------------------------
    if constexpr (!C::SPDP) {
      const int lpr = p.lpr, rpw = 32 / lpr, g = lane / lpr, li = lane - g * lpr;
      const int slot = warp * rpw + g, nslots = NW * rpw;
      const int col = tile * tile_out + li * VEC;
      const T* wt = static_cast<const T*>(p.w);
      if constexpr (C::FIX) {
        // column k of this tile: values (tile * K + k) * lpr * 4.., bitmap bytes (tile * K + k) * lpr..; this
        // lane's 4 values are 8-byte piece (tile * K + k) * lpr + li, its 8 rows' bits that bitmap byte
        // (32-bit indices: the host checks NT * K * lpr < 2^31)
        const uint32_t lb = static_cast<uint32_t>(tile) * static_cast<uint32_t>(K * lpr) + li;
        const uint2* vals = static_cast<const uint2*>(p.w);
        const unsigned char* bm8 = reinterpret_cast<const unsigned char*>(p.bitmap);
        for (int e0 = slot; e0 < cnt; e0 += nslots * U) {
          uint2 wv[U];
          uint32_t bb[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int e = e0 + u * nslots;
            const uint32_t i = lb + static_cast<uint32_t>(s_j[e < cnt ? e : 0]) * lpr;
            wv[u] = ld_nc_u64_if(vals + i, e < cnt);
            bb[u] = ld_nc_u8_if(bm8 + i, e < cnt);  // 0 past the list: no row takes a value
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int e = min(e0 + u * nslots, CH - 1);
#pragma unroll
            for (int t = 0; t < TC; ++t) {
              const float xe = s_x[t * CH + e];
              bal_nibble<T>(bb[u] & 0xfu, wv[u].x, xe, acc[t]);
              bal_nibble<T>(bb[u] >> 4, wv[u].y, xe, acc[t] + 4);
            }
          }
        }
      } else if (C::PIPE && p.vec) {
        // D rows in flight per lane at all times through a shared-memory ring filled by cp.async:
        // wait for row i, consume it, refill its slot with row i + D. Completion is tracked by
        // async-copy groups (one per row, per thread), not by register scoreboards.
        if constexpr (C::PIPE) {
          constexpr int D = C::D;
          const bool colok = col < N;  // N % VEC == 0 on this path
          const T* wcol = wt + col;
          const int ni = slot < cnt ? (cnt - 1 - slot) / nslots + 1 : 0;
          uint4* ring = s_ring + warp * D * 32 + lane;
#pragma unroll
          for (int d = 0; d < D; ++d) {
            if (colok && d < ni) cp_async16_stream(ring + d * 32, wcol + static_cast<size_t>(s_j[slot + d * nslots]) * N);
            cp_async_commit();
          }
          for (int i = 0; i < ni; ++i) {
            cp_async_wait<D - 1>();
            const int d = i & (D - 1);
            if (colok) {
              const uint4 wv = ring[d * 32];
              const int e = slot + i * nslots;
              float f[VEC];
              unpack16<T>(wv, f);
#pragma unroll
              for (int t = 0; t < TC; ++t) {
                const float xe = s_x[t * CH + e];
#pragma unroll
                for (int v = 0; v < VEC; ++v) acc[t][v] = fmaf(xe, f[v], acc[t][v]);
              }
            }
            const int in = i + D;
            if (colok && in < ni) cp_async16_stream(ring + d * 32, wcol + static_cast<size_t>(s_j[slot + in * nslots]) * N);
            cp_async_commit();
          }
          cp_async_wait<0>();
        }
      } else if (p.vec) {  // batches: U loads, then U consumers
        const bool colok = col < N;
        for (int e0 = slot; e0 < cnt; e0 += nslots * U) {
          uint4 wv[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int e = e0 + u * nslots;
            if (colok && e < cnt) wv[u] = ld_stream16(wt + static_cast<size_t>(s_j[e]) * N + col);
            else wv[u] = make_uint4(0u, 0u, 0u, 0u);
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int e = e0 + u * nslots;
            if (e < cnt) {
              float f[VEC];
              unpack16<T>(wv[u], f);
#pragma unroll
              for (int t = 0; t < TC; ++t) {
                const float xe = s_x[t * CH + e];
#pragma unroll
                for (int v = 0; v < VEC; ++v) acc[t][v] = fmaf(xe, f[v], acc[t][v]);
              }
            }
          }
        }
      } else {  // odd N or unaligned w_t: scalar loads, one row at a time
        for (int e = slot; e < cnt; e += nslots) {
          const T* row = wt + static_cast<size_t>(s_j[e]) * N;
          float f[VEC];
#pragma unroll
          for (int v = 0; v < VEC; ++v) f[v] = (col + v < N) ? to_f<T>(row[col + v]) : 0.f;
#pragma unroll
          for (int t = 0; t < TC; ++t) {
            const float xe = s_x[t * CH + e];
#pragma unroll
            for (int v = 0; v < VEC; ++v) acc[t][v] = fmaf(xe, f[v], acc[t][v]);
          }
        }
      }
    } else if constexpr (C::STG) {
      constexpr int SB = C::SB, LPRC = 32 / SB, NST = C::NST, SLOT = C::SLOT, ES = static_cast<int>(sizeof(T));
      constexpr int CPR = (SLOT / 16 + LPRC - 1) / LPRC;  // 16-byte chunks per lane per record (max)
      const uint32_t lanebit = 1u << lane, lt = lanebit - 1u;
      const char* vbytes = static_cast<const char*>(p.w);  // 16-byte aligned (the dispatch checks)
      const long long vend = static_cast<long long>(p.nvals) * ES;  // readable bytes from p.w
      // this warp's ring as a 32-bit shared-memory address
      const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(s_stage)) + warp * (NST * SB * SLOT);
      const int ni = warp < cnt ? (cnt - 1 - warp) / NW + 1 : 0;  // this warp's entries: warp + i * NW
      const int nb = (ni + SB - 1) / SB;
      const int cu = lane / LPRC, cq = lane - cu * LPRC;  // the record this lane copies, its first chunk
      // copy batch b (entries b*SB .. b*SB + SB - 1 of this warp) into stage b % NST; one commit group
      // per batch and thread, empty or not, so wait_group counts batches
      auto issue = [&](int b) {
        const int i = b * SB + cu;
        if (b < nb && i < ni) {
          const int e = warp + i * NW;
          const int v0 = s_off[e * W], v1 = s_off[e * W + W - 1] + __popc(s_bm[e * W + W - 1]);
          const long long a0 = (static_cast<long long>(v0) * ES) & ~15LL;
          const int len = static_cast<int>(static_cast<long long>(v1) * ES - a0);  // bytes from a0 (< SLOT)
          const int rem = static_cast<int>(min(static_cast<long long>(SLOT), vend - a0));  // readable of them
          const char* src = vbytes + a0;
          const uint32_t dst = ring + ((b % NST) * SB + cu) * SLOT;
#pragma unroll
          for (int k = 0; k < CPR; ++k) {
            const int c = (cq + k * LPRC) * 16;
            if (c < len) cp_async16_bytes(dst + c, src + c, max(0, min(16, rem - c)));
          }
        }
        cp_async_commit();
      };
#pragma unroll
      for (int b = 0; b < NST - 1; ++b) issue(b);
      for (int b = 0; b < nb; ++b) {
        issue(b + NST - 1);  // into the stage decoded in iteration b - 1
        cp_async_wait<NST - 1>();
        __syncwarp();  // every lane's copies of batch b are visible to the warp
        const uint32_t st = ring + (b % NST) * (SB * SLOT);
        // record u of the stage: bitmap words and value offsets, x, then one predicated 2-byte
        // shared-memory load, a convert and an FMA per row this lane owns
        auto record = [&](int u) {
          const int e = warp + (b * SB + u) * NW;
          uint32_t m[W];
          int o[W];
          staged_words<W>(s_bm, s_off, e, m, o);
          const float xe = s_x[e];
          // value v of the record sits at byte (v - o[0]) * ES + (o[0] * ES) % 16 of its slot; unsigned
          // arithmetic wraps, so only the final address needs to be in range
          const uint32_t base = st + u * SLOT + static_cast<uint32_t>((o[0] & (16 / ES - 1)) - o[0]) * ES;
#pragma unroll
          for (int w = 0; w < W; ++w) {
            const uint32_t addr = base + static_cast<uint32_t>(o[w] + __popc(m[w] & lt)) * ES;
            const uint32_t bits = lds_u16_if(addr, m[w] & lanebit);
            acc[0][w] = fmaf(xe, bits16_to_f<T>(bits), acc[0][w]);
          }
        };
        const int nu = min(SB, ni - b * SB);
        if (nu == SB) {  // a full stage: no per-record test
#pragma unroll
          for (int u = 0; u < SB; ++u) record(u);
        } else {
          for (int u = 0; u < nu; ++u) record(u);
        }
        __syncwarp();  // the stage is read before iteration b + 1 refills it
      }
      cp_async_wait<0>();
    } else if constexpr (C::NIB) {
      // lane li of a column group owns rows 4li..4li+3 of the tile: bits 4(li%8).. of word li/8
      constexpr int LPC = R / 4, G = 32 / LPC;  // lanes per column, columns per warp step
      const int g = lane / LPC, li = lane - g * LPC;
      const int wi = li >> 3, sh = (li & 7) * 4;
      const uint32_t below = (1u << sh) - 1u;
      const int slot = warp * G + g, nslots = NW * G;
      const uint32_t* vals32 = static_cast<const uint32_t*>(p.w);  // value pairs (values are 4-byte aligned)
      const unsigned short* vals = static_cast<const unsigned short*>(p.w);
      const int nv = p.nvals;  // readable values from p.w
      for (int e0 = slot; e0 < cnt; e0 += nslots * U) {
        uint32_t w0[U], w1[U], w2[U], nb[U], dd[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int e = e0 + u * nslots;
          uint32_t m = 0u;
          int base = 0;
          if (e < cnt) {
            m = s_bm[e * W + wi];
            base = s_off[e * W + wi];
          }
          const uint32_t n4 = (m >> sh) & 0xfu;
          const int c = __popc(n4);
          const int off = base + __popc(m & below);  // index of the run's first value
          const int d = off & 1;                      // the run starts in the high half of word off / 2
          const int a = off >> 1;                     // the first of three words covering the run
          // word j is needed when the run reaches it; the last needed word must be readable whole
          const bool ok = 2 * a + d + c <= nv - 1 || ((d + c) & 1) == 0;
          w0[u] = ld_nc_u32_if(vals32 + a, c > 0 && ok);
          w1[u] = ld_nc_u32_if(vals32 + a + 1, d + c > 2 && ok);
          w2[u] = ld_nc_u32_if(vals32 + a + 2, d + c > 4 && ok);
          if (c > 0 && !ok) {  // the run ends at the last readable value, in the low half of its word
            uint32_t h[3] = {0u, 0u, 0u};
#pragma unroll
            for (int q = 0; q < 5; ++q)
              if (q >= d && q < d + c) h[q >> 1] |= static_cast<uint32_t>(__ldg(vals + 2 * a + q)) << (16 * (q & 1));
            w0[u] = h[0];
            w1[u] = h[1];
            w2[u] = h[2];
          }
          nb[u] = n4;
          dd[u] = static_cast<uint32_t>(d);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int e = e0 + u * nslots;
          if (e < cnt) {
            const uint32_t shift = dd[u] ? 0x5432u : 0x3210u;  // one half further
            const uint32_t r0 = prmt(w0[u], w1[u], shift), r1 = prmt(w1[u], w2[u], shift);  // run values 0..3
            const uint4 tb = s_tab[nb[u]];
            float f[4];
            unpack2<T>(prmt(r0, r1, tb.x) & tb.z, f[0], f[1]);
            unpack2<T>(prmt(r0, r1, tb.y) & tb.w, f[2], f[3]);
            const float xe = s_x[e];
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[0][j] = fmaf(xe, f[j], acc[0][j]);
          }
        }
      }
    } else {
      const uint32_t lanebit = 1u << lane, lt = lanebit - 1u;
      const T* vals = static_cast<const T*>(p.w);
      // the non-zero of column entry e owned by this lane, per bitmap word (0 when there is none)
      auto fetch = [&](int e, uint32_t (&v)[W]) {
        uint32_t m[W];
        int b[W];
        staged_words<W>(s_bm, s_off, e, m, b);
#pragma unroll
        for (int w = 0; w < W; ++w) v[w] = (m[w] & lanebit) ? ld_val_bits<T>(vals, b[w] + __popc(m[w] & lt)) : 0u;
      };
      auto consume = [&](int e, const uint32_t (&v)[W]) {
#pragma unroll
        for (int t = 0; t < TC; ++t) {
          const float xe = s_x[t * CH + e];
#pragma unroll
          for (int w = 0; w < W; ++w) acc[t][w] = fmaf(xe, val_bits_to_f<T>(v[w]), acc[t][w]);
        }
      };
      const int ni = warp < cnt ? (cnt - 1 - warp) / NW + 1 : 0;
      uint32_t vb[U][W];
      for (int i0 = 0; i0 < ni; i0 += U) {
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (i0 + u < ni) fetch(warp + (i0 + u) * NW, vb[u]);
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (i0 + u < ni) consume(warp + (i0 + u) * NW, vb[u]);
      }
    }
  }

  // ---- 3. reduce: lane groups (TEAL), warps (shared memory), blocks (cluster) ------------------
  if (C::PROBE && tid == 0) trace_slot(p.trace, TR_STREAM) = clock64();
  int g = 0, li = lane;
  if constexpr (C::NIB) {
    constexpr int LPC = R / 4;
    g = lane / LPC;
    li = lane - g * LPC;
    for (int o = LPC; o < 32; o <<= 1) {
#pragma unroll
      for (int a = 0; a < ACC; ++a) acc[0][a] += __shfl_xor_sync(FULL, acc[0][a], o);
    }
  } else if constexpr (!C::SPDP) {
    g = lane / p.lpr;
    li = lane - g * p.lpr;
    for (int o = p.lpr; o < 32; o <<= 1) {
#pragma unroll
      for (int t = 0; t < TC; ++t)
#pragma unroll
        for (int a = 0; a < ACC; ++a) acc[t][a] += __shfl_xor_sync(FULL, acc[t][a], o);
    }
  }
  if constexpr (C::BAL) {
    if (any_bal) {  // block-uniform: the column groups of a warp add their rows
      for (int o = R / 8; o < 32; o <<= 1) {
#pragma unroll
        for (int a = 0; a < 8; ++a) ab[a] += __shfl_xor_sync(FULL, ab[a], o);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < TC; ++t) {
    __syncthreads();
    if constexpr (C::NIB) {
      if (g == 0) {
#pragma unroll
        for (int a = 0; a < ACC; ++a) s_red[warp * R + 4 * li + a] = acc[t][a];
      }
    } else if constexpr (C::SPDP) {
#pragma unroll
      for (int w = 0; w < W; ++w) s_red[warp * R + lane + 32 * w] = acc[t][w];
    } else if (g == 0) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) s_red[warp * tile_out + li * VEC + v] = acc[t][v];
    }
    if constexpr (C::BAL) {
      if (any_bal) {  // the balanced passes' sums, on top of the variant's (a warp's own rows)
        __syncwarp();
        if (lane < R / 8) {
#pragma unroll
          for (int a = 0; a < 8; ++a) s_red[warp * R + 8 * lane + a] += ab[a];
        }
      }
    }
    __syncthreads();
    for (int o = tid; o < tile_out; o += NT) {
      float s = 0.f;
#pragma unroll 4
      for (int q = 0; q < NW; ++q) s += s_red[q * tile_out + o];
      s_part[t * tile_out + o] = s;
    }
  }
  __syncthreads();
  if (C::PROBE && tid == 0) trace_slot(p.trace, TR_RED) = clock64();
  T* y = static_cast<T*>(p.y);
  const int n0 = tile * tile_out;
  cluster_reduce_store<TC, NT>(s_part, tile_out, p.S, [&](int t, int o, float s) {
    const int n = n0 + o;
    if (t < tn && n < N) y[static_cast<size_t>(t0 + t) * N + n] = from_f<T>(s);
  });
  if (C::PROBE && tid == 0) {
    trace_slot(p.trace, TR_C1) = clock64();
    trace_slot(p.trace, TR_G1) = global_ns();
  }
}

// ---- host side (no torch) -----------------------------------------------------------------------
template <typename T, int TC, int R, int V = 0>
inline cudaError_t matvec_prepare(int device) {
  static bool done[64] = {false};
  if (device < 0 || device >= 64) return cudaErrorInvalidDevice;
  if (done[device]) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(matvec_kernel<T, TC, R, V>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(MvCfg<T, TC, R, V>::SMEM));
  if (e == cudaSuccess) done[device] = true;
  return e;
}

// Resident blocks per multiprocessor of this instantiation (cached per device).
template <typename T, int TC, int R, int V = 0>
inline int matvec_blocks_per_sm(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 1;
  if (cache[device] == 0) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, matvec_kernel<T, TC, R, V>,
                                                      MvCfg<T, TC, R, V>::NTHREADS,
                                                      MvCfg<T, TC, R, V>::SMEM) != cudaSuccess || n < 1)
      n = 1;
    cache[device] = n;
  }
  return cache[device];
}

// Clusters of S blocks of this instantiation that can be resident at once (max_clusters_cached).
template <typename T, int TC, int R, int V = 0>
inline int matvec_max_clusters(int device, int S) {
  using C = MvCfg<T, TC, R, V>;
  return max_clusters_cached<matvec_kernel<T, TC, R, V>>(device, S, C::NTHREADS, C::SMEM);
}

template <typename T, int TC, int R, int V = 0>
inline cudaError_t matvec_launch(const MatvecParams& p, int tiles, int tchunks, cudaStream_t stream, bool pdl) {
  using C = MvCfg<T, TC, R, V>;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.S), static_cast<unsigned>(tchunks));
  return launch_sliced(matvec_kernel<T, TC, R, V>, p, grid, C::NTHREADS, C::SMEM, p.S, stream, pdl);
}

}  // namespace sk
